-- A capability's `max_concurrent`, counted once for every replica on this database. Counted by
-- each replica in its own memory, N replicas behind a load balancer let a session run N times
-- its calls at once.
--
-- One row per key (session, SecurityContext, capability) holds the slots of its running calls:
-- each slot's id and when its lease expires. A replica renews the leases of the calls it runs
-- every few seconds and gives a slot back when its call has answered. A replica that dies leaves
-- its slots behind; they stop counting when their lease expires. Time is the database's clock,
-- so the replicas' clocks do not matter.
--
-- A row per key, updated in place, rather than a row per slot: a row inserted and deleted for
-- every call leaves a dead tuple behind each time, and a session making hundreds of calls a
-- second would have every take scan thousands of them between two vacuums. No index covers the
-- updated columns, so an update stays on its page (HOT) and the table keeps its size.
CREATE TABLE IF NOT EXISTS running_slots (
    key          TEXT PRIMARY KEY,
    slot_ids     BIGINT[] NOT NULL,
    slot_expires TIMESTAMPTZ[] NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS running_slot_ids;

-- A slot under `p_key` when fewer than `p_limit` unexpired slots hold it: the new slot's id, or
-- NULL. The row lock serializes a key's takes across replicas for the length of this statement.
-- Expired slots count for nothing and are dropped.
CREATE OR REPLACE FUNCTION take_running_slot(p_key TEXT, p_limit INTEGER, p_lease_secs INTEGER)
RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    lease INTERVAL := make_interval(secs => p_lease_secs);
    now_ts TIMESTAMPTZ;
    ids BIGINT[];
    expires TIMESTAMPTZ[];
    held INTEGER;
    slot BIGINT;
BEGIN
    IF p_limit <= 0 THEN
        RETURN NULL;
    END IF;
    LOOP
        SELECT slot_ids, slot_expires INTO ids, expires
            FROM running_slots WHERE key = p_key FOR UPDATE;
        EXIT WHEN FOUND;
        slot := nextval('running_slot_ids');
        INSERT INTO running_slots (key, slot_ids, slot_expires)
            VALUES (p_key, ARRAY[slot], ARRAY[clock_timestamp() + lease])
            ON CONFLICT (key) DO NOTHING;
        IF FOUND THEN
            RETURN slot;
        END IF;
        -- Another take created the row meanwhile (or the sweep deleted it): read it again.
    END LOOP;
    -- Read under the lock, so a take that waited for another counts that one's slot.
    now_ts := clock_timestamp();
    held := cardinality(ids);
    SELECT coalesce(array_agg(i ORDER BY o), '{}'), coalesce(array_agg(e ORDER BY o), '{}')
        INTO ids, expires
        FROM unnest(ids, expires) WITH ORDINALITY AS s(i, e, o) WHERE e > now_ts;
    IF cardinality(ids) >= p_limit THEN
        IF cardinality(ids) < held THEN
            UPDATE running_slots SET slot_ids = ids, slot_expires = expires WHERE key = p_key;
        END IF;
        RETURN NULL;
    END IF;
    slot := nextval('running_slot_ids');
    UPDATE running_slots SET slot_ids = ids || slot, slot_expires = expires || (now_ts + lease)
        WHERE key = p_key;
    RETURN slot;
END;
$$;

-- Gives back the slot `p_id` of `p_key` (nothing when it is no longer there).
CREATE OR REPLACE FUNCTION release_running_slot(p_key TEXT, p_id BIGINT)
RETURNS VOID LANGUAGE sql AS $$
    UPDATE running_slots SET
        slot_ids = array_remove(slot_ids, p_id),
        slot_expires = ARRAY(
            SELECT e FROM unnest(slot_ids, slot_expires) WITH ORDINALITY AS s(i, e, o)
            WHERE i <> p_id ORDER BY o)
    WHERE key = p_key AND p_id = ANY(slot_ids);
$$;

-- Extends by `p_lease_secs` the leases of the slots `p_ids` (under the keys `p_keys`) that have
-- not expired, and returns their ids. An expired slot is not revived: another call may have
-- taken its place.
CREATE OR REPLACE FUNCTION renew_running_slots(p_keys TEXT[], p_ids BIGINT[], p_lease_secs INTEGER)
RETURNS SETOF BIGINT LANGUAGE sql AS $$
    WITH renewed AS (
        UPDATE running_slots SET slot_expires = ARRAY(
            SELECT CASE WHEN i = ANY(p_ids) AND e > clock_timestamp()
                        THEN clock_timestamp() + make_interval(secs => p_lease_secs)
                        ELSE e END
            FROM unnest(slot_ids, slot_expires) WITH ORDINALITY AS s(i, e, o) ORDER BY o)
        WHERE key = ANY(p_keys) AND slot_ids && p_ids
        RETURNING slot_ids, slot_expires
    )
    SELECT i FROM renewed, unnest(slot_ids, slot_expires) AS s(i, e)
    WHERE i = ANY(p_ids) AND e > clock_timestamp();
$$;
