-- A capability's `max_concurrent`, counted once for every replica on this database. Counted by
-- each replica in its own memory, N replicas behind a load balancer let a session run N times
-- its calls at once.
--
-- One row per running call: its slot. A replica renews the leases of the calls it runs every
-- few seconds and deletes a slot when its call has answered, before the answer is sent. A
-- replica that dies leaves its slots behind; they stop counting when their lease expires, and
-- the sweep deletes them. Time is the database's clock, so the replicas' clocks do not matter.
CREATE TABLE IF NOT EXISTS running_slots (
    id         BIGSERIAL PRIMARY KEY,
    key        TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS running_slots_key ON running_slots (key);
CREATE INDEX IF NOT EXISTS running_slots_expires_at ON running_slots (expires_at);

-- A slot under `p_key` when fewer than `p_limit` unexpired slots hold it: the new slot's id, or
-- NULL. A transaction-scoped advisory lock on the key serializes its takes across replicas for
-- the length of this statement (keys whose hashes collide only wait for each other), and the
-- count runs after the lock, so it sees every slot taken before.
CREATE OR REPLACE FUNCTION take_running_slot(p_key TEXT, p_limit INTEGER, p_lease_secs INTEGER)
RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    now_ts TIMESTAMPTZ;
    held BIGINT;
    slot BIGINT;
BEGIN
    IF p_limit <= 0 THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended(p_key, 0));
    now_ts := clock_timestamp();
    SELECT count(*) INTO held FROM running_slots WHERE key = p_key AND expires_at > now_ts;
    IF held >= p_limit THEN
        RETURN NULL;
    END IF;
    INSERT INTO running_slots (key, expires_at)
        VALUES (p_key, now_ts + make_interval(secs => p_lease_secs))
        RETURNING id INTO slot;
    RETURN slot;
END;
$$;
