-- 005_event_staff: which staff account an event provisions or revokes,
-- so that a stored staff row can be checked against the ledger as
-- reservation rows are (003): a row must carry the sequence number of
-- its account's newest staff_added / staff_revoked event, and an older
-- row that the device did sign (an account before its revocation, put
-- back by hand) does not.
ALTER TABLE events ADD COLUMN staff TEXT;

CREATE INDEX events_staff ON events (staff, seq) WHERE staff IS NOT NULL;
