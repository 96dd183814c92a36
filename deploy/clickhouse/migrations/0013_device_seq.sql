-- The highest sequence number stored for each device, so the first accepted copy of an event
-- wins (docs/protocol.md, "Identity").
--
-- Why: `events` keeps the newest copy of an identity when it merges, and only within one
-- partition (the event's month). A device re-sending a `seq` with other content - another
-- item, another month - would rewrite its history. So the server never writes an event whose
-- `seq` is already stored for its device: it acknowledges it as stored. To know cheaply that a
-- batch is all new, it reads the device's highest stored `seq` here: one row per device (per
-- unmerged part), in 256-row granules, so the read costs a granule or two whatever the size of
-- `events`. Only a batch reaching at or below it (a re-send, a late upload filling a gap) is
-- checked seq by seq against `events`.
--
-- How, without missing a row: the view starts first, then the backfill reads what `events`
-- holds; an insert in between reaches both, which is harmless as only the maximum is read.
-- Repeating the backfill after a crash is harmless for the same reason.

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

INSERT INTO device_seq
SELECT tenant_id, device_id, max(seq) AS max_seq
FROM events
GROUP BY tenant_id, device_id;
