"""`studio templates import/list` and the stored templates batches read: validated whole
before anything is written (exit 2, the template and field named), stored with their
variables, read back by the process-wide library."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select
from typer.testing import CliRunner

from cli.app import app
from studio.catalog import (
    database_loader,
    import_templates,
    install_bundled_templates,
    reset_template_library,
    row_values,
    stored_templates,
    template_from_row,
    template_library,
)
from studio.db.engine import session_scope
from studio.db.models import Template as TemplateRow
from studio.health import template_check
from studio.templates import (
    TemplateFileError,
    TemplateLibrary,
    bundled_vocabulary,
    load_bundled_templates,
    parse_templates,
    select_templates,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "examples" / "templates.yaml"
runner = CliRunner()
BUNDLED = len(load_bundled_templates())


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def write(tmp_path: Path, data, name="mine.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def stored_ids() -> set[str]:
    with session_scope() as session:
        return set(session.scalars(select(TemplateRow.id)))


def test_the_example_imports_and_a_yoga_batch_stays_in_yoga(studio_env) -> None:
    result = invoke("templates", "import", str(EXAMPLE))
    assert result.exit_code == 0, result.output
    assert "imported 6 templates from templates.yaml: 6 added, 0 updated" in result.output
    assert len(stored_ids()) == BUNDLED + 6
    library = template_library()
    assert len(library.for_niche("yoga")) == 5
    for num_pieces in (50, 100):
        pieces = select_templates(
            library, batch_id="b-yoga", avatar_niche="yoga", num_pieces=num_pieces,
            tier_distribution={"capa1": 0.6, "capa2": 0.3, "capa3": 0.1}, seed=3,
        )
        assert {p.niche for p in pieces} == {"yoga"}
        assert len({p.prompt for p in pieces}) == num_pieces
    # The fitness template took the bundled fitness values for {gym}.
    mine = library.by_id("acme-fitness-001")
    assert mine.variables["gym"] == bundled_vocabulary().niches["fitness"]["gym"]
    assert mine.variables["drill"][0] == "medicine ball slam"


def test_importing_again_changes_nothing_and_an_edit_updates(studio_env, tmp_path) -> None:
    assert invoke("templates", "import", str(EXAMPLE)).exit_code == 0
    again = invoke("templates", "import", str(EXAMPLE))
    assert "0 added, 0 updated, 6 unchanged" in again.output
    data = example()
    data["templates"][0]["description"] = "Edited by the studio."
    data["templates"].append({**data["templates"][1], "id": "acme-yoga-006"})
    result = invoke("templates", "import", str(write(tmp_path, data)))
    assert result.exit_code == 0, result.output
    assert "1 added, 1 updated, 5 unchanged" in result.output
    reset_template_library()
    assert template_library().by_id("acme-yoga-001").description == "Edited by the studio."


def _bad(data: dict, index: int, **changes) -> dict:
    data["templates"][index] = {**data["templates"][index], **changes}
    return data


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda d: _bad(d, 2, colour="blue"),
         "template 'acme-yoga-003', field 'colour': unknown key"),
        (lambda d: _bad(d, 1, tier="gold"), "template 'acme-yoga-002', field 'tier'"),
        (lambda d: _bad(d, 0, platforms=["instagram", "myspace"]),
         "template 'acme-yoga-001', field 'platforms[1]'"),
        (lambda d: _bad(d, 3, prompt="the avatar and {mascot}"),
         "template 'acme-yoga-004', field 'prompt': placeholder {mascot} has no values"),
        (lambda d: _bad(d, 4, id="acme-yoga-001"),
         "template 'acme-yoga-001', field 'id': duplicated"),
        (lambda d: _bad(d, 5, id="fitness-001"),
         "template 'fitness-001', field 'id': is a bundled template's id"),
        (lambda d: _bad(d, 1, variables={"flow": ["a"], "speed": ["slow"]}),
         "template 'acme-yoga-002', field 'variables': 'speed' is not a placeholder"),
        (lambda d: {**d, "templats": []}, "field 'templats': unknown key"),
        (lambda d: {**d, "niche_variables": {"yoga": {"pose": []}}},
         "field 'niche_variables.yoga.pose'"),
    ],
)
def test_one_bad_entry_exits_2_names_it_and_writes_nothing(studio_env, tmp_path, make, needle):
    path = write(tmp_path, make(example()))
    result = runner.invoke(app, ["templates", "import", str(path)])
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert result.output.startswith("error mine.yaml: ")
    assert len(result.output.strip().splitlines()) == 1
    assert len(stored_ids()) == BUNDLED  # not even the good entries


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("templates: [\n", "error mine.yaml: not valid YAML at line 2"),
        ("- just\n- a list\n", "field 'templates': the file must be a mapping"),
        ("", "field 'templates': the file must be a mapping"),
        ("templates: []\n", "field 'templates': give a non-empty list"),
    ],
)
def test_a_malformed_file_exits_2(studio_env, tmp_path, content, needle) -> None:
    result = runner.invoke(app, ["templates", "import", str(write(tmp_path, content))])
    assert result.exit_code == 2 and needle in result.output, result.output
    assert len(stored_ids()) == BUNDLED


def test_a_missing_or_unreadable_file_exits_2(studio_env, tmp_path) -> None:
    result = runner.invoke(app, ["templates", "import", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "nope.yaml: no such file" in result.output
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00templates")
    result = runner.invoke(app, ["templates", "import", str(binary)])
    assert result.exit_code == 2 and "cannot be read as UTF-8" in result.output


def test_without_a_database_a_bad_file_is_still_refused_first(tmp_path, monkeypatch) -> None:
    from studio.db.engine import dispose_engines
    from studio.settings import reload_settings

    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    dispose_engines()
    reload_settings()
    try:
        bad = write(tmp_path, _bad(example(), 0, tier="gold"))
        assert runner.invoke(app, ["templates", "import", str(bad)]).exit_code == 2
        good = runner.invoke(app, ["templates", "import", str(EXAMPLE)])
        assert good.exit_code == 1 and "studio init" in good.output
        assert runner.invoke(app, ["templates", "list"]).exit_code == 1
    finally:
        dispose_engines()
        monkeypatch.undo()
        reload_settings()


def test_list_shows_source_and_prompt_counts_and_filters_by_niche(studio_env) -> None:
    invoke("templates", "import", str(EXAMPLE))
    listing = invoke("templates", "list", "--niche", "Yoga")
    assert listing.exit_code == 0
    assert "acme-yoga-001" in listing.output and "studio" in listing.output
    assert "fitness-001" not in listing.output
    data = json.loads(invoke("templates", "list", "--json").output)
    assert len(data) == BUNDLED + 6
    mine = next(t for t in data if t["id"] == "acme-yoga-001")
    assert mine["bundled"] is False and mine["combinations"] == 7 * 6 * 5 * 5 * 7
    assert mine["variables"]["pose"][0] == "tree pose"
    assert next(t for t in data if t["id"] == "food-001")["bundled"] is True
    empty = invoke("templates", "list", "--niche", "knitting")
    assert "no templates of niche 'knitting'" in empty.output


def test_the_health_check_still_reports_the_cache(studio_env) -> None:
    reset_template_library()
    template_library().for_niche("fitness")
    template_library().for_niche("fitness")
    check = template_check()
    assert check["status"] == "healthy" and check["templates"] == BUNDLED
    assert check["cache_performance"]["cache_hits"] >= 1
    assert set(check["cache_performance"]) == {
        "total_calls", "cache_hits", "cache_misses", "hit_rate_percent",
    }


# -- storage, on SQLite and PostgreSQL ----------------------------------------------------


def test_templates_round_trip_through_the_table(any_database) -> None:
    with session_scope() as session:
        assert stored_templates(session) == sorted(load_bundled_templates(), key=lambda t: t.id)
    assert database_loader()() == sorted(load_bundled_templates(), key=lambda t: t.id)


def test_the_prompt_and_its_variables_have_their_own_columns() -> None:
    plain = parse_templates(
        {"templates": [{**example()["templates"][0], "prompt": "the avatar on a mat",
                        "id": "p-1"}]},
        "x.yaml",
    )[0][0]
    assert row_values(plain)["prompt"] == "the avatar on a mat"
    varied = load_bundled_templates()[0]
    values = row_values(varied)
    assert values["prompt"] == varied.prompt and varied.variables
    assert values["variables"] == {k: list(v) for k, v in varied.variables.items()}
    assert template_from_row(TemplateRow(id=varied.id, **values)) == varied


def test_an_import_is_all_or_none_in_the_database(any_database) -> None:
    templates, _ = parse_templates(example(), "x.yaml", fallback=bundled_vocabulary())
    clash = load_bundled_templates()[0]
    with pytest.raises(TemplateFileError, match="bundled template's id"), session_scope() as s:
        import_templates(s, [*templates, clash], "x.yaml")
    assert len(stored_ids()) == BUNDLED
    with session_scope() as session:
        summary = import_templates(session, templates, "x.yaml")
    assert len(summary.added) == 6
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(TemplateRow)) == BUNDLED + 6
        # `studio init` again leaves the studio's templates alone.
        install_bundled_templates(session)
    assert len(stored_ids()) == BUNDLED + 6


def test_a_worker_library_sees_an_import_from_another_process(studio_env) -> None:
    clock = {"now": 0.0}
    worker = TemplateLibrary(database_loader(), max_age_seconds=60, clock=lambda: clock["now"])
    assert worker.for_niche("yoga") == ()
    templates, _ = parse_templates(example(), "x.yaml", fallback=bundled_vocabulary())
    with session_scope() as session:
        import_templates(session, templates, "x.yaml")
    assert worker.for_niche("yoga") == ()  # within a minute: the cached answer
    clock["now"] = 61
    assert len(worker.for_niche("yoga")) == 5
    assert worker.cache_stats()["total_calls"] == 3


def test_the_example_file_is_safe_for_work() -> None:
    from tests.templates.test_library_data import PREMIUM_WORDS, _denied

    templates, vocabulary = parse_templates(example(), "x.yaml", fallback=bundled_vocabulary())
    for t in templates:
        values = [v for values in t.variables.values() for v in values]
        assert not _denied(" ".join((t.prompt, t.hook_pattern, t.description, *values))), t.id
        if t.tier != "capa1":
            assert any(word in t.description.lower() for word in PREMIUM_WORDS), t.id
    for values in vocabulary.niches["yoga"].values():
        assert not _denied(" ".join(values))
