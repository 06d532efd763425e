"""Was a run made by this request, or found by its idempotency key?

Prefect answers 201 for a new run only when the run's `created` is not before the moment
its handler read the clock; it sets `created` earlier (when it builds the run), so under
load a new run comes back 200 too (prefect/server/api/deployments.py,
`create_flow_run_from_deployment`), and 200 alone does not mean "an earlier submission".
Clocks cannot tell either (a resubmission may follow within a second, from another
host). So a request with an idempotency key also sends a tag of its own: a new run
carries it, a run found by the key carries the earlier request's.
"""

from __future__ import annotations

import uuid

from prefect.client.schemas.objects import FlowRun

#: prefix of the tag that marks which request created a run
SUBMISSION_TAG_PREFIX = "submission:"


def submission_tag() -> str:
    return f"{SUBMISSION_TAG_PREFIX}{uuid.uuid4().hex[:12]}"


def existed_before(run: FlowRun, tag: str | None) -> bool:
    """True when `run` came back without this request's `tag`: an earlier submission
    with the same idempotency key (no tag sent: no key, so always a new run)."""
    return tag is not None and tag not in (run.tags or [])
