-- Protocol v2: every device has its own Ed25519 key, distinct from the
-- account key in accounts.identity. The device key signs the device's
-- prekeys and logins and is IK in PQXDH; the account key only signs the
-- account's device lists (device_lists) and its registration. The server
-- learns the device key from the verified device list (or, for device 1,
-- the registration) and serves it in bundles. Public data only.
--
-- Rows from before device keys (protocol v1, one key per account) copy the
-- account's key: under v1 that key signed the device's prekeys and logins,
-- so it is what those rows' signatures verify with, and their devices keep
-- logging in until they register again under v2.
ALTER TABLE devices ADD COLUMN identity BLOB NOT NULL DEFAULT x'';
UPDATE devices SET identity = (SELECT a.identity FROM accounts a WHERE a.id = devices.account_id);
