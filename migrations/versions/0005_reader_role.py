"""PostgreSQL: the role ``eegcache_reader``, which ``eegcache sql`` runs as (``SET LOCAL ROLE``), may only SELECT the
views of the index's schema. A no-op on SQLite.

What it does, on PostgreSQL:

- creates the role ``eegcache_reader`` (NOLOGIN, NOINHERIT, no attributes) unless it exists. Roles belong to the
  server, not to a database: every eegcache index on the server shares it;
- makes the migrating role a member, so that it may ``SET ROLE`` to it (a superuser may anyway);
- grants it USAGE on the index's schema and SELECT on every view there (``window_labels``, ``recording_status``),
  nothing on the tables; ``eegcache.index.db.upgrade`` grants views added by later migrations the same way;
- revokes EXECUTE on ``pg_catalog.set_config(text, text, boolean)`` from PUBLIC in this database. Without that, a
  query running as the reader could call ``set_config('role', ...)`` and take back the role the session connected
  as (``SET ROLE`` checks the session user's memberships, not the current role's). Superusers keep the function;
  other roles that call it in this database (``pg_dump`` run by a non-superuser does) need
  ``GRANT EXECUTE ON FUNCTION pg_catalog.set_config(text, text, boolean) TO that_role``.

A migrating role without CREATEROLE (or, for the revocation, without superuser) cannot do all of this; the
migration then does what it may and warns, and ``eegcache sql`` says what is missing before it runs anything.

Downgrade revokes this schema's grants. It keeps the role and the revocation: they are shared by every eegcache
index on the server or in the database, and an administrator removes them (``DROP ROLE eegcache_reader``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = """
DO $eegcache$
DECLARE
    v record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'eegcache_reader') THEN
        BEGIN
            CREATE ROLE eegcache_reader NOLOGIN NOINHERIT;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;  -- created at the same moment by another index
            WHEN insufficient_privilege THEN
                RAISE WARNING 'eegcache: role % may not create the role eegcache_reader (CREATEROLE needed); '
                              'eegcache sql will refuse to run until an administrator runs this migration', current_user;
                RETURN;
        END;
    END IF;
    IF NOT pg_has_role(current_user, 'eegcache_reader', 'MEMBER') THEN
        BEGIN
            EXECUTE format('GRANT eegcache_reader TO %I', current_user);
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'eegcache: cannot make % a member of eegcache_reader; run GRANT eegcache_reader TO %',
                          current_user, current_user;
        END;
    END IF;
    BEGIN
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO eegcache_reader', current_schema());
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE WARNING 'eegcache: cannot grant USAGE on schema % to eegcache_reader; its owner must', current_schema();
    END;
    FOR v IN SELECT viewname FROM pg_views WHERE schemaname = current_schema() LOOP
        EXECUTE format('GRANT SELECT ON %I.%I TO eegcache_reader', current_schema(), v.viewname);
    END LOOP;
    BEGIN
        REVOKE EXECUTE ON FUNCTION pg_catalog.set_config(text, text, boolean) FROM PUBLIC;
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE WARNING 'eegcache: only a superuser may revoke EXECUTE on set_config from PUBLIC; until one does, '
                      'eegcache sql refuses to run for superuser sessions';
    END;
END
$eegcache$
"""

DOWNGRADE = """
DO $eegcache$
DECLARE
    v record;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'eegcache_reader') THEN
        FOR v IN SELECT viewname FROM pg_views WHERE schemaname = current_schema() LOOP
            EXECUTE format('REVOKE ALL ON %I.%I FROM eegcache_reader', current_schema(), v.viewname);
        END LOOP;
        EXECUTE format('REVOKE USAGE ON SCHEMA %I FROM eegcache_reader', current_schema());
    END IF;
END
$eegcache$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(UPGRADE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(DOWNGRADE)
