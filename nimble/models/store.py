"""Model folders made of cached files: what folder-loading engines (vLLM, transformers)
open, and what `nimble create-model-store` writes for other tools."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def link_store(folder: Path, paths: dict[str, Path]) -> Path:
    """A folder of symbolic links `name -> cached file`, rewritten when a target changed."""
    for name, target in paths.items():
        link = folder / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() and Path(os.readlink(link)) == target.resolve():
            continue
        temporary = link.with_name(f".{link.name}.{os.getpid()}.tmp")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(target.resolve())
        os.replace(temporary, link)
    return folder


def write_store(
    folder: Path, paths: dict[str, Path], on_file: Callable[[str], None] | None = None
) -> list[str]:
    """A plain folder with real files: hard links where the file system allows, else copies.

    Existing files with the same size are kept. Returns how each file was written.
    """
    done = []
    for name, source in paths.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
            done.append(f"{name} (folder copied)")
            continue
        source = source.resolve()
        if target.exists() and target.stat().st_size == source.stat().st_size:
            done.append(f"{name} (already there)")
            continue
        target.unlink(missing_ok=True)
        try:
            os.link(source, target)
            how = "hard link"
        except OSError:
            shutil.copy2(source, target)
            how = "copy"
        done.append(f"{name} ({how})")
        if on_file is not None:
            on_file(name)
    return done
