-- Rebuilds the rollup of some (device, day) pairs of one tenant from `events`, deduplicated by
-- (device, seq), as a new version. Spans last at most 7 days, so a span touching the first day
-- started on that day - 7 or later.
-- Binds: version, tenant, devices (array of UUID strings, never empty), first day, last day
-- ('YYYY-MM-DD'), pairs (array of (UUID string, 'YYYY-MM-DD') tuples).
INSERT INTO report_rollup (tenant_id, device_id, day, bucket_ms, item_id, active_ms, idle_ms, completed_ms, version)
SELECT tenant_id, device_id, day, bucket_ms, item_id, sum(active), sum(idle),
       if(min(done) = 18446744073709551615, 0, min(done)), toUInt64(?)
FROM (
  SELECT tenant_id, device_id, toDate(toDateTime(intDiv(b, 1000)), 'UTC') AS day, b AS bucket_ms, item_id,
         if(ev_kind = 'activity_span' AND ev_state = 'active', least(e, b + 900000) - greatest(s, b), 0) AS active,
         if(ev_kind = 'activity_span' AND ev_state IN ('idle', 'locked'), least(e, b + 900000) - greatest(s, b), 0) AS idle,
         if(ev_kind = 'work_item', s, 18446744073709551615) AS done
  FROM (
    SELECT tenant_id, device_id, ev_kind, ev_state, ev_item AS item_id, s, e,
           arrayJoin(arrayMap(i -> (intDiv(s, 900000) + i) * 900000,
                     range(toUInt64(intDiv(greatest(e, s + 1) - 1, 900000) - intDiv(s, 900000) + 1)))) AS b
    FROM (
      SELECT tenant_id, device_id, seq, any(kind) AS ev_kind, any(state) AS ev_state, any(item_id) AS ev_item,
             any(time_ms) AS s, any(end_ms) AS e
      FROM events
      WHERE tenant_id = ? AND device_id IN (SELECT toUUID(arrayJoin(?)))
        AND event_date >= toDate(?) - 7 AND event_date <= toDate(?)
        AND (kind = 'activity_span' OR (kind = 'work_item' AND action = 'completed'))
      GROUP BY tenant_id, device_id, seq
    )
  )
  WHERE (device_id, day) IN (SELECT toUUID(tupleElement(pair, 1)), toDate(tupleElement(pair, 2)) FROM system.one ARRAY JOIN ? AS pair)
)
GROUP BY tenant_id, device_id, day, bucket_ms, item_id
