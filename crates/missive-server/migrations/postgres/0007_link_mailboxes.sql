-- The same table as the SQLite backend's 0008_link_mailboxes.sql.
-- Linking a new device (protocol v2, docs/PROTOCOL.md "Linking a device"): a
-- short-lived rendezvous mailbox relaying four opaque sealed messages. The
-- rendezvous id is a hash of the link code's secret, which only the two
-- devices know. Each slot is written once, in order (conditional UPDATEs).
-- A mailbox lives 10 minutes: expired rows are never served and are purged
-- with the other expired rows; closing deletes it at once. Deleting the
-- account that posted HELLO deletes its mailboxes.
CREATE TABLE link_mailboxes (
    rendezvous    BYTEA   NOT NULL PRIMARY KEY,  -- 32 bytes
    offer         BYTEA   NOT NULL,              -- the new device's public keys
    hello         BYTEA,                         -- sealed, primary to new device
    hello_account BIGINT  REFERENCES accounts(id) ON DELETE CASCADE,
    reply         BYTEA,                         -- sealed, new device to primary
    finish        BYTEA,                         -- sealed, primary to new device
    expires_at_ms BIGINT  NOT NULL
);
CREATE INDEX link_mailboxes_expiry ON link_mailboxes (expires_at_ms);
CREATE INDEX link_mailboxes_account ON link_mailboxes (hello_account)
    WHERE hello_account IS NOT NULL;
