-- Every event an agent recorded, one row per event, all kinds in one table so an ingest is one
-- INSERT. Columns a kind does not use hold their type's default.
--
-- Exactly-once: (tenant_id, device_id, seq) is an event's identity and the sorting key of a
-- ReplacingMergeTree, so a batch re-sent after a lost acknowledgement collapses into the first
-- copy on merge. Every read that counts must use FINAL or count distinct identities.
-- The partition is derived from the event's own time, so both copies always share a partition
-- (ReplacingMergeTree only collapses rows within one partition).

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
    clock_offset_ms Int64
) ENGINE = ReplacingMergeTree(received_ms)
PARTITION BY toYYYYMM(event_date)
ORDER BY (tenant_id, device_id, seq);
