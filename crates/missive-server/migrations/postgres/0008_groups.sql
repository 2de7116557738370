-- The same tables as the SQLite backend's 0009_groups.sql.
-- Groups on MLS (docs/PROTOCOL.md, "Groups"): the KeyPackage directory and
-- the Delivery Service. The server never parses MLS: it keeps opaque bytes,
-- orders them and delivers them. One row per group message, never one per
-- recipient; a delivery cursor per receiving device. Device rows cascade:
-- removing a device (or its account) removes its KeyPackages, its member
-- rows and its pending Welcomes.

-- One-time KeyPackages, handed out once (lowest id first).
CREATE TABLE key_packages (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id  BIGINT  NOT NULL,
    device_id   BIGINT  NOT NULL,
    key_package BYTEA    NOT NULL,
    FOREIGN KEY (account_id, device_id) REFERENCES devices(account_id, device_id) ON DELETE CASCADE
);
CREATE INDEX key_packages_by_device ON key_packages (account_id, device_id, id);

-- The last-resort KeyPackage of a device, never consumed.
CREATE TABLE last_resort_key_packages (
    account_id  BIGINT  NOT NULL,
    device_id   BIGINT  NOT NULL,
    key_package BYTEA    NOT NULL,
    PRIMARY KEY (account_id, device_id),
    FOREIGN KEY (account_id, device_id) REFERENCES devices(account_id, device_id) ON DELETE CASCADE
);

-- A group: its 16-byte MLS id, the epoch the server holds, the device that
-- created it and the next seq to assign. Deleted once no device receives it.
CREATE TABLE mls_groups (
    id             BYTEA    NOT NULL PRIMARY KEY,
    epoch          BIGINT  NOT NULL,
    creator_account BIGINT  NOT NULL,
    creator_device BIGINT  NOT NULL,
    created_at_ms  BIGINT  NOT NULL,
    next_seq       BIGINT  NOT NULL
);

-- Devices receiving a group. A device gets the rows with
-- joined_seq <= seq (its Welcome sits at joined_seq - 1), seq > cursor_seq
-- (the highest seq it acknowledged) and, once removed, seq <= removed_at_seq
-- (the commit removing it); the row goes once it acknowledged that commit.
CREATE TABLE group_members (
    group_id       BYTEA    NOT NULL REFERENCES mls_groups(id) ON DELETE CASCADE,
    account_id     BIGINT  NOT NULL,
    device_id      BIGINT  NOT NULL,
    joined_seq     BIGINT  NOT NULL,
    cursor_seq     BIGINT  NOT NULL,
    removed_at_seq BIGINT ,
    joined_day     BIGINT  NOT NULL,
    PRIMARY KEY (group_id, account_id, device_id),
    FOREIGN KEY (account_id, device_id) REFERENCES devices(account_id, device_id) ON DELETE CASCADE
);
CREATE INDEX group_members_by_device ON group_members (account_id, device_id);

-- Group messages (commits, proposals, application messages), stored once.
-- Deleted once every device that gets one acknowledged it, or at expiry.
CREATE TABLE group_messages (
    group_id            BYTEA    NOT NULL REFERENCES mls_groups(id) ON DELETE CASCADE,
    seq                 BIGINT  NOT NULL,
    kind                BIGINT  NOT NULL,
    epoch               BIGINT  NOT NULL,
    sender              TEXT    NOT NULL,
    sender_account      BIGINT  NOT NULL,
    sender_device       BIGINT  NOT NULL,
    message_id          BYTEA    NOT NULL,
    content             BYTEA    NOT NULL,
    server_timestamp_ms BIGINT  NOT NULL,
    franking_commitment BYTEA    NOT NULL,
    franking_tag        BYTEA    NOT NULL,
    expires_at_ms       BIGINT  NOT NULL,
    PRIMARY KEY (group_id, seq)
);
CREATE UNIQUE INDEX group_messages_idempotency
    ON group_messages (group_id, sender_account, sender_device, message_id);
CREATE INDEX group_messages_by_expiry ON group_messages (expires_at_ms);
CREATE INDEX group_messages_by_time ON group_messages (server_timestamp_ms);

-- A commit's Welcome, stored once, at the commit's seq.
CREATE TABLE group_welcomes (
    group_id            BYTEA    NOT NULL REFERENCES mls_groups(id) ON DELETE CASCADE,
    seq                 BIGINT  NOT NULL,
    epoch               BIGINT  NOT NULL,
    sender              TEXT    NOT NULL,
    sender_account      BIGINT  NOT NULL,
    sender_device       BIGINT  NOT NULL,
    message_id          BYTEA    NOT NULL,
    content             BYTEA    NOT NULL,
    server_timestamp_ms BIGINT  NOT NULL,
    expires_at_ms       BIGINT  NOT NULL,
    PRIMARY KEY (group_id, seq)
);
CREATE INDEX group_welcomes_by_expiry ON group_welcomes (expires_at_ms);

-- The added devices a Welcome is still pending for.
CREATE TABLE group_welcome_recipients (
    group_id   BYTEA    NOT NULL,
    seq        BIGINT  NOT NULL,
    account_id BIGINT  NOT NULL,
    device_id  BIGINT  NOT NULL,
    PRIMARY KEY (group_id, seq, account_id, device_id),
    FOREIGN KEY (group_id, seq) REFERENCES group_welcomes(group_id, seq) ON DELETE CASCADE,
    FOREIGN KEY (account_id, device_id) REFERENCES devices(account_id, device_id) ON DELETE CASCADE
);
CREATE INDEX group_welcome_recipients_by_device
    ON group_welcome_recipients (account_id, device_id);
