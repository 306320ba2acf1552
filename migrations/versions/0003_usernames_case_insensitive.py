"""usernames unique case-insensitively

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 18:50:00

"Alice" and "alice" were two accounts: one could impersonate the other to people.
An existing database that already holds such a pair cannot get the index; the
migration stops and names them, so an operator can rename one first.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    clashes = op.get_bind().execute(sa.text(
        "SELECT lower(username) FROM users GROUP BY lower(username) HAVING count(*) > 1"
    )).scalars().all()
    if clashes:
        raise RuntimeError(
            "usernames that differ only in case must be renamed before this upgrade "
            f"(clipgan admin, or SQL): {sorted(clashes)[:20]}")
    op.create_index("ix_users_username_lower", "users", [sa.text("lower(username)")],
                    unique=True)


def downgrade() -> None:
    op.drop_index("ix_users_username_lower", table_name="users")
