"""admission counters: queue numbers, per-user usage, batches; no notification on insert

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 09:00:00

Admitting a job used to count rows that grow with the queue and with a user's day (the
user's active jobs, the day's images, the jobs ahead in the queue). Now:

* jobs.queue_seq: each job's number in the order of submission (the 'job_seq' counter);
  a queued job's position is its number minus the queue head's (one indexed lookup);
* user_usage: a user's active jobs and the day's images, moved in the same transaction
  as every transition that changes them;
* jobs.batch_id: the jobs of one submission with n > 1 (an idempotent retry finds them).

Existing rows are counted once here. On PostgreSQL, a new job no longer notifies the
feed (nobody follows a job before it exists; a stream reads the job itself when it
opens), which takes a NOTIFY off every submission.
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMN, not batch mode: see 0005
    op.add_column("jobs", sa.Column("queue_seq", sa.BigInteger(), nullable=True))
    op.add_column("jobs", sa.Column("batch_id", sa.String(36), nullable=True))
    op.create_index("ix_jobs_status_queue_seq", "jobs", ["status", "queue_seq"])
    op.create_index("ix_jobs_batch_id", "jobs", ["batch_id"])
    op.create_table(
        "user_usage",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("active_jobs", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("images_today", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name="fk_user_usage_user_id_users"),
        sa.PrimaryKeyConstraint("user_id", name="pk_user_usage"),
    )
    op.create_table(
        "counters",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_counters"),
    )
    bind = op.get_bind()
    # number the jobs still in line (and running: a retry puts them back), oldest first
    waiting = bind.execute(sa.text(
        "SELECT id FROM jobs WHERE status IN ('queued', 'running') "
        "ORDER BY created_at, id")).scalars().all()
    for number, job_id in enumerate(waiting, start=1):
        bind.execute(sa.text("UPDATE jobs SET queue_seq = :n WHERE id = :id"),
                     {"n": number, "id": job_id})
    bind.execute(sa.text("INSERT INTO counters (name, value) VALUES ('job_seq', :n)"),
                 {"n": len(waiting)})
    now = datetime.now(UTC)
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    bind.execute(sa.text(
        "INSERT INTO user_usage (user_id, active_jobs, day, images_today) "
        "SELECT users.id, "
        "  (SELECT count(*) FROM jobs WHERE jobs.user_id = users.id "
        "   AND jobs.status IN ('queued', 'running')), :today, "
        "  (SELECT count(*) FROM jobs WHERE jobs.user_id = users.id "
        "   AND jobs.created_at >= :day_start AND jobs.status != 'failed') "
        "FROM users").bindparams(sa.bindparam("today", type_=sa.Date()),
                                 sa.bindparam("day_start", type_=sa.DateTime(timezone=True))),
        {"today": now.date(), "day_start": day_start})
    if bind.dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS jobs_changed_insert_delete ON jobs")
        op.execute("CREATE TRIGGER jobs_changed_delete AFTER DELETE ON jobs "
                   "FOR EACH ROW EXECUTE FUNCTION clipgan_job_changed()")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS jobs_changed_delete ON jobs")
        op.execute("CREATE TRIGGER jobs_changed_insert_delete AFTER INSERT OR DELETE ON jobs "
                   "FOR EACH ROW EXECUTE FUNCTION clipgan_job_changed()")
    op.drop_table("counters")
    op.drop_table("user_usage")
    op.drop_index("ix_jobs_batch_id", table_name="jobs")
    op.drop_index("ix_jobs_status_queue_seq", table_name="jobs")
    op.execute("ALTER TABLE jobs DROP COLUMN batch_id")
    op.execute("ALTER TABLE jobs DROP COLUMN queue_seq")
