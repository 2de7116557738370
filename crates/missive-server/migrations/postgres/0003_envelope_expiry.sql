-- Issue 16: per-envelope retention (disappearing messages); same change as
-- the SQLite migration 0004, see there. Existing rows keep NULL (only the
-- server's retention applies to them).
ALTER TABLE envelopes ADD COLUMN expires_at_ms BIGINT;
CREATE INDEX envelopes_by_expiry ON envelopes (expires_at_ms) WHERE expires_at_ms IS NOT NULL;
