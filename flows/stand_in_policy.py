"""The stand-in policy of the running flow: studio/stand_ins.py fed with Prefect's context.

Prefect says whether this run came from a deployment (`prefect.runtime.deployment.id`,
set in a worker's or `serve`'s flow-run process and for every run created from a
deployment) and which API it reports to; the rule itself lives in studio/stand_ins.py.
"""

from __future__ import annotations

from prefect.runtime import deployment
from prefect.settings import PREFECT_API_URL

from studio.stand_ins import StandInPolicy


def run_stand_in_policy() -> StandInPolicy:
    """The policy for the flow run in this context (a direct call: no deployment)."""
    return StandInPolicy.current(
        deployment_id=deployment.id, api_url=PREFECT_API_URL.value()
    )
