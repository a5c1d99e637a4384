-- 007_mark: events refused at start-up, and the adoption of a ledger
-- written before the mark.
--
-- lockerd keeps its ledger's high-water mark (head seq and hash) outside
-- this file (PATH-mark, mark.c) and checks the ledger against it at every
-- start. Rows after the last event that verifies (unsigned, badly
-- signed, not chained: not written by this device) are moved here with
-- the reason, never signed over and never published; a record_rejected
-- alarm in the ledger names them.
CREATE TABLE events_rejected (
	seq    INTEGER NOT NULL,
	time   INTEGER,
	type   TEXT,
	body   TEXT,
	reason TEXT    NOT NULL,
	at     INTEGER NOT NULL
) STRICT;

-- A database that already holds events when this step runs was written
-- by a lockerd without the mark: its ledger is verified whole once and
-- adopted (mark.c) instead of being refused for lack of a mark.
INSERT INTO meta (key, value)
	SELECT 'mark_adopt', '1' WHERE EXISTS (SELECT 1 FROM events);
