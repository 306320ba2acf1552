"""job change feed: NOTIFY on PostgreSQL, an updated_at index for the SQLite poller

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 02:30:00

Every web process follows job changes through one feed (web_backend/live/feed.py).
On PostgreSQL the database itself announces them: a trigger calls pg_notify in the
transaction that changed the row, so a notification is delivered only once the
change is committed and visible, whoever wrote it (a dispatcher, an operator's SQL).
Lease renewals change nothing a watcher sees and announce nothing.
On SQLite one poller per process asks for rows changed since its last look, by
updated_at, which needs the index.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

CHANNEL = "clipgan_jobs"  # web_backend.live.sources.PG_CHANNEL

# what a watcher of a job can see; a change to anything else (the lease) stays quiet
_SEEN = ("status", "progress_step", "progress_total", "score", "preview_key", "result_key",
         "error", "cancel_requested", "seed")


def upgrade() -> None:
    op.create_index("ix_jobs_updated_at", "jobs", ["updated_at"])
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"""
        CREATE FUNCTION clipgan_job_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                PERFORM pg_notify('{CHANNEL}', OLD.id);
            ELSE
                PERFORM pg_notify('{CHANNEL}', NEW.id);
            END IF;
            RETURN NULL;
        END $$""")
    changed = " OR ".join(f"OLD.{column} IS DISTINCT FROM NEW.{column}" for column in _SEEN)
    op.execute("CREATE TRIGGER jobs_changed_insert_delete AFTER INSERT OR DELETE ON jobs "
               "FOR EACH ROW EXECUTE FUNCTION clipgan_job_changed()")
    op.execute(f"CREATE TRIGGER jobs_changed_update AFTER UPDATE ON jobs FOR EACH ROW "
               f"WHEN ({changed}) EXECUTE FUNCTION clipgan_job_changed()")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS jobs_changed_update ON jobs")
        op.execute("DROP TRIGGER IF EXISTS jobs_changed_insert_delete ON jobs")
        op.execute("DROP FUNCTION IF EXISTS clipgan_job_changed()")
    op.drop_index("ix_jobs_updated_at", table_name="jobs")
