"""Request validation: every refusal names the field, before anything is spent."""

from __future__ import annotations

import pytest

from studio.request import (
    BatchRequest,
    BatchRequestError,
    TierDistribution,
    check_name,
    parse_batch_id,
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


@pytest.mark.parametrize("char", ["\x00", "\n", "\r", "\x1b", "\x7f", "\x85", "\u2028"])
def test_control_characters_in_prompts_are_refused_naming_the_field(char: str) -> None:
    with pytest.raises(BatchRequestError) as exc:
        validate_request(request(num_pieces=2, custom_prompts=["fine", f"a{char}b"]))
    assert exc.value.field == "custom_prompts"
    assert "prompt 2 contains the control character" in exc.value.message
    assert char not in str(exc.value)  # the message itself is one printable line


def test_control_characters_in_the_avatar_and_tiers_are_refused() -> None:
    with pytest.raises(BatchRequestError) as exc:
        validate_request(request(avatar_id="demo\x00"))
    assert exc.value.field == "avatar_id"
    with pytest.raises(BatchRequestError) as exc:
        validate_request(request(num_pieces=1, custom_prompts=["a"], custom_tiers=["capa1\n"]))
    assert exc.value.field == "custom_tiers"


def test_unicode_prompts_stay_accepted() -> None:
    validate_request(request(num_pieces=1, custom_prompts=["café au lait 🌊, «soft» light"]))


@pytest.mark.parametrize(
    "value", ["../../tmp/x", "nightly", "", "urn:uuid:0b9e6f1e-5d0c-4c53-9a55-2f1d3c1e7a42",
              "{0b9e6f1e-5d0c-4c53-9a55-2f1d3c1e7a42}", "0b9e6f1e5d0c-4c53-9a55-2f1d3c1e7a42",
              "0b9e6f1e-5d0c-4c53-9a55-2f1d3c1e7a42\x00"]
)
def test_batch_ids_must_be_uuids(value: str) -> None:
    if value == "":
        assert parse_batch_id("batch_id", value) is None
        return
    with pytest.raises(BatchRequestError) as exc:
        parse_batch_id("batch_id", value)
    assert exc.value.field == "batch_id"
    assert "\x00" not in str(exc.value).replace("\\x00", "")


def test_batch_ids_are_normalised_to_the_canonical_form() -> None:
    canonical = "0b9e6f1e-5d0c-4c53-9a55-2f1d3c1e7a42"
    assert parse_batch_id("batch_id", canonical.upper()) == canonical
    assert parse_batch_id("batch_id", canonical.replace("-", "")) == canonical
    assert parse_batch_id("batch_id", None) is None


@pytest.mark.parametrize("name", ["a\tb", "a\u200bb", "a\u202eb", " a", "a ", "", "x" * 101])
def test_names_are_printable_trimmed_and_bounded(name: str) -> None:
    with pytest.raises(BatchRequestError) as exc:
        check_name("name", name, 100)
    assert exc.value.field == "name"
