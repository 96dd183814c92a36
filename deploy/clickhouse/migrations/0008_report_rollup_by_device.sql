-- Re-sorts the report rollup (0006) by device first: a team's report reads only its devices'
-- rows instead of every device's (measured: a one-team month 2x faster, docs/BENCHMARKS.md).
--
-- ClickHouse cannot change a table's sorting key in place, so the rollup and its build records
-- move to new tables. The rollup is derived data, rebuilt on demand from `events` (see 0006 and
-- server/src/storage/reports.rs): the first report over a period after this step rebuilds that
-- period (a large period answers 503 with Retry-After until its build is done).
-- `report_day_rows` (the per-day row counts a build is compared against) stays as it is.
-- Nothing is dropped here, so servers of the previous release keep working during a rolling
-- upgrade; once none runs, `report_rollup` and `report_rollup_state` can be dropped by hand.

-- Columns as in 0006; only the sorting key differs.
CREATE TABLE IF NOT EXISTS report_rollup_v2 (
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

CREATE TABLE IF NOT EXISTS report_rollup_state_v2 (
    tenant_id String,
    device_id UUID,
    day Date,
    version UInt64,
    source_rows UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(day)
ORDER BY (tenant_id, device_id, day);
