-- Issue 17: records follow accounts, not usernames, and hold no finer times
-- than docs/LAWFUL_ACCESS.md lists.

-- 1. Reports name the never-reused account ids of reporter and sender and the
--    sender's identity key at the time, so a later holder of a username
--    inherits none of them. The usernames stay, as they were at the time, for
--    moderators. Existing rows are attributed to the current holder of the
--    name only if that account existed on the day of the message (resp. of
--    the report); otherwise the account is unknown (NULL) and the report
--    appears in no export.
ALTER TABLE reports RENAME COLUMN reporter TO reporter_username;
ALTER TABLE reports RENAME COLUMN sender TO sender_username;
ALTER TABLE reports ADD COLUMN reporter_account INTEGER;
ALTER TABLE reports ADD COLUMN sender_account INTEGER;
ALTER TABLE reports ADD COLUMN sender_identity BLOB;      -- PublicIdentity::to_bytes() at report time
ALTER TABLE reports ADD COLUMN franking_key_id INTEGER;   -- key that verified the tag; NULL before key ids
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

-- 2. Tokens keep the UTC day they expire, not a millisecond (which was the
--    login time + 24 h). A token is valid until the start of `expires_day`.
DROP INDEX tokens_by_expiry;
ALTER TABLE tokens ADD COLUMN expires_day INTEGER NOT NULL DEFAULT 0;
UPDATE tokens SET expires_day = (expires_at_ms + 86399999) / 86400000;
ALTER TABLE tokens DROP COLUMN expires_at_ms;
CREATE INDEX tokens_by_expiry ON tokens (expires_day);

-- 3. Challenges keep only SHA-256 over purpose, username and challenge, and
--    their expiry: a row names no one. Outstanding challenges (at most 120 s
--    old) are dropped; clients ask for a new one.
DROP TABLE challenges;
CREATE TABLE challenges (
    challenge_hash BLOB    PRIMARY KEY,
    expires_at_ms  INTEGER NOT NULL
);
CREATE INDEX challenges_by_expiry ON challenges (expires_at_ms);

-- 4. The franking keys live in a key file (docs/DEPLOYMENT.md); the database
--    keeps only a check value per key id, so nodes notice a missing or
--    different key file. A key still in server_secrets is moved to the file
--    and deleted at start.
CREATE TABLE franking_keys (
    key_id      INTEGER PRIMARY KEY,
    check_value BLOB    NOT NULL   -- SHA-256("missive franking key check v1" || key)
);
