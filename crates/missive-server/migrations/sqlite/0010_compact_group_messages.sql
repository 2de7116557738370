-- Group messages stored compactly (docs/PROTOCOL.md, "Groups", server
-- storage): a group message costs its ciphertext and a few integers.
--
-- * A group gets a small integer `number`, used instead of its 16-byte id in
--   every group message row and index entry.
-- * The franking commitment is the MLS PrivateMessage's authenticated data,
--   and the tag is made again at delivery from the row: neither is a column.
-- * The sender's username comes from `accounts`; `sender` is filled in only
--   when the sender's account is deleted while its messages wait.
-- * `expires_at_ms` is set only when the sender asked for less than the
--   server's retention; retention itself is `server_timestamp_ms`.
-- * The table is WITHOUT ROWID, clustered on (group_number, seq), and the
--   idempotency index holds the first 8 bytes of the message id (a lookup
--   compares the whole id and the sender in the row).
-- * `content` is the last column: a query that filters on a later column
--   would otherwise read a large commit's overflow pages to reach it.
ALTER TABLE mls_groups ADD COLUMN number INTEGER;
UPDATE mls_groups SET number = rowid;
CREATE UNIQUE INDEX mls_groups_by_number ON mls_groups (number);

CREATE TABLE group_messages_compact (
    group_number        INTEGER NOT NULL REFERENCES mls_groups(number) ON DELETE CASCADE,
    seq                 INTEGER NOT NULL,
    kind                INTEGER NOT NULL,
    epoch               INTEGER NOT NULL,
    sender_account      INTEGER NOT NULL,
    sender_device       INTEGER NOT NULL,
    message_id          BLOB    NOT NULL,
    server_timestamp_ms INTEGER NOT NULL,
    expires_at_ms       INTEGER,
    sender              TEXT,
    content             BLOB    NOT NULL,
    PRIMARY KEY (group_number, seq)
) WITHOUT ROWID;
INSERT INTO group_messages_compact (group_number, seq, kind, epoch, sender_account,
        sender_device, message_id, server_timestamp_ms, expires_at_ms, sender, content)
    SELECT g.number, m.seq, m.kind, m.epoch, m.sender_account, m.sender_device, m.message_id,
           m.server_timestamp_ms, m.expires_at_ms,
           CASE WHEN EXISTS (SELECT 1 FROM accounts a WHERE a.id = m.sender_account)
                THEN NULL ELSE m.sender END,
           m.content
    FROM group_messages m JOIN mls_groups g ON g.id = m.group_id;
DROP TABLE group_messages;
ALTER TABLE group_messages_compact RENAME TO group_messages;
CREATE INDEX group_messages_by_message_id ON group_messages (group_number, substr(message_id, 1, 8));
CREATE INDEX group_messages_by_expiry ON group_messages (expires_at_ms) WHERE expires_at_ms IS NOT NULL;
