"""The control plane's own schema, as versioned migrations (data, not code).

Portable SQL only: the same statements run on SQLite and on
PostgreSQL/CockroachDB. Timestamps are fixed-width RFC 3339 UTC text (they sort
and compare as strings on every engine); ids are UUID text generated in Python.

Each statement runs on its own (``migrate.py``; CockroachDB cannot be trusted
with several DDL statements in one transaction), so a migration may stop half
way and run again from its first statement: every statement must be
idempotent. ``CREATE TABLE/INDEX IF NOT EXISTS``, ``DROP … IF EXISTS``,
``INSERT … ON CONFLICT … DO NOTHING`` (an ``INSERT … SELECT`` needs a ``WHERE``
before ``ON CONFLICT`` for SQLite's parser), and plain ``ALTER TABLE … ADD
COLUMN`` (SQLite has no ``IF NOT EXISTS`` there: the runner skips a column the
catalog already has). ``tests/unit/test_store_migrate.py`` checks each form and
runs every migration twice. The record is written after the statements.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgesync.sqlscript import split_statements


@dataclass(frozen=True)
class ControlPlaneMigration:
    version: int
    description: str
    sql: str

    def statements(self) -> list[str]:
        return split_statements(self.sql)


MIGRATIONS: tuple[ControlPlaneMigration, ...] = (
    ControlPlaneMigration(
        1,
        "seed tables: nodes, functions, schema_migrations, deployments, sync records",
        """
        CREATE TABLE IF NOT EXISTS nodes (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            region TEXT,
            labels TEXT NOT NULL,
            current_schema_version INTEGER NOT NULL DEFAULT 0,
            state_seq BIGINT NOT NULL DEFAULT 0,
            token_jti TEXT NOT NULL,
            token_hash TEXT NOT NULL,
            token_expires_at TEXT NOT NULL,
            poll_interval_seconds INTEGER NOT NULL,
            agent_version TEXT,
            state_etag TEXT,
            sync_status TEXT NOT NULL DEFAULT 'idle',
            last_heartbeat_at TEXT,
            offline_after TEXT NOT NULL,
            last_sync_at TEXT,
            created_at TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS idx_nodes_created ON nodes (created_at, id);
        CREATE INDEX IF NOT EXISTS idx_nodes_region ON nodes (region, created_at);
        CREATE INDEX IF NOT EXISTS idx_nodes_offline_after ON nodes (offline_after);

        CREATE TABLE IF NOT EXISTS functions (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            size_bytes BIGINT NOT NULL,
            storage_key TEXT NOT NULL,
            created_at TEXT NOT NULL,
            deleted_at TEXT
        );
        CREATE UNIQUE INDEX IF NOT EXISTS idx_functions_name_version ON functions (name, version);
        CREATE INDEX IF NOT EXISTS idx_functions_created ON functions (created_at, id);

        CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            description TEXT NOT NULL,
            up_sql TEXT NOT NULL,
            down_sql TEXT,
            checksum TEXT NOT NULL,
            created_at TEXT NOT NULL
        );

        CREATE TABLE IF NOT EXISTS node_function_deployments (
            node_id TEXT NOT NULL REFERENCES nodes (id),
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            deployed_at TEXT NOT NULL,
            PRIMARY KEY (node_id, name)
        );
        CREATE INDEX IF NOT EXISTS idx_deployments_function
            ON node_function_deployments (name, version);

        CREATE TABLE IF NOT EXISTS sync_records (
            id TEXT PRIMARY KEY,
            node_id TEXT NOT NULL REFERENCES nodes (id),
            sync_type TEXT NOT NULL,
            status TEXT NOT NULL,
            plan_etag TEXT NOT NULL,
            started_at TEXT NOT NULL,
            completed_at TEXT,
            error_code TEXT,
            error_message TEXT,
            functions_added INTEGER NOT NULL DEFAULT 0,
            functions_removed INTEGER NOT NULL DEFAULT 0,
            schemas_applied INTEGER NOT NULL DEFAULT 0,
            ack_digest TEXT
        );
        CREATE INDEX IF NOT EXISTS idx_sync_records_node_started
            ON sync_records (node_id, started_at);
        CREATE INDEX IF NOT EXISTS idx_sync_records_status ON sync_records (status);
        """,
    ),
    ControlPlaneMigration(
        2,
        "auth and coordination: enrollment tokens, shared secrets, fleet generation",
        """
        CREATE TABLE IF NOT EXISTS enrollment_tokens (
            id TEXT PRIMARY KEY,
            secret_hash TEXT NOT NULL,
            region TEXT,
            max_uses INTEGER NOT NULL,
            uses INTEGER NOT NULL DEFAULT 0,
            expires_at TEXT NOT NULL,
            created_at TEXT NOT NULL
        );

        CREATE TABLE IF NOT EXISTS secrets (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            created_at TEXT NOT NULL
        );

        CREATE TABLE IF NOT EXISTS fleet_state (
            id INTEGER PRIMARY KEY,
            generation BIGINT NOT NULL
        );
        INSERT INTO fleet_state (id, generation) VALUES (1, 1) ON CONFLICT (id) DO NOTHING;
        """,
    ),
    ControlPlaneMigration(
        3,
        "uploads reserve their (name, version) before the object is stored",
        """
        ALTER TABLE functions ADD COLUMN status TEXT NOT NULL DEFAULT 'ready';
        """,
    ),
    ControlPlaneMigration(
        4,
        "fleet changes: why each generation was bumped, for every replica's MQTT notifier",
        """
        CREATE TABLE IF NOT EXISTS fleet_changes (
            generation BIGINT PRIMARY KEY,
            reason TEXT NOT NULL,
            node_ids TEXT,
            created_at TEXT NOT NULL
        );
        """,
    ),
    ControlPlaneMigration(
        5,
        "recoverable token rotation: the token rotated away, for an idempotent retry",
        """
        ALTER TABLE nodes ADD COLUMN previous_token_jti TEXT;
        """,
    ),
    ControlPlaneMigration(
        6,
        "every token id a node has held; serve instances owning upload claims;"
        " acks ignored per sync record",
        """
        CREATE TABLE IF NOT EXISTS node_token_jtis (
            node_id TEXT NOT NULL REFERENCES nodes (id),
            jti TEXT NOT NULL,
            issued_at TEXT NOT NULL,
            PRIMARY KEY (node_id, jti)
        );
        INSERT INTO node_token_jtis (node_id, jti, issued_at)
            SELECT id, token_jti, created_at FROM nodes WHERE true
            ON CONFLICT (node_id, jti) DO NOTHING;
        INSERT INTO node_token_jtis (node_id, jti, issued_at)
            SELECT id, previous_token_jti, created_at FROM nodes
            WHERE previous_token_jti IS NOT NULL AND previous_token_jti <> token_jti
            ON CONFLICT (node_id, jti) DO NOTHING;

        CREATE TABLE IF NOT EXISTS serve_instances (
            id TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            data_dir TEXT NOT NULL,
            started_at TEXT NOT NULL,
            alive_until TEXT NOT NULL
        );
        ALTER TABLE functions ADD COLUMN claim_owner TEXT;

        ALTER TABLE sync_records ADD COLUMN ignored_acks INTEGER NOT NULL DEFAULT 0;
        """,
    ),
    ControlPlaneMigration(
        7,
        "liveness is written in batches: no index on the ever-increasing offline_after"
        " (a write hot spot on CockroachDB; status filters scan in created_at order)",
        """
        DROP INDEX IF EXISTS idx_nodes_offline_after;
        """,
    ),
    ControlPlaneMigration(
        8,
        "releases and rollouts: numbered release snapshots, node assignment and pins,"
        " fleet settings, rollouts with their nodes, function counters, the engine lease",
        """
        CREATE TABLE IF NOT EXISTS releases (
            id TEXT PRIMARY KEY,
            number BIGINT NOT NULL,
            schema_version INTEGER NOT NULL,
            functions TEXT NOT NULL,
            notes TEXT,
            origin TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE UNIQUE INDEX IF NOT EXISTS idx_releases_number ON releases (number);
        ALTER TABLE nodes ADD COLUMN release_id TEXT;
        ALTER TABLE nodes ADD COLUMN pinned_release_id TEXT;
        ALTER TABLE fleet_state ADD COLUMN auto_release INTEGER NOT NULL DEFAULT 1;
        ALTER TABLE fleet_state ADD COLUMN default_release_id TEXT;
        ALTER TABLE functions ADD COLUMN requires_schema INTEGER NOT NULL DEFAULT 0;

        CREATE TABLE IF NOT EXISTS rollouts (
            id TEXT PRIMARY KEY,
            release_id TEXT NOT NULL,
            state TEXT NOT NULL,
            settings TEXT NOT NULL,
            waves TEXT NOT NULL,
            current_wave INTEGER NOT NULL DEFAULT 0,
            wave_started_at TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS idx_rollouts_state ON rollouts (state, created_at);
        CREATE TABLE IF NOT EXISTS rollout_nodes (
            rollout_id TEXT NOT NULL,
            node_id TEXT NOT NULL,
            wave_index INTEGER NOT NULL,
            position INTEGER NOT NULL,
            previous_release_id TEXT,
            state TEXT NOT NULL,
            active INTEGER NOT NULL DEFAULT 1,
            given_at TEXT,
            PRIMARY KEY (rollout_id, node_id)
        );
        CREATE INDEX IF NOT EXISTS idx_rollout_nodes_node ON rollout_nodes (node_id, active);
        CREATE TABLE IF NOT EXISTS function_counters (
            node_id TEXT NOT NULL,
            name TEXT NOT NULL,
            invocations BIGINT NOT NULL,
            errors BIGINT NOT NULL,
            reported_at TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS idx_function_counters_node
            ON function_counters (node_id, reported_at);
        CREATE TABLE IF NOT EXISTS rollout_lease (
            id INTEGER PRIMARY KEY,
            owner TEXT,
            expires_at TEXT NOT NULL
        );
        INSERT INTO rollout_lease (id, owner, expires_at) VALUES (1, NULL, '')
            ON CONFLICT (id) DO NOTHING;
        """,
    ),
    ControlPlaneMigration(
        9,
        "the node change feed: every write that changes a node's stamp (token, state revision)"
        " records the node with the database's clock; each replica's watch reads the last"
        " seconds of it and forgets exactly those stamps",
        """
        CREATE TABLE IF NOT EXISTS node_changes (
            id TEXT PRIMARY KEY,
            node_id TEXT NOT NULL,
            changed_at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX IF NOT EXISTS idx_node_changes_changed_at ON node_changes (changed_at);
        """,
    ),
)
