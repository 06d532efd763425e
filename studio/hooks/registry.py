"""Which hook writer a batch uses."""

from __future__ import annotations

from studio.hooks.template_writer import TemplateHookWriter


def build_hook_writer() -> TemplateHookWriter:
    return TemplateHookWriter()


def hook_writer_status() -> dict[str, object]:
    writer = build_hook_writer()
    return {"writer": writer.name, "stand_in": writer.stand_in}
