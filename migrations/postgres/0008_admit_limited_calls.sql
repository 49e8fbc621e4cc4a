-- A call under both a `max_concurrent` and a `rate_limit`: its running slot and its quota taken in
-- one statement.
--
-- Taken one after the other, such a call made three statements in a row (take a slot, take
-- quota, give the slot back), each waiting for the last. This function does the first two at
-- once, with the same answers: the slot is looked at first, since a slot can be given back and
-- spent quota cannot, and a call that its quota refuses keeps no slot. The third, giving the
-- slot back, goes in the key's next statement, with the calls that arrive meanwhile.
--
-- It locks the key's `running_slots` row, then its `rate_limit_logs` row (through
-- `take_rate_limit_quotas`). Every other statement on these tables locks one row of one key, so
-- the order cannot deadlock. Like the functions of migration 0007 it commits without waiting
-- for its WAL flush (see there for what that gives up).

-- Gives back the slots `p_release` of `p_key` (those no longer there are ignored), as
-- `exchange_running_slots` does, so that the calls admitted here give their slots back in the
-- same batches. Then, for each of `p_limits` in order, one call of `p_key`: admitted when fewer
-- than that limit unexpired slots hold the key and the quota of `p_calls` per `p_window_secs`
-- has a call left. Returns one element per call: the admitted call's new slot id; NULL when its
-- slots are all held; 0 (never a slot id: the sequence starts at 1) when a slot was free but its
-- quota is spent. As many calls in a row of `take_running_slot`, then, for a slot taken,
-- `take_rate_limit_quota`, with the slot given back when the quota refuses.
CREATE OR REPLACE FUNCTION admit_limited_calls(
    p_key TEXT, p_release BIGINT[], p_limits INTEGER[], p_lease_secs INTEGER, p_calls INTEGER,
    p_window_secs INTEGER)
RETURNS BIGINT[] LANGUAGE plpgsql AS $$
DECLARE
    lease INTERVAL := make_interval(secs => p_lease_secs);
    now_ts TIMESTAMPTZ;
    ids BIGINT[];
    expires TIMESTAMPTZ[];
    held INTEGER;
    changed BOOLEAN;
    lim INTEGER;
    wanted INTEGER := 0;
    allowed INTEGER;
    slot BIGINT;
    answers BIGINT[] := '{}';
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    LOOP
        SELECT slot_ids, slot_expires INTO ids, expires
            FROM running_slots WHERE key = p_key FOR UPDATE;
        EXIT WHEN FOUND;
        IF cardinality(p_limits) = 0 THEN
            -- Nothing to give back and nothing to take.
            RETURN answers;
        END IF;
        INSERT INTO running_slots (key, slot_ids, slot_expires) VALUES (p_key, '{}', '{}')
            ON CONFLICT (key) DO NOTHING;
    END LOOP;
    now_ts := clock_timestamp();
    held := cardinality(ids);
    SELECT coalesce(array_agg(i ORDER BY o), '{}'), coalesce(array_agg(e ORDER BY o), '{}')
        INTO ids, expires
        FROM unnest(ids, expires) WITH ORDINALITY AS s(i, e, o)
        WHERE e > now_ts AND i <> ALL(p_release);
    changed := cardinality(ids) < held;
    -- The calls that would find a free slot if each before them took one. The quota admits the
    -- first of them; once it is spent, no later call takes a slot either, so the calls admitted
    -- are exactly the first `allowed` of these.
    FOREACH lim IN ARRAY p_limits LOOP
        IF cardinality(ids) + wanted < lim THEN
            wanted := wanted + 1;
        END IF;
    END LOOP;
    allowed := take_rate_limit_quotas(p_key, p_calls, p_window_secs, wanted);
    FOREACH lim IN ARRAY p_limits LOOP
        IF allowed > 0 AND cardinality(ids) < lim THEN
            slot := nextval('running_slot_ids');
            ids := ids || slot;
            expires := expires || (now_ts + lease);
            answers := array_append(answers, slot);
            allowed := allowed - 1;
            changed := TRUE;
        ELSIF cardinality(ids) < lim THEN
            answers := array_append(answers, 0::BIGINT);
        ELSE
            answers := array_append(answers, NULL::BIGINT);
        END IF;
    END LOOP;
    IF changed THEN
        UPDATE running_slots SET slot_ids = ids, slot_expires = expires WHERE key = p_key;
    END IF;
    RETURN answers;
END $$;
