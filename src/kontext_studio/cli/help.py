"""How ``kontext ... --help`` reads: plain value names instead of Python type tags, a usage line in the
conventional ``IMG... INSTRUCTION`` form, and examples at the end.

Typer labels every parameter with its Python annotation (``<list[str]>``, ``<bool>``) and wraps required
arguments in braces; a user reading the help should see ``--seed INTEGER`` and ``IMG... INSTRUCTION``.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

# Python annotation → the word the help shows after an option that takes a value.
_VALUE_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "Path": "PATH", "path": "PATH",
                "file": "FILE", "directory": "DIR"}


def _value_name(param: TyperOption) -> str:
    try:
        label = param.display_type(None).strip("<>")  # type: ignore[arg-type]
    except Exception:  # a choice type needs a context; its metavar is set explicitly instead
        return "VALUE"
    if label.startswith("list[") and label.endswith("]"):
        label = label[5:-1]
    return _VALUE_NAMES.get(label, label.upper())


def _no_type(ctx: Any = None) -> None:
    return None


def plain_params(params: list[Any]) -> None:
    """Give every parameter a plain display: value names for options, nothing for flags, bare argument names."""
    for p in params:
        if isinstance(p, TyperOption):
            if p.is_flag or p.count:
                p.display_type_rich = _no_type  # type: ignore[method-assign]
            elif p.metavar is None:
                p.metavar = _value_name(p)
        elif isinstance(p, TyperArgument):
            name = p.metavar or p.name.upper()
            if p.metavar is None and p.nargs != 1:
                name += "..."
            p.metavar = name
            p.display_type_rich = _no_type  # type: ignore[method-assign]
            usage = name if p.required else f"[{name}]"
            p._usage_display_name = lambda usage=usage: usage  # type: ignore[method-assign,misc]
            p._rich_display_name = lambda name=name: name  # type: ignore[method-assign,misc]


class Command(TyperCommand):
    """A command whose help shows value names, not Python types."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        plain_params(self.params)


class Group(TyperGroup):
    """A command group (``kontext``, ``kontext admin``) whose own options read plainly too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        plain_params(self.params)


def examples(*lines: str) -> str:
    """An epilog listing example invocations, one per line."""
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines)


def plain_help(app: Any) -> None:
    """Give every command and group registered on ``app`` (sub-groups included) the plain help.

    Command modules register their commands as usual (``app.command()(fn)``); this runs once after all
    of them, so a new module needs nothing help-specific. Help text is printed as written: square
    brackets such as "[dev]" are text, not console markup.
    """
    app.rich_markup_mode = None
    if not isinstance(app.info.cls, type) or app.info.cls is TyperGroup:
        app.info.cls = Group
    for info in app.registered_commands:
        if info.cls is None or info.cls is TyperCommand:
            info.cls = Command
    for group in app.registered_groups:
        if not isinstance(group.cls, type) or group.cls is TyperGroup:
            group.cls = Group
        if group.typer_instance is not None:
            plain_help(group.typer_instance)
