"""`nimble audit verify FILE`: check the hash chain of an audit log."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="The audit log: one hash-chained JSON line per request (--audit-log).",
)


@app.command("verify")
def verify_command(
    file: Annotated[Path, typer.Argument(help="The audit log file.", show_default=False)],
    prev: Annotated[
        str | None,
        typer.Option(
            "--prev",
            metavar="SHA256",
            help="Expected `prev` of the first line, for a file that continues an earlier "
            "one (default: 64 zeros, a fresh chain).",
            show_default=False,
        ),
    ] = None,
    anchor: Annotated[
        str | None,
        typer.Option(
            "--anchor",
            metavar="SHA256",
            help="A line hash noted earlier (the `last sha256` of a previous run): fail if no "
            "line of the file has it (the file was cut before it, or rewritten).",
            show_default=False,
        ),
    ] = None,
    max_problems: Annotated[
        int, typer.Option("--max-problems", min=1, help="Problems to print at most.")
    ] = 20,
) -> None:
    """Check every line: valid JSON, chained to the line before it by sha256.

    Exit 0 and `ok: N lines, last sha256 H` when the chain is whole.

    Exit 1 and one line per problem (line number, what is wrong) when it is not.

    Exit 2 when the file cannot be read.
    """
    from nimble.security.audit import GENESIS, verify  # imported late: keeps --help fast

    for name, value in (("--prev", prev), ("--anchor", anchor)):
        if value is not None and not _is_sha256(value):
            raise typer.BadParameter("expected 64 hex digits", param_hint=name)
    try:
        result = verify(
            file,
            start=(prev or GENESIS).lower(),
            anchor=anchor.lower() if anchor else None,
            max_problems=max_problems,
        )
    except OSError as exc:
        typer.echo(f"error: {file}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from exc
    if result.ok:
        anchored = f" (anchor at line {result.anchor_line})" if result.anchor_line else ""
        typer.echo(f"ok: {result.lines} lines, last sha256 {result.last_hash}{anchored}")
        return
    for problem in result.problems:
        typer.echo(f"{file}: {problem}")
    more = result.problem_count - len(result.problems)
    typer.echo(
        f"FAILED: {result.problem_count} problem{'s' if result.problem_count > 1 else ''} in "
        f"{result.lines} lines" + (f" ({more} not shown)" if more else "")
    )
    raise typer.Exit(1)


def _is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value.lower())
