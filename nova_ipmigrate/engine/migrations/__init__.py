"""Alembic migrations of the engine database (``ipmigrate-engine db sync``)."""
