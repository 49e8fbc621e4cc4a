-- A capability's `rate_limit`, counted once for every replica on this database. Counted by each
-- replica in its own memory, N replicas behind a load balancer let a session make N times its
-- calls.
--
-- One row per key (session, SecurityContext, capability) holds the key's sliding log, the same
-- log the gateway keeps in memory when it runs alone (`aegis_seal_gateway::domain::policy::
-- RateLimiter`): slots of calls in time order, each expiring with its latest call. Limits of up
-- to 64 calls keep one slot per call and are exact; larger limits merge the calls of each
-- `window / 64` into one slot, which may refuse a call early but never lets one too many through,
-- and bounds a row at about 66 slots. Time is the database's clock, so the replicas' clocks do
-- not matter.
CREATE TABLE IF NOT EXISTS rate_limit_logs (
    key        TEXT PRIMARY KEY,
    slot_first TIMESTAMPTZ[] NOT NULL,
    slot_last  TIMESTAMPTZ[] NOT NULL,
    slot_count INTEGER[] NOT NULL,
    -- When the newest slot leaves its window: from then on the row decides nothing, and the
    -- sweep deletes it.
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS rate_limit_logs_expires_at ON rate_limit_logs (expires_at);

-- Whether one more call under `p_key` is within `p_calls` per `p_window_secs`; an allowed call is
-- counted, a refused one is not (a client that keeps retrying regains quota as its calls age
-- out). The row lock serializes a key's calls across replicas for the length of this statement.
CREATE OR REPLACE FUNCTION take_rate_limit_quota(p_key TEXT, p_calls INTEGER, p_window_secs INTEGER)
RETURNS BOOLEAN LANGUAGE plpgsql AS $$
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
BEGIN
    IF p_calls <= 0 OR p_window_secs <= 0 THEN
        RETURN FALSE;
    END IF;
    LOOP
        SELECT slot_first, slot_last, slot_count INTO firsts, lasts, counts
            FROM rate_limit_logs WHERE key = p_key FOR UPDATE;
        EXIT WHEN FOUND;
        now_ts := clock_timestamp();
        INSERT INTO rate_limit_logs (key, slot_first, slot_last, slot_count, expires_at)
            VALUES (p_key, ARRAY[now_ts], ARRAY[now_ts], ARRAY[1], now_ts + win)
            ON CONFLICT (key) DO NOTHING;
        IF FOUND THEN
            RETURN TRUE;
        END IF;
        -- Another call created the row meanwhile (or the sweep deleted it): read it again.
    END LOOP;
    -- Read under the lock, so a call that waited for another is not placed before it.
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
    IF total >= p_calls THEN
        IF keep > 1 THEN
            UPDATE rate_limit_logs SET slot_first = firsts, slot_last = lasts, slot_count = counts
                WHERE key = p_key;
        END IF;
        RETURN FALSE;
    END IF;
    IF n > 0 AND now_ts - firsts[n] < slot_width THEN
        counts[n] := counts[n] + 1;
        lasts[n] := greatest(lasts[n], now_ts);
    ELSE
        firsts := firsts || now_ts;
        lasts := lasts || now_ts;
        counts := counts || 1;
        n := n + 1;
    END IF;
    UPDATE rate_limit_logs
        SET slot_first = firsts, slot_last = lasts, slot_count = counts, expires_at = lasts[n] + win
        WHERE key = p_key;
    RETURN TRUE;
END $$;
