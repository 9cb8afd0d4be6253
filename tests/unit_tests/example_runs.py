"""Running one of ``examples/`` the way a user would, offline and without this machine's BPO_ or
OPENAI_ settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_example_offline(name: str) -> subprocess.CompletedProcess[str]:
    """``python examples/<name>`` from the repository root, with ``HF_HUB_OFFLINE=1``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BPO_", "OPENAI_"))}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [sys.executable, str(REPO / "examples" / name)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=REPO,
    )
