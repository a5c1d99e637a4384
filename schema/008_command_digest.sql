-- 008_command_digest: a signed command's row carries the digest of what
-- it asked for (proto/cmd.c cmd_digest: op, locker and the op's fields),
-- so that a different command under a used request_id is refused
-- instead of answered with the other's reply. Only signed commands are
-- kept now (the read-only ones are answered and forgotten), and the log
-- is pruned by age and size ([mqtt] command_log_s, command_log_rows).
ALTER TABLE commands ADD COLUMN digest BLOB;

CREATE INDEX commands_at ON commands (at);

DELETE FROM commands WHERE op IN ('ping', 'state', 'resv', 'rebirth');
