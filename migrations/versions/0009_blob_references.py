"""blob references, deletions and leases: pictures that can be deleted

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 14:00:00

Blobs are content-addressed, so two jobs with the same picture share one. To delete a
picture's blob only when nothing else needs it:

* blobs: one row per blob in the store (its size, for storage per user), the row a
  writer and a deleter of the same content lock in turn;
* blob_refs: which job (or upload in flight) refers to which blob, written before
  the blob is stored;
* deletions: deleted jobs and users, for the change pollers (which read rows changed
  since a time, and cannot see a row that is gone); kept an hour;
* leases: work one process does at a time (the retention sweeper);
* jobs.finished_at indexed, for the sweeper.

Existing jobs' results, previews and image prompts get their rows here, sizes unknown
(``clipgan storage gc --apply`` fills them in from the store).
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("key", sa.String(80), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_blobs"),
    )
    op.create_table(
        "blob_refs",
        sa.Column("owner", sa.String(48), nullable=False),
        sa.Column("key", sa.String(80), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["key"], ["blobs.key"], name="fk_blob_refs_key_blobs"),
        sa.PrimaryKeyConstraint("owner", "key", name="pk_blob_refs"),
    )
    op.create_index("ix_blob_refs_key", "blob_refs", ["key"])
    op.create_table(
        "deletions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subject", sa.String(48), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_deletions"),
    )
    op.create_index("ix_deletions_deleted_at", "deletions", ["deleted_at"])
    op.create_table(
        "leases",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_leases"),
    )
    op.create_index("ix_jobs_finished_at", "jobs", ["finished_at"])
    # every key a job names becomes a blob (size unknown until `clipgan storage gc`)
    # held by that job
    op.execute(
        "INSERT INTO blobs (key, created_at) SELECT DISTINCT r.key, CURRENT_TIMESTAMP FROM ("
        "SELECT result_key AS key FROM jobs WHERE result_key IS NOT NULL "
        "UNION SELECT preview_key FROM jobs WHERE preview_key IS NOT NULL "
        "UNION SELECT image_prompt_key FROM jobs WHERE image_prompt_key IS NOT NULL) AS r")
    op.execute(
        "INSERT INTO blob_refs (owner, key, created_at) SELECT r.owner, r.key, "
        "CURRENT_TIMESTAMP FROM ("
        "SELECT id AS owner, result_key AS key FROM jobs WHERE result_key IS NOT NULL "
        "UNION SELECT id, preview_key FROM jobs WHERE preview_key IS NOT NULL "
        "UNION SELECT id, image_prompt_key FROM jobs WHERE image_prompt_key IS NOT NULL) AS r")

def downgrade() -> None:
    op.drop_index("ix_jobs_finished_at", table_name="jobs")
    op.drop_table("leases")
    op.drop_table("deletions")
    op.drop_table("blob_refs")
    op.drop_table("blobs")
