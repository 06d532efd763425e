"""TemplateLibrary: cached lookups, the spec's statistics, clear_cache and loader errors."""

import gc
import threading
import weakref

import pytest
from pydantic import ValidationError

from studio.templates import CACHE_SIZES, Template, TemplateLibrary, load_bundled_templates


def row(template_id="fitness-001", **overrides):
    data = {
        "id": template_id,
        "niche": "fitness",
        "category": "workout",
        "tier": "capa1",
        "platforms": ["instagram"],
        "prompt": "the avatar in a gym",
        "hook_pattern": "Hi from {avatar_name} {platform_tag}",
        "description": "a gym photo",
    }
    return data | overrides


class CountingLoader:
    """A loader that records how often the library asked for templates (like a DB query)."""

    def __init__(self, items):
        self.items = items
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return list(self.items)


def test_default_loader_is_the_bundled_json():
    assert TemplateLibrary().all_templates() == tuple(load_bundled_templates())


def test_stats_start_at_zero_in_the_spec_shape():
    stats = TemplateLibrary().cache_stats()
    assert stats == {"total_calls": 0, "cache_hits": 0, "cache_misses": 0, "hit_rate_percent": 0.0}


def test_repeated_lookups_are_hits_and_stats_add_up():
    lib = TemplateLibrary()
    lib.all_templates()
    lib.all_templates()
    lib.for_niche("fitness")
    lib.for_niche("fitness")
    lib.for_niche("fitness")
    lib.by_category("workout")
    lib.by_id("fitness-001")
    lib.by_id("fitness-001")
    assert lib.cache_stats() == {
        "total_calls": 8,
        "cache_hits": 4,
        "cache_misses": 4,
        "hit_rate_percent": 50.0,
    }


def test_hit_rate_is_rounded_to_two_decimals():
    lib = TemplateLibrary()
    for _ in range(3):
        lib.for_niche("food")
    assert lib.cache_stats()["hit_rate_percent"] == 66.67


def test_loader_runs_once_across_all_lookups():
    loader = CountingLoader([row()])
    lib = TemplateLibrary(loader)
    lib.all_templates()
    lib.by_category("workout")
    lib.by_id("fitness-001")
    lib.for_niche("fitness")
    assert loader.calls == 1


def test_lookups_filter_and_ignore_case():
    lib = TemplateLibrary(
        lambda: [row(), row("food-001", niche="food", category="recipe"), row("fitness-002")]
    )
    assert [t.id for t in lib.for_niche(" Fitness ")] == ["fitness-001", "fitness-002"]
    assert [t.id for t in lib.by_category("RECIPE")] == ["food-001"]
    assert lib.by_id("food-001").niche == "food"
    assert lib.by_id("missing-001") is None
    assert lib.for_niche("travel") == ()


def test_cached_answers_cannot_be_mutated_by_callers():
    lib = TemplateLibrary()
    templates = lib.all_templates()
    assert isinstance(templates, tuple)
    with pytest.raises(ValidationError):
        templates[0].prompt = "changed"


def test_clear_cache_reloads_and_resets_stats():
    items = [row()]
    loader = CountingLoader(items)
    lib = TemplateLibrary(loader)
    assert len(lib.all_templates()) == 1
    lib.all_templates()
    items.append(row("fitness-002"))  # "templates were updated in the database"
    assert len(lib.all_templates()) == 1  # still the cached answer
    lib.clear_cache()
    assert lib.cache_stats()["total_calls"] == 0
    assert len(lib.all_templates()) == 2
    assert loader.calls == 2


def test_caches_are_per_instance():
    a = TemplateLibrary(lambda: [row()])
    b = TemplateLibrary(lambda: [row("food-001", niche="food")])
    assert a.for_niche("fitness") and not b.for_niche("fitness")
    a.all_templates()
    assert b.cache_stats()["total_calls"] == 1
    assert a.cache_stats()["total_calls"] == 2


def test_a_dropped_library_is_garbage_collected():
    lib = TemplateLibrary()
    lib.all_templates()
    ref = weakref.ref(lib)
    del lib
    gc.collect()
    assert ref() is None


def test_cache_sizes_follow_the_spec():
    assert CACHE_SIZES == {"all_templates": 128, "by_category": 64, "by_id": 50, "for_niche": 32}
    lib = TemplateLibrary()
    for niche_index in range(40):
        lib.for_niche(f"niche-{niche_index}")
    assert lib._caches["for_niche"].cache_info().currsize == 32


def test_concurrent_first_calls_load_once_and_count_every_call():
    release = threading.Event()
    calls = []

    def slow_loader():
        calls.append(1)
        release.wait(5)
        return load_bundled_templates()

    lib = TemplateLibrary(slow_loader)
    threads = [threading.Thread(target=lib.for_niche, args=("travel",)) for _ in range(8)]
    for thread in threads:
        thread.start()
    release.set()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert lib.cache_stats()["total_calls"] == 8


def test_loader_accepts_template_models():
    template = Template.model_validate(row())
    assert TemplateLibrary(lambda: [template]).by_id("fitness-001") is template


def test_duplicate_ids_are_refused():
    lib = TemplateLibrary(lambda: [row(), row()])
    with pytest.raises(ValueError, match="duplicated: \\['fitness-001'\\]"):
        lib.all_templates()


@pytest.mark.parametrize(
    "bad",
    [
        {"tier": "capa4"},
        {"platforms": ["myspace"]},
        {"platforms": []},
        {"prompt": ""},
        {"id": "Fitness 1"},
        {"hook_pattern": "Hi {avatar}"},
        {"extra_field": 1},
    ],
)
def test_invalid_rows_are_refused_at_load(bad):
    lib = TemplateLibrary(lambda: [row(**bad)])
    with pytest.raises(ValidationError):
        lib.all_templates()


def test_a_failing_loader_is_not_cached():
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("database unavailable")
        return [row()]

    lib = TemplateLibrary(flaky)
    with pytest.raises(ConnectionError):
        lib.all_templates()
    assert len(lib.all_templates()) == 1


def test_template_labels_are_normalised_and_platforms_deduplicated():
    template = Template.model_validate(
        row(niche=" Fitness", category="Workout ", platforms=["tiktok", "tiktok", "instagram"])
    )
    assert (template.niche, template.category) == ("fitness", "workout")
    assert [p.value for p in template.platforms] == ["tiktok", "instagram"]
    assert template.supports("instagram") and not template.supports("onlyfans")


# -- refreshing a long-lived library (max_age_seconds) ----------------------------------


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_without_max_age_the_loader_runs_once_forever():
    clock = Clock()
    loader = CountingLoader([row()])
    lib = TemplateLibrary(loader, clock=clock)
    lib.all_templates()
    clock.now += 10_000
    lib.all_templates()
    assert loader.calls == 1


def test_a_stale_library_reloads_and_serves_changed_templates_keeping_its_stats():
    clock = Clock()
    items = [row()]
    loader = CountingLoader(items)
    lib = TemplateLibrary(loader, max_age_seconds=60, clock=clock)
    assert [t.id for t in lib.for_niche("fitness")] == ["fitness-001"]
    lib.for_niche("fitness")
    items.append(row("fitness-002"))  # another process imported a template
    clock.now += 59
    assert len(lib.for_niche("fitness")) == 1  # still fresh: no query
    assert loader.calls == 1
    clock.now += 2
    assert [t.id for t in lib.for_niche("fitness")] == ["fitness-001", "fitness-002"]
    assert loader.calls == 2
    # Statistics go on counting across the refresh (the health check's figures).
    assert lib.cache_stats() == {
        "total_calls": 4, "cache_hits": 2, "cache_misses": 2, "hit_rate_percent": 50.0,
    }


def test_an_unchanged_reload_keeps_serving_cached_answers():
    clock = Clock()
    loader = CountingLoader([row()])
    lib = TemplateLibrary(loader, max_age_seconds=60, clock=clock)
    lib.for_niche("fitness")
    clock.now += 61
    lib.for_niche("fitness")
    assert loader.calls == 2
    assert lib.cache_stats()["cache_hits"] == 1  # same generation: the answer was cached


def test_a_failing_reload_keeps_the_loaded_templates_and_tries_again_later(caplog):
    clock = Clock()
    state = {"fail": False}

    def loader():
        if state["fail"]:
            raise ConnectionError("database unavailable")
        return [row()]

    lib = TemplateLibrary(loader, max_age_seconds=60, clock=clock)
    lib.all_templates()
    state["fail"] = True
    clock.now += 61
    with caplog.at_level("WARNING", logger="studio.templates"):
        assert len(lib.all_templates()) == 1
    assert "reload failed (ConnectionError)" in caplog.text
    assert "database unavailable" not in caplog.text  # the type only: no connection details


def test_niches_lists_what_the_library_holds():
    lib = TemplateLibrary(lambda: [row(), row("food-001", niche="food")])
    assert lib.niches() == ("fitness", "food")
