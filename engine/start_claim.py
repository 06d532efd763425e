"""A batch run's claim on its image provider's slots, written as its process starts.

Part of the fleet's slot queue (`provider_slots.py`, PrefectHQ/prefect#23183: Prefect's
global concurrency limits have no queue of their own). A batch claims its first image
provider as its flow starts (`LeasePool.claim`), so the batches of a wave share the cap
from their first images. A worker starts a wave's runs within milliseconds, but their
flows reach that claim 0.2-0.6 s apart on a busy 2-core host (three engines starting at
once), and the first asks ~0.3 s after its own claim: when it asked before the others
had claimed, it took every slot for its ten images, a whole round ahead (issue 20, six
10-piece batches: first-wave finish spreads of 20-77 % in such rounds).

The process knows it runs a batch before the engine has read its run: the batch
deployments say so in their environment (`STUDIO_RUN_CLAIMS_IMAGE_SLOTS`, prefect.yaml).
`engine/flow_run_process.py` then writes the row the flow's claim writes (same process,
same row) before the engine starts, so the others count it from their first look. A row
that is not beaten goes stale in QUEUE_STALE_SECONDS (3 s): a run that never claims (one
refused before its images, or whose blocks put another provider first) holds nobody
back for longer than that. Best effort: anything that fails here leaves the flow's own
claim, as before.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

#: set (to 1) in the environment of the deployments whose runs make images
FLAG = "STUDIO_RUN_CLAIMS_IMAGE_SLOTS"


def claim_at_start(environ: os._Environ[str] | dict[str, str] = os.environ) -> str | None:
    """Write this process's claim in the queue of the first image provider the settings
    name, when the run's deployment says it makes images; the provider claimed, or None."""
    if environ.get(FLAG, "").strip().lower() not in ("1", "true", "yes"):
        return None
    try:
        from engine.lease_census import LeaseCensus
        from engine.provider_slots import CLAIM_PLACE
        from studio.providers.build import caps, provider_order
        from studio.providers.settings import ProviderSettings

        settings = ProviderSettings()
        order = provider_order(settings)
        if not order or order[0] not in caps(settings) or settings.slot_claim_seconds <= 0:
            return None  # no provider with slots (the offline preview), or claims off
        LeaseCensus().queue(order[0], CLAIM_PLACE)
        return order[0]
    except Exception as exc:  # the flow's own claim still comes
        log.debug("No claim at the process's start (%s)", type(exc).__name__)
        return None
