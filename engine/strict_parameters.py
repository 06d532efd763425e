"""Unknown parameters refused: at run creation (409), else the run ends "Refused".

Prefect validates a deployment run's parameters against the deployment's
`parameter_openapi_schema` when the run is created (`enforce_parameter_schema`, on by
default), but the schema Prefect builds from a flow's signature (`ParameterSchema`)
never says `additionalProperties: false`, and `prefect deploy` always rebuilds it from
the flow, so a misspelled name (`{"pieces": 5}`) is accepted with 201 and the run only
fails in the worker, with a traceback. Upstream: PrefectHQ/prefect#6192 ("Validate
parameters upon POST request to /api/deployments/id/create_flow_run", open).

The workaround lives here, in two halves:

- `apply_strict_parameters`: sets `additionalProperties: false` on the schema of every
  deployment of this project's flows (and `enforce_parameter_schema: true`), so the
  server answers 409 naming the unknown key and creates no run. `studio automations
  apply` calls it, so it is on after the README's "On Prefect" steps; `prefect deploy`
  rebuilds the schema, so run `studio automations apply` again after each deploy (it is
  idempotent, and reports each deployment it made strict).
- `refuse_unknown_parameter_runs`: a run that gets through anyway (a deployment
  deployed after the last apply, `enforce_parameter_schema: false` on the run) never
  reaches flow code: Prefect's engine fails on the unknown key before the flow starts
  (SignatureMismatchError) and the worker reports the run Crashed. The crash automation
  then starts crash recovery, which ends such a run "Refused" naming the unknown
  parameters instead of resuming it.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import DeploymentUpdate
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.client.schemas.objects import FlowRun
from prefect.states import Failed

log = logging.getLogger("studio.batch")

#: the flows whose deployments `apply_strict_parameters` makes strict (prefect.yaml)
PROJECT_FLOWS = [
    "content-batch",
    "scheduled-batches",
    "health-check",
    "crash-recovery",
    "storage-sync",
]
#: upstream issue this module works around, named in every refusal it makes
UPSTREAM_ISSUE = "PrefectHQ/prefect#6192"


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The same schema, with keys it does not name refused."""
    return {**schema, "additionalProperties": False}


def is_strict(schema: dict[str, Any] | None) -> bool:
    return bool(schema) and schema.get("additionalProperties") is False


async def apply_strict_parameters(
    client: PrefectClient, flows: list[str] | None = None
) -> dict[str, str]:
    """Make every deployment of `flows` refuse unknown parameters at run creation.

    Returns what was done per deployment (`flow/deployment`): "made strict" or
    "already strict". One read, then one update per deployment that needs one.
    """
    deployments = await client.read_deployments(
        flow_filter=FlowFilter(name=FlowFilterName(any_=flows or PROJECT_FLOWS))
    )
    flow_names = {
        flow.id: flow.name
        for flow in await client.read_flows(
            flow_filter=FlowFilter(name=FlowFilterName(any_=flows or PROJECT_FLOWS))
        )
    }
    outcome: dict[str, str] = {}
    for deployment in deployments:
        name = f"{flow_names.get(deployment.flow_id, '?')}/{deployment.name}"
        schema = deployment.parameter_openapi_schema or {}
        if is_strict(schema) and deployment.enforce_parameter_schema:
            outcome[name] = "already strict"
            continue
        await client.update_deployment(
            deployment.id,
            DeploymentUpdate(
                parameter_openapi_schema=strict_schema(schema),
                enforce_parameter_schema=True,
            ),
        )
        outcome[name] = "made strict"
    return outcome


def unknown_names(fn: Any, parameters: dict[str, Any]) -> list[str]:
    """Keys of `parameters` that `fn` takes no parameter of, sorted."""
    signature = inspect.signature(fn)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return []
    return sorted(set(parameters) - set(signature.parameters))


def refusal_message(fn: Any, unknown: list[str]) -> str:
    known = ", ".join(inspect.signature(fn).parameters)
    return (
        f"parameters: unknown parameter(s) {', '.join(repr(u) for u in unknown)}; this flow "
        f"takes {known} (refused at creation once `studio automations apply` ran after "
        f"`prefect deploy`; {UPSTREAM_ISSUE})"
    )


async def refuse_unknown_parameter_runs(
    client: PrefectClient, fn: Any, runs: list[FlowRun]
) -> list[FlowRun]:
    """End "Refused" every run of `runs` created with parameters `fn` does not take;
    return the others.

    Such a run never reaches flow code: Prefect's engine fails on the unknown key
    before the flow starts (SignatureMismatchError), and the worker reports the run
    Crashed; the crash automation starts crash recovery, which calls this so that the
    run ends Refused with the names instead of being resumed (it cannot run as asked).
    """
    kept = []
    for run in runs:
        unknown = unknown_names(fn, run.parameters or {})
        if not unknown:
            kept.append(run)
            continue
        message = refusal_message(fn, unknown)
        await client.set_flow_run_state(
            run.id, Failed(name="Refused", message=message), force=True
        )
        log.error("Batch refused | Run: %s | %s", run.name, message)
    return kept
