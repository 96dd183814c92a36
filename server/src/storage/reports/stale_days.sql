-- The (device, day) pairs of one tenant whose rollup is missing or stale: the rows counted into
-- `events` (duplicates included) differ from what the newest build recorded.
-- Binds: tenant, first day, last day (both 'YYYY-MM-DD'), then the same three again.
SELECT device_id, toUInt16(day) AS day_number, rows FROM
  (SELECT device_id, day, sum(rows) AS rows FROM report_day_rows
   WHERE tenant_id = ? AND day >= toDate(?) AND day <= toDate(?) GROUP BY device_id, day) AS counted
ANY LEFT JOIN
  (SELECT device_id, day, argMax(source_rows, version) AS built FROM report_rollup_state
   WHERE tenant_id = ? AND day >= toDate(?) AND day <= toDate(?) GROUP BY device_id, day) AS rollup_state
USING (device_id, day)
WHERE built != rows
ORDER BY device_id, day
