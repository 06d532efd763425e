"""A batch on the embedded defaults never imports a provider SDK it does not use.

Why: `anthropic` (~1.2 s), `openai` (~0.5 s), `replicate` and `boto3` (~0.1-0.2 s each)
were once imported by every batch through the registries, paid on each cold
`studio batch run` although the stand-ins call none of them. The registries now import
an SDK-backed client only when they build it; this test keeps it that way. It runs in a
fresh interpreter (the test session itself has imported the SDKs long ago), in an empty
directory (no `.env`) and with no provider credentials in the environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SDKS = ("anthropic", "openai", "replicate", "modal", "boto3")
#: prefixes of the variables that would configure a real provider
CREDENTIAL_PREFIXES = ("ANTHROPIC_", "OPENAI_", "REPLICATE_", "MODAL_", "COMFYUI_", "R2_", "AWS_")

PROBE = f"""
import json, sys
import flows.content_batch
from studio.hooks.registry import build_hook_writer
from studio.moderation.registry import build_safety_review
from studio.providers.build import build_provider_chain
from studio.providers.settings import ProviderSettings
from studio.settings import Settings
from studio.storage.registry import build_content_store

imported_by_import = sorted(m for m in {SDKS!r} if m in sys.modules)
writer = build_hook_writer()
review = build_safety_review()
chain = build_provider_chain(ProviderSettings())
store = build_content_store(Settings())
print(json.dumps({{
    "import": imported_by_import,
    "built": sorted(m for m in {SDKS!r} if m in sys.modules),
    "writer": writer.name,
    "store": store.name,
}}))
"""


@pytest.fixture
def defaults_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(CREDENTIAL_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["STUDIO_HOME"] = str(tmp_path / "home")
    return env


def test_batch_flow_on_embedded_defaults_imports_no_provider_sdk(
    tmp_path: Path, defaults_env: dict[str, str]
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=tmp_path,
        env=defaults_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["writer"] == "template" and seen["store"] == "local"  # the stand-ins
    assert seen["import"] == [], "importing flows.content_batch pulled in SDKs"
    assert seen["built"] == [], "building the stand-ins pulled in SDKs"
