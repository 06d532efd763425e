"""The object store failing while a batch stages its images: stay on local disk, say so once.

Why: an image is staged after the provider has billed it, so a staging store that is
down must never cost the image (the piece would fail, or a retry would buy it again).
The local copy is enough for the batch itself (the upload step reads it and has its own
local fallback); the object store copy only lets another host resume the batch. So a
failed put or read is logged once per batch, the image stays local, and the store is
skipped for `STORE_RETRY_SECONDS` (one circuit breaker per store and process, see
studio/breaker.py) instead of every piece spending its own connect timeouts on it.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from studio.breaker import CircuitBreaker

log = logging.getLogger("studio.staging")

#: after a failure, the store is skipped this long; then one trial call decides
STORE_RETRY_SECONDS = 30.0
#: batches whose outage line this process logged (bounded: a worker runs many batches)
_WARNED_LIMIT = 1024


class StoreOutage:
    """Whether a staging store may be called now, and the batch's one warning line."""

    def __init__(self, retry_seconds: float | None = None) -> None:
        seconds = STORE_RETRY_SECONDS if retry_seconds is None else retry_seconds
        self.breaker = CircuitBreaker(failure_threshold=1, recovery_seconds=seconds)
        self._warned: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def allows(self) -> bool:
        """True when a call may go to the store (closed, or the half-open trial)."""
        return self.breaker.allow()

    def succeeded(self) -> None:
        self.breaker.record_success()

    def failed(self, batch_id: str, action: str, error: BaseException) -> None:
        """The store failed `action` for this batch: open the breaker, warn once per batch."""
        self.breaker.record_failure()
        self._warn_once(batch_id, f"object store {action} failed: {safe_reason(error)}")

    def skipped(self, batch_id: str) -> None:
        """The breaker kept a call from the store (another batch saw it fail just now)."""
        self._warn_once(
            batch_id,
            f"object store failed less than {self.breaker.recovery_seconds:.0f}s ago",
        )

    def _warn_once(self, batch_id: str, why: str) -> None:
        with self._lock:
            if batch_id in self._warned:
                return
            self._warned[batch_id] = None
            while len(self._warned) > _WARNED_LIMIT:
                self._warned.popitem(last=False)
        log.warning(
            "Staging on local disk only | Batch: %s | %s | images stay on this host until "
            "the store answers (a resume on another host cannot fetch them); pieces the "
            "upload cannot store are kept locally for `studio storage-sync`",
            batch_id, why,
        )


def safe_reason(error: BaseException) -> str:
    """Words about a store failure that are safe to log: an error code, an HTTP status
    or an exception type, never a URL, key, signature or message from the wire."""
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", "unknown"))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0
        return f"{code} (HTTP {status})"
    return type(error).__name__


_outages: dict[tuple[str, str], StoreOutage] = {}
_outages_lock = threading.Lock()


def outage_for(endpoint: str, bucket: str) -> StoreOutage:
    """The process's outage state of one store and bucket (shared by every batch)."""
    with _outages_lock:
        outage = _outages.get((endpoint, bucket))
        if outage is None:
            outage = _outages[(endpoint, bucket)] = StoreOutage()
        return outage


def reset_outages() -> None:
    """Forget every store's state (a new test, or an operator who fixed the store)."""
    with _outages_lock:
        _outages.clear()
