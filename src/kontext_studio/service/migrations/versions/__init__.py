"""Revision files, numbered ``0001``, ``0002``, ... (Alembic ignores this module)."""
