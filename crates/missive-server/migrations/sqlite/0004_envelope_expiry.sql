-- Issue 16: per-envelope retention (disappearing messages). Each envelope
-- keeps when it expires: acceptance plus the shorter of the sender's
-- `retention_secs` and the server's retention. It is never delivered after
-- that and purged then. Existing rows keep NULL: only the server's retention
-- (by `server_timestamp_ms`) applies to them, as before.
ALTER TABLE envelopes ADD COLUMN expires_at_ms INTEGER;
CREATE INDEX envelopes_by_expiry ON envelopes (expires_at_ms) WHERE expires_at_ms IS NOT NULL;
