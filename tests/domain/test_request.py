"""Request validation: every refusal names the field, before anything is spent."""

from __future__ import annotations

import pytest

from studio.request import (
    BatchParameters,
    BatchRequest,
    BatchRequestError,
    TierShares,
    check_name,
    make_request,
    parse_batch_id,
    resolve_request,
    resume_parameters,
    validate_request,
)
from studio.types import AvatarRef


def request(**overrides: object) -> BatchRequest:
    values: dict[str, object] = {"avatar_id": "demo", "num_pieces": 5}
    values.update(overrides)
    return make_request(**values)


def refusal(**overrides: object) -> BatchRequestError:
    """What the request's types and limits, or else validate_request, say about it."""
    with pytest.raises(BatchRequestError) as exc:
        validate_request(request(**overrides))
    return exc.value


def test_default_request_is_valid() -> None:
    validate_request(request(num_pieces=50))


@pytest.mark.parametrize("n", [0, -1, 501, 10_000])
def test_num_pieces_outside_range(n: int) -> None:
    exc = refusal(num_pieces=n)
    assert exc.field == "num_pieces"
    assert "1..500" in str(exc)


@pytest.mark.parametrize("n", [1, 500])
def test_num_pieces_bounds_accepted(n: int) -> None:
    validate_request(request(num_pieces=n))


@pytest.mark.parametrize(
    "ratios",
    [(0.5, 0.3, 0.1), (0.7, 0.3, 0.1), (1.2, -0.1, -0.1), (-0.2, 0.6, 0.6)],
)
def test_bad_tier_ratios(ratios: tuple[float, float, float]) -> None:
    assert refusal(tier_distribution=list(ratios)).field == "tier_distribution"


def test_ratios_within_tolerance_accepted() -> None:
    validate_request(request(tier_distribution=[0.6 + 5e-7, 0.3, 0.1]))


@pytest.mark.parametrize(
    "value, expected",
    [
        ("0.6,0.3,0.1", (0.6, 0.3, 0.1)),
        ([1, 0, 0], (1.0, 0.0, 0.0)),
        ((0.2, 0.2, 0.6), (0.2, 0.2, 0.6)),
        ({"capa1_ratio": 0.5, "capa2_ratio": 0.5, "capa3_ratio": 0}, (0.5, 0.5, 0.0)),
        ({"capa1": 0.2, "capa2": 0.3, "capa3": 0.5}, (0.2, 0.3, 0.5)),
        (TierShares(capa1=0.1, capa2=0.1, capa3=0.8), (0.1, 0.1, 0.8)),
        (None, (0.6, 0.3, 0.1)),
    ],
)
def test_every_tier_form_reads_into_the_one_model(
    value: object, expected: tuple[float, ...]
) -> None:
    # None: the request leaves it to the avatar's profile; one without a tier mix gets
    # the default once the request is resolved
    given = request(tier_distribution=value)
    shares = resolve_request(given, AvatarRef(id="1", name="demo", niche="x")).tier_distribution
    assert (shares.capa1, shares.capa2, shares.capa3) == expected
    assert TierShares.model_validate(value) == shares


@pytest.mark.parametrize(
    "value, hint",
    [("a,b,c", "three numbers"), ("0.5,0.5", "got 2"), ({"capa4": 1.0}, "capa4"),
     ([0.1] * 4, "got 4"), ({"capa1": "x"}, "numbers")],
)
def test_unreadable_tiers_are_refused_naming_the_field(value: object, hint: str) -> None:
    with pytest.raises(BatchRequestError) as exc:
        request(tier_distribution=value)
    assert exc.value.field == "tier_distribution"
    assert hint in exc.value.message


def test_unknown_platform() -> None:
    exc = refusal(platform="myspace")
    assert exc.field == "platform"
    assert "'myspace'" in exc.message and "instagram" in exc.message


def test_unknown_hook_mode() -> None:
    exc = refusal(hook_mode="fast")
    assert exc.field == "hook_mode" and "message-batches" in exc.message


def test_custom_prompts_length_must_match() -> None:
    assert refusal(num_pieces=3, custom_prompts=["a", "b"]).field == "custom_prompts"


def test_custom_tiers_length_must_match() -> None:
    exc = refusal(num_pieces=2, custom_prompts=["a", "b"], custom_tiers=["capa1"])
    assert exc.field == "custom_tiers"


def test_unknown_custom_tier() -> None:
    exc = refusal(num_pieces=2, custom_prompts=["a", "b"], custom_tiers=["capa1", "gold"])
    assert exc.field == "custom_tiers"
    assert "gold" in exc.message


def test_empty_custom_prompt() -> None:
    assert refusal(num_pieces=2, custom_prompts=["a", "  "]).field == "custom_prompts"
    assert refusal(num_pieces=2, custom_prompts=["a", ""]).message == "prompt 2 is empty"


def test_overlong_custom_prompt() -> None:
    """The deployment schema caps a prompt at 1000 characters; `batch run` says the same."""
    exc = refusal(num_pieces=2, custom_prompts=["a", "b" * 1001])
    assert exc.field == "custom_prompts"
    assert "1001 characters" in exc.message


def test_the_request_is_the_flow_parameters_without_the_batch_ids() -> None:
    params = BatchParameters(avatar_id="demo", num_pieces=3, batch_id=None)
    assert list(BatchParameters.model_fields)[-2:] == ["batch_id", "resume_batch_id"]
    assert params.request() == BatchRequest(avatar_id="demo", num_pieces=3)


def test_run_parameters_leave_unset_and_empty_values_to_the_flow() -> None:
    given = BatchRequest(avatar_id="demo", num_pieces=3, tier_distribution="1,0,0", seed=None)
    assert given.run_parameters() == {
        "avatar_id": "demo",
        "num_pieces": 3,
        "tier_distribution": {"capa1": 1.0, "capa2": 0.0, "capa3": 0.0},
    }


def test_a_stored_request_of_the_spec_form_still_resumes() -> None:
    stored = {"avatar_id": "demo", "num_pieces": 2, "hook_mode": "direct",
              "tier_distribution": {"capa1_ratio": 0.5, "capa2_ratio": 0.5, "capa3_ratio": 0.0}}
    assert BatchRequest.model_validate(stored).tier_distribution.capa2 == 0.5
    assert resume_parameters("b", stored) == {
        "avatar_id": "demo", "num_pieces": 2, "resume_batch_id": "b"
    }


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
        request(num_pieces=1, custom_prompts=["a"], custom_tiers=["capa1\n"])
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


def test_a_control_character_where_a_choice_is_expected_is_named_not_echoed() -> None:
    with pytest.raises(BatchRequestError) as exc:
        request(num_pieces=1, custom_prompts=["a"], custom_tiers=["capa1\x00"])
    assert exc.value.message.startswith("tier 1 contains the control character \\x00")
    assert "\x00" not in str(exc.value)
