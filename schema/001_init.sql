-- 001_init: the cells, the event ledger, and small facts about the locker.
-- Applied in one transaction; PRAGMA user_version records that it was.

CREATE TABLE meta (
	key   TEXT PRIMARY KEY,
	value TEXT NOT NULL
) STRICT;

-- One row per configured cell: where it is wired and what is known of it.
CREATE TABLE cells (
	number         INTEGER PRIMARY KEY CHECK (number BETWEEN 1 AND 999),
	board          TEXT    NOT NULL,
	channel        INTEGER NOT NULL CHECK (channel BETWEEN 1 AND 64),
	size           TEXT    NOT NULL CHECK (size IN ('S', 'M', 'L')),
	door           TEXT    NOT NULL DEFAULT 'unknown'
	               CHECK (door IN ('open', 'closed', 'unknown')),
	item           INTEGER CHECK (item IN (0, 1)),
	in_service     INTEGER NOT NULL DEFAULT 1 CHECK (in_service IN (0, 1)),
	fault          TEXT,
	-- An unlock was committed and the door has not been seen open yet.
	unlock_pending INTEGER NOT NULL DEFAULT 0 CHECK (unlock_pending IN (0, 1)),
	updated        INTEGER NOT NULL
) STRICT;

-- The ledger: every state change's event, in a gap-free sequence. body is
-- the event's JSON exactly as it is published.
CREATE TABLE events (
	seq       INTEGER PRIMARY KEY,
	time      INTEGER NOT NULL,
	type      TEXT    NOT NULL,
	cell      INTEGER,
	body      TEXT    NOT NULL,
	delivered INTEGER NOT NULL DEFAULT 0 CHECK (delivered IN (0, 1))
) STRICT;

CREATE INDEX events_undelivered ON events (seq) WHERE delivered = 0;
