"""Ask a provider whether it has the job of a ledger row a dead run left open.

Used by studio/ledger/dead_runs.py when a batch resumes. Each provider is asked with
its cheapest documented read, with a short timeout:

- Replicate: `GET /v1/predictions/{id}` (404: no such job). A row without an id (the
  process died while `Prefer: wait` held the create's answer) is looked up in
  `GET /v1/predictions` (newest first, paged by `next`): the prediction of this piece's
  seed created since the reservation, not one the ledger already holds.
- Modal: the call's result URL (`?__modal_function_call_id=`; 404: no such call; a
  303, a 200 or an answer still pending: the call exists). Without a call id Modal
  cannot be asked: "cannot tell".
- ComfyUI: `GET /history/{prompt_id}`, then `GET /queue`.
- Anthropic: a Message Batch by id (`GET /v1/messages/batches/{id}`); a direct Messages
  call has no id before its answer: "cannot tell".

Secrets go only in headers to the configured origin and never into a log line.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import httpx

from studio.ledger.dead_runs import JobAnswer, OpenRow
from studio.providers.comfyui import seed_for
from studio.providers.settings import ProviderSettings

log = logging.getLogger("studio.ledger")

TIMEOUT = httpx.Timeout(10.0, connect=5.0)
#: clock skew allowed between our reservation and the provider's `created_at`
SKEW = timedelta(minutes=5)
#: list pages read at most when searching a row without a job id
MAX_PAGES = 20
CANNOT_TELL = JobAnswer(None)


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


def _moment(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


class ProviderJobLookup:
    """The `JobLookup` over the configured providers (settings read when built)."""

    def __init__(self, settings: ProviderSettings | None = None) -> None:
        self.settings = settings or ProviderSettings()

    async def find(self, row: OpenRow) -> JobAnswer:
        if row.kind == "image" and row.provider == "replicate":
            return await self._replicate(row)
        if row.kind == "image" and row.provider == "modal":
            return await self._modal(row)
        if row.kind == "image" and row.provider == "comfyui":
            return await self._comfyui(row)
        if row.kind == "hook" and row.provider == "anthropic":
            return await self._anthropic(row)
        return CANNOT_TELL

    # --- Replicate ----------------------------------------------------------------

    async def _replicate(self, row: OpenRow) -> JobAnswer:
        token = _secret(self.settings.replicate_api_token)
        if not token:
            return CANNOT_TELL
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(
            base_url=self.settings.replicate_base_url, headers=headers, timeout=TIMEOUT
        ) as client:
            if row.job_id:
                answer = await client.get(f"/v1/predictions/{row.job_id}")
                if answer.status_code == 404:
                    return JobAnswer(False)
                answer.raise_for_status()
                return JobAnswer(True, row.job_id)
            if row.piece_id is None:
                return CANNOT_TELL
            return await self._replicate_search(client, row)

    async def _replicate_search(self, client: httpx.AsyncClient, row: OpenRow) -> JobAnswer:
        assert row.piece_id is not None
        seed = seed_for(row.piece_id) % 2**31
        since = row.created_at - SKEW
        url: str | None = "/v1/predictions"
        for _ in range(MAX_PAGES):
            if url is None:
                return JobAnswer(False)  # every prediction since the reservation was read
            page = await client.get(url)
            page.raise_for_status()
            body = page.json()
            for prediction in body.get("results") or []:
                created = _moment(prediction.get("created_at"))
                if created is not None and created < since:
                    return JobAnswer(False)  # newest first: older ones are not this call's
                pid = prediction.get("id")
                if not pid or pid in row.known_job_ids:
                    continue
                inputs = prediction.get("input")
                if inputs is None:  # the list may leave inputs out: read the prediction
                    full = await client.get(f"/v1/predictions/{pid}")
                    full.raise_for_status()
                    inputs = full.json().get("input") or {}
                if inputs.get("seed") == seed:
                    return JobAnswer(True, str(pid))
            url = body.get("next")
        return CANNOT_TELL  # too many predictions to read: counted, not guessed away

    # --- Modal --------------------------------------------------------------------

    async def _modal(self, row: OpenRow) -> JobAnswer:
        endpoint = self.settings.modal_sdxl_endpoint
        if not row.job_id or not endpoint:
            return CANNOT_TELL
        headers = {
            "Modal-Key": _secret(self.settings.modal_token_id) or "",
            "Modal-Secret": _secret(self.settings.modal_token_secret) or "",
        }
        params = None if row.job_id.startswith("http") else {"__modal_function_call_id": row.job_id}
        url = row.job_id if params is None else endpoint
        async with httpx.AsyncClient(headers=headers, timeout=TIMEOUT) as client:
            try:
                answer = await client.get(url, params=params, follow_redirects=False)
            except httpx.ReadTimeout:
                return JobAnswer(True, row.job_id)  # still running: the call exists
        if answer.status_code == 404:
            return JobAnswer(False)
        if answer.status_code < 400:
            return JobAnswer(True, row.job_id)
        answer.raise_for_status()
        return CANNOT_TELL

    # --- ComfyUI ------------------------------------------------------------------

    async def _comfyui(self, row: OpenRow) -> JobAnswer:
        if not row.job_id:
            return CANNOT_TELL
        async with httpx.AsyncClient(
            base_url=self.settings.comfyui_endpoint, timeout=TIMEOUT
        ) as client:
            history = await client.get(f"/history/{row.job_id}")
            history.raise_for_status()
            if history.json().get(row.job_id):
                return JobAnswer(True, row.job_id)
            queue = await client.get("/queue")
            queue.raise_for_status()
            body = queue.json()
            for item in [*body.get("queue_running", []), *body.get("queue_pending", [])]:
                if isinstance(item, list) and len(item) > 1 and item[1] == row.job_id:
                    return JobAnswer(True, row.job_id)
        return JobAnswer(False)

    # --- Anthropic ----------------------------------------------------------------

    async def _anthropic(self, row: OpenRow) -> JobAnswer:
        from studio.hooks.settings import HookSettings

        hooks = HookSettings()
        key = _secret(hooks.anthropic_api_key)
        if not row.job_id or not row.job_id.startswith("msgbatch_") or not key:
            return CANNOT_TELL
        headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
        async with httpx.AsyncClient(
            base_url=hooks.api_base_url, headers=headers, timeout=TIMEOUT
        ) as client:
            answer = await client.get(f"/v1/messages/batches/{row.job_id}")
        if answer.status_code == 404:
            return JobAnswer(False)
        answer.raise_for_status()
        return JobAnswer(True, row.job_id)
