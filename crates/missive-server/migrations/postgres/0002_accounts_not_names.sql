-- Issue 17: records follow accounts, not usernames, and hold no finer times
-- than docs/LAWFUL_ACCESS.md lists. (Same changes as the SQLite migration
-- 0003; see there for the reasoning.)

-- 1. Reports follow account ids; existing rows go to the current holder of
--    the name only if that account existed on the day of the message (resp.
--    report), else to no account.
ALTER TABLE reports RENAME COLUMN reporter TO reporter_username;
ALTER TABLE reports RENAME COLUMN sender TO sender_username;
ALTER TABLE reports ADD COLUMN reporter_account BIGINT;
ALTER TABLE reports ADD COLUMN sender_account BIGINT;
ALTER TABLE reports ADD COLUMN sender_identity BYTEA;
ALTER TABLE reports ADD COLUMN franking_key_id BIGINT;
UPDATE reports SET
    reporter_account = (SELECT a.id FROM accounts a WHERE a.username = reports.reporter_username
                        AND a.created_day <= reports.created_at_ms / 86400000),
    sender_account = (SELECT a.id FROM accounts a WHERE a.username = reports.sender_username
                      AND a.created_day <= reports.message_server_timestamp_ms / 86400000),
    sender_identity = (SELECT a.identity FROM accounts a WHERE a.username = reports.sender_username
                       AND a.created_day <= reports.message_server_timestamp_ms / 86400000);
DROP INDEX reports_by_sender;
DROP INDEX reports_by_reporter;
CREATE INDEX reports_by_sender_account ON reports (sender_account);
CREATE INDEX reports_by_reporter_account ON reports (reporter_account);

-- 2. Tokens keep the UTC day they expire.
DROP INDEX tokens_by_expiry;
ALTER TABLE tokens ADD COLUMN expires_day BIGINT;
UPDATE tokens SET expires_day = (expires_at_ms + 86399999) / 86400000;
ALTER TABLE tokens ALTER COLUMN expires_day SET NOT NULL;
ALTER TABLE tokens DROP COLUMN expires_at_ms;
CREATE INDEX tokens_by_expiry ON tokens (expires_day);

-- 3. Challenges keep only a hash and their expiry.
DROP TABLE challenges;
CREATE TABLE challenges (
    challenge_hash BYTEA  PRIMARY KEY,
    expires_at_ms  BIGINT NOT NULL
);
CREATE INDEX challenges_by_expiry ON challenges (expires_at_ms);

-- 4. A check value per franking key id; the keys live in a key file.
CREATE TABLE franking_keys (
    key_id      BIGINT PRIMARY KEY,
    check_value BYTEA  NOT NULL
);
