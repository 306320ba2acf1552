"""Migrations create every table and remove them again, on SQLite and PostgreSQL."""

from datetime import timedelta

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


def test_0009_gives_existing_pictures_references(make_settings, tmp_path) -> None:
    """A deployment from before 0009 upgrades with every picture its jobs name held by
    them (sizes unknown until `clipgan storage gc` reads the store), so deleting one of
    two jobs that share a picture keeps it."""
    import asyncio

    from fastapi.testclient import TestClient
    from sqlalchemy import select

    from tests.web_backend.helpers import Account
    from tests.web_backend.jobs.test_jobs import finish, png
    from web_backend.app import create_app
    from web_backend.core.models import Blob, BlobRef
    from web_backend.storage import gc

    settings = make_settings()
    url = settings.data.resolved_database_url
    with TestClient(create_app(settings)) as client:
        alice = Account(client, "alice")
        first, second = (alice.post("/v1/jobs", json={"prompt": "smile"}).json()["id"]
                         for _ in range(2))
    app = create_app(settings)
    with TestClient(app):
        finish(app, first, png((1, 1, 1)), preview=png((2, 2, 2)))
        finish(app, second, png((1, 1, 1)))
    migrate.downgrade(url, "0008")  # as it was before: jobs name keys, nothing else
    migrate.upgrade(url)
    app = create_app(settings)
    with TestClient(app) as client:
        services = app.state.services
        with services.session_factory() as session:
            sizes = dict(session.execute(select(Blob.key, Blob.size)).all())
            held = set(session.execute(select(BlobRef.owner, BlobRef.key)).all())
        assert set(sizes.values()) == {None} and len(sizes) == 2
        assert len(held) == 3 and {owner for owner, _ in held} == {first, second}
        found = asyncio.run(gc.plan(services.blobs, grace=timedelta(0)))
        assert found.orphan_objects == {} and found.unreferenced == {}
        asyncio.run(gc.apply(services.blobs, found))  # learns the sizes
        with services.session_factory() as session:
            assert None not in set(session.scalars(select(Blob.size)).all())
        alice = Account.__new__(Account)
        alice.__dict__.update(client=client, username="alice", password="correct horse")
        alice.sign_in()
        assert alice.delete(f"/v1/jobs/{first}").json()["deleted"] is True
        assert alice.get(f"/v1/jobs/{second}/image").content == png((1, 1, 1))
