-- The desktop session an agent reports with its health (Windows: at the console, or remote
-- through RDP or Citrix, with the remote client's name): a property of the device, shown by
-- `admin device list`. Filled on health rows only; '' elsewhere and from agents that cannot tell.
--
-- ClickHouse 18.16 has no ADD COLUMN IF NOT EXISTS: the migration runner skips an ADD COLUMN
-- whose column exists already (storage/migrations.rs), which keeps this step idempotent.
ALTER TABLE events ADD COLUMN session Enum8('' = 0, 'local' = 1, 'rdp' = 2, 'citrix' = 3, 'remote' = 4) DEFAULT '';
ALTER TABLE events ADD COLUMN session_client String DEFAULT ''
