"""Where a stand-in may be published and where it must be held (issue 16).

WHY: the embedded stand-ins (the offline preview renderer, template hooks, local
moderation) let a fresh clone run a whole batch with no keys, and there they are
published and marked. In production they must never pass for content: a resumed batch
on a worker without the provider settings once published 78 "PREVIEW" images.

The rule, in one place:

- **Real content is expected** on a run started from a deployment (a worker, `serve`,
  a schedule, the UI or API, `studio batch submit`, crash recovery: the run has a
  deployment id) and on any run that reports to a Prefect API on another host
  (`PREFECT_API_URL` not loopback). `studio batch run` / `make demo` on the local API
  expect none: the demo keeps publishing its marked stand-ins.
- Where real content is expected, a preview image is never published: with no image
  provider configured the batch is refused at validation; a preview that appears anyway
  is held `pending_review` with reason `stand-in: ...`.
- Everywhere, a template hook standing in for a configured Anthropic (Claude failed or
  its budget refused the call) and a local verdict standing in for a configured OpenAI
  moderation are held the same way: the operator asked for the real thing.
- `ALLOW_STAND_INS=true` turns all of this off (publish stand-ins anyway, marked).

Free of Prefect but for reading the run context, which callers pass in.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from urllib.parse import urlparse

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from studio.types import GeneratedImage, Hook, SafetyVerdict

log = logging.getLogger("studio.batch")

ALLOW_ENV = "ALLOW_STAND_INS"
#: the reason of a piece held because a stand-in made part of it (`stand-in: <marks>`)
STAND_IN_REASON = "stand-in"
#: verdicts whose pieces would be published (studio/outcomes.py PUBLISHABLE)
_PUBLISHABLE = {"passed", "retiered", "skipped"}
_IMAGE_VARIABLES = "COMFYUI_ENABLED+COMFYUI_ENDPOINT, MODAL_SDXL_ENDPOINT or REPLICATE_API_TOKEN"


class StandInSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    allow_stand_ins: bool = Field(False, validation_alias=ALLOW_ENV)


def is_remote_api(api_url: str | None) -> bool:
    """True for a Prefect API on another host (not loopback, not `localhost`)."""
    if not api_url:
        return False
    host = (urlparse(api_url).hostname or "").lower()
    if not host or host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: another machine
        return True


@dataclass(frozen=True)
class StandInPolicy:
    """What may be published on this run; built by `current()` from the run and settings."""

    #: ALLOW_STAND_INS=true: publish stand-ins anyway (marked, as the demo does)
    allowed: bool
    #: a deployment run or a remote API: real images are expected
    production: bool
    #: why `production` (for the refusal's message), e.g. "a deployment run"
    where: str
    image_configured: bool
    hooks_configured: bool
    moderation_configured: bool

    @classmethod
    def current(cls, *, deployment_id: str | None, api_url: str | None) -> StandInPolicy:
        from studio.hooks.settings import HookSettings
        from studio.moderation.settings import ModerationSettings
        from studio.providers.build import provider_order
        from studio.providers.settings import ProviderSettings

        where = ""
        if deployment_id:
            where = f"a run of deployment {deployment_id}"
        elif is_remote_api(api_url):
            where = f"a run on the Prefect API at {urlparse(api_url or '').hostname}"
        return cls(
            allowed=StandInSettings().allow_stand_ins,
            production=bool(where),
            where=where,
            image_configured=bool(provider_order(ProviderSettings())),
            hooks_configured=HookSettings().configured,
            moderation_configured=ModerationSettings().configured,
        )

    def refusal(self) -> str | None:
        """Why a batch may not start here (every image would be a preview), or None."""
        if self.allowed or not self.production or self.image_configured:
            return None
        return (
            f"no image provider is configured for {self.where}, where real content is "
            f"expected: set {_IMAGE_VARIABLES} in the worker's environment or the "
            f"deployment's job variables, or {ALLOW_ENV}=true to publish previews"
        )

    def resuming(self, images: Iterable[GeneratedImage]) -> StandInPolicy:
        """The policy of a resume: a batch that already holds real images expects real
        ones for the rest too (a local `studio batch resume` of a worker's batch must not
        finish it with previews)."""
        if self.production or not any(not i.stand_in and not i.degraded for i in images):
            return self
        return replace(self, production=True, where="a resume of a batch with real images")

    def unpublishable(self, marks: Iterable[str]) -> list[str]:
        """The stand-in marks (`image:preview`, `hooks:template`, ...) that hold a piece."""
        if self.allowed:
            return []
        held = []
        for mark in marks:
            kind = mark.partition(":")[0]
            if (
                (kind == "image" and (self.production or self.image_configured))
                or (kind == "hooks" and self.hooks_configured)
                or (kind == "moderation" and self.moderation_configured)
            ):
                held.append(mark)
        return held


def piece_marks(
    image: GeneratedImage | None, hook: Hook | None, verdict: SafetyVerdict | None
) -> list[str]:
    """A piece's stand-in marks before storage, named as in `content_piece.stand_ins`."""
    marks = []
    if image is not None and image.stand_in:
        marks.append(f"image:{image.provider}")
    if hook is not None and hook.stand_in:
        marks.append(f"hooks:{hook.source}")
    if verdict is not None and verdict.checked_by == "local":
        marks.append("moderation:local")
    return marks


def hold_stand_ins(
    policy: StandInPolicy,
    images: Mapping[str, GeneratedImage],
    hooks: Mapping[str, Hook],
    verdicts: Mapping[str, SafetyVerdict],
) -> dict[str, SafetyVerdict]:
    """The verdicts that hold, as `pending_review` with reason `stand-in: ...`, every
    publishable piece a stand-in made where real content is expected."""
    held: dict[str, SafetyVerdict] = {}
    for piece_id, verdict in verdicts.items():
        if verdict.status not in _PUBLISHABLE:
            continue
        marks = policy.unpublishable(
            piece_marks(images.get(piece_id), hooks.get(piece_id), verdict)
        )
        if marks:
            held[piece_id] = verdict.model_copy(
                update={
                    "status": "pending_review",
                    "reason": f"{STAND_IN_REASON}: {', '.join(marks)} (real content expected;"
                    f" {ALLOW_ENV}=true publishes stand-ins)",
                }
            )
    if held:
        log.warning(
            "Stand-ins held for review | Count: %d | %s=false", len(held), ALLOW_ENV
        )
    return held
