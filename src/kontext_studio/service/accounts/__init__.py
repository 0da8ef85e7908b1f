"""Accounts: users, hashed API keys and the double-entry credits ledger.

``accounts_base`` is the interface, ``accounts_common`` its records and errors, ``accounts_sql`` the
implementation over SQLAlchemy (SQLite and PostgreSQL).
"""

from kontext_studio.service.accounts.accounts_base import AccountsBase
from kontext_studio.service.accounts.accounts_common import (
    AccountsError,
    ApiKeyRecord,
    Conflict,
    CreditBalance,
    CreditHold,
    CreditSettlement,
    InsufficientCredits,
    NotFound,
    UserRecord,
)
from kontext_studio.service.accounts.accounts_sql import SqlAccounts

__all__ = [
    "AccountsBase",
    "AccountsError",
    "ApiKeyRecord",
    "Conflict",
    "CreditBalance",
    "CreditHold",
    "CreditSettlement",
    "InsufficientCredits",
    "NotFound",
    "SqlAccounts",
    "UserRecord",
]
