"""Request validation: every refusal names the field, before anything is spent."""

from __future__ import annotations

import pytest

from studio.request import (
    BatchRequest,
    BatchRequestError,
    TierDistribution,
    parse_tier_distribution,
    validate_request,
)


def request(**overrides: object) -> BatchRequest:
    values: dict[str, object] = {"avatar_id": "demo", "num_pieces": 5}
    values.update(overrides)
    return BatchRequest(**values)  # type: ignore[arg-type]


def test_default_request_is_valid() -> None:
    validate_request(request(num_pieces=50))


@pytest.mark.parametrize("n", [0, -1, 501, 10_000])
def test_num_pieces_outside_range(n: int) -> None:
    with pytest.raises(BatchRequestError) as exc:
        validate_request(request(num_pieces=n))
    assert exc.value.field == "num_pieces"
    assert "1..500" in str(exc.value)


@pytest.mark.parametrize("n", [1, 500])
def test_num_pieces_bounds_accepted(n: int) -> None:
    validate_request(request(num_pieces=n))


@pytest.mark.parametrize(
    "ratios",
    [(0.5, 0.3, 0.1), (0.7, 0.3, 0.1), (1.2, -0.1, -0.1), (-0.2, 0.6, 0.6)],
)
def test_bad_tier_ratios(ratios: tuple[float, float, float]) -> None:
    dist = TierDistribution(capa1_ratio=ratios[0], capa2_ratio=ratios[1], capa3_ratio=ratios[2])
    with pytest.raises(BatchRequestError) as exc:
        validate_request(request(tier_distribution=dist))
    assert exc.value.field == "tier_distribution"


def test_ratios_within_tolerance_accepted() -> None:
    dist = TierDistribution(capa1_ratio=0.6 + 5e-7, capa2_ratio=0.3, capa3_ratio=0.1)
    validate_request(request(tier_distribution=dist))


@pytest.mark.parametrize(
    "value, expected",
    [
        ("0.6,0.3,0.1", (0.6, 0.3, 0.1)),
        ([1, 0, 0], (1.0, 0.0, 0.0)),
        ({"capa1_ratio": 0.5, "capa2_ratio": 0.5, "capa3_ratio": 0}, (0.5, 0.5, 0.0)),
        ({"capa1": 0.2, "capa2": 0.3, "capa3": 0.5}, (0.2, 0.3, 0.5)),
        (None, (0.6, 0.3, 0.1)),
    ],
)
def test_parse_tier_distribution_forms(value: object, expected: tuple[float, ...]) -> None:
    dist = parse_tier_distribution(value)
    assert (dist.capa1_ratio, dist.capa2_ratio, dist.capa3_ratio) == expected


@pytest.mark.parametrize("value", ["a,b,c", "0.5,0.5", {"capa4": 1.0}, [0.1] * 4])
def test_parse_tier_distribution_refuses(value: object) -> None:
    with pytest.raises(BatchRequestError) as exc:
        parse_tier_distribution(value)
    assert exc.value.field == "tier_distribution"


def test_unknown_platform() -> None:
    with pytest.raises(BatchRequestError) as exc:
        validate_request(request(platform="myspace"))
    assert exc.value.field == "platform"
    assert "instagram" in exc.value.message


def test_custom_prompts_length_must_match() -> None:
    with pytest.raises(BatchRequestError) as exc:
        validate_request(request(num_pieces=3, custom_prompts=["a", "b"]))
    assert exc.value.field == "custom_prompts"


def test_custom_tiers_length_must_match() -> None:
    with pytest.raises(BatchRequestError) as exc:
        validate_request(request(num_pieces=2, custom_prompts=["a", "b"], custom_tiers=["capa1"]))
    assert exc.value.field == "custom_tiers"


def test_unknown_custom_tier() -> None:
    with pytest.raises(BatchRequestError) as exc:
        validate_request(
            request(num_pieces=2, custom_prompts=["a", "b"], custom_tiers=["capa1", "gold"])
        )
    assert exc.value.field == "custom_tiers"
    assert "gold" in exc.value.message


def test_empty_custom_prompt() -> None:
    with pytest.raises(BatchRequestError) as exc:
        validate_request(request(num_pieces=2, custom_prompts=["a", "  "]))
    assert exc.value.field == "custom_prompts"


def test_overlong_custom_prompt() -> None:
    """The deployment schema caps a prompt at 1000 characters; `batch run` says the same."""
    with pytest.raises(BatchRequestError) as exc:
        validate_request(request(num_pieces=2, custom_prompts=["a", "b" * 1001]))
    assert exc.value.field == "custom_prompts"
    assert "1001 characters" in exc.value.message
