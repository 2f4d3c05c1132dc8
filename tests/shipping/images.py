"""The image names `make image` and `make image-cuda` give (`make image-names`), which the
Helm chart and the Compose file must default to."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[2]


def made_images() -> dict[str, str]:
    """{"cpu": name:tag, "cuda": name:tag} as the Makefile prints them."""
    done = subprocess.run(
        ["make", "-s", "--no-print-directory", "image-names"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    cpu, cuda = done.stdout.split()
    return {"cpu": cpu, "cuda": cuda}


def project_version() -> str:
    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return version
