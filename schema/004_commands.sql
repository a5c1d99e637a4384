-- 004_commands: platform commands seen, for exactly-once execution, and
-- the nonces of signed commands, never to be accepted twice.

-- state: 'started' (committed before the command runs) or 'done' (with
-- the reply that was sent). A 'started' row after a restart is a command
-- whose outcome a crash left unknown: it is never run again.
CREATE TABLE commands (
	request_id TEXT    PRIMARY KEY,
	op         TEXT    NOT NULL,
	state      TEXT    NOT NULL CHECK (state IN ('started', 'done')),
	reply      TEXT,
	at         INTEGER NOT NULL
) STRICT;

CREATE TABLE nonces (
	nonce TEXT    PRIMARY KEY,
	at    INTEGER NOT NULL
) STRICT;

CREATE INDEX nonces_at ON nonces (at);
