"""Formats per platform: studio/formats.py, and what Modal and Replicate are sent for them.

The provider tests run the real clients against the emulators, which record what each
job asked for (`jobs`) and refuse what the real schemas refuse (422), so "every image
has its platform's size at every provider" is asserted at the provider's side.
"""

from __future__ import annotations

import dataclasses
import io

import httpx
import pytest
from PIL import Image

from studio.formats import (
    PLATFORM_ASPECT,
    REPLICATE_ASPECT_RATIOS,
    SDXL_BUCKETS,
    FormatError,
    ImageFormat,
    format_refusal,
    image_format,
    parse_aspect_ratio,
    replicate_aspect_ratio,
    sdxl_size,
)
from studio.providers.base import ProviderError
from studio.providers.modal_endpoint import ModalSDXLProvider
from studio.providers.replicate_flux import ReplicateFluxProvider
from studio.types import AvatarRef, PieceSpec, Platform
from tests.emulators.modal_endpoint import ModalEndpointEmulator
from tests.emulators.replicate_api import ReplicateEmulator
from tests.providers.conftest import MODAL_KEY, MODAL_SECRET, REPLICATE_TOKEN, make_spec

PROVIDERS = ("comfyui", "modal", "replicate")


def formatted(spec: PieceSpec, fmt: ImageFormat, platform: str | None = None) -> PieceSpec:
    return spec.model_copy(update={
        "platform": platform, "aspect_ratio": fmt.aspect_ratio,
        "width": fmt.width, "height": fmt.height,
    })


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def modal_provider(emulator: ModalEndpointEmulator) -> ModalSDXLProvider:
    return ModalSDXLProvider(emulator.url, token_id=MODAL_KEY, token_secret=MODAL_SECRET)


def replicate_provider(emulator: ReplicateEmulator) -> ReplicateFluxProvider:
    return ReplicateFluxProvider(REPLICATE_TOKEN, base_url=emulator.url, poll_interval=0.02)


# --- the platform table ---------------------------------------------------------------


def test_every_platform_has_a_format():
    assert set(PLATFORM_ASPECT) == {platform.value for platform in Platform}
    assert PLATFORM_ASPECT["tiktok"] == "9:16"
    assert PLATFORM_ASPECT["instagram"] == "4:5"


@pytest.mark.parametrize("platform", sorted(PLATFORM_ASPECT))
def test_every_platform_default_is_served_by_every_provider(platform):
    aspect = PLATFORM_ASPECT[platform]
    assert parse_aspect_ratio(aspect) == aspect
    assert format_refusal(aspect, PROVIDERS) is None


def test_sdxl_buckets_are_native_sizes():
    for width, height in SDXL_BUCKETS:
        assert width % 64 == 0 and height % 64 == 0
        assert 0.85 <= width * height / 1024**2 <= 1.0  # ~1 megapixel
        assert sdxl_size(f"{width}:{height}") == (width, height)


@pytest.mark.parametrize(
    ("aspect", "size"),
    [
        ("1:1", (1024, 1024)),
        ("4:5", (896, 1152)),
        ("3:4", (896, 1152)),
        ("5:4", (1152, 896)),
        ("4:3", (1152, 896)),
        ("2:3", (832, 1216)),
        ("3:2", (1216, 832)),
        ("9:16", (768, 1344)),
        ("16:9", (1344, 768)),
        ("9:21", (640, 1536)),
        ("21:9", (1536, 640)),
    ],
)
def test_nearest_sdxl_bucket(aspect, size):
    assert sdxl_size(aspect) == size


# --- parse_aspect_ratio ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("9:16", "9:16"),
        (" 9 : 16 ", "9:16"),
        ("9x16", "9:16"),
        ("9X16", "9:16"),
        ("9/16", "9:16"),
        ("09:016", "9:16"),
        ("18:32", "18:32"),  # not reduced: compared by value where it matters
        ("1.91:1", "1.91:1"),
        ("1.910:1.0", "1.91:1"),
        ("4:1", "4:1"),
        ("1:4", "1:4"),
    ],
)
def test_parse_aspect_ratio_normalises(text, expected):
    assert parse_aspect_ratio(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "   ", "abc", "9", "9:", ":16", "9:16:1", "9-16", "-9:16", "9:-16", "0:16", "9:0",
     "0:0", "5:1", "1:5", "99999:1", "nine:sixteen", "9 16", "1e3:1", "\u0669:\u0661\u0666"],
)
def test_parse_aspect_ratio_refuses_junk(text):
    with pytest.raises(FormatError) as caught:
        parse_aspect_ratio(text)
    message = str(caught.value)
    assert "\n" not in message
    assert repr(text) in message  # names the bad value
    assert "W:H" in message and "9:16" in message  # and what is accepted


def test_parse_aspect_ratio_refuses_a_non_string():
    with pytest.raises(FormatError, match="None"):
        parse_aspect_ratio(None)  # type: ignore[arg-type]


def test_format_error_is_a_value_error():
    assert issubclass(FormatError, ValueError)


# --- image_format ------------------------------------------------------------------------


def test_image_format_of_each_platform():
    assert image_format("tiktok") == ImageFormat("9:16", 768, 1344)
    assert image_format("instagram") == ImageFormat("4:5", 896, 1152)
    assert image_format("twitter") == ImageFormat("16:9", 1344, 768)
    assert image_format(Platform.PATREON) == ImageFormat("4:5", 896, 1152)
    assert image_format(" TikTok ") == ImageFormat("9:16", 768, 1344)


def test_image_format_without_platform_is_square():
    assert image_format(None) == ImageFormat("1:1", 1024, 1024)
    assert image_format("") == ImageFormat("1:1", 1024, 1024)


def test_override_wins_over_the_platform():
    assert image_format("tiktok", "16:9") == ImageFormat("16:9", 1344, 768)
    assert image_format(None, "9x16") == ImageFormat("9:16", 768, 1344)
    assert image_format("instagram", "  ") == ImageFormat("4:5", 896, 1152)  # blank: none
    assert image_format("instagram", None) == ImageFormat("4:5", 896, 1152)


def test_bad_override_is_refused_even_with_a_platform():
    with pytest.raises(FormatError, match="'0:16'"):
        image_format("tiktok", "0:16")


def test_unknown_platform_is_refused_naming_it_and_the_known_ones():
    with pytest.raises(FormatError) as caught:
        image_format("myspace")
    message = str(caught.value)
    assert "'myspace'" in message
    for platform in PLATFORM_ASPECT:
        assert platform in message


def test_image_format_is_frozen():
    fmt = image_format("tiktok")
    with pytest.raises(dataclasses.FrozenInstanceError):
        fmt.width = 1024  # type: ignore[misc]


# --- format_refusal / replicate_aspect_ratio ---------------------------------------------


def test_a_ratio_every_provider_serves_is_not_refused():
    assert format_refusal("9:16", PROVIDERS) is None
    assert format_refusal("18:32", PROVIDERS) is None  # the same ratio, spelled otherwise
    assert format_refusal("7:3", ["replicate"]) is None  # FLUX spells it 21:9
    assert format_refusal("9:16", []) is None


def test_a_ratio_outside_flux_enum_is_refused_naming_replicate_only():
    message = format_refusal("1.91:1", PROVIDERS)
    assert message is not None and "\n" not in message
    assert message.startswith("format 1.91:1 cannot be served by replicate")
    assert "4:5" in message and "9:16" in message  # says what it accepts
    assert "comfyui" not in message and "modal" not in message
    assert format_refusal("1.91:1", ["comfyui", "modal"]) is None  # 1344x768 is 8% off


def test_a_ratio_far_from_every_sdxl_bucket_is_refused_naming_each_provider():
    message = format_refusal("4:1", ["modal", "comfyui", "replicate", "modal"])
    assert message is not None
    assert "modal (nearest SDXL size 1536x640" in message
    assert "comfyui (nearest SDXL size 1536x640" in message
    assert "replicate (FLUX aspect_ratio accepts only" in message
    assert message.count("modal (") == 1  # each provider named once


def test_format_refusal_refuses_junk_with_format_error():
    with pytest.raises(FormatError):
        format_refusal("tall", PROVIDERS)


def test_replicate_aspect_ratio_maps_by_value():
    assert replicate_aspect_ratio(None) == "1:1"
    assert replicate_aspect_ratio("9:16") == "9:16"
    assert replicate_aspect_ratio("18:32") == "9:16"
    assert replicate_aspect_ratio("7:3") == "21:9"
    assert replicate_aspect_ratio("1.91:1") is None
    assert set(REPLICATE_ASPECT_RATIOS) >= set(PLATFORM_ASPECT.values())


# --- Modal: width/height and lora_strength ----------------------------------------------


async def test_modal_gets_the_sdxl_size_of_a_tiktok_piece_and_the_lora_strength(
    modal: ModalEndpointEmulator, spec, avatar
):
    avatar = avatar.model_copy(update={"lora_strength": 0.65})
    provider = modal_provider(modal)
    image = await provider.generate(formatted(spec, image_format("tiktok"), "tiktok"), avatar)
    assert modal.jobs[0]["width"] == 768 and modal.jobs[0]["height"] == 1344
    assert modal.jobs[0]["lora_strength"] == 0.65
    assert modal.bodies[0]["lora_strength"] == 0.65
    assert png_size(image.data) == (48, 84)  # the emulator's image has the asked-for shape
    await provider.aclose()


async def test_modal_piece_planned_without_a_format_stays_square(
    modal: ModalEndpointEmulator, spec, avatar
):
    provider = modal_provider(modal)
    image = await provider.generate(spec, avatar)
    assert (modal.jobs[0]["width"], modal.jobs[0]["height"]) == (1024, 1024)
    assert modal.jobs[0]["lora_strength"] == 1.0  # AvatarRef's default
    assert png_size(image.data) == (64, 64)
    await provider.aclose()


async def test_modal_piece_with_only_an_aspect_ratio_gets_its_sdxl_size(
    modal: ModalEndpointEmulator, spec, avatar
):
    provider = modal_provider(modal)
    await provider.generate(spec.model_copy(update={"aspect_ratio": "3:2"}), avatar)
    assert (modal.jobs[0]["width"], modal.jobs[0]["height"]) == (1216, 832)
    await provider.aclose()


async def test_modal_piece_with_a_junk_aspect_ratio_fails_before_any_call(
    modal: ModalEndpointEmulator, spec, avatar
):
    provider = modal_provider(modal)
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec.model_copy(update={"aspect_ratio": "tall"}), avatar)
    assert not caught.value.retryable
    assert "'tall'" in str(caught.value)
    assert modal.counters.requests("post") == 0 and modal.billed_jobs == 0
    await provider.aclose()


@pytest.mark.parametrize(
    ("update", "named"),
    [
        ({"width": 1000, "height": 1000}, "width: Input should be a multiple of 64"),
        ({"width": 4096, "height": 1024}, "width: Input should be less than or equal to 2048"),
        ({"width": 1024, "height": 256}, "height: Input should be greater than or equal to 512"),
    ],
)
async def test_modal_endpoint_refuses_a_size_off_its_contract_naming_the_field(
    modal: ModalEndpointEmulator, spec, avatar, update, named
):
    provider = modal_provider(modal)
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec.model_copy(update=update), avatar)
    assert not caught.value.retryable
    assert "HTTP 422" in str(caught.value) and named in str(caught.value)
    assert modal.billed_jobs == 0 and modal.jobs == []
    await provider.aclose()


async def test_modal_endpoint_refuses_a_lora_strength_off_its_contract(
    modal: ModalEndpointEmulator, spec, avatar
):
    provider = modal_provider(modal)
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar.model_copy(update={"lora_strength": 3.5}))
    assert "lora_strength: Input should be less than or equal to 3" in str(caught.value)
    assert not caught.value.retryable and modal.billed_jobs == 0
    await provider.aclose()


async def test_modal_emulator_422_lists_every_bad_field(modal: ModalEndpointEmulator):
    async with httpx.AsyncClient() as client:
        response = await client.post(
            modal.url,
            headers={"Modal-Key": MODAL_KEY, "Modal-Secret": MODAL_SECRET},
            json={"prompt": "p", "lora_url": "u", "width": "wide", "height": 1000,
                  "lora_strength": -2},
        )
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert [(e["type"], e["loc"]) for e in detail] == [
        ("int_type", ["body", "width"]),
        ("multiple_of", ["body", "height"]),
        ("greater_than_equal", ["body", "lora_strength"]),
    ]
    assert detail[1]["ctx"] == {"multiple_of": 64}
    assert modal.billed_jobs == 0


# --- Replicate: aspect_ratio and lora_scale ---------------------------------------------


async def test_replicate_gets_the_aspect_ratio_of_a_tiktok_piece_and_the_lora_scale(
    replicate_api: ReplicateEmulator, spec, avatar
):
    avatar = avatar.model_copy(update={"lora_strength": 0.65})
    provider = replicate_provider(replicate_api)
    image = await provider.generate(formatted(spec, image_format("tiktok"), "tiktok"), avatar)
    job = replicate_api.jobs[0]
    assert job["aspect_ratio"] == "9:16"
    assert job["lora_scale"] == 0.65
    width, height = png_size(image.data)
    assert width < height  # the emulator's image is portrait
    await provider.aclose()


async def test_replicate_piece_planned_without_a_format_is_1_1(
    replicate_api: ReplicateEmulator, spec, avatar
):
    provider = replicate_provider(replicate_api)
    await provider.generate(spec, avatar)
    assert replicate_api.jobs[0]["aspect_ratio"] == "1:1"
    assert replicate_api.jobs[0]["lora_scale"] == 1.0
    await provider.aclose()


async def test_replicate_gets_the_enum_spelling_of_the_same_ratio(
    replicate_api: ReplicateEmulator, spec, avatar
):
    provider = replicate_provider(replicate_api)
    await provider.generate(spec.model_copy(update={"aspect_ratio": "18:32"}), avatar)
    await provider.generate(make_spec(1).model_copy(update={"aspect_ratio": "7:3"}), avatar)
    assert [job["aspect_ratio"] for job in replicate_api.jobs] == ["9:16", "21:9"]
    await provider.aclose()


@pytest.mark.parametrize("aspect", ["1.91:1", "tall"])
async def test_replicate_answers_422_for_an_aspect_ratio_outside_the_enum(
    replicate_api: ReplicateEmulator, spec, avatar, aspect
):
    provider = replicate_provider(replicate_api)
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec.model_copy(update={"aspect_ratio": aspect}), avatar)
    message = str(caught.value)
    assert not caught.value.retryable
    assert "HTTP 422" in message and "Input validation failed" in message
    assert "input.aspect_ratio must be one of the following" in message
    assert replicate_api.billed_jobs == 0 and replicate_api.jobs == []
    await provider.aclose()


async def test_replicate_answers_422_for_a_lora_scale_out_of_range(
    replicate_api: ReplicateEmulator, spec, avatar
):
    provider = replicate_provider(replicate_api)
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar.model_copy(update={"lora_strength": 3.5}))
    assert "input.lora_scale: Must be less than or equal to 3" in str(caught.value)
    assert not caught.value.retryable and replicate_api.billed_jobs == 0
    await provider.aclose()


async def test_replicate_emulator_422_has_replicates_validation_shape(
    replicate_api: ReplicateEmulator,
):
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{replicate_api.url}/v1/models/black-forest-labs/flux-dev-lora/predictions",
            headers={"Authorization": f"Bearer {REPLICATE_TOKEN}"},
            json={"input": {"prompt": "p", "aspect_ratio": "7:5", "lora_scale": "strong"}},
        )
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["title"] == "Input validation failed" and body["status"] == 422
    assert body["detail"].splitlines() == [
        '- input.aspect_ratio: input.aspect_ratio must be one of the following: "1:1", '
        '"16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21"',
        "- input.lora_scale: Invalid type. Expected: number, given: string",
    ]
    assert [(f["type"], f["field"]) for f in body["invalid_fields"]] == [
        ("enum", "input.aspect_ratio"), ("invalid_type", "input.lora_scale"),
    ]
    assert replicate_api.billed_jobs == 0 and replicate_api.predictions == {}


# --- every platform's size at every provider --------------------------------------------


async def test_every_image_has_its_platforms_size_at_every_provider(
    modal: ModalEndpointEmulator, replicate_api: ReplicateEmulator, avatar: AvatarRef
):
    modal_client, replicate_client = modal_provider(modal), replicate_provider(replicate_api)
    platforms = sorted(PLATFORM_ASPECT)
    for index, platform in enumerate(platforms):
        spec = formatted(make_spec(index), image_format(platform), platform)
        await modal_client.generate(spec, avatar)
        await replicate_client.generate(spec, avatar)
    assert [(job["width"], job["height"]) for job in modal.jobs] == [
        sdxl_size(PLATFORM_ASPECT[platform]) for platform in platforms
    ]
    assert [job["aspect_ratio"] for job in replicate_api.jobs] == [
        PLATFORM_ASPECT[platform] for platform in platforms
    ]
    await modal_client.aclose()
    await replicate_client.aclose()
