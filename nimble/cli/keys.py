"""`nimble keys create | hash | list`: make API keys and the key-file entries that hold their
hashes; list a file's keys with the refs the deployment record and the metrics name them by."""

from __future__ import annotations

import os
import re
import stat
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="API keys (--api-keys-file): the key file holds only their sha256.",
)

MIN_KEY_LENGTH = 32


@app.command("create")
def create(
    key_id: Annotated[
        str,
        typer.Option("--id", help="The key's name, shown in logs and the audit log.", metavar="ID"),
    ],
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="A model it may use (repeat; default: any).", metavar="M"),
    ] = None,
    endpoint: Annotated[
        list[str] | None,
        typer.Option(
            "--endpoint", help="An endpoint it may use (repeat; default: all).", metavar="E"
        ),
    ] = None,
    purpose: Annotated[
        str | None,
        typer.Option(
            "--purpose",
            help="What the key is for (one line), in the audit log and the deployment record.",
            metavar="TEXT",
        ),
    ] = None,
    tools: Annotated[
        bool, typer.Option("--tools/--no-tools", help="May it send tools (tool calling)?")
    ] = True,
    declare_tool: Annotated[
        list[str] | None,
        typer.Option(
            "--declare-tool",
            help="A tool its requests may declare (repeat; default: any).",
            metavar="NAME",
        ),
    ] = None,
    call_tool: Annotated[
        list[str] | None,
        typer.Option(
            "--call-tool",
            help="A tool the model may call for it (repeat; default: any it may declare). A "
            "call of another tool is dropped from the answer.",
            metavar="NAME",
        ),
    ] = None,
    rail: Annotated[
        list[str] | None,
        typer.Option(
            "--rail",
            help="A guardrail (--guardrails) its requests always go through (repeat).",
            metavar="NAME",
        ),
    ] = None,
    rpm: Annotated[
        int | None, typer.Option("--rpm", min=1, help="Requests per minute at most.")
    ] = None,
    tpm: Annotated[
        int | None, typer.Option("--tpm", min=1, help="Tokens per minute at most.")
    ] = None,
    concurrent: Annotated[
        int | None, typer.Option("--concurrent", min=1, help="Requests at once at most.")
    ] = None,
    append: Annotated[
        Path | None,
        typer.Option(
            "--append",
            metavar="FILE",
            help="Append the entry to this key file (created, mode 0600, if missing).",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only the key (needs --append).")
    ] = False,
) -> None:
    """Make a new random API key: print it once, and the key-file entry holding its sha256."""
    from nimble.security.keys import hash_key, new_key

    if quiet and append is None:
        raise typer.BadParameter("--quiet prints only the key: the entry needs --append")
    key = new_key()
    limits = {
        name: value
        for name, value in (
            ("requests_per_minute", rpm),
            ("tokens_per_minute", tpm),
            ("concurrent_requests", concurrent),
        )
        if value is not None
    }
    if not tools and (declare_tool or call_tool):
        raise typer.BadParameter("--no-tools leaves no tool to declare or call")
    scope = _tool_scope(tools, declare_tool or [], call_tool or [])
    entry = key_entry(
        key_id,
        hash_key(key),
        model or [],
        endpoint or [],
        scope,
        limits,
        purpose=purpose,
        rails=rail or [],
    )
    if append is not None:
        try:
            count = append_entry(append, entry)
        except (OSError, ValueError) as exc:
            typer.echo(f"error: {append}: {getattr(exc, 'strerror', None) or exc}", err=True)
            raise typer.Exit(1) from exc
    if quiet:
        typer.echo(key)
        return
    typer.echo(f"API key `{key_id}` (shown only now: nimble stores only its sha256):\n{key}\n")
    if append is not None:
        typer.echo(
            f"Appended its entry to {append} ({count} key{'s' if count > 1 else ''} in all)."
        )
    else:
        typer.echo("Key file entry (under `keys:`):")
        typer.echo(_indent(entry_yaml(entry), "  "), nl=False)


def _tool_scope(tools: bool, declare: list[str], call: list[str]) -> bool | dict[str, list[str]]:
    """`tools:` as the key file writes it: true, false, or the lists given."""
    if not tools or not (declare or call):
        return tools
    scope: dict[str, list[str]] = {}
    if declare:
        scope["declare"] = list(dict.fromkeys(declare))
    if call:
        scope["call"] = list(dict.fromkeys(call))
    return scope


def key_entry(
    key_id: str,
    sha256: str,
    models: list[str],
    endpoints: list[str],
    tools: bool | dict[str, list[str]],
    limits: dict[str, int],
    *,
    purpose: str | None = None,
    rails: list[str] | None = None,
) -> dict[str, Any]:
    """The key-file entry (only what differs from the defaults), validated like the file."""
    from nimble.config.settings import ALL_ENDPOINTS

    unknown = [name for name in endpoints if name not in ALL_ENDPOINTS]
    if unknown:
        raise typer.BadParameter(
            f"unknown {', '.join(unknown)} (known: {', '.join(ALL_ENDPOINTS)})",
            param_hint="--endpoint",
        )
    entry: dict[str, Any] = {"id": key_id, "sha256": sha256}
    if purpose is not None:
        entry["purpose"] = purpose.strip()
    if models:
        entry["models"] = list(dict.fromkeys(models))
    if endpoints:
        entry["endpoints"] = list(dict.fromkeys(endpoints))
    if tools is not True:
        entry["tools"] = tools
    if rails:
        entry["rails"] = list(dict.fromkeys(rails))
    if limits:
        entry["limits"] = limits
    _validate(entry)
    return entry


def _validate(entry: dict[str, Any]) -> None:
    """BadParameter naming the field, as the key file would be refused."""
    from pydantic import ValidationError

    from nimble.security.keys import KeyEntry

    try:
        KeyEntry.model_validate(entry)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise typer.BadParameter(problems) from exc


def entry_yaml(entry: dict[str, Any]) -> str:
    """One entry as a YAML list item, block style, its lists and limits in flow style (as in
    the docs): `- id: a` / `  endpoints: [chat]`."""
    import yaml

    lines = []
    for name, value in entry.items():
        if isinstance(value, list | dict):
            flow = yaml.safe_dump(value, default_flow_style=True, width=1_000, sort_keys=False)
            flow = flow.strip()
            lines.append(f"{name}: {flow}\n")
        else:
            lines.append(yaml.safe_dump({name: value}, default_flow_style=False))
    return "- " + "  ".join(lines)


def _indent(text: str, prefix: str) -> str:
    return "".join(prefix + line for line in text.splitlines(keepends=True))


def append_entry(path: Path, entry: dict[str, Any]) -> int:
    """Append `entry` to the key file at `path` as text (comments and layout kept), check
    that the result parses as a key file holding the old keys and this one, and replace the
    file atomically (its mode kept; 0600 when new). The number of keys in the file."""
    import yaml

    from nimble.config.settings import ALL_ENDPOINTS
    from nimble.errors import ConfigError
    from nimble.security.keys import parse_key_file

    target = path.resolve()
    try:
        text: str | None = target.read_text()
    except FileNotFoundError:
        text = None
    try:
        old = yaml.safe_load(text or "")
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML ({exc})") from exc
    body = text if not text or text.endswith("\n") else text + "\n"
    if old is None:  # no file, or only comments
        new_text = (body or "") + "keys:\n" + _indent(entry_yaml(entry), "  ")
    else:
        if not isinstance(old, dict) or "keys" not in old:
            raise ValueError("not a key file (no top-level `keys:`)")
        new_text = f"{body}{_indent(entry_yaml(entry), _item_indent(body or ''))}"
        try:
            appended = yaml.safe_load(new_text)
        except yaml.YAMLError:
            appended = None
        if appended != {**old, "keys": [*(old["keys"] or []), entry]}:
            raise ValueError(
                "`keys:` is not a block list at the end of the file: paste the entry by hand"
            )
    mode = stat.S_IMODE(target.stat().st_mode) if text is not None else 0o600
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(new_text)
        os.chmod(tmp, mode)
        try:
            count = len(parse_key_file(Path(tmp), ALL_ENDPOINTS))
        except ConfigError as exc:
            raise ValueError(str(exc).replace(tmp, str(target))) from exc
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    return count


def _item_indent(text: str) -> str:
    """The indentation of the key file's list items (two spaces if it has none yet)."""
    found = re.search(r"^( *)- ", text, flags=re.MULTILINE)
    return found.group(1) if found else "  "


@app.command("hash")
def hash_command() -> None:
    """Print the sha256 of a key read from stdin, for the key file (keys you bring yourself).

    Surrounding whitespace is dropped; on a terminal the key is asked for, hidden.
    """
    from nimble.security.keys import hash_key

    raw = typer.prompt("API key", hide_input=True) if sys.stdin.isatty() else sys.stdin.read()
    key = raw.strip()
    if not key or any(c.isspace() for c in key):
        typer.echo("error: expected one key (no spaces) on stdin", err=True)
        raise typer.Exit(2)
    if len(key) < MIN_KEY_LENGTH:
        typer.echo(
            f"warning: a key under {MIN_KEY_LENGTH} characters can be guessed from its sha256; "
            "`nimble keys create` makes 256-bit ones",
            err=True,
        )
    typer.echo(hash_key(key))


@app.command("list")
def list_command(
    path: Annotated[Path, typer.Argument(metavar="FILE", help="The key file.")],
) -> None:
    """Print each key of a key file: its id, its ref (how the deployment record and the
    metrics name it) and its purpose. Never a key or a hash."""
    from nimble.config.settings import ALL_ENDPOINTS
    from nimble.errors import ConfigError
    from nimble.security.keys import parse_key_file

    try:
        keys = parse_key_file(path, ALL_ENDPOINTS)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    width = max((len(key.id) for key in keys), default=2)
    typer.echo(f"{'ID':<{width}}  {'REF':<16}  PURPOSE")
    for key in keys:
        typer.echo(f"{key.id:<{width}}  {key.ref:<16}  {key.purpose or '-'}")
