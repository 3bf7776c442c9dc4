-- The sweeper: rescuing chunks and films that nothing is moving any more. A
-- chunk whose lease ran out is claimable again (claim_chunk), but only a
-- message on the chunk queue makes a worker try, and that message may be gone:
-- it went to the dead-letter queue while its worker kept dying, or the submit
-- function died before it sent it. Likewise a finished film gets its sheet
-- only if its finalize request arrives. The sweeper, run every few minutes,
-- finds these cases in the database and says what to send again.
--
-- With leases renewed by live workers (0005), a lease that ran out means the
-- worker is gone. Such a chunk goes back to pending (its attempt stays
-- counted) and is listed to be queued again, or, when it used up its
-- attempts, fails for good through the same counters as fail_chunk, which may
-- finish the film. A pending chunk that nothing touched for a while may have
-- lost its message: it is listed again, once per stale period. A duplicate
-- message costs a claim, never a second analysis. A finished film without a
-- sheet is listed to be finalized, also once per stale period.
--
-- Same rules as 0001: chunk rows are locked before film rows, and the film's
-- row lock (count_terminal) decides which single caller learns that the film
-- is finished. Rows that another transaction holds are skipped, never waited
-- for: two sweepers at once never act on the same chunk or film, and a
-- sweeper never waits on a worker's commit (the next sweep sees the result).

-- Locks p_tables all at once, or none of them, trying for a tenth of a
-- second at a time: a migration that held one while it waited for another
-- could close a cycle with a live worker that takes them the other way round
-- (fail_chunk writes a chunk, then reads its film), which PostgreSQL breaks
-- by failing one of the two, long after the tenth of a second
-- (deadlock_timeout, one second by default). The locks last until the end
-- of the transaction: in one transaction (shotlist migrate) they cover the
-- whole migration. Gives up after 30 s with 55P03.
CREATE OR REPLACE FUNCTION shotlist.lock_all_or_none(p_tables regclass[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_list text := (SELECT string_agg(t::text, ', ') FROM unnest(p_tables) AS t);
    v_lock_timeout text := current_setting('lock_timeout');
    v_give_up timestamptz := clock_timestamp() + interval '30 seconds';
BEGIN
    PERFORM set_config('lock_timeout', '100ms', true);
    LOOP
        BEGIN
            EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', v_list);
            EXIT;
        EXCEPTION WHEN lock_not_available THEN
            IF clock_timestamp() > v_give_up THEN
                RAISE EXCEPTION '% stayed busy for 30 s; apply this migration again', v_list
                    USING ERRCODE = '55P03';
            END IF;
            PERFORM pg_sleep(0.02 + random() * 0.08);
        END;
    END LOOP;
    PERFORM set_config('lock_timeout', v_lock_timeout, true);
END
$$;

REVOKE EXECUTE ON FUNCTION shotlist.lock_all_or_none(regclass[]) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION shotlist.lock_all_or_none(regclass[]) TO service_role;

-- The two tables this file changes.
SELECT shotlist.lock_all_or_none(ARRAY['shotlist.videos', 'shotlist.chunks']::regclass[]);

-- When a sweeper last asked for the film's sheet: the next request comes one
-- stale period later, so that a film whose finalize keeps failing costs one
-- message per period rather than one per sweep.
ALTER TABLE shotlist.videos ADD COLUMN IF NOT EXISTS finalize_requested_at timestamptz;

-- The sweeper reads only open chunks; they are few next to the finished ones.
CREATE INDEX IF NOT EXISTS chunks_open_idx
    ON shotlist.chunks (video_id, chunk_index)
    WHERE status IN ('pending', 'processing');

-- Whether the chunks of a film travel through the chunk queue: it was
-- submitted through submit_video, which claims (and then marks) the sending
-- of its messages. The claim's request id stays when a failed send gives
-- the claim back (release_enqueue), so a film whose messages were never all
-- sent still counts: it is the very film the sweeper must rescue. A film of
-- `shotlist process` never is: its run claims the chunks itself, and a
-- chunk message for it would send a Lambda to a file on someone's machine.
CREATE OR REPLACE FUNCTION shotlist.film_is_queued(p_video_id uuid)
RETURNS boolean
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (
        SELECT
        FROM shotlist.videos AS v
        WHERE v.video_id = p_video_id
          AND (v.enqueued_at IS NOT NULL
               OR v.enqueue_claimed_until IS NOT NULL
               OR v.enqueue_claimed_by IS NOT NULL))
$$;

-- Sweeps at most p_limit chunks and p_limit films, in one transaction:
--
-- * processing chunks whose lease ran out: with fewer than p_max_attempts
--   attempts, back to pending and listed in "requeue" (reason
--   "lease_expired"); otherwise failed for good and listed in "failed", with
--   "finished" true for the one chunk whose failure finished its film;
-- * pending chunks not touched for p_stale_seconds: listed in "requeue"
--   (reason "stale") and touched, so that the next sweep lists them only once
--   they are stale again; not those of a film never described, which no
--   worker could claim;
-- * films finished by this call, and films finished more than p_stale_seconds
--   ago that have no sheet and were not asked for one within
--   p_stale_seconds: listed in "finalize".
--
-- Answers {"requeue": [{"videoId", "chunkIndex", "attempts", "reason",
-- "queued"}], where "queued" says whether the film takes chunk messages,
-- "failed": [{"videoId", "chunkIndex", "attempts", "error", "finished"}],
-- "finalize": ["<video id>", ...]}, each list in (video, chunk) order.
CREATE OR REPLACE FUNCTION public.sweep_chunks(
    p_max_attempts integer DEFAULT 3,
    p_stale_seconds double precision DEFAULT 900,
    p_limit integer DEFAULT 500
) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_stale interval;
    v_chunk shotlist.chunks;
    v_error text;
    v_progress jsonb;
    v_requeue jsonb := '[]'::jsonb;
    v_failed jsonb := '[]'::jsonb;
    v_finished uuid[] := '{}';
    v_found uuid[];
BEGIN
    IF p_max_attempts IS NULL OR p_max_attempts < 1 THEN
        RAISE EXCEPTION 'p_max_attempts must be at least 1, got %', p_max_attempts USING ERRCODE = '22023';
    END IF;
    -- NaN compares greater than every number, hence its own test. A year
    -- keeps the interval arithmetic far from overflowing.
    IF p_stale_seconds IS NULL OR p_stale_seconds = 'NaN' OR p_stale_seconds < 0
       OR p_stale_seconds > 31536000 THEN
        RAISE EXCEPTION 'p_stale_seconds must be 0 to 31536000, got %', p_stale_seconds USING ERRCODE = '22023';
    END IF;
    IF p_limit IS NULL OR p_limit < 1 OR p_limit > 10000 THEN
        RAISE EXCEPTION 'p_limit must be 1 to 10000, got %', p_limit USING ERRCODE = '22023';
    END IF;
    v_stale := p_stale_seconds * interval '1 second';

    -- In (video, chunk) order, so that concurrent sweepers take the films'
    -- rows in count_terminal in one order and cannot deadlock. A lease that
    -- is not in the future has run out, as claim_chunk sees it.
    FOR v_chunk IN
        SELECT *
        FROM shotlist.chunks AS c
        WHERE (c.status = 'processing' AND (c.lease_until IS NULL OR c.lease_until <= now()))
           OR (c.status = 'pending' AND c.updated_at < now() - v_stale AND c.start_frame IS NOT NULL)
        ORDER BY c.video_id, c.chunk_index
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    LOOP
        IF v_chunk.status = 'pending' THEN
            UPDATE shotlist.chunks
            SET updated_at = now()
            WHERE video_id = v_chunk.video_id
              AND chunk_index = v_chunk.chunk_index;
            v_requeue := v_requeue || jsonb_build_object(
                'videoId', v_chunk.video_id, 'chunkIndex', v_chunk.chunk_index,
                'attempts', v_chunk.attempts, 'reason', 'stale',
                'queued', shotlist.film_is_queued(v_chunk.video_id));
        ELSIF v_chunk.attempts < p_max_attempts THEN
            UPDATE shotlist.chunks
            SET status = 'pending',
                error = 'lease expired: the worker was lost',
                lease_token = NULL,
                lease_until = NULL,
                updated_at = now()
            WHERE video_id = v_chunk.video_id
              AND chunk_index = v_chunk.chunk_index;
            v_requeue := v_requeue || jsonb_build_object(
                'videoId', v_chunk.video_id, 'chunkIndex', v_chunk.chunk_index,
                'attempts', v_chunk.attempts, 'reason', 'lease_expired',
                'queued', shotlist.film_is_queued(v_chunk.video_id));
        ELSE
            -- The last attempt's worker was lost; an earlier attempt's own
            -- error, when there was one, says more.
            v_error := left(format('gave up after %s attempts: lease expired: the worker was lost%s',
                                   v_chunk.attempts,
                                   CASE WHEN v_chunk.error IS NULL OR v_chunk.error LIKE 'lease expired%' THEN ''
                                        ELSE ' (earlier: ' || v_chunk.error || ')' END), 2000);
            v_progress := shotlist.count_terminal(v_chunk.video_id, 'failed');
            -- No attempt's token is recorded: the lost worker, should it come
            -- back, learns "already_failed" and not that it finished the film.
            UPDATE shotlist.chunks
            SET status = 'failed',
                error = v_error,
                lease_token = NULL,
                lease_until = NULL,
                committed_token = NULL,
                finished_film = false,
                updated_at = now()
            WHERE video_id = v_chunk.video_id
              AND chunk_index = v_chunk.chunk_index;
            v_failed := v_failed || jsonb_build_object(
                'videoId', v_chunk.video_id, 'chunkIndex', v_chunk.chunk_index,
                'attempts', v_chunk.attempts, 'error', v_error,
                'finished', (v_progress ->> 'finished')::boolean);
            IF (v_progress ->> 'finished')::boolean THEN
                v_finished := v_finished || v_chunk.video_id;
            END IF;
        END IF;
    END LOOP;

    -- The films whose finalize request may have been lost. count_terminal
    -- holds the rows of the films this call finished already.
    WITH due AS (
        SELECT v.video_id
        FROM shotlist.videos AS v
        WHERE v.finished_at < now() - v_stale
          AND (v.finalize_requested_at IS NULL OR v.finalize_requested_at < now() - v_stale)
          AND v.video_id <> ALL (v_finished)
          AND NOT EXISTS (SELECT FROM shotlist.sheets AS s WHERE s.video_id = v.video_id)
        ORDER BY v.video_id
        LIMIT p_limit
        FOR UPDATE OF v SKIP LOCKED
    )
    SELECT coalesce(array_agg(video_id ORDER BY video_id), '{}') INTO v_found FROM due;
    UPDATE shotlist.videos
    SET finalize_requested_at = now()
    WHERE video_id = ANY (v_finished || v_found);

    RETURN jsonb_build_object(
        'requeue', v_requeue,
        'failed', v_failed,
        'finalize', to_jsonb(v_finished || v_found));
END
$$;

REVOKE EXECUTE ON FUNCTION shotlist.film_is_queued(uuid) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION shotlist.film_is_queued(uuid) TO service_role;
REVOKE EXECUTE ON FUNCTION public.sweep_chunks(integer, double precision, integer) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.sweep_chunks(integer, double precision, integer) TO service_role;

INSERT INTO shotlist.schema_migrations (name) VALUES ('0006_sweep') ON CONFLICT (name) DO NOTHING;
