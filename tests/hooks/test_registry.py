"""The registries pick the real clients when keyed and the stand-ins otherwise."""

from __future__ import annotations

import logging

import pytest

from studio.hooks import registry as hooks_registry
from studio.hooks.anthropic_writer import AnthropicHookWriter
from studio.hooks.settings import HookSettings
from studio.hooks.template_writer import TemplateHookWriter
from studio.moderation import registry as moderation_registry
from studio.moderation.local import LocalModerator
from studio.moderation.openai_moderator import OpenAIModerator
from studio.moderation.settings import ModerationSettings

KEY = "sk-registry-SECRET-777"


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch):
    for name in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    hooks_registry.reset_breakers()
    hooks_registry._ANNOUNCED.clear()
    moderation_registry._ANNOUNCED.clear()


def test_without_keys_the_stand_ins_are_used_and_say_so(caplog):
    caplog.set_level(logging.INFO)
    assert isinstance(hooks_registry.build_hook_writer(), TemplateHookWriter)
    assert isinstance(moderation_registry.build_moderator(), LocalModerator)
    assert "Hook writer | Using: template stand-in (ANTHROPIC_API_KEY not set)" in caplog.text
    assert "Moderator | Using: local stand-in" in caplog.text
    assert hooks_registry.hook_writer_status()["stand_in"] is True
    assert moderation_registry.moderator_status()["stand_in"] is True


def test_with_keys_the_real_clients_are_used_without_leaking_the_key(
    monkeypatch: pytest.MonkeyPatch, caplog
):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    writer = hooks_registry.build_hook_writer()
    again = hooks_registry.build_hook_writer()
    assert isinstance(writer, AnthropicHookWriter)
    assert writer.breaker is again.breaker  # one breaker across the batch's groups
    assert isinstance(moderation_registry.build_moderator(), OpenAIModerator)
    statuses = repr(hooks_registry.hook_writer_status()) + repr(
        moderation_registry.moderator_status()
    )
    assert KEY not in statuses and KEY not in caplog.text
    assert KEY not in repr(HookSettings()) and KEY not in repr(ModerationSettings())
    assert caplog.text.count("Hook writer | Using: anthropic") == 1


def test_sexual_minors_stays_blocked_whatever_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HARD_BLOCKED_CATEGORIES", "violence")
    assert ModerationSettings().hard_blocked_categories == ["sexual/minors", "violence"]
