-- Drops the tables nothing reads and gives the `_v2` tables their plain names, so a database
-- upgraded from any earlier release ends with the schema a new one gets from
-- `deploy/clickhouse/baseline.sql` (a test compares the two).
--
-- Dropped (no server of this release or the previous one reads or writes them):
--   item_events          replaced by item_events_v2 in 0009 (its view was dropped there)
--   item_registrations   copied into item_lookup in 0011 (its view was dropped there)
--   report_rollup        replaced by report_rollup_v2 in 0008
--   report_rollup_state  replaced by report_rollup_state_v2 in 0008
-- Renamed: item_events_v2 -> item_events, report_rollup_v2 -> report_rollup,
-- report_rollup_state_v2 -> report_rollup_state. A rename moves no data.
--
-- Each rename is one statement that swaps the names (new table to a spare name, old table to
-- `*_unread`, new table to the plain name), and its first step fails once it has been done,
-- so a repeat (a crash, or a second server starting at the same time) cannot move the live
-- table away; the migration runner skips a RENAME whose first table is gone and whose last
-- name exists (storage/migrations.rs). Only then is the old table, now `*_unread`, dropped.
--
-- The view copying `events` into item_events_v2 names its target, which ClickHouse 18.16
-- resolves by name on every insert, so it is dropped before the rename and made again after.
-- Events inserted in between (a server of the previous release still ingesting) reach only
-- `events`; the backfill below copies again every item event received in the last hour, which
-- covers that moment many times over. Copies are harmless: readers dedupe by (device_id, seq)
-- and ReplacingMergeTree collapses them on merge.
--
-- Servers of the previous release read `item_events_v2` (the ETA, the backlog report) and
-- write `report_rollup_v2`: from this step until they are replaced, those answers fail on them
-- (deploy/README.md, "Upgrading"). Ingest and status lookups are not affected.

DROP TABLE IF EXISTS item_registrations;

DROP TABLE IF EXISTS item_events_v2_mv;

RENAME TABLE item_events_v2 TO item_events_next, item_events TO item_events_unread,
             item_events_next TO item_events;

CREATE MATERIALIZED VIEW IF NOT EXISTS item_events_mv TO item_events AS
SELECT tenant_id, item_id, device_id, seq, kind, event_date, time_ms, end_ms, received_ms,
       state, step, action, source
FROM events
WHERE item_id != '';

INSERT INTO item_events
SELECT tenant_id, item_id, device_id, seq, kind, event_date, time_ms, end_ms, received_ms,
       state, step, action, source
FROM events
WHERE item_id != '' AND received_ms >= (toUInt64(toUnixTimestamp(now())) - 3600) * 1000;

DROP TABLE IF EXISTS item_events_unread;

RENAME TABLE report_rollup_v2 TO report_rollup_next, report_rollup TO report_rollup_unread,
             report_rollup_next TO report_rollup;

DROP TABLE IF EXISTS report_rollup_unread;

RENAME TABLE report_rollup_state_v2 TO report_rollup_state_next,
             report_rollup_state TO report_rollup_state_unread,
             report_rollup_state_next TO report_rollup_state;

DROP TABLE IF EXISTS report_rollup_state_unread;
