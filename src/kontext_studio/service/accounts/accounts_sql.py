"""Accounts and credits over SQLAlchemy, identical on SQLite and PostgreSQL.

How the ledger guarantees hold under concurrency:

* **No overdraw.** A hold is one conditional statement, ``UPDATE balances SET available = available - :n,
  held = held + :n WHERE user_id = :u AND available >= :n``. PostgreSQL takes the row lock and re-checks the
  condition against the latest committed row before updating (READ COMMITTED re-evaluation), so concurrent
  holds queue on the row and each sees the previous one's result; SQLite serialises writers (``BEGIN
  IMMEDIATE``). If the update touches no row the hold is refused. ``CHECK (available >= 0)`` and ``CHECK
  (held >= 0)`` back this up: any code path that would drive a balance negative fails in the database.
* **One hold, one settlement per job.** ``holds`` and ``settlements`` are keyed by ``job_id``. The row is
  inserted first, inside a SAVEPOINT; a concurrent or repeated call collides on the primary key (on
  PostgreSQL it waits for the first transaction and then fails), rolls back to the savepoint and returns
  the row that won. Balance updates and ledger entries are written only by the call whose insert
  succeeded, in the same transaction, so they happen exactly once.
"""

from __future__ import annotations

import copy
import hmac
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import cast

from sqlalchemy import ColumnElement, Connection, CursorResult, Engine, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from kontext_studio.service.accounts.accounts_base import AccountsBase
from kontext_studio.service.accounts.accounts_common import (
    GRANTS_ACCOUNT,
    REVENUE_ACCOUNT,
    ApiKeyRecord,
    Conflict,
    CreditBalance,
    CreditHold,
    CreditSettlement,
    InsufficientCredits,
    InvalidRequest,
    LedgerLine,
    NotFound,
    SettlementKind,
    UserRecord,
    available_account,
    generate_api_key,
    hash_api_key,
    held_account,
    normalize_email,
    parse_key_prefix,
)
from kontext_studio.service.db.base import utcnow
from kontext_studio.service.db.models import (
    ApiKey,
    Balance,
    Hold,
    Job,
    LedgerEntry,
    LedgerKind,
    Settlement,
    User,
)

# Compared against when the presented prefix matches no key, so a miss costs the same as a wrong secret.
_DUMMY_HASH = hash_api_key("ks_00000000_not-a-key")
# last_used_at is refreshed at most this often, so authentication is not a write on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)
# Every API request authenticates: the key and its owner in one statement, built once (bound by prefix).
_KEY_AND_OWNER = (select(ApiKey.id.label("key_id"), ApiKey.hash, ApiKey.revoked_at, ApiKey.last_used_at,
                         User.id.label("user_id"), User.email, User.name, User.is_admin, User.created_at)
                  .join(User, User.id == ApiKey.user_id).where(ApiKey.prefix == bindparam("prefix")))


def _user_record(row: User) -> UserRecord:
    return UserRecord(id=row.id, email=row.email, name=row.name, is_admin=row.is_admin, created_at=row.created_at)


def _key_record(row: ApiKey) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row.id,
        user_id=row.user_id,
        prefix=row.prefix,
        name=row.name,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


def _hold_record(row: Hold) -> CreditHold:
    return CreditHold(job_id=row.job_id, user_id=row.user_id, amount=row.amount, created_at=row.created_at)


def _settlement_record(row: Settlement) -> CreditSettlement:
    return CreditSettlement(
        job_id=row.job_id, kind=cast(SettlementKind, row.kind), amount=row.amount, created_at=row.created_at
    )


def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidRequest(f"{name} must be an integer >= {minimum}, got {value!r}", field=name)
    return value


class SqlAccounts(AccountsBase):
    """Accounts and credits stored through SQLAlchemy.

    Each call is its own transaction, committed before it returns. To make a call part of a larger unit of
    work (e.g. mark a job succeeded *and* capture its hold atomically), use :meth:`using`.

    Args:
        sessions: session factory from :func:`kontext_studio.service.db.make_session_factory`.
        free: prices switched off: every hold is recorded with amount 0 and never refused for lack of
            credits (self-hosted installations without billing).
    """

    def __init__(self, sessions: sessionmaker[Session], *, free: bool = False) -> None:
        self._sessions = sessions
        self._free = free
        self._session: Session | None = None
        bind = sessions.kw.get("bind")
        self._read_bind: Engine | None = None
        if isinstance(bind, Engine):
            self._read_bind = (bind.execution_options(sqlite_begin="DEFERRED") if bind.dialect.name == "sqlite"
                               else bind)

    @property
    def free(self) -> bool:
        """Whether prices are switched off."""
        return self._free

    def using(self, session: Session) -> SqlAccounts:
        """A view of these accounts whose calls run inside ``session``, the caller's transaction.

        Each call runs in a SAVEPOINT, so a call that raises leaves the caller's transaction as it was; the
        caller commits or rolls back.

        Args:
            session: an open session (its transaction begins on first use, as usual).

        Returns:
            A new accounts object bound to ``session``; this one is unchanged.
        """
        view = copy.copy(self)
        view._session = session
        return view

    @contextmanager
    def _reading(self) -> Iterator[Session | Connection]:
        """A read-only transaction: the caller's session in a ``using`` view, else a plain connection that
        begins DEFERRED on SQLite (no write lock) and is rolled back when closed."""
        if self._session is not None:
            yield self._session
            return
        if self._read_bind is None:
            with self._sessions() as session:
                yield session
            return
        with self._read_bind.connect() as connection:
            yield connection

    @contextmanager
    def _unit(self) -> Iterator[Session]:
        if self._session is not None:
            with self._session.begin_nested():
                yield self._session
        else:
            with self._sessions.begin() as session:
                yield session

    # --- users --------------------------------------------------------------------------------------

    def create_user(self, email: str, name: str = "", *, is_admin: bool = False) -> UserRecord:
        address = normalize_email(email)
        with self._unit() as s:
            try:
                with s.begin_nested():
                    user = User(email=address, name=str(name), is_admin=bool(is_admin), created_at=utcnow())
                    s.add(user)
                    s.flush()
                    s.add(Balance(user_id=user.id, available=0, held=0))
                    s.flush()
            except IntegrityError:
                if s.scalar(select(User.id).where(User.email == address)) is None:
                    raise
                raise Conflict(f"a user with email {address!r} already exists") from None
            return _user_record(user)

    def get_user(self, user_id: int) -> UserRecord:
        with self._unit() as s:
            return _user_record(self._require_user(s, user_id))

    def get_user_by_email(self, email: str) -> UserRecord | None:
        try:
            address = normalize_email(email)
        except InvalidRequest:
            return None
        with self._unit() as s:
            row = s.scalar(select(User).where(User.email == address))
            return None if row is None else _user_record(row)

    @staticmethod
    def _require_user(s: Session, user_id: int) -> User:
        row = s.get(User, user_id)
        if row is None:
            raise NotFound(f"no user with id {user_id!r}")
        return row

    # --- API keys -----------------------------------------------------------------------------------

    def create_api_key(self, user_id: int, name: str = "") -> tuple[str, ApiKeyRecord]:
        with self._unit() as s:
            self._require_user(s, user_id)
            for _ in range(5):  # a prefix collision (62^8 space) is astronomically rare; retry anyway
                plaintext, prefix, digest = generate_api_key()
                row = ApiKey(user_id=user_id, prefix=prefix, hash=digest, name=str(name), created_at=utcnow())
                try:
                    with s.begin_nested():
                        s.add(row)
                        s.flush()
                except IntegrityError:
                    continue
                return plaintext, _key_record(row)
            raise RuntimeError("could not allocate a unique API key prefix")  # pragma: no cover

    def list_api_keys(self, user_id: int) -> list[ApiKeyRecord]:
        with self._unit() as s:
            rows = s.scalars(select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.id))
            return [_key_record(r) for r in rows]

    def authenticate(self, plaintext: str) -> UserRecord | None:
        if not isinstance(plaintext, str):
            return None
        prefix = parse_key_prefix(plaintext)
        if prefix is None:
            return None
        # Every API request comes through here: one read of the key and its owner together, in a transaction
        # that takes no write lock (a status poll must not queue behind the worker's writes on SQLite). The
        # key's revocation is read on every call, so a revoked key stops working at once.
        with self._reading() as read:
            row = read.execute(_KEY_AND_OWNER, {"prefix": prefix}).first()
        matches = hmac.compare_digest(hash_api_key(plaintext), row.hash if row is not None else _DUMMY_HASH)
        if row is None or not matches or row.revoked_at is not None:
            return None
        now = utcnow()
        if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
            # At most once per resolution per key: the only write authentication ever makes.
            with self._unit() as s:
                s.execute(update(ApiKey).where(ApiKey.id == row.key_id).values(last_used_at=now))
        return UserRecord(id=row.user_id, email=row.email, name=row.name, is_admin=row.is_admin,
                          created_at=row.created_at)

    def revoke_key(self, key_id: int, *, user_id: int | None = None) -> ApiKeyRecord:
        with self._unit() as s:
            row = s.get(ApiKey, key_id)
            if row is None or (user_id is not None and row.user_id != user_id):
                raise NotFound(f"no API key with id {key_id!r}")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                s.flush()
            return _key_record(row)

    # --- credits ------------------------------------------------------------------------------------

    def grant(self, user_id: int, amount: int) -> CreditBalance:
        _check_int("amount", amount, 1)
        with self._unit() as s:
            self._require_user(s, user_id)
            if s.get(Balance, user_id) is None:  # a user made outside create_user
                try:
                    with s.begin_nested():
                        s.add(Balance(user_id=user_id, available=0, held=0))
                except IntegrityError:  # a concurrent grant made it first
                    pass
            s.execute(update(Balance).where(Balance.user_id == user_id).values(available=Balance.available + amount))
            self._entries(s, None, LedgerKind.GRANT, GRANTS_ACCOUNT, available_account(user_id), amount)
            return self._balance(s, user_id)

    def balance(self, user_id: int) -> CreditBalance:
        with self._unit() as s:
            return self._balance(s, user_id)

    @classmethod
    def _balance(cls, s: Session, user_id: int) -> CreditBalance:
        row = s.execute(select(Balance.available, Balance.held).where(Balance.user_id == user_id)).first()
        if row is None:
            cls._require_user(s, user_id)
            return CreditBalance(user_id=user_id, available=0, held=0)
        return CreditBalance(user_id=user_id, available=row.available, held=row.held)

    def ledger(self, user_id: int, limit: int = 100) -> list[LedgerLine]:
        mine = (f"user:{user_id}:available", f"user:{user_id}:held")
        with self._unit() as s:
            rows = s.scalars(select(LedgerEntry).where(LedgerEntry.account.in_(mine))
                             .order_by(LedgerEntry.id.desc()).limit(max(1, min(500, limit)))).all()
            return [LedgerLine(e.id, e.job_id, e.account.rsplit(":", 1)[-1], e.amount, e.kind, e.created_at)
                    for e in rows]

    def hold(self, job_id: str, user_id: int, amount: int) -> CreditHold:
        amount = 0 if self._free else _check_int("amount", amount, 0)
        with self._unit() as s:
            existing = s.get(Hold, job_id)
            if existing is not None:
                return self._same_hold(existing, user_id, amount)
            owner = s.scalar(select(Job.user_id).where(Job.id == job_id))
            if owner is None:
                raise NotFound(f"no job with id {job_id!r}")
            if owner != user_id:
                raise Conflict(f"job {job_id!r} belongs to another user")
            try:
                with s.begin_nested():
                    row = Hold(job_id=job_id, user_id=user_id, amount=amount, created_at=utcnow())
                    s.add(row)
                    s.flush()  # the primary key decides which of two concurrent holds wins
                    moved = self._move(
                        s,
                        user_id,
                        available=-amount,
                        held=amount,
                        condition=None if self._free else Balance.available >= amount,
                    )
                    if not moved and amount > 0:
                        available = s.scalar(select(Balance.available).where(Balance.user_id == user_id))
                        raise InsufficientCredits(available=available or 0, required=amount)
                    self._entries(s, job_id, LedgerKind.HOLD, available_account(user_id), held_account(user_id), amount)
            except IntegrityError:
                winner = s.get(Hold, job_id, populate_existing=True)
                if winner is None:
                    raise
                return self._same_hold(winner, user_id, amount)
            return _hold_record(row)

    @staticmethod
    def _same_hold(existing: Hold, user_id: int, amount: int) -> CreditHold:
        if existing.user_id != user_id or existing.amount != amount:
            raise Conflict(
                f"job {existing.job_id!r} already holds {existing.amount} credits for user {existing.user_id}; "
                f"refusing a second hold of {amount} for user {user_id}"
            )
        return _hold_record(existing)

    def capture(self, job_id: str) -> CreditSettlement:
        return self._settle(job_id, LedgerKind.CAPTURE)

    def release(self, job_id: str) -> CreditSettlement:
        return self._settle(job_id, LedgerKind.RELEASE)

    def _settle(self, job_id: str, kind: LedgerKind) -> CreditSettlement:
        with self._unit() as s:
            existing = s.get(Settlement, job_id)
            if existing is not None:
                return _settlement_record(existing)
            hold = s.get(Hold, job_id)
            if hold is None:
                raise NotFound(f"job {job_id!r} has no credit hold to {kind.value}")
            user_id, amount = hold.user_id, hold.amount
            try:
                with s.begin_nested():
                    row = Settlement(job_id=job_id, kind=kind.value, amount=amount, created_at=utcnow())
                    s.add(row)
                    s.flush()  # the primary key decides which of two concurrent settlements wins
                    if kind is LedgerKind.CAPTURE:
                        self._move(s, user_id, available=0, held=-amount)
                        self._entries(s, job_id, kind, held_account(user_id), REVENUE_ACCOUNT, amount)
                    else:
                        self._move(s, user_id, available=amount, held=-amount)
                        self._entries(s, job_id, kind, held_account(user_id), available_account(user_id), amount)
            except IntegrityError:
                winner = s.get(Settlement, job_id, populate_existing=True)
                if winner is None:
                    raise
                return _settlement_record(winner)
            return _settlement_record(row)

    def get_hold(self, job_id: str) -> CreditHold | None:
        with self._unit() as s:
            row = s.get(Hold, job_id)
            return None if row is None else _hold_record(row)

    def get_settlement(self, job_id: str) -> CreditSettlement | None:
        with self._unit() as s:
            row = s.get(Settlement, job_id)
            return None if row is None else _settlement_record(row)

    @staticmethod
    def _move(
        s: Session, user_id: int, *, available: int, held: int, condition: ColumnElement[bool] | None = None
    ) -> bool:
        """Apply deltas to a balance row in one statement; False when no row matched."""
        if available == 0 and held == 0:
            return True
        stmt = update(Balance).where(Balance.user_id == user_id)
        if condition is not None:
            stmt = stmt.where(condition)
        result = cast(
            CursorResult[tuple[()]],
            s.execute(stmt.values(available=Balance.available + available, held=Balance.held + held)),
        )
        return result.rowcount == 1

    @staticmethod
    def _entries(s: Session, job_id: str | None, kind: LedgerKind, debit: str, credit: str, amount: int) -> None:
        """Write one movement: ``-amount`` on ``debit`` and ``+amount`` on ``credit``."""
        now = utcnow()
        # One INSERT of both rows, without building ORM objects or reading their ids back (every submit and
        # every settlement writes a movement; nothing in the transaction reads the entries' ids).
        s.execute(
            insert(LedgerEntry),
            [
                {"job_id": job_id, "account": debit, "amount": -amount, "kind": kind.value, "created_at": now},
                {"job_id": job_id, "account": credit, "amount": amount, "kind": kind.value, "created_at": now},
            ],
        )

    # --- audit --------------------------------------------------------------------------------------

    def audit(self) -> list[str]:
        problems: list[str] = []
        with self._unit() as s:
            total = s.scalar(select(func.coalesce(func.sum(LedgerEntry.amount), 0)))
            if total != 0:
                problems.append(f"ledger entries sum to {total}, not 0")

            movements = s.execute(
                select(
                    LedgerEntry.job_id,
                    LedgerEntry.kind,
                    func.count(),
                    func.sum(LedgerEntry.amount),
                    func.max(LedgerEntry.amount),
                )
                .where(LedgerEntry.job_id.is_not(None))
                .group_by(LedgerEntry.job_id, LedgerEntry.kind)
            ).all()
            legs = {(job, kind): (count, total, top) for job, kind, count, total, top in movements}
            for (job, kind), (count, total, _) in legs.items():
                if count != 2 or total != 0:
                    problems.append(f"job {job}: {count} {kind} entries summing to {total} (want one pair, 0)")
                if kind == LedgerKind.GRANT:
                    problems.append(f"job {job}: grant entries must not name a job")

            for hold in s.scalars(select(Hold)):
                count, _, top = legs.get((hold.job_id, LedgerKind.HOLD.value), (0, 0, 0))
                if count != 2 or top != hold.amount:
                    problems.append(f"job {hold.job_id}: hold of {hold.amount} has entries {count} x {top}")
            for settlement in s.scalars(select(Settlement)):
                count, _, top = legs.get((settlement.job_id, settlement.kind), (0, 0, 0))
                if count != 2 or top != settlement.amount:
                    problems.append(
                        f"job {settlement.job_id}: {settlement.kind} of {settlement.amount} has entries {count} x {top}"
                    )
                other = LedgerKind.RELEASE if settlement.kind == LedgerKind.CAPTURE else LedgerKind.CAPTURE
                if (settlement.job_id, other.value) in legs:
                    problems.append(f"job {settlement.job_id}: both capture and release entries")
            held_jobs = {h for h in s.scalars(select(Hold.job_id))}
            settled_jobs = {j for j in s.scalars(select(Settlement.job_id))}
            for job, kind in legs:
                if kind == LedgerKind.HOLD and job not in held_jobs:
                    problems.append(f"job {job}: hold entries without a hold")
                if kind in (LedgerKind.CAPTURE, LedgerKind.RELEASE) and job not in settled_jobs:
                    problems.append(f"job {job}: {kind} entries without a settlement")

            sums: dict[str, int] = {
                account: int(total)
                for account, total in s.execute(
                    select(LedgerEntry.account, func.sum(LedgerEntry.amount)).group_by(LedgerEntry.account)
                )
            }
            for bal in s.scalars(select(Balance)):
                if bal.available < 0 or bal.held < 0:
                    problems.append(f"user {bal.user_id}: negative balance {bal.available}/{bal.held}")
                for name, value in (("available", bal.available), ("held", bal.held)):
                    account = f"user:{bal.user_id}:{name}"
                    if sums.get(account, 0) != value:
                        problems.append(f"{account}: balance {value} but entries sum to {sums.get(account, 0)}")
            open_holds = s.scalar(
                select(func.coalesce(func.sum(Hold.amount), 0)).where(Hold.job_id.not_in(select(Settlement.job_id)))
            )
            total_held = s.scalar(select(func.coalesce(func.sum(Balance.held), 0)))
            if open_holds != total_held:
                problems.append(f"unsettled holds total {open_holds} but held balances total {total_held}")
        return problems
