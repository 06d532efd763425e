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
- `StrictFlow` / `unknown_parameters_refusal`: a run that gets through anyway (a
  deployment deployed after the last apply, `enforce_parameter_schema=false` on the
  run) drops the unknown keys before Prefect's own validation would fail the run with
  a signature-mismatch traceback, and the flow then ends "Refused" naming them.
"""

from __future__ import annotations

import inspect
from typing import Any

from prefect import Flow
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import DeploymentUpdate
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.context import FlowRunContext

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


class StrictFlow(Flow):  # type: ignore[type-arg]
    """A flow whose run survives unknown parameters long enough to refuse them by name.

    Prefect's engine validates a run's parameters before the flow body runs and fails
    the run with a SignatureMismatchError traceback on an unknown key. This drops the
    unknown keys there; the body then calls `unknown_parameters_refusal` (the run's own
    record still holds them) and ends "Refused" like any other bad request.
    """

    def validate_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        unknown = set(unknown_names(self.fn, parameters))
        known = {k: v for k, v in parameters.items() if k not in unknown}
        return super().validate_parameters(known)


def strict_flow(**options: Any) -> Any:
    """`@flow(...)` that builds a StrictFlow (same options)."""

    def decorate(fn: Any) -> StrictFlow:
        return StrictFlow(fn, **options)

    return decorate


def unknown_parameters_refusal() -> str | None:
    """Inside a StrictFlow's run: the refusal message when the run was created with
    parameters the flow does not take, else None."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None or context.flow is None:
        return None
    unknown = unknown_names(context.flow.fn, context.flow_run.parameters or {})
    if not unknown:
        return None
    known = ", ".join(inspect.signature(context.flow.fn).parameters)
    return (
        f"unknown parameter(s) {', '.join(repr(u) for u in unknown)}; this flow takes: "
        f"{known} (refused at creation once `studio automations apply` ran after the "
        f"deploy; {UPSTREAM_ISSUE})"
    )
