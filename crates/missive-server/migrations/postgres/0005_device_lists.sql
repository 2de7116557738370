-- Issue 13: each account's signed device list (protocol v2), stored and
-- served as published. The server verified it against the account's identity
-- and username before storing it, and stores only a higher version than the
-- one it holds; it cannot make a list (it holds no private key). Public data
-- only: device identity keys, registration ids and signatures.
CREATE TABLE device_lists (
    account     BIGINT PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    version     BIGINT NOT NULL,   -- the list's version, 1 and up
    signed_list BYTEA  NOT NULL    -- the SignedDeviceList encoding, as published
);
