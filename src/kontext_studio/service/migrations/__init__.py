"""Numbered Alembic migrations of the service schema; run them with ``kontext_studio.service.db.migrate``.

The same revisions run on SQLite (through Alembic's batch mode) and PostgreSQL. There is no alembic.ini:
``migrate.alembic_config`` builds the configuration in code. To write a new revision, from the repository
root::

    python -c "from kontext_studio.service.db.migrate import revision; revision('sqlite:///tmp.db', 'add x')"

then edit the generated ``versions/NNNN_*.py`` and keep ``db/models.py`` in step (a test compares them).
"""
