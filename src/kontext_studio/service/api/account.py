"""``/v1/account``: balance, ledger and API keys."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from kontext_studio.service.accounts.accounts_common import ApiKeyRecord
from kontext_studio.service.api.deps import Svc, User
from kontext_studio.service.security.text import check_text

router = APIRouter(prefix="/v1", tags=["account"])


class KeyIn(BaseModel):
    name: str = Field(default="", max_length=100)


def key_public(record: ApiKeyRecord) -> dict[str, Any]:
    """An API key as shown to its owner (never the secret)."""
    return {"id": record.id, "prefix": record.prefix, "name": record.name,
            "created_at": record.created_at.isoformat(),
            "last_used_at": record.last_used_at and record.last_used_at.isoformat(),
            "revoked_at": record.revoked_at and record.revoked_at.isoformat(), "active": record.active}


@router.get("/account")
def account(svc: Svc, user: User) -> dict[str, Any]:
    bal = svc.accounts.balance(user.id)
    return {"id": user.id, "email": user.email, "credits": {"available": bal.available, "held": bal.held},
            "free": svc.free}


@router.get("/account/ledger")
def account_ledger(svc: Svc, user: User, limit: int = 100) -> dict[str, Any]:
    """The user's credit movements, newest first (holds, captures, releases, grants)."""
    return {"results": [{"id": e.id, "job_id": e.job_id, "account": e.account, "amount": e.amount, "kind": e.kind,
                         "created_at": e.created_at.isoformat()}
                        for e in svc.accounts.ledger(user.id, max(1, min(500, limit)))]}


@router.get("/account/keys")
def list_keys(svc: Svc, me: User) -> dict[str, Any]:
    """The caller's API keys (prefix and name; the secret is never shown again)."""
    return {"results": [key_public(k) for k in svc.accounts.list_api_keys(me.id)]}


@router.post("/account/keys", status_code=201)
def create_key(body: KeyIn, svc: Svc, me: User) -> dict[str, Any]:
    """A new API key; ``key`` is the secret, shown in this answer only."""
    plaintext, record = svc.accounts.create_api_key(me.id, check_text(body.name.strip(), "name"))
    return {**key_public(record), "key": plaintext}


@router.delete("/account/keys/{key_id}")
def revoke_key(svc: Svc, me: User, key_id: int = PathParam(ge=1, le=2**31 - 1)) -> dict[str, Any]:
    """Revoke one of the caller's keys; requests with it, and studio sessions opened with it, answer 401 from
    now on."""
    return key_public(svc.accounts.revoke_key(key_id, user_id=me.id))
