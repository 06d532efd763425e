"""Ask a provider whether it has the job of a ledger row a dead run left open.

Used by studio/ledger/dead_runs.py when a batch resumes. Each provider is asked with
its cheapest documented read, with a short timeout: an image provider by its entry's
`find_job` (ComfyUI, Modal and Replicate in their modules), Anthropic by a Message Batch
id (`GET /v1/messages/batches/{id}`; a direct Messages call has no id before its answer:
"cannot tell"). A provider without a lookup cannot tell.

Secrets go only in headers to the configured origin and never into a log line.
"""

from __future__ import annotations

import httpx

from studio.ledger.dead_runs import JobAnswer, OpenRow
from studio.providers.catalogue import PROVIDER_NAMES, provider_entry
from studio.providers.entry import CANNOT_TELL, LOOKUP_TIMEOUT
from studio.providers.settings import ProviderSettings


class ProviderJobLookup:
    """The `JobLookup` over the configured providers (settings read when built)."""

    def __init__(self, settings: ProviderSettings | None = None) -> None:
        self.settings = settings or ProviderSettings()

    async def find(self, row: OpenRow) -> JobAnswer:
        if row.kind == "image" and row.provider in PROVIDER_NAMES:
            find_job = provider_entry(row.provider).find_job
            return CANNOT_TELL if find_job is None else await find_job(self.settings, row)
        if row.kind == "hook" and row.provider == "anthropic":
            return await self._anthropic(row)
        return CANNOT_TELL

    # --- Anthropic ----------------------------------------------------------------

    async def _anthropic(self, row: OpenRow) -> JobAnswer:
        from studio.hooks.settings import HookSettings

        hooks = HookSettings()
        key = (
            hooks.anthropic_api_key.get_secret_value()
            if hooks.anthropic_api_key is not None
            else None
        )
        if not row.job_id or not row.job_id.startswith("msgbatch_") or not key:
            return CANNOT_TELL
        headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
        async with httpx.AsyncClient(
            base_url=hooks.api_base_url, headers=headers, timeout=LOOKUP_TIMEOUT
        ) as client:
            answer = await client.get(f"/v1/messages/batches/{row.job_id}")
        if answer.status_code == 404:
            return JobAnswer(False)
        answer.raise_for_status()
        return JobAnswer(True, row.job_id)
