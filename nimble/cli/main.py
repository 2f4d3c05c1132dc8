"""`nimble` entry point (typer + rich)."""

from __future__ import annotations

import sys
from typing import Any

import typer

from nimble.cli import audit, keys, models
from nimble.cli.options import given, with_settings_options
from nimble.config.doc import settings_table
from nimble.version import __version__

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="nimble: an OpenAI-compatible inference microservice on the best engine for the hardware.",
)
app.add_typer(audit.app, name="audit")
app.add_typer(keys.app, name="keys")
models.register(app)


@app.command()
def version() -> None:
    """Print nimble's version."""
    typer.echo(__version__)


@app.command("settings-doc")
def settings_doc(
    gateway: bool = typer.Option(False, help="The settings of `nimble gateway` of its own."),
) -> None:
    """Print the settings table (Markdown): flags, env variables, defaults."""
    if gateway:
        from nimble.config.gateway import GatewaySettings

        typer.echo(settings_table(GatewaySettings, own_only=True))
    else:
        typer.echo(settings_table())


@app.command("serve")
@with_settings_options
def serve(**values: Any) -> None:
    """Serve models behind an OpenAI-compatible API.

    Every option is also a NIMBLE_* environment variable or a key of the --config YAML file
    (CLI > env > YAML > defaults). With no options: the default chat and embedding models on
    127.0.0.1:8000.
    """
    from nimble.cli.serve import serve as run  # imported late: keeps `nimble --help` fast

    sys.exit(run(given(values)))


def _gateway(**values: Any) -> None:
    """Serve one OpenAI-compatible endpoint in front of `nimble serve` replicas: requests go
    by their model to the replicas that serve it, and to the one that served the prompt's
    prefix last unless it is busier (docs/scaling.md).

    Every option is also a NIMBLE_* environment variable or a key of the --config YAML file.
    """
    from nimble.cli.gateway import gateway as run  # imported late: keeps `nimble --help` fast

    sys.exit(run(given(values)))


def _register_gateway() -> None:
    from nimble.config.gateway import GatewaySettings

    command = with_settings_options(_gateway, cls=GatewaySettings)
    app.command("gateway")(command)


_register_gateway()


def main() -> None:
    app(prog_name="nimble")


if __name__ == "__main__":
    main()
