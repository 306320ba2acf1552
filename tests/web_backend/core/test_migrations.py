"""Migrations create every table and remove them again, on SQLite and PostgreSQL."""

from sqlalchemy import create_engine, inspect

from web_backend.core import migrate
from web_backend.core.models import Base

TABLES = {"users", "auth_sessions", "refresh_tokens", "jobs", "webhook_deliveries",
          "user_usage", "counters", "api_keys", "blobs", "blob_refs", "deletions", "leases"}


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(database_url: str) -> None:
    # the fixture already upgraded to head
    assert _tables(database_url) == TABLES == set(Base.metadata.tables)
    assert migrate.current(database_url) == "0009"
    migrate.downgrade(database_url, "base")
    assert _tables(database_url) == set()
    assert migrate.current(database_url) is None
    migrate.upgrade(database_url)
    assert _tables(database_url) == TABLES


def test_models_match_the_migrations(database_url: str) -> None:
    """Autogenerate finds nothing to do: the models and the migration agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []
