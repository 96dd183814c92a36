-- Performance reports: a duplicate-free rollup of activity time and completions per device and
-- 15-minute bucket, kept exact by change counting (design: docs/metrics.md, "How it is computed").
--
-- Why: a 30-day report straight from `events` must dedupe 10M+ rows by (tenant, device, seq)
-- (FINAL or GROUP BY), which takes several seconds on 18.16. The rollup holds one row per
-- (device, 15-minute UTC bucket, item) instead, built from deduplicated events.
--
-- A materialized view cannot build it: it sees a re-sent batch as new rows and would count it
-- twice. So the view below only counts inserted rows per (tenant, device, UTC day), duplicates
-- included. The server rebuilds the rollup of a (device, day) from deduplicated `events` whenever
-- that count differs from the count the rollup was built from, and records the build in
-- `report_rollup_state`. Readers use only the newest build of each (device, day). Counting is
-- the only thing the view does, and over-counting is harmless (it only triggers a rebuild).

-- Rows inserted into `events` that a rollup of (tenant, device, day) reads: activity spans on
-- every UTC day they touch, and `completed` work-item events. Filled for existing data once
-- (POPULATE); afterwards by every INSERT into `events`.
CREATE MATERIALIZED VIEW IF NOT EXISTS report_day_rows
ENGINE = SummingMergeTree(rows)
PARTITION BY toYYYYMM(day)
ORDER BY (tenant_id, day, device_id)
POPULATE AS
SELECT tenant_id, device_id,
       arrayJoin(arrayMap(i -> toDate(intDiv(time_ms, 86400000) + i),
                          range(toUInt64(intDiv(greatest(end_ms, time_ms + 1) - 1, 86400000)
                                         - intDiv(time_ms, 86400000) + 1)))) AS day,
       toUInt64(count()) AS rows
FROM events
WHERE kind = 'activity_span' OR (kind = 'work_item' AND action = 'completed')
GROUP BY tenant_id, device_id, day;

-- The rollup. One build of a (device, day) is all rows with one `version`; a newer build
-- replaces it (readers filter on the newest version in report_rollup_state, merges drop the
-- rest). Times are the parts of deduplicated spans inside the bucket.
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
ORDER BY (tenant_id, day, device_id, bucket_ms, item_id);

-- One row per rollup build: which version is current for a (device, day), and how many
-- `report_day_rows` it was built from. Written after the build's rows.
CREATE TABLE IF NOT EXISTS report_rollup_state (
    tenant_id String,
    device_id UUID,
    day Date,
    version UInt64,
    source_rows UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(day)
ORDER BY (tenant_id, day, device_id);
