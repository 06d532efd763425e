"""The flows' parameter schemas say what JSON Schema can say, and a deployment refuses a
run that breaks them when the run is created (409), before any worker is involved."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prefect.settings import get_current_settings
from prefect.utilities.callables import parameter_schema

from flows.content_batch import content_batch
from flows.scheduled import scheduled_batches


def _schema(flow: Any) -> dict[str, Any]:
    return parameter_schema(flow).model_dump()


def _branch(prop: dict[str, Any]) -> dict[str, Any]:
    """The non-null branch of an optional parameter."""
    return next((b for b in prop.get("anyOf", []) if b.get("type") != "null"), prop)


@pytest.mark.parametrize("flow", [content_batch, scheduled_batches], ids=lambda f: f.name)
def test_every_parameter_has_a_description(flow) -> None:
    properties = _schema(flow)["properties"]
    missing = [name for name, prop in properties.items() if not prop.get("description")]
    assert not missing


def test_content_batch_schema_ranges_and_enums() -> None:
    schema = _schema(content_batch)
    props = schema["properties"]
    pieces = _branch(props["num_pieces"])
    assert (pieces["minimum"], pieces["maximum"]) == (1, 500)
    # issue 18: empty means the avatar's profile, else the studio default, as it says
    assert props["num_pieces"]["default"] is None
    assert "else 50" in props["num_pieces"]["description"]
    assert _branch(props["platform"])["enum"] == [
        "instagram", "tiktok", "twitter", "patreon", "onlyfans"
    ]
    assert props["platform"]["default"] is None and "else instagram" in (
        props["platform"]["description"]
    )
    assert props["format"]["pattern"] and props["format"]["default"] is None
    assert props["hook_mode"]["enum"] == ["direct", "message-batches", "auto"]
    tiers = _branch(props["custom_tiers"])
    assert tiers["items"]["enum"] == ["capa1", "capa2", "capa3"]
    prompts = _branch(props["custom_prompts"])
    assert (prompts["minItems"], prompts["maxItems"]) == (1, 500)
    assert (prompts["items"]["minLength"], prompts["items"]["maxLength"]) == (1, 1000)
    shares = schema["definitions"]["TierShares"]
    assert shares["additionalProperties"] is False
    assert props["tier_distribution"]["default"] is None
    assert "0.6 / 0.3 / 0.1" in props["tier_distribution"]["description"]
    for tier in ("capa1", "capa2", "capa3"):
        field = shares["properties"][tier]
        assert (field["minimum"], field["maximum"]) == (0, 1) and field["description"]
    # the internal parameters come last and say they are internal
    assert [name for name, _ in sorted(props.items(), key=lambda kv: kv[1]["position"])][
        -3:
    ] == ["seed", "batch_id", "resume_batch_id"]
    assert props["batch_id"]["description"].startswith("Internal, leave empty")
    # issue 15: ids are UUIDs, free text has no control characters, names are bounded
    for name in ("batch_id", "resume_batch_id"):
        assert props[name]["format"] == "uuid" and props[name]["pattern"].startswith("^[0-9a-f]")
    assert prompts["items"]["pattern"] == props["avatar_id"]["pattern"]
    assert props["avatar_id"]["maxLength"] == 100


def test_scheduled_batches_schema() -> None:
    props = _schema(scheduled_batches)["properties"]
    assert props["cadence"]["enum"] == ["daily", "weekly", "monthly"]
    assert (props["num_pieces"]["minimum"], props["num_pieces"]["maximum"]) == (1, 500)
    assert props["hook_mode"]["default"] == "auto"


def test_the_flow_signature_is_the_batch_parameters() -> None:
    """The flow spells its parameters out for Prefect; they are BatchParameters' fields
    (names, order, defaults, descriptions), the one definition the CLI, the fan-out
    and resumes derive from."""
    import inspect

    from studio.request import BatchParameters

    signature = inspect.signature(content_batch.fn)
    fields = BatchParameters.model_fields
    assert list(signature.parameters) == list(fields)
    for name, parameter in signature.parameters.items():
        field = fields[name]
        default = field.get_default() if not field.is_required() else inspect.Parameter.empty
        assert parameter.default == default, name
    props = _schema(content_batch)["properties"]
    for name, field in fields.items():
        assert props[name]["description"] == field.description, name
    scheduled = inspect.signature(scheduled_batches.fn).parameters
    for name in ("tier_distribution", "hook_mode"):
        assert _schema(scheduled_batches)["properties"][name]["description"] == (
            fields[name].description
        )
        assert scheduled[name].annotation == inspect.signature(content_batch.fn).parameters[
            name
        ].annotation
    # the fan-out's size and platform are per due avatar, its profile first (issue 18):
    # their own descriptions, the batch's limits and choices
    fan_out = _schema(scheduled_batches)["properties"]
    assert (fan_out["num_pieces"]["minimum"], fan_out["num_pieces"]["maximum"]) == (1, 500)
    assert "pieces per run" in fan_out["num_pieces"]["description"]
    assert _branch(fan_out["platform"])["enum"] == _branch(props["platform"])["enum"]
    assert "its platforms" in fan_out["platform"]["description"]


def test_python_callers_keep_the_other_tier_forms() -> None:
    from studio.request import TierShares

    spec_form = {"capa1_ratio": 0.5, "capa2_ratio": 0.4, "capa3_ratio": 0.1}
    assert TierShares.model_validate(spec_form) == TierShares(capa1=0.5, capa2=0.4, capa3=0.1)
    assert TierShares.model_validate("0.2,0.3,0.5") == TierShares(capa1=0.2, capa2=0.3, capa3=0.5)


@pytest.fixture(scope="module")
async def deployment_id(prefect_api) -> str:
    deployment = await content_batch.ato_deployment(
        name="schema-check", parameters={"avatar_id": "demo", "num_pieces": 10}
    )
    assert deployment.enforce_parameter_schema  # Prefect 3's default, relied on here
    return str(await deployment.aapply())


BAD = [
    ({"num_pieces": 0}, "num_pieces"),
    ({"num_pieces": 501}, "num_pieces"),
    ({"num_pieces": 2.5}, "num_pieces"),
    ({"platform": "myspace"}, "myspace"),
    ({"hook_mode": "fast"}, "fast"),
    ({"tier_distribution": {"capa1": 1.3, "capa2": 0.0, "capa3": 0.0}}, "1.3"),
    ({"tier_distribution": {"capa1": 0.6, "gold": 0.4}}, "gold"),
    ({"custom_prompts": ["a", "b"], "custom_tiers": ["capa1", "gold"]}, "gold"),
    ({"custom_prompts": ["x" * 1001]}, "long"),
    ({"custom_prompts": []}, "custom_prompts"),
    ({"custom_prompts": ["a\x00b"]}, "nul"),
    ({"batch_id": "../../x"}, "traversal"),
    ({"resume_batch_id": "not-a-uuid"}, "resume"),
    ({"format": "portrait"}, "format-word"),
    ({"format": "9:16 portrait"}, "format-words"),
]


def _create_run(deployment_id: str, parameters: dict[str, Any]) -> httpx.Response:
    url = f"{get_current_settings().api.url}/deployments/{deployment_id}/create_flow_run"
    return httpx.post(url, json={"parameters": parameters}, timeout=30)


@pytest.mark.parametrize("parameters, hint", BAD, ids=[hint for _, hint in BAD])
async def test_bad_parameters_are_refused_when_the_run_is_created(
    deployment_id: str, parameters: dict[str, Any], hint: str
) -> None:
    response = _create_run(deployment_id, {"avatar_id": "demo", **parameters})
    assert response.status_code == 409, response.text
    assert "Validation failed" in response.text or "validation" in response.text.lower()


async def test_good_parameters_create_a_run(deployment_id: str) -> None:
    response = _create_run(
        deployment_id,
        {
            "avatar_id": "demo",
            "num_pieces": 3,
            "platform": "tiktok",
            "tier_distribution": {"capa1": 0.5, "capa2": 0.5, "capa3": 0.0},
            "hook_mode": "message-batches",
        },
    )
    assert response.status_code in (200, 201), response.text  # 200: Prefect's created-at race
    assert response.json()["parameters"]["num_pieces"] == 3
