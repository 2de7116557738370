-- Linking a new device (protocol v2, docs/PROTOCOL.md "Linking a device"): a
-- short-lived rendezvous mailbox relaying four opaque sealed messages. The
-- rendezvous id is a hash of the link code's secret, which only the two
-- devices know. Each slot is written once, in order (conditional UPDATEs).
-- A mailbox lives 10 minutes: expired rows are never served and are purged
-- with the other expired rows; closing deletes it at once. Deleting the
-- account that posted HELLO deletes its mailboxes.
CREATE TABLE link_mailboxes (
    rendezvous    BLOB    NOT NULL PRIMARY KEY,  -- 32 bytes
    offer         BLOB    NOT NULL,              -- the new device's public keys
    hello         BLOB,                          -- sealed, primary to new device
    hello_account INTEGER REFERENCES accounts(id) ON DELETE CASCADE,
    reply         BLOB,                          -- sealed, new device to primary
    finish        BLOB,                          -- sealed, primary to new device
    expires_at_ms INTEGER NOT NULL
);
CREATE INDEX link_mailboxes_expiry ON link_mailboxes (expires_at_ms);
CREATE INDEX link_mailboxes_account ON link_mailboxes (hello_account)
    WHERE hello_account IS NOT NULL;
