"""Before a resume spends anything: settle the ledger rows its dead runs left open.

See studio/ledger/dead_runs.py (the rule) and studio/providers/job_lookup.py (how each
provider is asked). Runs with the resumed run's settings, which are the original run's
job variables (flows/resume_settings.py), so the providers it asks are the ones billed.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import task

from studio.ledger.dead_runs import settle_dead_rows
from studio.providers.job_lookup import ProviderJobLookup


@task(name="settle-dead-runs", retries=1, retry_delay_seconds=2, timeout_seconds=300)
async def settle_dead_runs(batch_id: str) -> dict[str, int]:
    """Counts of the rows settled: billed (the provider has the job), released, and
    unconfirmed (the provider could not be asked: billed)."""
    report = await settle_dead_rows(batch_id, ProviderJobLookup(), before=datetime.now(UTC))
    return {
        "billed": report.billed,
        "released": report.released,
        "unconfirmed": report.unconfirmed,
    }
