-- The UTC day each device last logged in or opened its message stream, for
-- the account's own `missive devices` (issue 13: a device nobody uses any
-- more stands out). Only the day, overwritten: no history, no time of day;
-- accounts.last_seen_day is the latest of them. 0: not seen since this
-- column was added.
ALTER TABLE devices ADD COLUMN last_seen_day INTEGER NOT NULL DEFAULT 0;
