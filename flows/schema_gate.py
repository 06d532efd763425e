"""A maintenance flow on a database without the studio schema ends Refused, in one line.

WHY (issue 16): a worker without the shared DATABASE_URL ran on its own empty SQLite
file and its flows failed with `no such table: ...` tracebacks. The scheduled fan-out
and the storage sync ask studio/db/schema_check.py first and end in a Failed-type
"Refused" state (as a refused batch does) whose message names DATABASE_URL and
`studio init`; the content batch does the same in its `validate` step.
"""

from __future__ import annotations

import logging

from prefect.states import Failed, State

from studio.db.schema_check import schema_problem

log = logging.getLogger("studio.batch")


def schema_refusal(flow_name: str) -> State | None:
    """None when the database is ready; else the run's Refused state (and one log line)."""
    problem = schema_problem()
    if problem is None:
        return None
    log.error("%s refused | DATABASE_URL: %s", flow_name, problem)
    return Failed(name="Refused", message=f"DATABASE_URL: {problem}")
