"""Typer options generated from `Settings`: every setting is a flag and a NIMBLE_* variable."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal, get_args, get_origin

import typer

from nimble.config import Settings
from nimble.config.doc import format_default
from nimble.config.service import ServiceSettings, fields_in_order


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(scalar type, is_multiple) of a field annotation (Optional, tuple[...], Annotated)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _base_type(get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        return _base_type(inner[0])
    if origin is tuple:
        return get_args(annotation)[0], True
    return annotation, False


def _cli_type(scalar: Any) -> Any:
    if get_origin(scalar) is Literal or scalar in (int, float, str, bool):
        return scalar
    return str


def settings_parameters(cls: type[ServiceSettings] = Settings) -> list[inspect.Parameter]:
    """One keyword parameter per settings field, defaults None so that env and YAML apply."""
    params = []
    for name, field in fields_in_order(cls):
        scalar, multiple = _base_type(field.annotation)
        # parentheses, not brackets: rich would read "[env: ...]" as markup
        help_text = (
            f"{field.description} (env: NIMBLE_{name.upper()}; "
            f"default: {format_default(field.default)})"
        )
        flag = "--" + name.replace("_", "-")
        decls = [f"{flag}/--no-{name.replace('_', '-')}"] if scalar is bool else [flag]
        cli_type = _cli_type(scalar)
        annotation = list[cli_type] | None if multiple else cli_type | None  # type: ignore[valid-type]
        metavar = None if scalar is bool else name.upper()
        option = typer.Option(*decls, help=help_text, show_default=False, metavar=metavar)
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[annotation, option],
            )
        )
    return params


def with_settings_options(
    func: Callable[..., Any], keep: bool = False, cls: type[ServiceSettings] = Settings
) -> Callable[..., Any]:
    """Give `func(**values)` a signature with one option per setting (typer reads it).
    With `keep`, the function's own parameters come first and replace settings of the same
    name; the settings arrive in `**values`."""
    own: list[inspect.Parameter] = []
    if keep:
        hints = typing.get_type_hints(func, include_extras=True)  # string annotations → types
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in inspect.signature(func).parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
    taken = {p.name for p in own}
    settings = [p for p in settings_parameters(cls) if p.name not in taken]
    func.__signature__ = inspect.Signature([*own, *settings])  # type: ignore[attr-defined]
    return func


def given(values: dict[str, Any]) -> dict[str, Any]:
    """Drop options the user did not give (None, or an empty list for repeatable flags)."""
    return {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in values.items()
        if v is not None and v != []
    }
