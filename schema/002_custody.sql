-- 002_custody: reservations, staff accounts, and the plain code of an
-- issuance event until it is delivered.
--
-- Rows that grant authority (reservations, staff) keep their truth in
-- body, a canonical JSON text, with sig, the device key's Ed25519
-- signature over it. lockerd believes body only if sig verifies; the
-- other columns are for finding rows. A row edited or inserted by hand
-- is rejected at load.

-- The plain code of a code_issued / code_reissued event, outside the
-- signed body, until the platform has it; then NULL.
ALTER TABLE events ADD COLUMN secret TEXT;

CREATE INDEX events_secret ON events (seq) WHERE secret IS NOT NULL;

CREATE TABLE reservations (
	id     INTEGER PRIMARY KEY,
	active INTEGER NOT NULL CHECK (active IN (0, 1)),
	body   TEXT    NOT NULL,
	sig    BLOB    NOT NULL
) STRICT;

CREATE INDEX reservations_active ON reservations (id) WHERE active = 1;

CREATE TABLE staff (
	id     TEXT PRIMARY KEY,
	body   TEXT NOT NULL,
	sig    BLOB NOT NULL
) STRICT;
