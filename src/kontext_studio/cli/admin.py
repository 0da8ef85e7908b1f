"""``kontext admin``: users, API keys and credits of the service database."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from kontext_studio.cli.common import JsonOpt
from kontext_studio.cli.help import Group
from kontext_studio.cli.output import escape, handles_errors, out, print_json
from kontext_studio.core.errors import InvalidRequest
from kontext_studio.settings import Settings

admin = typer.Typer(cls=Group, help="Users, API keys and credits of the service database.", no_args_is_help=True,
                    rich_markup_mode=None)


def _accounts() -> Any:
    from kontext_studio.service.accounts import SqlAccounts
    from kontext_studio.service.db import make_engine, make_session_factory, upgrade

    settings = Settings.from_env()
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.service_database_url)
    upgrade(engine)
    return SqlAccounts(make_session_factory(engine), free=settings.free)


def _user(accounts: Any, email: str) -> Any:
    user = accounts.get_user_by_email(email)
    if user is None:
        raise InvalidRequest(f"no user {email!r}; create it with: kontext admin create-user {email}", field="email")
    return user


@admin.command("create-user")
@handles_errors
def admin_create_user(
    email: Annotated[str, typer.Argument(help="The user's email (their login name).")],
    name: Annotated[str, typer.Option(help="Display name.")] = "",
    is_admin: Annotated[bool, typer.Option("--admin", help="Make the user an administrator.")] = False,
    credits: Annotated[int, typer.Option(help="Credits to grant now.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Create a user and their first API key (shown once)."""
    accounts = _accounts()
    user = accounts.create_user(email, name, is_admin=is_admin)
    if credits:
        accounts.grant(user.id, credits)
    key, _ = accounts.create_api_key(user.id, "first key")
    if as_json:
        print_json({"user_id": user.id, "email": email, "api_key": key, "credits": credits})
        return
    out.print(escape(f"created {email} (id {user.id}) with {credits} credits\nAPI key (shown once): {key}"),
              highlight=False)


@admin.command("create-key")
@handles_errors
def admin_create_key(email: str, name: Annotated[str, typer.Option(help="Label for the key.")] = "",
                     as_json: JsonOpt = False) -> None:
    """Create another API key for a user (shown once)."""
    accounts = _accounts()
    key, record = accounts.create_api_key(_user(accounts, email).id, name)
    if as_json:
        print_json({"api_key": key, "prefix": record.prefix})
        return
    out.print(escape(f"API key (shown once): {key}"), highlight=False)


@admin.command("grant")
@handles_errors
def admin_grant(email: str, credits: int, as_json: JsonOpt = False) -> None:
    """Grant credits to a user."""
    accounts = _accounts()
    balance = accounts.grant(_user(accounts, email).id, credits)
    if as_json:
        print_json({"available": balance.available, "held": balance.held})
        return
    out.print(escape(f"{email}: {balance.available} credits available ({balance.held} held)"), highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``admin`` group to ``app``."""
    app.add_typer(admin, name="admin")
