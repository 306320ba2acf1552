"""login changes announced: users.logins_changed_at, NOTIFY on PostgreSQL

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 12:00:00

Each web process keeps the logins it has checked (web_backend/live/login_cache.py) so a
status read needs no query. That cache is only as good as its invalidation: every
logout, revocation, password change, disable or enable must reach every process at
once. They travel the way job changes do (0004): on PostgreSQL a trigger notifies
'user:<id>' on the job feed's channel in the changing transaction (whoever wrote it,
an operator's SQL included); on SQLite the poller asks for users whose
logins_changed_at moved, which web_backend.accounts bumps with every such change.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

CHANNEL = "clipgan_jobs"  # web_backend.live.sources.PG_CHANNEL; payload 'user:<id>'


def upgrade() -> None:
    # plain ADD COLUMN, not batch mode: see 0005 (batch would drop 0003's index on SQLite)
    op.add_column("users", sa.Column("logins_changed_at", sa.DateTime(timezone=True),
                                     nullable=True))
    op.create_index("ix_users_logins_changed_at", "users", ["logins_changed_at"])
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"""
        CREATE FUNCTION clipgan_logins_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            changed record;
        BEGIN
            IF TG_OP = 'DELETE' THEN changed := OLD; ELSE changed := NEW; END IF;
            IF TG_TABLE_NAME = 'users' THEN
                PERFORM pg_notify('{CHANNEL}', 'user:' || changed.id);
            ELSE
                PERFORM pg_notify('{CHANNEL}', 'user:' || changed.user_id);
            END IF;
            RETURN NULL;
        END $$""")
    op.execute("CREATE TRIGGER users_logins_changed AFTER UPDATE ON users FOR EACH ROW "
               "WHEN (OLD.is_active IS DISTINCT FROM NEW.is_active "
               "OR OLD.logins_changed_at IS DISTINCT FROM NEW.logins_changed_at) "
               "EXECUTE FUNCTION clipgan_logins_changed()")
    op.execute("CREATE TRIGGER users_deleted AFTER DELETE ON users FOR EACH ROW "
               "EXECUTE FUNCTION clipgan_logins_changed()")
    op.execute("CREATE TRIGGER auth_sessions_changed AFTER UPDATE ON auth_sessions "
               "FOR EACH ROW WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at) "
               "EXECUTE FUNCTION clipgan_logins_changed()")
    op.execute("CREATE TRIGGER auth_sessions_deleted AFTER DELETE ON auth_sessions "
               "FOR EACH ROW EXECUTE FUNCTION clipgan_logins_changed()")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for trigger, table in (("users_logins_changed", "users"), ("users_deleted", "users"),
                               ("auth_sessions_changed", "auth_sessions"),
                               ("auth_sessions_deleted", "auth_sessions")):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")
        op.execute("DROP FUNCTION IF EXISTS clipgan_logins_changed()")
    op.drop_index("ix_users_logins_changed_at", table_name="users")
    op.execute("ALTER TABLE users DROP COLUMN logins_changed_at")
