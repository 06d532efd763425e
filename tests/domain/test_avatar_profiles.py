"""Avatar profiles (issue 18): each value's check, storage and `to_ref` on SQLite and a
real PostgreSQL, migration 0007 from an existing 0006 database, the piece row's size,
and `avatar import`'s whole-file validation (one bad entry writes nothing).

Real databases, the real migrations; no mocks.
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from studio.avatar_import import import_avatars
from studio.avatar_profiles import (
    DEFAULTS,
    PROFILE_FIELDS,
    check_profile,
    shown_url,
)
from studio.avatars import add_avatar, resolve_avatar, to_ref, update_avatar
from studio.db.engine import get_engine, session_scope
from studio.db.models import Avatar, Batch, ContentPiece
from studio.request import BatchRequestError
from studio.types import AvatarRef, PieceSpec

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "examples" / "avatars.yaml"
LORA = "https://w.example/nova.safetensors"
FULL = {
    "trigger_words": ["ohwx", "nova woman"],
    "lora_strength": 0.8,
    "tier_mix": {"capa1": 0.7, "capa2": 0.2, "capa3": 0.1},
    "platforms": ["instagram", "tiktok"],
    "pieces_per_run": 40,
    "daily_budget_usd": 12.5,
    "workflow": "workflows/portrait-upscale.json",
    "checkpoint": "sdxl/juggernautXL_v9.safetensors",
    "format": "9:16",
}


# --- each field's check -------------------------------------------------------------


@pytest.mark.parametrize(
    "field, given, stored",
    [
        ("trigger_words", "ohwx", ["ohwx"]),
        ("trigger_words", ["ohwx", "nova woman"], ["ohwx", "nova woman"]),
        ("trigger_words", [], []),
        ("lora_strength", "0.75", 0.75),
        ("lora_strength", 0, 0.0),
        ("lora_strength", 2, 2.0),
        ("tier_mix", "0.6,0.3,0.1", {"capa1": 0.6, "capa2": 0.3, "capa3": 0.1}),
        ("tier_mix", "capa1=0.5, capa2=0.5, capa3=0", {"capa1": 0.5, "capa2": 0.5, "capa3": 0}),
        ("tier_mix", [1, 0, 0], {"capa1": 1.0, "capa2": 0.0, "capa3": 0.0}),
        ("tier_mix", {"capa1_ratio": 0.8, "capa2_ratio": 0.2, "capa3_ratio": 0},
         {"capa1": 0.8, "capa2": 0.2, "capa3": 0.0}),
        ("platforms", ["Instagram", "tiktok"], ["instagram", "tiktok"]),
        ("platforms", "twitter", ["twitter"]),
        ("pieces_per_run", "20", 20),
        ("pieces_per_run", 500, 500),
        ("pieces_per_run", 1.0, 1),
        ("daily_budget_usd", "0", 0.0),
        ("daily_budget_usd", 7.5, 7.5),
        ("workflow", "/srv/comfy/flows/nova.json", "/srv/comfy/flows/nova.json"),
        ("checkpoint", "sd_xl_base_1.0.safetensors", "sd_xl_base_1.0.safetensors"),
        ("format", "9 x 16", "9:16"),
        ("format", "4:5", "4:5"),
        ("lora_strength", None, 1.0),  # None: back to the default
        ("tier_mix", None, None),
        ("platforms", None, []),
    ],
)
def test_good_values_are_stored_in_their_normal_form(field, given, stored) -> None:
    assert check_profile({field: given}) == {field: stored}


@pytest.mark.parametrize(
    "field, given, words",
    [
        ("trigger_words", [""], "empty"),
        ("trigger_words", [" ohwx"], "space"),
        ("trigger_words", ["oh\nwx"], "control character"),
        ("trigger_words", ["ohwx", "ohwx"], "twice"),
        ("trigger_words", [f"w{i}" for i in range(11)], "at most 10"),
        ("trigger_words", [3], "not text"),
        ("trigger_words", {"a": 1}, "list"),
        ("lora_strength", "strong", "not a number"),
        ("lora_strength", -0.1, "outside 0..2"),
        ("lora_strength", 2.5, "outside 0..2"),
        ("lora_strength", math.nan, "not a number"),
        ("lora_strength", True, "not a number"),
        ("tier_mix", "0.5,0.3,0.1", "sum to 0.9"),
        ("tier_mix", "0.6,0.4", "three"),
        ("tier_mix", "capa1=0.6,capa2=0.4", "no share for capa3"),
        ("tier_mix", "capa1=0.6,gold=0.4,capa3=0", "unknown tier 'gold'"),
        ("tier_mix", "capa1=x,capa2=0.5,capa3=0.5", "not a number"),
        ("tier_mix", "capa1 0.6,capa2=0.4,capa3=0", "tier=share"),
        ("tier_mix", [1.2, -0.1, -0.1], "capa1"),
        ("tier_mix", 1, "three shares"),
        ("platforms", ["myspace"], "unknown platform 'myspace'"),
        ("platforms", ["tiktok", "TikTok"], "twice"),
        ("pieces_per_run", 0, "outside 1..500"),
        ("pieces_per_run", 501, "outside 1..500"),
        ("pieces_per_run", 2.5, "whole number"),
        ("pieces_per_run", "many", "whole number"),
        ("daily_budget_usd", -1, "negative"),
        ("daily_budget_usd", "inf", "not an amount"),
        ("workflow", "", "path"),
        ("workflow", "a.json\x00", "control character"),
        ("workflow", "x" * 1025, "at most 1024"),
        ("checkpoint", " sd.safetensors", "space"),
        ("checkpoint", 12, "not a file name"),
        ("format", "9:0", "zero side"),
        ("format", "tall", "not an aspect ratio"),
        ("format", "1:9", "too narrow"),
        ("format", 556, "in quotes"),  # YAML's reading of an unquoted 9:16
    ],
)
def test_bad_values_are_refused_naming_the_field(field, given, words) -> None:
    with pytest.raises(BatchRequestError) as refused:
        check_profile({field: given})
    assert refused.value.field == field
    assert words in refused.value.message, refused.value.message
    assert "\n" not in str(refused.value)


def test_a_workflow_found_here_is_checked_when_set(tmp_path) -> None:
    """A UI export or a file that is not JSON is refused when set, naming the fix; a
    shipped workflow's name passes; a path not on this machine is left to the worker's
    check at batch start."""
    ui_export = tmp_path / "ui.json"
    ui_export.write_text(json.dumps({"nodes": [{"id": 1, "type": "KSampler"}], "links": []}))
    not_json = tmp_path / "broken.json"
    not_json.write_text("{nodes")
    for path, words in ((ui_export, "Export (API)"), (not_json, "not JSON")):
        with pytest.raises(BatchRequestError) as refused:
            check_profile({"workflow": str(path)})
        assert refused.value.field == "workflow" and words in refused.value.message
    assert check_profile({"workflow": "sdxl_lora_hires"}) == {"workflow": "sdxl_lora_hires"}
    elsewhere = "/srv/worker-only/flows/nova.json"
    assert check_profile({"workflow": elsewhere}) == {"workflow": elsewhere}


def test_an_unknown_profile_field_is_refused() -> None:
    with pytest.raises(BatchRequestError) as refused:
        check_profile({"lora_weight": 1})
    assert refused.value.field == "lora_weight" and "lora_strength" in refused.value.message


def test_a_signed_lora_link_is_shown_without_its_query() -> None:
    assert shown_url("https://h.example/l.safetensors?X-Amz-Signature=abc") == (
        "https://h.example/l.safetensors?…"
    )
    assert shown_url(LORA) == LORA and shown_url(None) is None


# --- stored on both databases -----------------------------------------------------------


def test_the_whole_profile_is_stored_and_reaches_the_avatar_ref(any_database) -> None:
    with session_scope() as session:
        add_avatar(session, "nova", "fitness", LORA, profile={**FULL, "format": "9 x 16"})
    with session_scope() as session:
        ref = resolve_avatar(session, "nova")
    assert isinstance(ref, AvatarRef)
    assert {field: getattr(ref, field) for field in PROFILE_FIELDS} == FULL
    assert (ref.name, ref.niche, ref.lora_weights_url) == ("nova", "fitness", LORA)


def test_an_avatar_without_a_profile_has_the_defaults(any_database) -> None:
    with session_scope() as session:
        add_avatar(session, "plain", "food", LORA)
    with session_scope() as session:
        ref = resolve_avatar(session, "plain")
    assert {field: getattr(ref, field) for field in PROFILE_FIELDS} == DEFAULTS
    assert ref == AvatarRef(id=ref.id, name="plain", niche="food", lora_weights_url=LORA)


def test_update_sets_and_resets_profile_fields_and_names_what_changed(any_database) -> None:
    with session_scope() as session:
        add_avatar(session, "nova", "fitness", LORA, profile=FULL)
    with session_scope() as session:
        _, changed = update_avatar(
            session, "nova",
            profile={"lora_strength": "1.2", "tier_mix": None, "platforms": ["tiktok"],
                     "format": "9:16"},
        )
    assert changed == ["lora_strength", "tier_mix", "platforms"]  # the format was the same
    with session_scope() as session:
        ref = to_ref(session.scalar(select(Avatar).where(Avatar.name == "nova")))
    assert (ref.lora_strength, ref.tier_mix, ref.platforms) == (1.2, None, ["tiktok"])
    assert ref.trigger_words == FULL["trigger_words"]  # not given: kept


@pytest.mark.parametrize(
    "profile, field", [({"lora_strength": 5}, "lora_strength"), ({"format": "x"}, "format")]
)
def test_a_bad_value_names_the_avatar_and_writes_nothing(any_database, profile, field) -> None:
    with session_scope() as session:
        add_avatar(session, "nova", "fitness", LORA)
    with session_scope() as session, pytest.raises(BatchRequestError) as refused:
        update_avatar(session, "nova", niche="food", profile=profile)
    assert refused.value.field == field
    assert refused.value.message.startswith("avatar 'nova': ")
    with session_scope() as session, pytest.raises(BatchRequestError) as refused:
        add_avatar(session, "vega", "food", LORA, profile=profile)
    assert refused.value.field == field and "avatar 'vega'" in refused.value.message
    with session_scope() as session:
        assert session.scalar(select(Avatar.niche).where(Avatar.name == "nova")) == "fitness"
        assert session.scalar(select(func.count()).select_from(Avatar)) == 1


def test_a_profile_stored_around_the_checks_is_refused_at_resolve(any_database) -> None:
    with session_scope() as session:
        session.add(Avatar(id=str(uuid.uuid4()), name="legacy", niche="food",
                           lora_weights_url=LORA, tier_mix={"capa1": 2}))
    with session_scope() as session, pytest.raises(BatchRequestError) as refused:
        resolve_avatar(session, "legacy")
    assert refused.value.field == "avatar_id"
    assert refused.value.message.startswith("avatar 'legacy': tier_mix: ")


def test_planned_pieces_record_their_width_and_height(any_database) -> None:
    from studio.db.piece_progress import record_plan

    with session_scope() as session:
        avatar = add_avatar(session, "nova", "fitness", LORA)
        avatar_id = avatar.id
        session.add(Batch(id="b1", avatar_id=avatar_id, config={}, requested=2,
                          step_seconds={}, cost_breakdown={}, stand_ins=[]))
    specs = [
        PieceSpec(piece_id="p1", batch_id="b1", index=0, prompt="a", tier="capa1",
                  platform="tiktok", aspect_ratio="9:16", width=768, height=1344),
        PieceSpec(piece_id="p2", batch_id="b1", index=1, prompt="b", tier="capa1"),
    ]
    with session_scope() as session:
        record_plan(session, avatar_id, "b1", specs)
    with session_scope() as session:
        sizes = dict(session.execute(
            select(ContentPiece.id, func.coalesce(ContentPiece.width, 0) * 10000
                   + func.coalesce(ContentPiece.height, 0))
        ).all())
    assert sizes == {"p1": 768 * 10000 + 1344, "p2": 0}  # p2: planned before formats


# --- migration 0007 from an existing 0006 database -------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def blank_database(request, tmp_path, monkeypatch):
    """A database with no schema yet, on SQLite and on a real PostgreSQL."""
    from studio.db.engine import dispose_engines
    from studio.settings import reload_settings

    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / "studio"))
    monkeypatch.setenv("LOG_FILE", str(tmp_path / "studio" / "app.log"))
    if request.param == "postgresql":
        from tests.infra.postgres import create_database

        monkeypatch.setenv("DATABASE_URL", create_database(request.getfixturevalue("postgres_url")))
    else:
        monkeypatch.delenv("DATABASE_URL", raising=False)
    dispose_engines()
    reload_settings()
    yield get_engine()
    dispose_engines()
    reload_settings()


def _migrate(engine, revision: str, down: bool = False) -> None:
    from alembic import command

    from studio.db.migrate import alembic_config

    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)


def test_an_avatar_of_0006_keeps_working_after_0007_and_a_downgrade(blank_database) -> None:
    engine = blank_database
    _migrate(engine, "0006")
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO avatar (id, name, niche, lora_weights_url, active, cadence, created_at)"
            " VALUES ('a-0006', 'old', 'fitness', :url, :yes, 'daily', CURRENT_TIMESTAMP)"
        ), {"url": LORA, "yes": True})
        conn.execute(text(
            "INSERT INTO batch (id, avatar_id, config, status, step_seconds, cost_breakdown,"
            " cost_usd, requested, published, rejected, failed, pending_review, stand_ins,"
            " started_at) VALUES ('b-0006', 'a-0006', '{}', 'completed', '{}', '{}', 0, 1, 1,"
            " 0, 0, 0, '[]', CURRENT_TIMESTAMP)"
        ))
    _migrate(engine, "head")
    with session_scope() as session:
        ref = resolve_avatar(session, "old")
    assert ref.id == "a-0006"
    assert {field: getattr(ref, field) for field in PROFILE_FIELDS} == DEFAULTS
    with session_scope() as session:  # the profile of an old avatar can be set
        update_avatar(session, "old", profile={"trigger_words": ["ohwx"], "format": "4:5"})
    with session_scope() as session:
        assert resolve_avatar(session, "old").trigger_words == ["ohwx"]
    _migrate(engine, "0006", down=True)  # the avatar, its batch and the schema go back
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM avatar")).scalars().all() == ["old"]
        assert conn.execute(text("SELECT count(*) FROM batch")).scalar() == 1
        columns = conn.execute(text("SELECT * FROM avatar")).keys()
        assert "trigger_words" not in columns
    _migrate(engine, "head")
    with session_scope() as session:
        assert resolve_avatar(session, "old").trigger_words == []


# --- avatar import ------------------------------------------------------------------


def _count() -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(Avatar))


def test_the_example_file_imports_three_avatars_each_with_its_own_profile(
    any_database,
) -> None:
    with session_scope() as session:
        plan = import_avatars(session, EXAMPLE)
    assert [change.action for change in plan] == ["create"] * 3
    with session_scope() as session:
        refs = {ref.name: ref for ref in (resolve_avatar(session, a.name)
                                          for a in session.scalars(select(Avatar)))}
    assert {ref.niche for ref in refs.values()} == {"fitness", "food", "travel"}
    triggers = [tuple(ref.trigger_words) for ref in refs.values()]
    assert len(set(triggers)) == 3 and all(triggers)
    assert len({tuple(ref.tier_mix.values()) for ref in refs.values()}) == 3
    for ref in refs.values():
        assert ref.platforms == ["instagram", "tiktok"]
        assert math.isclose(sum(ref.tier_mix.values()), 1.0)
    assert refs["lena-roams"].format == "4:5" and refs["mara-moves"].format is None
    with session_scope() as session:  # again: nothing to change
        again = import_avatars(session, EXAMPLE)
    assert [change.action for change in again] == ["unchanged"] * 3


def test_import_updates_an_existing_avatar_by_name_and_null_resets(
    any_database, tmp_path
) -> None:
    with session_scope() as session:
        add_avatar(session, "nova", "fitness", None, profile=FULL)
    path = tmp_path / "avatars.yaml"
    path.write_text(
        "- name: nova\n  lora_weights_url: https://w.example/new.safetensors\n"
        "  tier_mix: null\n  lora_strength: 0.6\n"
        "- name: vega\n  niche: Food\n  platforms: [tiktok]\n",
        encoding="utf-8",
    )
    with session_scope() as session:
        dry = import_avatars(session, path, dry_run=True)
    assert [c.action for c in dry] == ["update", "create"]
    assert set(dry[0].changes) == {"lora_weights_url", "tier_mix", "lora_strength"}
    assert "update nova: " in dry[0].describe() and "-> None" in dry[0].describe()
    assert _count() == 1  # the dry run wrote nothing
    with session_scope() as session:
        import_avatars(session, path)
    with session_scope() as session:
        nova, vega = resolve_avatar(session, "nova"), session.scalar(
            select(Avatar).where(Avatar.name == "vega"))
        assert nova.tier_mix is None and nova.lora_strength == 0.6
        assert nova.trigger_words == FULL["trigger_words"]  # left out: kept
        assert (vega.niche, vega.platforms, vega.cadence) == ("food", ["tiktok"], "daily")


GOOD = "- name: ok\n  niche: food\n"


@pytest.mark.parametrize(
    "body, field, words",
    [
        (GOOD + "- name: bad\n  niche: food\n  tier_mix: 0.5,0.3,0.1\n", "tier_mix",
         "avatar 'bad' (entry 2): shares sum to 0.9"),
        (GOOD + "- name: bad\n  niche: food\n  lora_weight: 1\n", "lora_weight",
         "avatar 'bad' (entry 2): unknown key 'lora_weight'"),
        (GOOD + "- name: bad\n  niche: food\n  format: 9:16\n", "format", "in quotes"),
        (GOOD + "- name: bad\n  niche: food\n  platforms: [myspace]\n", "platforms",
         "avatar 'bad' (entry 2)"),
        (GOOD + "- name: bad\n  niche: food\n  lora_weights_url: file:///etc/passwd\n",
         "lora_weights_url", "avatar 'bad' (entry 2): file://"),
        (GOOD + "- name: bad\n  niche: food\n  cadence: hourly\n", "cadence",
         "avatar 'bad' (entry 2)"),
        (GOOD + "- name: bad\n  niche: null\n", "niche", "is null"),
        (GOOD + "- name: bad\n", "niche", "avatar 'bad' (entry 2): a new avatar needs a niche"),
        (GOOD + "- niche: food\n", "name", "entry 2: is missing"),
        (GOOD + "- name: 12\n  niche: food\n", "name", "entry 2"),
        (GOOD + "- name: ' bad'\n  niche: food\n", "name", "entry 2"),
        (GOOD + "- name: ok\n  niche: travel\n", "name", "listed twice (entries 1 and 2)"),
        (GOOD + "- just a string\n", "entry", "entry 2"),
        ("avatars: []\n", "file", "no avatars"),
        ("people:\n- name: x\n", "file", "unknown key 'people'"),
        ("name: x\n", "file", "mapping with only `avatars:`"),
        ("- name: [unclosed\n", "file", "not valid YAML at line"),
        ("", "file", "list of avatars"),
    ],
)
def test_one_bad_entry_writes_nothing_and_is_named(any_database, tmp_path, body, field,
                                                   words) -> None:
    path = tmp_path / "avatars.yaml"
    path.write_text(body, encoding="utf-8")
    with session_scope() as session, pytest.raises(BatchRequestError) as refused:
        import_avatars(session, path)
    assert refused.value.field == field, str(refused.value)
    assert words in refused.value.message, refused.value.message
    assert "\n" not in str(refused.value)
    assert _count() == 0


def test_an_unreadable_file_is_refused_naming_it(any_database, tmp_path) -> None:
    with session_scope() as session, pytest.raises(BatchRequestError) as missing:
        import_avatars(session, tmp_path / "nope.yaml")
    assert missing.value.field == "file" and "no such file" in missing.value.message
    (tmp_path / "latin1.yaml").write_bytes(b"- name: caf\xe9\n")
    with session_scope() as session, pytest.raises(BatchRequestError) as undecodable:
        import_avatars(session, tmp_path / "latin1.yaml")
    assert "UTF-8" in undecodable.value.message
    with session_scope() as session, pytest.raises(BatchRequestError) as directory:
        import_avatars(session, tmp_path)
    assert "directory" in directory.value.message
