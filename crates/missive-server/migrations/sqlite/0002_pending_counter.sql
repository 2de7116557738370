-- A per-device count of pending envelopes, kept by triggers, so the mailbox
-- quota check on every send is O(1) instead of counting the mailbox.
ALTER TABLE devices ADD COLUMN pending_envelopes INTEGER NOT NULL DEFAULT 0;

UPDATE devices SET pending_envelopes = (
    SELECT COUNT(*) FROM envelopes
    WHERE recipient_account = devices.account_id AND recipient_device = devices.device_id
);

CREATE TRIGGER envelopes_count_insert AFTER INSERT ON envelopes
BEGIN
    UPDATE devices SET pending_envelopes = pending_envelopes + 1
    WHERE account_id = NEW.recipient_account AND device_id = NEW.recipient_device;
END;

CREATE TRIGGER envelopes_count_delete AFTER DELETE ON envelopes
BEGIN
    UPDATE devices SET pending_envelopes = pending_envelopes - 1
    WHERE account_id = OLD.recipient_account AND device_id = OLD.recipient_device;
END;
