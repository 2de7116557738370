-- Missive relay schema v1. Only what relaying needs: no plaintext, no IP
-- addresses, no record of who wrote to whom once an envelope is acknowledged.

-- AUTOINCREMENT: a deleted account's id is never given to a new account.
CREATE TABLE accounts (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT    NOT NULL UNIQUE,
    identity      BLOB    NOT NULL,            -- PublicIdentity::to_bytes(), 128 bytes
    created_day   INTEGER NOT NULL,            -- days since the Unix epoch
    last_seen_day INTEGER NOT NULL
);

CREATE TABLE devices (
    account_id              INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    device_id               INTEGER NOT NULL,
    registration_id         INTEGER NOT NULL,
    created_day             INTEGER NOT NULL,
    signed_prekey_id        INTEGER NOT NULL,
    signed_prekey           BLOB    NOT NULL,
    signed_prekey_signature BLOB    NOT NULL,
    kem_prekey_id           INTEGER NOT NULL,  -- the last-resort ML-KEM prekey
    kem_prekey              BLOB    NOT NULL,
    kem_prekey_signature    BLOB    NOT NULL,
    PRIMARY KEY (account_id, device_id)
);

CREATE TABLE one_time_prekeys (
    account_id INTEGER NOT NULL,
    device_id  INTEGER NOT NULL,
    key_id     INTEGER NOT NULL,
    public_key BLOB    NOT NULL,
    PRIMARY KEY (account_id, device_id, key_id),
    FOREIGN KEY (account_id, device_id) REFERENCES devices(account_id, device_id) ON DELETE CASCADE
);

CREATE TABLE one_time_kem_prekeys (
    account_id INTEGER NOT NULL,
    device_id  INTEGER NOT NULL,
    key_id     INTEGER NOT NULL,
    public_key BLOB    NOT NULL,
    signature  BLOB    NOT NULL,
    PRIMARY KEY (account_id, device_id, key_id),
    FOREIGN KEY (account_id, device_id) REFERENCES devices(account_id, device_id) ON DELETE CASCADE
);

-- Only the SHA-256 of each bearer token.
CREATE TABLE tokens (
    token_hash    BLOB    PRIMARY KEY,
    account_id    INTEGER NOT NULL,
    device_id     INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    FOREIGN KEY (account_id, device_id) REFERENCES devices(account_id, device_id) ON DELETE CASCADE
);
CREATE INDEX tokens_by_expiry ON tokens (expires_at_ms);

CREATE TABLE challenges (
    challenge     BLOB    PRIMARY KEY,
    username      TEXT    NOT NULL,
    purpose       INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
CREATE INDEX challenges_by_expiry ON challenges (expires_at_ms);

-- Pending envelopes only: a row is deleted on acknowledgement or expiry.
-- AUTOINCREMENT: ids are never reused, so "after the last delivered id" is sound.
CREATE TABLE envelopes (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient_account   INTEGER NOT NULL,
    recipient_device    INTEGER NOT NULL,
    sender              TEXT    NOT NULL,
    sender_device       INTEGER NOT NULL,
    kind                INTEGER NOT NULL,
    content             BLOB    NOT NULL,
    message_id          BLOB    NOT NULL,
    server_timestamp_ms INTEGER NOT NULL,
    franking_commitment BLOB    NOT NULL,
    franking_tag        BLOB    NOT NULL,
    FOREIGN KEY (recipient_account, recipient_device) REFERENCES devices(account_id, device_id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX envelopes_idempotency
    ON envelopes (recipient_account, recipient_device, sender, sender_device, message_id);
CREATE INDEX envelopes_by_device ON envelopes (recipient_account, recipient_device, id);
CREATE INDEX envelopes_by_time ON envelopes (server_timestamp_ms);

CREATE TABLE server_secrets (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);

-- Verified abuse reports: only what the reporter chose to disclose.
CREATE TABLE reports (
    id                          INTEGER PRIMARY KEY AUTOINCREMENT,
    reporter                    TEXT    NOT NULL,
    sender                      TEXT    NOT NULL,
    message_id                  BLOB    NOT NULL,
    message_server_timestamp_ms INTEGER NOT NULL,
    plaintext                   TEXT    NOT NULL,
    reason                      TEXT    NOT NULL,
    created_at_ms               INTEGER NOT NULL,
    verified                    INTEGER NOT NULL
);
CREATE INDEX reports_by_sender ON reports (sender);
CREATE INDEX reports_by_reporter ON reports (reporter);
