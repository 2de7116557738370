-- Issue 15: a report of a message with a file keeps the attachment pointer
-- the reporter disclosed (protobuf `AttachmentPointer`, its key included), so
-- a moderator can fetch, open and check the file (`missive-server reports
-- save-file`). NULL for a report of a text.
ALTER TABLE reports ADD COLUMN attachment BYTEA;
