"""The template library: a loader plus per-instance LRU caches with hit/miss statistics.

The spec ("Template Library Cache") caches every retrieval method with `lru_cache`
(128 for all templates, 64 per category, 50 by id, 32 per avatar niche) and reports the
aggregate hits and misses on the health endpoint. `functools.lru_cache` on a method
would share one cache (and keep every instance alive) across all libraries, so each
instance wraps its own bound functions in `__init__` instead.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from functools import cache, lru_cache
from importlib import resources
from typing import Any

from studio.templates.documents import Vocabulary, parse_templates
from studio.templates.models import Template

log = logging.getLogger("studio.templates")

TemplateSource = Iterable[Template | Mapping[str, Any]]
TemplateLoader = Callable[[], TemplateSource]

#: maxsize of each cached lookup, as the spec lists them.
CACHE_SIZES: dict[str, int] = {
    "all_templates": 128,
    "by_category": 64,
    "by_id": 50,
    "for_niche": 32,
}


BUNDLED_FILE = "library.json"


@cache
def _bundled() -> tuple[tuple[Template, ...], Vocabulary]:
    raw = resources.files("studio.templates").joinpath(BUNDLED_FILE).read_text("utf-8")
    templates, vocabulary = parse_templates(json.loads(raw), BUNDLED_FILE)
    return tuple(templates), vocabulary


def load_bundled_templates() -> list[Template]:
    """The safe-for-work library shipped inside the package (`library.json`)."""
    return list(_bundled()[0])


def bundled_vocabulary() -> Vocabulary:
    """The bundled value lists (shared and per niche) a studio's templates may use."""
    return _bundled()[1]


class TemplateLibrary:
    """Cached, read-only access to the templates a loader returns.

    The loader runs once until `clear_cache()` (call that after templates change in the
    database). With `max_age_seconds`, a lookup made that long after the last load runs
    the loader again and, only when the templates differ, serves the new ones: that is
    how a worker process sees the templates `studio templates import` wrote in another
    process, without its statistics restarting. Lookups return tuples of frozen models,
    so a cached answer can be handed to concurrent tasks without copies.
    """

    def __init__(
        self,
        loader: TemplateLoader | None = None,
        *,
        max_age_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loader: TemplateLoader = loader or load_bundled_templates
        self._max_age = max_age_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None
        self._loaded_at = 0.0
        # Part of every cache key: answers of an older snapshot are never served again
        # (they age out of the LRU), so a refresh needs no cache_clear.
        self._generation = 0
        self._caches = {
            "all_templates": lru_cache(maxsize=CACHE_SIZES["all_templates"])(self._all),
            "by_category": lru_cache(maxsize=CACHE_SIZES["by_category"])(self._by_category),
            "by_id": lru_cache(maxsize=CACHE_SIZES["by_id"])(self._by_id),
            "for_niche": lru_cache(maxsize=CACHE_SIZES["for_niche"])(self._for_niche),
        }

    # -- public, cached lookups ---------------------------------------------------------

    def all_templates(self) -> tuple[Template, ...]:
        """Every template, in loader order."""
        return self._caches["all_templates"](self._current())

    def by_category(self, category: str) -> tuple[Template, ...]:
        """Templates of one category (case-insensitive), across niches."""
        return self._caches["by_category"](self._current(), category)

    def by_id(self, template_id: str) -> Template | None:
        """The template with this id, or None when the library has none."""
        return self._caches["by_id"](self._current(), template_id)

    def for_niche(self, niche: str) -> tuple[Template, ...]:
        """Templates of an avatar's niche (case-insensitive): the spec's per-avatar lookup."""
        return self._caches["for_niche"](self._current(), niche)

    def niches(self) -> tuple[str, ...]:
        """The niches that have templates, sorted (built from the cached `all_templates`)."""
        return tuple(sorted({t.niche for t in self.all_templates()}))

    # -- statistics and invalidation ----------------------------------------------------

    def cache_stats(self) -> dict[str, int | float]:
        """Aggregate hits and misses of the lookups, in the spec's health JSON shape."""
        infos = [cache.cache_info() for cache in self._caches.values()]
        hits = sum(info.hits for info in infos)
        misses = sum(info.misses for info in infos)
        total = hits + misses
        return {
            "total_calls": total,
            "cache_hits": hits,
            "cache_misses": misses,
            "hit_rate_percent": round(100.0 * hits / total, 2) if total else 0.0,
        }

    def clear_cache(self) -> None:
        """Forget every cached answer and the loaded templates; statistics restart at zero."""
        with self._lock:
            self._snapshot = None
            self._generation += 1
            for cache in self._caches.values():
                cache.cache_clear()

    # -- uncached implementations -------------------------------------------------------

    def _current(self) -> int:
        """The snapshot generation to key this lookup by; reloads a stale snapshot."""
        if self._max_age is None or self._snapshot is None:
            return self._generation
        if self._clock() - self._loaded_at < self._max_age:
            return self._generation
        with self._lock:
            if self._snapshot is None or self._clock() - self._loaded_at < self._max_age:
                return self._generation
            self._loaded_at = self._clock()
            try:
                fresh = _Snapshot.build(self._loader())
            except Exception as exc:
                # Keep serving what was loaded: a batch can still be planned, and the
                # next lookup after max_age tries again.
                log.warning(
                    "template library: reload failed (%s); keeping the %d loaded templates",
                    type(exc).__name__,
                    len(self._snapshot.templates),
                )
                return self._generation
            if fresh.templates != self._snapshot.templates:
                self._snapshot = fresh
                self._generation += 1
                log.info("template library: %d templates reloaded", len(fresh.templates))
            return self._generation

    def _data(self) -> _Snapshot:
        # Loaded under a lock: concurrent first calls must not hit the database twice.
        with self._lock:
            if self._snapshot is None:
                self._snapshot = _Snapshot.build(self._loader())
                self._loaded_at = self._clock()
            return self._snapshot

    def _all(self, generation: int) -> tuple[Template, ...]:
        return self._data().templates

    def _by_category(self, generation: int, category: str) -> tuple[Template, ...]:
        key = category.strip().lower()
        return tuple(t for t in self._data().templates if t.category == key)

    def _by_id(self, generation: int, template_id: str) -> Template | None:
        return self._data().by_id.get(template_id)

    def _for_niche(self, generation: int, niche: str) -> tuple[Template, ...]:
        key = niche.strip().lower()
        return tuple(t for t in self._data().templates if t.niche == key)


class _Snapshot:
    """The validated templates of one load, with the id index built once."""

    __slots__ = ("by_id", "templates")

    def __init__(self, templates: tuple[Template, ...]) -> None:
        self.templates = templates
        self.by_id = {t.id: t for t in templates}

    @classmethod
    def build(cls, source: TemplateSource) -> _Snapshot:
        templates = tuple(
            item if isinstance(item, Template) else Template.model_validate(item) for item in source
        )
        seen: set[str] = set()
        duplicates = sorted({t.id for t in templates if t.id in seen or seen.add(t.id)})
        if duplicates:
            raise ValueError(f"template ids must be unique; duplicated: {duplicates}")
        return cls(templates)
