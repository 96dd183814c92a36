-- Who works at which device, and what each tenant allows to be shown.
--
-- Work is attributed to a team by default. A person's name is shown only where the tenant
-- switched `show_person_names` on (a works-council decision in many organisations), and only to
-- roles allowed to see per-person data.

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
