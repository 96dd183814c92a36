-- The whole schema of a new database, as migrations 0001-0017 leave it: the migration runner
-- (server/src/storage/migrations.rs) runs this file instead of the migrations when the
-- database has none recorded, then records 1-17 as applied. A database made by an earlier
-- release runs the migrations instead; `server/tests/schema_paths.rs` proves both end in the
-- same tables, views, engines, keys and columns.
--
-- Why each table is as it is stays written in the migration named beside it. A change to the
-- schema is a new migration (0018+), never an edit here: this file describes 0017.

-- Registry (0001).

CREATE TABLE IF NOT EXISTS tenants (
    tenant_id String,
    name String,
    created_ms UInt64,
    updated_ms UInt64
) ENGINE = ReplacingMergeTree(updated_ms)
ORDER BY tenant_id;

CREATE TABLE IF NOT EXISTS enrollment_keys (
    key_id String,
    tenant_id String,
    secret_hash String,
    note String,
    created_ms UInt64,
    -- 0 means the key never expires.
    expires_ms UInt64,
    revoked UInt8,
    updated_ms UInt64
) ENGINE = ReplacingMergeTree(updated_ms)
ORDER BY key_id;

CREATE TABLE IF NOT EXISTS devices (
    device_id UUID,
    tenant_id String,
    secret_hash String,
    hostname String,
    os String,
    agent_version String,
    enrollment_key_id String,
    enrolled_ms UInt64,
    revoked UInt8,
    updated_ms UInt64
) ENGINE = ReplacingMergeTree(updated_ms)
ORDER BY device_id;

CREATE TABLE IF NOT EXISTS api_keys (
    key_id String,
    tenant_id String,
    secret_hash String,
    role String,
    name String,
    created_ms UInt64,
    revoked UInt8,
    updated_ms UInt64
) ENGINE = ReplacingMergeTree(updated_ms)
ORDER BY key_id;

CREATE TABLE IF NOT EXISTS self_test (
    probe String,
    at_ms UInt64
) ENGINE = MergeTree
ORDER BY probe;

-- Events (0002; the session columns from 0016).

CREATE TABLE IF NOT EXISTS events (
    tenant_id String,
    device_id UUID,
    seq UInt64,
    event_id UUID,
    kind Enum8('activity_span' = 1, 'work_item' = 2, 'consent' = 3, 'health' = 4),
    -- The day of time_ms (UTC), for partitioning.
    event_date Date,
    -- Span start, or the instant of any other event (ms since the epoch, UTC).
    time_ms UInt64,
    -- Span end; equal to time_ms for other kinds.
    end_ms UInt64,
    received_ms UInt64,
    app String,
    title Nullable(String),
    state Enum8('' = 0, 'active' = 1, 'idle' = 2, 'locked' = 3),
    item_id String,
    step String,
    action Enum8('' = 0, 'started' = 1, 'paused' = 2, 'resumed' = 3, 'completed' = 4, 'transferred' = 5),
    source Enum8('' = 0, 'rule' = 1, 'app' = 2, 'manual' = 3),
    consent_granted UInt8,
    policy_version UInt32,
    scope String,
    agent_version String,
    spool_depth UInt64,
    events_dropped UInt64,
    events_rejected UInt64,
    clock_offset_ms Int64,
    -- The desktop session of a health row (0016).
    session Enum8('' = 0, 'local' = 1, 'rdp' = 2, 'citrix' = 3, 'remote' = 4) DEFAULT '',
    session_client String DEFAULT ''
) ENGINE = ReplacingMergeTree(received_ms)
PARTITION BY toYYYYMM(event_date)
ORDER BY (tenant_id, device_id, seq);

-- Assignments and tenant settings (0003).

CREATE TABLE IF NOT EXISTS device_assignments (
    tenant_id String,
    device_id UUID,
    team String,
    person String,
    updated_ms UInt64
) ENGINE = ReplacingMergeTree(updated_ms)
ORDER BY (tenant_id, device_id);

CREATE TABLE IF NOT EXISTS tenant_settings (
    tenant_id String,
    show_person_names UInt8,
    -- IANA zone used by reports when the caller names none, e.g. Europe/Berlin.
    time_zone String,
    updated_ms UInt64
) ENGINE = ReplacingMergeTree(updated_ms)
ORDER BY tenant_id;

-- Items and SLA classes (0004).

CREATE TABLE IF NOT EXISTS items (
    tenant_id String,
    item_id String,
    queue String,
    priority UInt8,
    -- When the SLA is due (ms since the epoch, UTC); 0 means the item has no SLA.
    sla_due_ms UInt64,
    -- The SLA class the due time was computed from, '' when given directly.
    sla_class String,
    customer_ref String,
    registered_ms UInt64,
    updated_ms UInt64
) ENGINE = ReplacingMergeTree(updated_ms)
ORDER BY (tenant_id, item_id);

CREATE TABLE IF NOT EXISTS sla_classes (
    tenant_id String,
    sla_class String,
    target_ms UInt64,
    updated_ms UInt64
) ENGINE = ReplacingMergeTree(updated_ms)
ORDER BY (tenant_id, sla_class);

-- The item-keyed copy of events (0004; in 256-row granules since 0009, named item_events again
-- since 0017).

CREATE TABLE IF NOT EXISTS item_events (
    tenant_id String,
    item_id String,
    device_id UUID,
    seq UInt64,
    kind Enum8('activity_span' = 1, 'work_item' = 2, 'consent' = 3, 'health' = 4),
    event_date Date,
    -- Span start, or the instant of a work_item event (ms since the epoch, UTC).
    time_ms UInt64,
    -- Span end; equal to time_ms for work_item events.
    end_ms UInt64,
    received_ms UInt64,
    state Enum8('' = 0, 'active' = 1, 'idle' = 2, 'locked' = 3),
    step String,
    action Enum8('' = 0, 'started' = 1, 'paused' = 2, 'resumed' = 3, 'completed' = 4, 'transferred' = 5),
    source Enum8('' = 0, 'rule' = 1, 'app' = 2, 'manual' = 3)
) ENGINE = ReplacingMergeTree(received_ms)
PARTITION BY toYYYYMM(event_date)
ORDER BY (tenant_id, item_id, device_id, seq)
SETTINGS index_granularity = 256;

CREATE MATERIALIZED VIEW IF NOT EXISTS item_events_mv TO item_events AS
SELECT tenant_id, item_id, device_id, seq, kind, event_date, time_ms, end_ms, received_ms,
       state, step, action, source
FROM events
WHERE item_id != '';

-- Audit log (0005).

CREATE TABLE IF NOT EXISTS audit_log (
    tenant_id String,
    at_ms UInt64,
    event_date Date,
    -- A random id per entry, so a retried batch can be told apart from two real lookups.
    entry_id UUID,
    key_id String,
    key_name String,
    role String,
    -- item_lookup, item_search, item_timeline, item_stream, item_register, report, ...
    action String,
    -- The item id, or the query (URL query string) for searches and reports.
    target String,
    -- ok, not_found, or error: what the caller was shown.
    outcome String
) ENGINE = MergeTree
PARTITION BY toYYYYMM(event_date)
ORDER BY (tenant_id, at_ms);

-- Performance reports (0006; the rollup sorted by device since 0008, named without _v2 since
-- 0017). A new database has no events, so the row counts need no POPULATE.

CREATE MATERIALIZED VIEW IF NOT EXISTS report_day_rows
ENGINE = SummingMergeTree(rows)
PARTITION BY toYYYYMM(day)
ORDER BY (tenant_id, day, device_id)
AS
SELECT tenant_id, device_id,
       arrayJoin(arrayMap(i -> toDate(intDiv(time_ms, 86400000) + i),
                          range(toUInt64(intDiv(greatest(end_ms, time_ms + 1) - 1, 86400000)
                                         - intDiv(time_ms, 86400000) + 1)))) AS day,
       toUInt64(count()) AS rows
FROM events
WHERE kind = 'activity_span' OR (kind = 'work_item' AND action = 'completed')
GROUP BY tenant_id, device_id, day;

CREATE TABLE IF NOT EXISTS report_rollup (
    tenant_id String,
    device_id UUID,
    -- UTC day of bucket_ms.
    day Date,
    -- Start of the 15-minute bucket (ms since the epoch, UTC).
    bucket_ms UInt64,
    -- '' for time with no item.
    item_id String,
    -- ACTIVE time in the bucket.
    active_ms UInt64,
    -- IDLE + LOCKED time in the bucket.
    idle_ms UInt64,
    -- Earliest `completed` event of the item from this device in this bucket; 0 when none.
    completed_ms UInt64,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(day)
ORDER BY (tenant_id, device_id, day, bucket_ms, item_id);

CREATE TABLE IF NOT EXISTS report_rollup_state (
    tenant_id String,
    device_id UUID,
    day Date,
    version UInt64,
    source_rows UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(day)
ORDER BY (tenant_id, device_id, day);

-- Policies (0007).

CREATE TABLE IF NOT EXISTS policies (
    tenant_id String,
    version UInt32,
    policy_json String,
    etag String,
    saved_by String,
    updated_ms UInt64
) ENGINE = ReplacingMergeTree(updated_ms)
ORDER BY tenant_id;

-- Status lookups (0011).

CREATE TABLE IF NOT EXISTS item_lookup (
    tenant_id String,
    item_id String,
    device_id UUID,
    seq UInt64,
    -- Partition key: the event's day, or the day of the registration's updated_ms.
    event_date Date,
    -- received_ms of an event, updated_ms of a registration: the newest version survives merges.
    version UInt64,
    row String
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYear(event_date)
ORDER BY (tenant_id, item_id, device_id, seq)
SETTINGS index_granularity = 256;

CREATE MATERIALIZED VIEW IF NOT EXISTS item_lookup_events_mv TO item_lookup AS
SELECT tenant_id, item_id, device_id, seq, event_date, received_ms AS version,
       concat('e1 ', toString(device_id), ' ', toString(seq), ' ', toString(toInt8(kind)), ' ',
              toString(time_ms), ' ', toString(end_ms), ' ', toString(toInt8(state)), ' ',
              toString(toInt8(action)), ' ', hex(step)) AS row
FROM events
WHERE item_id != '';

CREATE MATERIALIZED VIEW IF NOT EXISTS item_lookup_registrations_mv TO item_lookup AS
SELECT tenant_id, item_id, toUUID('00000000-0000-0000-0000-000000000000') AS device_id,
       toUInt64(0) AS seq, toDate(toDateTime(intDiv(updated_ms, 1000))) AS event_date,
       updated_ms AS version,
       concat('r1 ', toString(priority), ' ', toString(sla_due_ms), ' ', toString(registered_ms), ' ',
              toString(updated_ms), ' ', hex(queue), ' ', hex(sla_class), ' ', hex(customer_ref)) AS row
FROM items;

-- Change feed, server heartbeats and webhooks (0012).

CREATE TABLE IF NOT EXISTS item_changes (
    tenant_id String,
    received_ms UInt64,
    item_id String,
    device_id UUID,
    seq UInt64,
    what UInt8,
    change_date Date
) ENGINE = MergeTree
PARTITION BY change_date
ORDER BY (tenant_id, received_ms, item_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS item_changes_events_mv TO item_changes AS
SELECT tenant_id, received_ms, item_id, device_id, max(seq) AS seq,
       max(toUInt8(toInt8(kind))) AS what,
       toDate(toDateTime(intDiv(received_ms, 1000))) AS change_date
FROM events
WHERE item_id != ''
GROUP BY tenant_id, received_ms, item_id, device_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS item_changes_registrations_mv TO item_changes AS
SELECT DISTINCT tenant_id, updated_ms AS received_ms, item_id,
       toUUID('00000000-0000-0000-0000-000000000000') AS device_id, toUInt64(0) AS seq,
       toUInt8(10) AS what, toDate(toDateTime(intDiv(updated_ms, 1000))) AS change_date
FROM items;

CREATE TABLE IF NOT EXISTS server_heartbeats (
    server_id String,
    host String,
    started_ms UInt64,
    beat_ms UInt64,
    serving UInt8
) ENGINE = ReplacingMergeTree(beat_ms)
ORDER BY server_id;

CREATE TABLE IF NOT EXISTS webhooks (
    tenant_id String,
    webhook_id String,
    url String,
    events Array(String),
    description String,
    secret String,
    created_ms UInt64,
    deleted UInt8,
    updated_ms UInt64
) ENGINE = ReplacingMergeTree(updated_ms)
ORDER BY (tenant_id, webhook_id);

CREATE TABLE IF NOT EXISTS webhook_deliveries (
    tenant_id String,
    webhook_id String,
    delivery_id String,
    event_type String,
    item_id String,
    created_ms UInt64,
    created_date Date,
    payload String,
    -- 'pending', 'delivered' or 'failed'
    state String,
    attempts UInt32,
    last_attempt_ms UInt64,
    last_status UInt16,
    last_error String,
    next_attempt_ms UInt64,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY created_date
ORDER BY (tenant_id, webhook_id, delivery_id);

CREATE TABLE IF NOT EXISTS webhook_item_state (
    tenant_id String,
    item_id String,
    status String,
    sla_state String,
    updated_ms UInt64
) ENGINE = ReplacingMergeTree(updated_ms)
ORDER BY (tenant_id, item_id);

CREATE TABLE IF NOT EXISTS webhook_cursors (
    tenant_id String,
    evaluated_ms UInt64,
    updated_ms UInt64
) ENGINE = ReplacingMergeTree(updated_ms)
ORDER BY tenant_id;

-- The highest stored seq per device (0013).

CREATE TABLE IF NOT EXISTS device_seq (
    tenant_id String,
    device_id UUID,
    max_seq UInt64
) ENGINE = ReplacingMergeTree(max_seq)
ORDER BY (tenant_id, device_id)
SETTINGS index_granularity = 256;

CREATE MATERIALIZED VIEW IF NOT EXISTS device_seq_mv TO device_seq AS
SELECT tenant_id, device_id, max(seq) AS max_seq
FROM events
GROUP BY tenant_id, device_id;

-- Policy history and enrollment-key limits (0014).

CREATE TABLE IF NOT EXISTS policy_history (
    tenant_id String,
    saved_ms UInt64,
    version UInt32,
    policy_json String,
    etag String,
    -- `api-key:<key id> (<key name>)` or `admin-cli:<operating-system user>`.
    saved_by String,
    -- What changed against the policy before, in words (`title_policy drop → send; …`).
    changes String
) ENGINE = ReplacingMergeTree
ORDER BY (tenant_id, saved_ms, etag);

CREATE TABLE IF NOT EXISTS enrollment_key_limits (
    key_id String,
    tenant_id String,
    max_uses UInt32,
    updated_ms UInt64
) ENGINE = ReplacingMergeTree(updated_ms)
ORDER BY key_id;
