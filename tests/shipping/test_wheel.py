"""The wheel carries the files nimble reads from its own package at run time: the console
(served at /ui) and the model catalog's manifests. Built offline from a copy of the source
(no build isolation, no dependencies)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_the_wheel_carries_the_console_and_the_manifests(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "nimble", source / "nimble", ignore=shutil.ignore_patterns("__pycache__")
    )
    offline = ["--no-deps", "--no-build-isolation"]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            *offline,
            "-w",
            str(tmp_path / "dist"),
            source,
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("nimble-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    console = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "nimble" / "api" / "console").rglob("*")
        if p.is_file()
    }
    assert "nimble/api/console/index.html" in console
    assert console <= names, sorted(console - names)
    manifests = {
        p.relative_to(ROOT).as_posix() for p in (ROOT / "nimble/models/manifests").glob("*.yaml")
    }
    assert manifests and manifests <= names
