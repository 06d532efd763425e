"""The catalogue is the one list of image providers: a fourth one is its module and a line.

Why a subprocess: the settings model and the block classes are made from the catalogue
when they are imported, so the probe puts a catalogue with one more line in place
before anything imports it, exactly as editing `studio/providers/catalogue.py` would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from studio.providers.build import provider_order, strategy_order
from studio.providers.catalogue import IMAGE_PROVIDERS, PROVIDER_NAMES
from studio.providers.settings import ProviderSettings, ProviderStrategy

REPO_ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, pathlib, sys, types

path = pathlib.Path("studio/providers/catalogue.py")
source = path.read_text()
source = source.replace(
    "from studio.providers import comfyui,",
    "from tests.providers import fourth_provider\\nfrom studio.providers import comfyui,",
).replace(
    "    replicate_entry.ENTRY,\\n",
    "    replicate_entry.ENTRY,\\n    fourth_provider.ENTRY,\\n",
)
import studio.providers
catalogue = types.ModuleType("studio.providers.catalogue")
catalogue.__file__ = str(path)
sys.modules[catalogue.__name__] = catalogue
exec(compile(source, str(path), "exec"), catalogue.__dict__)

import asyncio
import blocks
from studio.ledger.pricing import PRICE_VARIABLES, PriceTable
from studio.providers.build import build_provider_chain, provider_order
from studio.providers.settings import ProviderSettings

settings = ProviderSettings(_env_file=None)
chain = build_provider_chain(settings)
image = asyncio.run(chain.providers[-1].generate(None, None))
print(json.dumps({
    "order": provider_order(settings),
    "cap": settings.max_concurrent("acme"),
    "timeout": chain.policy("acme").timeout,
    "price": PriceTable.from_settings(settings).image("acme"),
    "price_variable": "ACME_PRICE_USD" in PRICE_VARIABLES,
    "secret_redacted": settings.secret_values(),
    "limit": catalogue.provider_entry("acme").limit_name,
    "block": blocks.AcmeCredentials.get_block_type_name(),
    "block_env": blocks.AcmeCredentials(endpoint="https://acme.example", api_key="k").environment(),
    "image_cost": image.cost_usd,
}))
"""


def test_a_fourth_provider_is_its_module_and_one_catalogue_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMFYUI_", "MODAL_",
                                                                      "REPLICATE_", "ACME_"))}
    env.update(
        PYTHONPATH=str(REPO_ROOT), ACME_ENDPOINT="https://acme.example",
        ACME_API_KEY="acme-secret", ACME_MAX_CONCURRENT="7", COMFYUI_ENABLED="true",
    )
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {
        "order": ["comfyui", "acme"],
        "cap": 7,
        "timeout": 45.0,
        "price": 0.002,
        "price_variable": True,
        "secret_redacted": ["acme-secret"],
        "limit": "provider:acme",
        "block": "Studio Acme Credentials",
        "block_env": {"ACME_ENDPOINT": "https://acme.example", "ACME_API_KEY": "k"},
        "image_cost": 0.002,
    }


def test_the_catalogue_order_is_the_default_order_and_names_are_unique() -> None:
    assert PROVIDER_NAMES == ("comfyui", "modal", "replicate")
    assert len(set(PROVIDER_NAMES)) == len(IMAGE_PROVIDERS)
    settings = ProviderSettings(_env_file=None)
    assert strategy_order(settings) == list(PROVIDER_NAMES)
    assert [e.limit_name for e in IMAGE_PROVIDERS] == [
        "provider:comfyui", "provider:modal", "provider:replicate"
    ]


def test_strategy_places_come_from_the_entries(monkeypatch) -> None:
    monkeypatch.setenv("PROVIDER_STRATEGY", "quality")
    assert strategy_order(ProviderSettings(_env_file=None)) == ["modal", "replicate", "comfyui"]
    monkeypatch.setenv("PROVIDER_STRATEGY", "cost-optimized")
    monkeypatch.setenv("MODAL_PRICE_USD", "0.04")
    settings = ProviderSettings(_env_file=None)
    assert settings.strategy is ProviderStrategy.COST
    assert strategy_order(settings) == ["comfyui", "replicate", "modal"]
    for name in ("COMFYUI_ENABLED", "MODAL_SDXL_ENDPOINT", "REPLICATE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert provider_order(ProviderSettings(_env_file=None)) == []
