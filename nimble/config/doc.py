"""The generated settings table (docs/configuration.md and `nimble settings-doc`)."""

from __future__ import annotations

from nimble.config.service import ServiceSettings, fields_in_order
from nimble.config.settings import Settings


def format_default(value: object) -> str:
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value) or "(none)"
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def settings_table(cls: type[ServiceSettings] = Settings, own_only: bool = False) -> str:
    """The table of `cls`'s settings (`own_only`: those every service has left out)."""
    lines = [
        "| Flag | Environment variable | Default | Description |",
        "|---|---|---|---|",
    ]
    for name, field in fields_in_order(cls):
        if own_only and name in ServiceSettings.model_fields:
            continue
        flag = "--" + name.replace("_", "-")
        env = "NIMBLE_" + name.upper()
        description = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{flag}` | `{env}` | `{format_default(field.default)}` | {description} |")
    return "\n".join(lines)
