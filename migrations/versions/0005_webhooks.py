"""webhooks: a per-user signing secret, a job's webhook, and the delivery outbox

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 10:00:00

A job may name a URL to call when it ends. The call is recorded in
webhook_deliveries in the same transaction that ends the job (an outbox), and a
sender in any web process delivers it, at least once, with retries.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


# Plain ADD/DROP COLUMN (SQLite >= 3.35 has both), not batch mode: rebuilding users on
# SQLite would lose the expression index that makes names case-insensitive (0003).
_COLUMNS = {"users": [sa.Column("webhook_secret", sa.String(64), nullable=True)],
            "jobs": [sa.Column("webhook_url", sa.String(2048), nullable=True),
                     sa.Column("webhook_events", sa.JSON(), nullable=True)]}


def upgrade() -> None:
    for table, columns in _COLUMNS.items():
        for column in columns:
            op.add_column(table, column)
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE",
                                name="fk_webhook_deliveries_job_id_jobs"),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
    )
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries",
                    ["status", "next_attempt_at"])
    op.create_index("ix_webhook_deliveries_job_id", "webhook_deliveries", ["job_id"])


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    for table, columns in _COLUMNS.items():
        for column in columns:
            op.execute(f"ALTER TABLE {table} DROP COLUMN {column.name}")
