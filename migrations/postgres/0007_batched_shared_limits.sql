-- A key's shared limits, taken and given back for several calls in one statement.
--
-- Each statement that changes a key's row (its rate-limit log, its running slots) holds the row's
-- lock until it commits, so one key's statements run one after another whichever replicas send
-- them. A replica therefore keeps at most one statement per key in flight, and sends the calls
-- that arrived meanwhile together in the next: these functions. One session's calls then queue on
-- its rows once per batch rather than once per call.
--
-- The rows are those of migrations 0005 and 0006, unchanged, and their functions stay (at the end
-- of this file): a replica of the previous release, during a rolling upgrade, counts on the same
-- rows with them.
--
-- Both functions commit their transaction without waiting for its WAL flush
-- (`synchronous_commit` off for that transaction only): a row lock is otherwise held through the
-- flush, and every call of the session waits for it. What that gives up: if the database server
-- crashes, the counts of about its last 0.6 s (three `wal_writer_delay`s by default) may be lost,
-- so for a moment after its restart a session may make a few calls more than its `rate_limit`, or
-- run a few more than its `max_concurrent`, and a slot given back may count again until its lease
-- expires. The calls' audit events and the replay set still commit synchronously; a later
-- synchronous commit (the next audit group) flushes these counts with it.

-- How many of `p_takes` calls made at once under `p_key` are within `p_calls` per
-- `p_window_secs`: the first that many are allowed and counted, the rest refused and not
-- counted. As many calls of `take_rate_limit_quota` in a row, at one instant: the allowed calls
-- share one slot of the log, which counts them as as many calls.
CREATE OR REPLACE FUNCTION take_rate_limit_quotas(
    p_key TEXT, p_calls INTEGER, p_window_secs INTEGER, p_takes INTEGER)
RETURNS INTEGER LANGUAGE plpgsql AS $$
DECLARE
    win INTERVAL := make_interval(secs => p_window_secs);
    slot_width INTERVAL := CASE WHEN p_calls <= 64 THEN INTERVAL '0' ELSE win / 64 END;
    now_ts TIMESTAMPTZ;
    firsts TIMESTAMPTZ[];
    lasts TIMESTAMPTZ[];
    counts INTEGER[];
    n INTEGER;
    keep INTEGER := 1;
    total BIGINT;
    allowed INTEGER;
BEGIN
    IF p_calls <= 0 OR p_window_secs <= 0 OR p_takes <= 0 THEN
        RETURN 0;
    END IF;
    PERFORM set_config('synchronous_commit', 'off', true);
    LOOP
        SELECT slot_first, slot_last, slot_count INTO firsts, lasts, counts
            FROM rate_limit_logs WHERE key = p_key FOR UPDATE;
        EXIT WHEN FOUND;
        now_ts := clock_timestamp();
        allowed := least(p_takes, p_calls);
        INSERT INTO rate_limit_logs (key, slot_first, slot_last, slot_count, expires_at)
            VALUES (p_key, ARRAY[now_ts], ARRAY[now_ts], ARRAY[allowed], now_ts + win)
            ON CONFLICT (key) DO NOTHING;
        IF FOUND THEN
            RETURN allowed;
        END IF;
        -- Another call created the row meanwhile (or the sweep deleted it): read it again.
    END LOOP;
    -- Read under the lock, so calls that waited for others are not placed before them.
    now_ts := clock_timestamp();
    n := coalesce(array_length(counts, 1), 0);
    WHILE keep <= n AND lasts[keep] <= now_ts - win LOOP
        keep := keep + 1;
    END LOOP;
    firsts := firsts[keep:n];
    lasts := lasts[keep:n];
    counts := counts[keep:n];
    n := n - keep + 1;
    SELECT coalesce(sum(c), 0) INTO total FROM unnest(counts) AS c;
    allowed := least(p_takes, greatest(p_calls - total, 0));
    IF allowed = 0 THEN
        IF keep > 1 THEN
            UPDATE rate_limit_logs SET slot_first = firsts, slot_last = lasts, slot_count = counts
                WHERE key = p_key;
        END IF;
        RETURN 0;
    END IF;
    IF n > 0 AND now_ts - firsts[n] < slot_width THEN
        counts[n] := counts[n] + allowed;
        lasts[n] := greatest(lasts[n], now_ts);
    ELSE
        firsts := firsts || now_ts;
        lasts := lasts || now_ts;
        counts := counts || allowed;
        n := n + 1;
    END IF;
    UPDATE rate_limit_logs
        SET slot_first = firsts, slot_last = lasts, slot_count = counts, expires_at = lasts[n] + win
        WHERE key = p_key;
    RETURN allowed;
END $$;

-- Gives back the slots `p_release` of `p_key` (those no longer there are ignored), then takes one
-- slot for each of `p_limits`, in order, when fewer than that limit unexpired slots hold the key.
-- Returns one element per limit: the new slot's id, or NULL for a take refused. As many calls of
-- `release_running_slot` and `take_running_slot` in a row. Expired slots count for nothing and
-- are dropped.
CREATE OR REPLACE FUNCTION exchange_running_slots(
    p_key TEXT, p_release BIGINT[], p_limits INTEGER[], p_lease_secs INTEGER)
RETURNS BIGINT[] LANGUAGE plpgsql AS $$
DECLARE
    lease INTERVAL := make_interval(secs => p_lease_secs);
    now_ts TIMESTAMPTZ;
    ids BIGINT[];
    expires TIMESTAMPTZ[];
    held INTEGER;
    changed BOOLEAN;
    lim INTEGER;
    slot BIGINT;
    taken BIGINT[] := '{}';
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    LOOP
        SELECT slot_ids, slot_expires INTO ids, expires
            FROM running_slots WHERE key = p_key FOR UPDATE;
        EXIT WHEN FOUND;
        IF cardinality(p_limits) = 0 THEN
            -- Nothing to give back and nothing to take.
            RETURN taken;
        END IF;
        -- The key's first call (or its row was swept): create the row, then read it under its
        -- lock, whoever created it.
        INSERT INTO running_slots (key, slot_ids, slot_expires) VALUES (p_key, '{}', '{}')
            ON CONFLICT (key) DO NOTHING;
    END LOOP;
    -- Read under the lock, so takes that waited for others count the slots those took.
    now_ts := clock_timestamp();
    held := cardinality(ids);
    SELECT coalesce(array_agg(i ORDER BY o), '{}'), coalesce(array_agg(e ORDER BY o), '{}')
        INTO ids, expires
        FROM unnest(ids, expires) WITH ORDINALITY AS s(i, e, o)
        WHERE e > now_ts AND i <> ALL(p_release);
    changed := cardinality(ids) < held;
    FOREACH lim IN ARRAY p_limits LOOP
        IF cardinality(ids) < lim THEN
            slot := nextval('running_slot_ids');
            ids := ids || slot;
            expires := expires || (now_ts + lease);
            taken := array_append(taken, slot);
            changed := TRUE;
        ELSE
            taken := array_append(taken, NULL::BIGINT);
        END IF;
    END LOOP;
    IF changed THEN
        UPDATE running_slots SET slot_ids = ids, slot_expires = expires WHERE key = p_key;
    END IF;
    RETURN taken;
END $$;

-- Migrations 0005's and 0006's functions, which replicas of the previous release call during a
-- rolling upgrade (and after a rollback), now as one call of those above: one implementation
-- counts, whichever release asks.
CREATE OR REPLACE FUNCTION take_rate_limit_quota(p_key TEXT, p_calls INTEGER, p_window_secs INTEGER)
RETURNS BOOLEAN LANGUAGE sql AS $$
    SELECT take_rate_limit_quotas(p_key, p_calls, p_window_secs, 1) = 1;
$$;

CREATE OR REPLACE FUNCTION take_running_slot(p_key TEXT, p_limit INTEGER, p_lease_secs INTEGER)
RETURNS BIGINT LANGUAGE sql AS $$
    SELECT (exchange_running_slots(p_key, '{}', ARRAY[p_limit], p_lease_secs))[1];
$$;

CREATE OR REPLACE FUNCTION release_running_slot(p_key TEXT, p_id BIGINT)
RETURNS VOID LANGUAGE plpgsql AS $$
BEGIN
    PERFORM exchange_running_slots(p_key, ARRAY[p_id], '{}', 0);
END $$;
