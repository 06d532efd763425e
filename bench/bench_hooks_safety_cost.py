"""Cost of a 50-piece batch's hooks and safety check, measured against the emulators.

The hook writer and the moderator run exactly as in a batch, through the official
`anthropic` and `openai` clients, against the loopback emulators, which report token
usage the way the Messages API does (four characters a token, prompt caching with a
minimum cacheable prefix). The cost is computed from that measured usage at the list
prices in HookSettings (Claude Haiku 4.5: $1 in, $5 out, $1.25 cache write, $0.10 cache
read per MTok; Message Batches at half; see studio/ledger/pricing.py) and, for moderation,
MODERATION_PRICE_PER_CALL_USD: the spec's planning estimate ($0.05 for 50 pieces). OpenAI
lists the endpoint as free, so the cost ledger records moderation at $0 billed; the
figure printed here is the estimate. bench/bench_cost.py prints what the ledger records
for a whole batch (images included) per provider strategy.

Pieces: 50 from the bundled template library, tiers 60/30/10 (spec example), with hooks
of a realistic length (about 110 characters). Printed per scenario: calls, tokens,
dollars, and the total against the spec's $0.15-0.25 for hooks + safety.

Usage: PYTHONPATH=. python bench/bench_hooks_safety_cost.py
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

# runnable as `python bench/bench_hooks_safety_cost.py` from the repository root
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.hooks.anthropic_writer import AnthropicHookWriter
from studio.hooks.settings import HookSettings
from studio.moderation.base import ModerationItem
from studio.moderation.local import LocalModerator
from studio.moderation.openai_moderator import OpenAIModerator
from studio.moderation.policy import SafetyReview
from studio.moderation.settings import ModerationSettings
from studio.templates import load_bundled_templates
from studio.types import AvatarRef, PieceSpec, Platform
from tests.emulators.anthropic_api import AnthropicEmulator
from tests.emulators.openai_api import OpenAIModerationEmulator

KEY_A = "sk-ant-bench"
KEY_O = "sk-openai-bench"
SPEC_LOW, SPEC_HIGH = 0.15, 0.25
HOOK = (
    "Morning light, fresh energy and a new routine to try this week: who is in? "
    "Save it for later {n}"
)


@dataclass
class Scenario:
    name: str
    batch_size: int = 10
    cache_floor: int = 4096
    message_batches: bool = False
    sample_rate: float = 1.0


SCENARIOS = [
    Scenario("naive: 1 piece per hook call", batch_size=1),
    Scenario("10 per call, Haiku 4.5 (cache floor 4096)"),
    Scenario("10 per call, prefix cacheable (floor 1024, as Sonnet 4.x)", cache_floor=1024),
    Scenario("10 per call + Message Batches (scheduled)", message_batches=True),
    Scenario("batches + SAFETY_CHECK_SAMPLE_RATE=0.2", message_batches=True, sample_rate=0.2),
]


def make_specs(n: int = 50) -> list[PieceSpec]:
    templates = load_bundled_templates()
    tiers = ["capa1"] * 30 + ["capa2"] * 15 + ["capa3"] * 5
    by_tier = {t: [x for x in templates if x.tier == t] or templates for t in set(tiers)}
    specs = []
    for i, tier in enumerate(tiers[:n]):
        pool = by_tier[tier]
        t = pool[i % len(pool)]
        specs.append(PieceSpec(
            piece_id=f"bench-{i:03d}", batch_id="bench", index=i, prompt=next(t.example_prompts(1)),
            tier=tier, template_id=t.id, category=t.category, niche=t.niche,
            hook_pattern=t.hook_pattern,
        ))
    return specs


async def run(scenario: Scenario, specs: list[PieceSpec], images: dict[str, str]) -> dict:
    catalog = {t.id: f"{t.niche}/{t.category}: {t.description}" for t in load_bundled_templates()}
    avatar = AvatarRef(id="bench", name="Mia", niche="fitness")
    with AnthropicEmulator() as claude, OpenAIModerationEmulator() as moderation:
        claude.min_cacheable_tokens = scenario.cache_floor
        claude.batch_processing_seconds = 0.1
        claude.hook_overrides = {s.piece_id: HOOK.format(n=s.index) for s in specs}
        hook_settings = HookSettings(
            ANTHROPIC_API_KEY=KEY_A, ANTHROPIC_BASE_URL=claude.url,
            HOOK_BATCH_SIZE=scenario.batch_size, HOOK_MESSAGE_BATCH_POLL_SECONDS=0.05,
            HOOK_TIMEOUT_SECONDS=5,
            HOOK_MAX_CONCURRENT=5,
        )
        writer = AnthropicHookWriter(
            hook_settings, catalog=catalog, time_budget_seconds=30,
            use_message_batches=scenario.message_batches,
        )
        hooks = await writer.write(specs, avatar, Platform.INSTAGRAM)

        mod_settings = ModerationSettings(
            OPENAI_API_KEY=KEY_O, OPENAI_BASE_URL=f"{moderation.url}/v1",
            SAFETY_CHECK_SAMPLE_RATE=scenario.sample_rate,
        )
        items = [
            ModerationItem(
                piece_id=s.piece_id, tier=s.tier, custom=s.custom,
                text=f"{s.prompt}\n{hooks.hooks[s.piece_id].text}",
                image_path=images[s.piece_id], category=s.category, niche=s.niche,
            )
            for s in specs
        ]
        review = SafetyReview(OpenAIModerator(mod_settings), mod_settings, screen=LocalModerator())
        report = await review.run(items, seed="bench")
    return {
        "hook_calls": hooks.calls, "tokens": hooks.tokens, "hooks_usd": hooks.cost_usd,
        "model_hooks": sum(not h.stand_in for h in hooks.hooks.values()),
        "moderation_calls": report.calls, "safety_usd": report.cost_usd,
    }


async def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    specs = make_specs()
    with tempfile.TemporaryDirectory() as tmp:
        images = {}
        for s in specs:
            path = Path(tmp) / f"{s.piece_id}.png"
            Image.new("RGB", (256, 256), (180, 160, 150)).save(path)
            images[s.piece_id] = str(path)
        print(f"{len(specs)} pieces (30 capa1 / 15 capa2 / 5 capa3), spec baseline "
              f"hooks+safety ${SPEC_LOW:.2f}-{SPEC_HIGH:.2f}\n")
        hooks_usd: dict[str, float] = {}
        for scenario in SCENARIOS:
            r = await run(scenario, specs, images)
            hooks_usd[scenario.name] = r["hooks_usd"]
            total = r["hooks_usd"] + r["safety_usd"]
            t = r["tokens"]
            print(f"- {scenario.name}")
            print(f"  hooks: {r['hook_calls']} calls, {r['model_hooks']}/50 from the model, "
                  f"tokens in {t['input']} out {t['output']} cache write {t['cache_write']} "
                  f"read {t['cache_read']} -> ${r['hooks_usd']:.4f}")
            print(f"  safety: {r['moderation_calls']} moderation calls -> $0 billed (free), "
                  f"spec estimate ${r['safety_usd']:.4f}")
            print(f"  total ${total:.4f} = {total / SPEC_LOW:.2f}x of $0.15, "
                  f"{total / SPEC_HIGH:.2f}x of $0.25\n")
        direct, batched = hooks_usd[SCENARIOS[1].name], hooks_usd[SCENARIOS[3].name]
        print(f"hooks, hook_mode message-batches / direct: ${batched:.4f} / ${direct:.4f} "
              f"= {batched / direct:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
