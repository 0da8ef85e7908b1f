"""Users and API keys: hashed, prefixed, compared in constant time; revoked keys stop working."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from kontext_studio.core.errors import InvalidRequest, KontextError
from kontext_studio.service.accounts import (
    Conflict,
    InsufficientCredits,
    NotFound,
    SqlAccounts,
    UserRecord,
    accounts_sql,
)
from kontext_studio.service.accounts.accounts_common import hash_api_key, parse_key_prefix
from kontext_studio.service.db import ApiKey, Base


def test_error_codes_are_stable_kontext_errors() -> None:
    codes = {cls: cls.code for cls in (NotFound, Conflict, InsufficientCredits)}
    assert codes == {NotFound: "not_found", Conflict: "conflict", InsufficientCredits: "insufficient_credits"}
    assert all(issubclass(cls, KontextError) for cls in codes)
    err = InsufficientCredits(available=3, required=8)
    assert (err.available, err.required) == (3, 8) and "8 required, 3 available" in str(err)


def test_create_user_normalises_and_refuses_duplicates(accounts: SqlAccounts) -> None:
    user = accounts.create_user("  Ada.Lovelace+ks@Example.COM ", "Ada", is_admin=True)
    assert user.email == "ada.lovelace+ks@example.com" and user.name == "Ada" and user.is_admin
    assert accounts.get_user(user.id) == user
    assert accounts.get_user_by_email("ADA.LOVELACE+ks@example.com") == user
    assert accounts.balance(user.id).available == 0
    with pytest.raises(Conflict):
        accounts.create_user("ada.lovelace+KS@example.com")
    for bad in ("", "no-at-sign", "a@", "@b", "a b@c.d"):
        with pytest.raises(InvalidRequest):
            accounts.create_user(bad)
    with pytest.raises(NotFound):
        accounts.get_user(10**9)
    assert accounts.get_user_by_email("nobody-here@example.com") is None


def test_api_key_lifecycle(accounts: SqlAccounts, new_user: Callable[..., UserRecord]) -> None:
    alice, bob = new_user("Alice"), new_user("Bob")
    plaintext, record = accounts.create_api_key(alice.id, "laptop")
    assert plaintext.startswith("ks_") and plaintext.startswith(record.prefix + "_")
    assert len(record.prefix) == 11 and parse_key_prefix(plaintext) == record.prefix
    assert record.active and record.name == "laptop" and record.last_used_at is None

    assert accounts.authenticate(plaintext) == alice
    [listed] = accounts.list_api_keys(alice.id)
    assert listed.prefix == record.prefix and listed.last_used_at is not None
    assert accounts.list_api_keys(bob.id) == []

    # Right prefix, wrong secret; unknown prefix; malformed; empty: all None, never an exception.
    assert accounts.authenticate(plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")) is None
    assert accounts.authenticate("ks_ZZZZZZZZ_" + plaintext[12:]) is None
    for junk in ("", "Bearer x", plaintext[:11], "ks_abc", "x" * 5000, plaintext + "\x00"):
        assert accounts.authenticate(junk) is None

    with pytest.raises(NotFound):  # Bob cannot revoke (or learn about) Alice's key
        accounts.revoke_key(record.id, user_id=bob.id)
    assert accounts.authenticate(plaintext) == alice
    revoked = accounts.revoke_key(record.id, user_id=alice.id)
    assert revoked.revoked_at is not None and not revoked.active
    assert accounts.authenticate(plaintext) is None
    assert accounts.revoke_key(record.id) == revoked  # idempotent
    with pytest.raises(NotFound):
        accounts.revoke_key(10**9)
    with pytest.raises(NotFound):
        accounts.create_api_key(10**9)


def test_keys_are_compared_in_constant_time(
    accounts: SqlAccounts, new_user: Callable[..., UserRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    plaintext, _ = accounts.create_api_key(new_user().id)
    calls: list[tuple[str, str]] = []
    real = accounts_sql.hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(accounts_sql.hmac, "compare_digest", spy)
    assert accounts.authenticate(plaintext) is not None
    assert accounts.authenticate("ks_ZZZZZZZZ_" + plaintext[12:]) is None  # a miss still compares (a dummy)
    assert len(calls) == 2 and calls[0][0] == calls[0][1] == hash_api_key(plaintext)


def test_database_never_holds_a_plaintext_key(
    accounts: SqlAccounts, sessions: sessionmaker[Session], new_user: Callable[..., UserRecord]
) -> None:
    user = new_user()
    issued = [accounts.create_api_key(user.id, f"key {i}")[0] for i in range(3)]
    for plaintext in issued:
        accounts.authenticate(plaintext)
    accounts.revoke_key(accounts.list_api_keys(user.id)[0].id)

    dump: list[str] = []
    with sessions() as session:
        for table in Base.metadata.sorted_tables:
            for row in session.execute(select(table)):
                dump.extend(str(value) for value in row)
    text = "\n".join(dump)
    for plaintext in issued:
        secret = plaintext.split("_", 2)[2]
        assert plaintext not in text and secret not in text
        assert hash_api_key(plaintext) in text  # what is stored instead
    with sessions() as session:
        stored = session.scalars(select(ApiKey.hash).where(ApiKey.user_id == user.id)).all()
    assert sorted(stored) == sorted(hash_api_key(p) for p in issued)


def test_authentication_reads_and_only_refreshes_last_used(
    accounts: SqlAccounts, sessions: sessionmaker[Session], new_user: Callable[..., UserRecord],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every API request authenticates: a key used a moment ago costs one read and no write; the stamp of
    its last use is refreshed once the resolution has passed, and a revocation counts on the next call."""
    user = new_user()
    plaintext, record = accounts.create_api_key(user.id)
    assert accounts.authenticate(plaintext) == user
    [stamped] = accounts.list_api_keys(user.id)
    assert stamped.last_used_at is not None

    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        statements.append(statement.split()[0].upper())
        if statement.upper().startswith("BEGIN") and len(statements) == 1:
            assert "IMMEDIATE" not in statement.upper()

    engine = sessions.kw["bind"]
    event.listen(engine, "before_cursor_execute", seen)
    try:
        assert accounts.authenticate(plaintext) == user
        assert [s for s in statements if s != "BEGIN"] == ["SELECT"]  # SQLite: BEGIN DEFERRED, no write lock
        monkeypatch.setattr(accounts_sql, "LAST_USED_RESOLUTION", timedelta(0))
        assert accounts.authenticate(plaintext) == user
        assert "UPDATE" in statements
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    [refreshed] = accounts.list_api_keys(user.id)
    assert refreshed.last_used_at is not None and refreshed.last_used_at > stamped.last_used_at
    accounts.revoke_key(record.id)
    assert accounts.authenticate(plaintext) is None
