"""``/v1/admin/settings``: settings an administrator enters instead of an environment variable (the BFL API
key for the hosted models). The key is stored encrypted and never sent back: the API says only whether
one is set."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field

from kontext_studio.core.engine import Editor
from kontext_studio.core.errors import KontextError
from kontext_studio.service.accounts.accounts_common import UserRecord
from kontext_studio.service.admin import BFL_KEY, SqlServerSettings, install_bfl_key


class AdminOnly(KontextError):
    """The request needs an administrator."""

    code = "forbidden"
    http_status = 403


class BflKeyIn(BaseModel):
    key: str = Field(min_length=1, max_length=200, description="the API key from your BFL account")


def require_admin(user: UserRecord) -> None:
    """Raise AdminOnly unless ``user`` is an administrator."""
    if not user.is_admin:
        raise AdminOnly("only an administrator of this server can change its settings")


def admin_settings_router(store: SqlServerSettings, editor: Editor, user: Callable[..., UserRecord]) -> APIRouter:
    """The settings routes (administrators only).

    Args:
        store: the encrypted settings.
        editor: the engine (the hosted backend is installed into it when a key is saved).
        user: the dependency that authenticates a request.
    """
    router = APIRouter(tags=["admin"])

    @router.get("/v1/admin/settings")
    def read(me: UserRecord = Depends(user)) -> dict[str, Any]:
        """Which settings are set (never their values)."""
        require_admin(me)
        state = store.state(BFL_KEY)
        return {"bfl_api_key": {"set": state.set,
                                "updated_at": state.updated_at.isoformat() if state.updated_at else None}}

    @router.put("/v1/admin/settings/bfl-api-key", status_code=204)
    def put_key(body: BflKeyIn, me: UserRecord = Depends(user)) -> Response:
        """Store the BFL API key and switch the hosted models on with it (effective at once)."""
        require_admin(me)
        install_bfl_key(editor, body.key)
        store.put(BFL_KEY, body.key.strip(), me.id)
        return Response(status_code=204)

    @router.delete("/v1/admin/settings/bfl-api-key", status_code=204)
    def delete_key(me: UserRecord = Depends(user)) -> Response:
        """Forget the stored key; the hosted models go back to unavailable."""
        require_admin(me)
        store.delete(BFL_KEY)
        install_bfl_key(editor, None)
        return Response(status_code=204)

    return router
