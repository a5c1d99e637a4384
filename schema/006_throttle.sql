-- 006_throttle: the keypad's guessing throttles, so that a restart (a
-- crash, a power cut, a pulled plug) gives a guesser no fresh tries.
-- One row per bucket that is not full: 'code' (codes and scanned
-- credentials), 'pin' (every failed staff log-in), and 'pin:<hex>' per
-- target staff id, named by a keyed hash of the id typed (a PIN typed
-- into the id field is never kept). tokens as of 'at' (wall ms); what
-- came back since is added when lockerd starts. spent: failures of that
-- id the keypad bucket has not given back (its own good log-in does).
CREATE TABLE throttle (
	name     TEXT    PRIMARY KEY,
	tokens   REAL    NOT NULL,
	at       INTEGER NOT NULL,
	alarmed  INTEGER NOT NULL DEFAULT 0,
	episode  INTEGER NOT NULL DEFAULT 0,
	failures INTEGER NOT NULL DEFAULT 0,
	spent    INTEGER NOT NULL DEFAULT 0
) STRICT;
