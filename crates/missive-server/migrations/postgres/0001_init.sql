-- Missive relay schema v1 for PostgreSQL: the same tables as the SQLite
-- backend. Only what relaying needs: no plaintext, no IP addresses, no record
-- of who wrote to whom once an envelope is acknowledged.

-- Identity columns: a deleted account's id is never given to a new account.
CREATE TABLE accounts (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username      TEXT   NOT NULL UNIQUE,
    identity      BYTEA  NOT NULL,            -- PublicIdentity::to_bytes(), 128 bytes
    created_day   BIGINT NOT NULL,            -- days since the Unix epoch
    last_seen_day BIGINT NOT NULL
);

-- Sends lock the recipient device rows (in key order) before inserting, so
-- envelope ids of one device increase in commit order across nodes.
CREATE TABLE devices (
    account_id              BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    device_id               BIGINT NOT NULL,
    registration_id         BIGINT NOT NULL,
    created_day             BIGINT NOT NULL,
    signed_prekey_id        BIGINT NOT NULL,
    signed_prekey           BYTEA  NOT NULL,
    signed_prekey_signature BYTEA  NOT NULL,
    kem_prekey_id           BIGINT NOT NULL,  -- the last-resort ML-KEM prekey
    kem_prekey              BYTEA  NOT NULL,
    kem_prekey_signature    BYTEA  NOT NULL,
    PRIMARY KEY (account_id, device_id)
);

CREATE TABLE one_time_prekeys (
    account_id BIGINT NOT NULL,
    device_id  BIGINT NOT NULL,
    key_id     BIGINT NOT NULL,
    public_key BYTEA  NOT NULL,
    PRIMARY KEY (account_id, device_id, key_id),
    FOREIGN KEY (account_id, device_id) REFERENCES devices(account_id, device_id) ON DELETE CASCADE
);

CREATE TABLE one_time_kem_prekeys (
    account_id BIGINT NOT NULL,
    device_id  BIGINT NOT NULL,
    key_id     BIGINT NOT NULL,
    public_key BYTEA  NOT NULL,
    signature  BYTEA  NOT NULL,
    PRIMARY KEY (account_id, device_id, key_id),
    FOREIGN KEY (account_id, device_id) REFERENCES devices(account_id, device_id) ON DELETE CASCADE
);

-- Only the SHA-256 of each bearer token.
CREATE TABLE tokens (
    token_hash    BYTEA  PRIMARY KEY,
    account_id    BIGINT NOT NULL,
    device_id     BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    FOREIGN KEY (account_id, device_id) REFERENCES devices(account_id, device_id) ON DELETE CASCADE
);
CREATE INDEX tokens_by_expiry ON tokens (expires_at_ms);
CREATE INDEX tokens_by_device ON tokens (account_id, device_id);

CREATE TABLE challenges (
    challenge     BYTEA  PRIMARY KEY,
    username      TEXT   NOT NULL,
    purpose       BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
CREATE INDEX challenges_by_expiry ON challenges (expires_at_ms);

-- Pending envelopes only: a row is deleted on acknowledgement or expiry.
-- Identity column: ids are never reused, so "after the last delivered id" is sound.
CREATE TABLE envelopes (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recipient_account   BIGINT NOT NULL,
    recipient_device    BIGINT NOT NULL,
    sender              TEXT   NOT NULL,
    sender_device       BIGINT NOT NULL,
    kind                BIGINT NOT NULL,
    content             BYTEA  NOT NULL,
    message_id          BYTEA  NOT NULL,
    server_timestamp_ms BIGINT NOT NULL,
    franking_commitment BYTEA  NOT NULL,
    franking_tag        BYTEA  NOT NULL,
    FOREIGN KEY (recipient_account, recipient_device) REFERENCES devices(account_id, device_id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX envelopes_idempotency
    ON envelopes (recipient_account, recipient_device, sender, sender_device, message_id);
CREATE INDEX envelopes_by_device ON envelopes (recipient_account, recipient_device, id);
CREATE INDEX envelopes_by_time ON envelopes (server_timestamp_ms);

CREATE TABLE server_secrets (
    name  TEXT  PRIMARY KEY,
    value BYTEA NOT NULL
);

-- Verified abuse reports: only what the reporter chose to disclose.
CREATE TABLE reports (
    id                          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    reporter                    TEXT    NOT NULL,
    sender                      TEXT    NOT NULL,
    message_id                  BYTEA   NOT NULL,
    message_server_timestamp_ms BIGINT  NOT NULL,
    plaintext                   TEXT    NOT NULL,
    reason                      TEXT    NOT NULL,
    created_at_ms               BIGINT  NOT NULL,
    verified                    BOOLEAN NOT NULL
);
CREATE INDEX reports_by_sender ON reports (sender);
CREATE INDEX reports_by_reporter ON reports (reporter);
