"""Connection-pool exhaustion: a short retry, then an error that says what to do.

Why: under load the queue pool can be momentarily full (spec, Common Issue 4). Waiting
a little more usually succeeds; when it does not, SQLAlchemy's "QueuePool limit ...
reached" message does not tell an operator which knob to turn, so it is replaced by
one that names the settings and the usual cause (sessions not closed).
"""

from __future__ import annotations

import logging

from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

logger = logging.getLogger(__name__)

POOL_RETRY_ATTEMPTS = 3


class PoolExhausted(RuntimeError):
    """Every pooled connection stayed busy through the retries."""


def _log_retry(state: RetryCallState) -> None:
    logger.warning(
        "Database pool exhausted, retrying (attempt %d/%d)",
        state.attempt_number,
        POOL_RETRY_ATTEMPTS,
    )


def connect_with_retry(session: Session, attempts: int = POOL_RETRY_ATTEMPTS) -> None:
    """Check a connection out for `session`, retrying a full pool before giving up."""
    retrying = Retrying(
        retry=retry_if_exception_type(PoolTimeout),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.2, max=2.0),
        before_sleep=_log_retry,
        reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt:
                session.connection()
    except PoolTimeout:
        pool = session.get_bind().pool
        raise PoolExhausted(
            f"database connection pool exhausted after {attempts} attempts "
            f"({pool.status()}); raise DB_POOL_SIZE / DB_MAX_OVERFLOW (spec: 10/20 for high "
            "concurrency) or look for sessions that are not closed"
        ) from None
