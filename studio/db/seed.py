"""Realistic history for benchmarks: avatars, batches and N content pieces over two years.

Why: listing and statistics must stay fast on a studio's years of pieces, which a fresh
database cannot show. The shape follows the pipeline's output: batches of 50 with the
default tier split (60/30/10), mostly published with some rejected, failed and pending
pieces, one flagship avatar far more active than the rest. PostgreSQL is loaded with
COPY (psycopg 3), anything else with executemany in chunks.

Seeded avatars are inactive (their LoRA URLs are made up: the daily fan-out must never
run them), and are recognised by `is_seeded_avatar` so `studio seed-history` can refuse
a database that holds real avatars.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert

from studio.db.models import Avatar, Batch, ContentPiece
from studio.providers.catalogue import IMAGE_PROVIDERS
from studio.storage.base import object_key

NICHES = ("fitness", "lifestyle", "fashion", "travel", "food", "wellness")
TIERS = (("capa1", 0.6), ("capa2", 0.3), ("capa3", 0.1))
STATUSES = (
    ("published", "approved", 0.85),
    ("rejected", "rejected", 0.08),
    ("failed", "unchecked", 0.04),
    ("pending_review", "pending_review", 0.03),
)
#: (provider, USD per image), one picked at random per piece
PROVIDERS = tuple((entry.name, entry.tuning.price_usd) for entry in IMAGE_PROVIDERS)
BATCH_SIZE = 50
FLAGSHIP_WEIGHT = 10  # the first avatar makes 10x the pieces of the others

PIECE_COLUMNS = (
    "id",
    "avatar_id",
    "batch_id",
    "template_id",
    "prompt",
    "access_tier",
    "hook_text",
    "safety_rating",
    "status",
    "provider",
    "storage_key",
    "url",
    "cost_usd",
    "stand_ins",
    "created_at",
    "storage_backend",
    "checksum",
    "size_bytes",
    "content_type",
    "needs_sync",
)
BATCH_COLUMNS = (
    "id",
    "avatar_id",
    "config",
    "status",
    "step_seconds",
    "cost_breakdown",
    "cost_usd",
    "requested",
    "published",
    "rejected",
    "failed",
    "pending_review",
    "stand_ins",
    "started_at",
    "finished_at",
)


#: a seeded avatar's name and LoRA URL (see `generate`)
_SEEDED_NAME = re.compile(r"^history-[0-9a-f]{6}-\d{3}$")
SEEDED_LORA_PREFIX = "https://weights.example.com/"


def is_seeded_avatar(name: str, lora_weights_url: str | None) -> bool:
    """Whether an avatar row was made by `generate` (not registered by an operator)."""
    return bool(_SEEDED_NAME.match(name)) and (lora_weights_url or "").startswith(
        SEEDED_LORA_PREFIX
    )


@dataclass
class SeedSummary:
    avatars: list[str]
    batches: int
    pieces: int

    @property
    def flagship(self) -> str:
        """The most active avatar (benchmarks list and count its pieces)."""
        return self.avatars[0]


def _pick(rng: random.Random, table: tuple[tuple[Any, ...], ...]) -> tuple[Any, ...]:
    roll = rng.random()
    for row in table:
        roll -= row[-1]
        if roll <= 0:
            return row
    return table[-1]


def _split(total: int, avatars: int, rng: random.Random) -> list[int]:
    """Pieces per avatar: the flagship gets FLAGSHIP_WEIGHT shares, the others one each."""
    weights = [FLAGSHIP_WEIGHT] + [rng.uniform(0.7, 1.3) for _ in range(avatars - 1)]
    scale = total / sum(weights)
    counts = [int(w * scale) for w in weights]
    counts[0] += total - sum(counts)
    return counts


def generate(
    pieces: int, avatars: int = 200, days: int = 730, seed: int = 1
) -> tuple[list[dict[str, Any]], Iterator[tuple[Any, ...]], Iterator[tuple[Any, ...]], SeedSummary]:
    """Avatar rows, then lazily batch rows and piece rows (tuples in *_COLUMNS order)."""
    rng = random.Random(seed)
    tag = uuid.UUID(int=rng.getrandbits(128)).hex[:6]
    now = datetime.now(UTC)
    start = now - timedelta(days=days)
    avatar_rows = [
        {
            "id": str(uuid.UUID(int=rng.getrandbits(128))),
            "name": f"history-{tag}-{i:03d}",
            "niche": NICHES[i % len(NICHES)],
            "lora_weights_url": f"{SEEDED_LORA_PREFIX}{tag}/{i:03d}.safetensors",
            # inactive: a scheduled fan-out must never run (and pay for) seeded avatars
            "active": False,
            "cadence": "daily",
            "created_at": start,
        }
        for i in range(avatars)
    ]
    counts = _split(pieces, avatars, rng)
    plan: list[tuple[dict[str, Any], int, int]] = []  # (avatar, batch number, batch size)
    for avatar, count in zip(avatar_rows, counts, strict=True):
        full, rest = divmod(count, BATCH_SIZE)
        sizes = [BATCH_SIZE] * full + ([rest] if rest else [])
        plan.extend((avatar, n, size) for n, size in enumerate(sizes))
    span = (now - start).total_seconds()
    per_avatar = {a["id"]: 0 for a in avatar_rows}
    for avatar, _, _ in plan:
        per_avatar[avatar["id"]] += 1

    def batch_started(avatar: dict[str, Any], n: int) -> datetime:
        return start + timedelta(seconds=span * (n + 0.5) / max(per_avatar[avatar["id"]], 1))

    # rows go in in time order, so an avatar's pieces are spread over the table as in a
    # real history (not stored side by side, which would flatter every query)
    plan.sort(key=lambda entry: batch_started(entry[0], entry[1]))
    batch_ids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in plan]
    summary = SeedSummary([a["id"] for a in avatar_rows], len(plan), pieces)

    def batches() -> Iterator[tuple[Any, ...]]:
        for (avatar, n, size), batch_id in zip(plan, batch_ids, strict=True):
            started = batch_started(avatar, n)
            yield (
                batch_id,
                avatar["id"],
                json.dumps({"num_pieces": size, "seeded": True}),
                "completed",
                "{}",
                "{}",
                round(size * 0.004, 4),
                size,
                int(size * 0.85),
                int(size * 0.08),
                int(size * 0.04),
                size - int(size * 0.85) - int(size * 0.08) - int(size * 0.04),
                "[]",
                started,
                started + timedelta(minutes=8),
            )

    def piece_rows() -> Iterator[tuple[Any, ...]]:
        piece_rng = random.Random(seed + 1)
        for (avatar, n, size), batch_id in zip(plan, batch_ids, strict=True):
            started = batch_started(avatar, n)
            for index in range(size):
                piece_id = str(uuid.UUID(int=piece_rng.getrandbits(128)))
                tier = _pick(piece_rng, TIERS)[0]
                status, rating, _ = _pick(piece_rng, STATUSES)
                provider, price = PROVIDERS[piece_rng.randrange(len(PROVIDERS))]
                stored = status == "published"
                key = object_key(avatar["id"], batch_id, piece_id) if stored else None
                yield (
                    piece_id,
                    avatar["id"],
                    batch_id,
                    f"{avatar['niche']}-{piece_rng.randrange(1, 13):03d}",
                    f"{avatar['niche']} scene {index}, natural light, editorial style",
                    tier,
                    f"Placeholder hook {index} for a {avatar['niche']} post" if stored else None,
                    rating,
                    status,
                    None if status == "failed" else provider,
                    key,
                    f"https://r2.example.com/{key}" if key else None,
                    0.0 if status == "failed" else price,
                    "[]",
                    started + timedelta(seconds=index * 9 + piece_rng.random()),
                    "r2" if stored else None,
                    uuid.UUID(int=piece_rng.getrandbits(128)).hex * 2 if stored else None,
                    piece_rng.randrange(900_000, 2_400_000) if stored else None,
                    "image/png" if stored else None,
                    False,
                )

    return avatar_rows, batches(), piece_rows(), summary


def _chunks(rows: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    chunk: list[tuple[Any, ...]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _copy(engine: Engine, table: str, columns: tuple[str, ...], rows: Iterator[tuple[Any, ...]]):
    """COPY rows into `table` through psycopg 3: the fastest way to load PostgreSQL."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:  # type: ignore[attr-defined]
            for row in rows:
                copy.write_row(row)
        raw.commit()
    finally:
        raw.close()


def _executemany(engine: Engine, model: Any, columns: tuple[str, ...], rows) -> None:  # type: ignore[no-untyped-def]
    json_columns = {"config", "step_seconds", "cost_breakdown", "stand_ins"}
    with engine.begin() as conn:
        for chunk in _chunks(rows, 10_000):
            params = [
                {
                    c: (json.loads(v) if c in json_columns and isinstance(v, str) else v)
                    for c, v in zip(columns, row, strict=True)
                }
                for row in chunk
            ]
            conn.execute(insert(model.__table__), params)


def seed_history(
    engine: Engine, pieces: int, avatars: int = 200, days: int = 730, seed: int = 1
) -> SeedSummary:
    """Insert `pieces` historical pieces across `avatars` avatars; returns what was made."""
    avatar_rows, batch_rows, piece_rows, summary = generate(pieces, avatars, days, seed)
    with engine.begin() as conn:
        conn.execute(insert(Avatar.__table__), avatar_rows)
    if engine.dialect.name == "postgresql":
        _copy(engine, "batch", BATCH_COLUMNS, batch_rows)
        _copy(engine, "content_piece", PIECE_COLUMNS, piece_rows)
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE batch")
            conn.exec_driver_sql("ANALYZE content_piece")
    else:
        _executemany(engine, Batch, BATCH_COLUMNS, batch_rows)
        _executemany(engine, ContentPiece, PIECE_COLUMNS, piece_rows)
    return summary
