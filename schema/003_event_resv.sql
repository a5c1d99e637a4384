-- 003_event_resv: which reservation an event is about, so that a stored
-- reservation row can be checked against the ledger: a row must carry the
-- sequence number of its reservation's newest event (an older row that
-- the device did sign, put back by hand, does not).
ALTER TABLE events ADD COLUMN resv INTEGER;

UPDATE events SET resv = json_extract(body, '$.resv')
	WHERE json_extract(body, '$.resv') IS NOT NULL;

CREATE INDEX events_resv ON events (resv, seq) WHERE resv IS NOT NULL;
