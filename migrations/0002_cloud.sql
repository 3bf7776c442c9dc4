-- shotlist in the cloud: what the Lambda handlers need beyond 0001. A film is
-- submitted (registered, described and given its owner) in one call; the
-- submit handler then sends every chunk to the queue and marks the film
-- enqueued; a stuck film is force-finalized; a message no handler can use is
-- recorded instead of being retried for ever.
--
-- Same rules as 0001: every writer locks a film's chunk rows (in chunk_index
-- order) before the film's row, so no two writers can deadlock; the film's row
-- lock decides which single caller learns that the film is finished. The file
-- can be applied again; it creates what is missing and replaces functions.

-- When the submit handler finished sending the film's chunk messages. NULL
-- while they may not all have been sent: a resubmission then sends them
-- again (duplicates are harmless, claims sort them out).
ALTER TABLE shotlist.videos ADD COLUMN IF NOT EXISTS enqueued_at timestamptz;
-- Until when one submission holds the right to send the chunk messages: of
-- concurrent submissions of a new film exactly one sends them. A holder that
-- died lets the claim run out; one that failed to send releases it.
ALTER TABLE shotlist.videos ADD COLUMN IF NOT EXISTS enqueue_claimed_until timestamptz;
-- The request that holds that claim: the same request repeating its call
-- (its answer was lost on the way) keeps the claim.
ALTER TABLE shotlist.videos ADD COLUMN IF NOT EXISTS enqueue_claimed_by uuid;

-- Messages a handler could not use (malformed body, unknown film), kept for
-- operators. One row per message: a redelivery counts, it does not add a row.
CREATE TABLE IF NOT EXISTS shotlist.rejected_messages (
    queue text NOT NULL,
    message_id text NOT NULL,
    -- The first 4096 characters of the body.
    body text NOT NULL,
    -- The latest reason it was rejected.
    error text NOT NULL,
    receive_count integer NOT NULL DEFAULT 1,
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT rejected_messages_pkey PRIMARY KEY (queue, message_id),
    CONSTRAINT rejected_messages_receive_count_check CHECK (receive_count >= 1)
);

-- Registers a film (register_video), records what probing found
-- (describe_video) and its owner, in one transaction. Answers
-- {"videoId", "totalChunks", "created", "enqueued", "enqueue", "ownerId"}:
-- "created" is true only for the call that inserted the film, "enqueued" says
-- whether its chunk messages were all sent already (mark_enqueued), and
-- "enqueue" tells this caller to send them now: it is true for one caller at
-- a time while they are not sent (a two-minute claim; release_enqueue gives
-- it back after a failed send). The same p_request_id repeating its call gets
-- "enqueue" again.
--
-- Submitting the same film again with the same facts changes nothing. Another
-- owner (NULL and an owner differ too), another source, another plan or
-- other probed facts are refused (22023) naming what differs. The owner is
-- checked first, so that someone else's submission learns nothing about the
-- film; the message does not name the film's owner. The media details
-- besides frame rate and length are not compared (describe_video does not
-- either): they come from the same probe, and may gain fields over time.
CREATE OR REPLACE FUNCTION public.submit_video(
    p_video_id uuid,
    p_owner_id uuid,
    p_duration_seconds double precision,
    p_chunk_seconds double precision,
    p_overlap_seconds double precision,
    p_source text,
    p_fps_num integer,
    p_fps_den integer,
    p_duration_frames bigint,
    p_media jsonb,
    p_request_id uuid DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_existing shotlist.videos;
    v_created boolean;
    v_count integer;
    v_video shotlist.videos;
    v_enqueue boolean;
BEGIN
    IF p_video_id IS NULL THEN
        RAISE EXCEPTION 'p_video_id must not be null' USING ERRCODE = '22023';
    END IF;
    IF p_source IS NULL OR btrim(p_source) = '' THEN
        RAISE EXCEPTION 'p_source must not be empty' USING ERRCODE = '22023';
    END IF;
    -- Concurrent submissions of one id take turns, so that exactly one of
    -- them finds the film missing and says "created" (register_video alone
    -- cannot tell its caller whether it inserted). Only this function takes
    -- this lock, and before any row lock, so it adds no deadlock. Two ids
    -- whose hashes collide merely wait for each other.
    PERFORM pg_advisory_xact_lock(1392967682, hashtext(p_video_id::text));
    SELECT * INTO v_existing FROM shotlist.videos WHERE video_id = p_video_id;
    v_created := NOT FOUND;
    IF NOT v_created THEN
        IF v_existing.owner_id IS DISTINCT FROM p_owner_id THEN
            RAISE EXCEPTION 'video % is already submitted by another owner (p_owner_id % differs)',
                p_video_id, coalesce(p_owner_id::text, 'null')
                USING ERRCODE = '22023';
        END IF;
        IF v_existing.source IS DISTINCT FROM p_source AND v_existing.source IS NOT NULL THEN
            RAISE EXCEPTION 'video % is already submitted with another p_source', p_video_id
                USING ERRCODE = '22023';
        END IF;
    END IF;
    v_count := public.register_video(p_video_id, p_duration_seconds, p_chunk_seconds, p_overlap_seconds);
    PERFORM public.describe_video(p_video_id, p_source, p_fps_num, p_fps_den, p_duration_frames, p_media);
    IF v_created AND p_owner_id IS NOT NULL THEN
        -- describe_video holds the film's row already: no new lock.
        UPDATE shotlist.videos SET owner_id = p_owner_id WHERE video_id = p_video_id;
    END IF;
    -- Under the advisory lock: one caller at a time decides the claim.
    UPDATE shotlist.videos
    SET enqueue_claimed_until = now() + interval '2 minutes',
        enqueue_claimed_by = p_request_id
    WHERE video_id = p_video_id
      AND enqueued_at IS NULL
      AND (enqueue_claimed_until IS NULL
           OR enqueue_claimed_until < now()
           OR enqueue_claimed_by = p_request_id);
    v_enqueue := FOUND;
    v_video := shotlist.video_row(p_video_id);
    RETURN jsonb_build_object(
        'videoId', p_video_id,
        'totalChunks', v_count,
        'created', v_created,
        'enqueued', v_video.enqueued_at IS NOT NULL,
        'enqueue', v_enqueue,
        'ownerId', v_video.owner_id);
END
$$;

-- Records that every chunk message of the film was sent. Only the first call
-- sets the time; later ones change nothing. Answers {"videoId",
-- "enqueuedAt", "marked"}, "marked" being true for the call that set it.
-- It locks only the film's row and then waits for nothing, so it cannot
-- close a cycle with the writers that lock chunks first.
CREATE OR REPLACE FUNCTION public.mark_enqueued(p_video_id uuid)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_video shotlist.videos;
BEGIN
    UPDATE shotlist.videos
    SET enqueued_at = now()
    WHERE video_id = p_video_id
      AND enqueued_at IS NULL
    RETURNING * INTO v_video;
    IF FOUND THEN
        RETURN jsonb_build_object('videoId', p_video_id, 'enqueuedAt', v_video.enqueued_at, 'marked', true);
    END IF;
    v_video := shotlist.video_row(p_video_id);
    RETURN jsonb_build_object('videoId', p_video_id, 'enqueuedAt', v_video.enqueued_at, 'marked', false);
END
$$;

-- Gives back the claim to send a film's chunk messages after a failed send,
-- so that the next submission sends them at once.
CREATE OR REPLACE FUNCTION public.release_enqueue(p_video_id uuid)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE shotlist.videos
    SET enqueue_claimed_until = NULL
    WHERE video_id = p_video_id
      AND enqueued_at IS NULL;
    RETURN jsonb_build_object('videoId', p_video_id, 'released', FOUND);
END
$$;

-- The film's owner: {"videoId", "ownerId"} (NULL for a film without one).
CREATE OR REPLACE FUNCTION public.video_owner(p_video_id uuid)
RETURNS jsonb
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_video shotlist.videos := shotlist.video_row(p_video_id);
BEGIN
    RETURN jsonb_build_object('videoId', v_video.video_id, 'ownerId', v_video.owner_id);
END
$$;

-- Ends a stuck film: every chunk still pending or processing fails with
-- p_reason (an earlier error stays visible after it), and the film is
-- finished, so that it can be finalized with the chunks that completed and
-- the others listed as gaps. Completed chunks and their shots are not
-- touched.
--
-- All of the film's chunk rows are locked first, in chunk_index order, then
-- the film's row, as every writer does. A worker's commit of a chunk either
-- happened before (its chunk stays completed, and if it was the last one it
-- learned "finished" and nothing is forced) or comes after and finds the
-- chunk failed: its lease is cleared and no attempt's token is recorded, so
-- complete_chunk and fail_chunk answer "already_failed" and write nothing,
-- and claim_chunk finds it terminal.
--
-- Answers the film's progress as fail_chunk does, with "forcedChunks", the
-- indexes it failed. "finished" is true only when this call finished the
-- film; a second call forces nothing and changes nothing.
CREATE OR REPLACE FUNCTION public.force_finalize(p_video_id uuid, p_reason text DEFAULT 'force-finalized')
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_reason text;
    v_forced integer[];
    v_was_finished boolean;
    v_video shotlist.videos;
BEGIN
    IF p_reason IS NULL OR btrim(p_reason) = '' THEN
        RAISE EXCEPTION 'p_reason must not be empty' USING ERRCODE = '22023';
    END IF;
    v_reason := left(p_reason, 500);
    PERFORM 1
    FROM shotlist.chunks
    WHERE video_id = p_video_id
    ORDER BY chunk_index
    FOR UPDATE;
    SELECT * INTO v_video FROM shotlist.videos WHERE video_id = p_video_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown video %', p_video_id USING ERRCODE = 'P0002';
    END IF;
    v_was_finished := v_video.finished_at IS NOT NULL;
    WITH forced AS (
        UPDATE shotlist.chunks
        SET status = 'failed',
            error = left(CASE WHEN error IS NULL THEN v_reason
                              ELSE v_reason || ' (last error: ' || error || ')' END, 2000),
            lease_token = NULL,
            lease_until = NULL,
            committed_token = NULL,
            finished_film = false,
            updated_at = now()
        WHERE video_id = p_video_id
          AND status IN ('pending', 'processing')
        RETURNING chunk_index
    )
    SELECT coalesce(array_agg(chunk_index ORDER BY chunk_index), '{}') INTO v_forced FROM forced;
    -- With every chunk locked, no other terminal move is under way: the
    -- counters are exact, and now every chunk is terminal.
    UPDATE shotlist.videos
    SET failed_chunks = failed_chunks + cardinality(v_forced),
        finished_at = CASE
            WHEN completed_chunks + failed_chunks + cardinality(v_forced) = total_chunks
                THEN coalesce(finished_at, now())
            ELSE finished_at
        END
    WHERE video_id = p_video_id
    RETURNING * INTO v_video;
    RETURN shotlist.progress_json(v_video, NOT v_was_finished AND v_video.finished_at IS NOT NULL)
        || jsonb_build_object('videoId', p_video_id, 'forcedChunks', to_jsonb(v_forced));
END
$$;

-- The indexes of the film's chunks still pending or processing, in order.
CREATE OR REPLACE FUNCTION public.unfinished_chunks(p_video_id uuid)
RETURNS jsonb
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_video shotlist.videos := shotlist.video_row(p_video_id);
BEGIN
    RETURN coalesce((
        SELECT jsonb_agg(c.chunk_index ORDER BY c.chunk_index)
        FROM shotlist.chunks AS c
        WHERE c.video_id = v_video.video_id
          AND c.status IN ('pending', 'processing')), '[]'::jsonb);
END
$$;

-- Records a message that a handler rejected. A redelivery of the same message
-- (same queue and id) counts another receipt and keeps the latest error; the
-- body is the first one's. Answers {"queue", "messageId", "receiveCount",
-- "firstSeen", "lastSeen"}.
CREATE OR REPLACE FUNCTION public.record_rejected_message(
    p_queue text,
    p_message_id text,
    p_body text,
    p_error text
) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row shotlist.rejected_messages;
BEGIN
    -- Both make up the key, so they are refused rather than cut: two cut
    -- ids could name one row. 256 characters is far above what SQS uses.
    IF p_queue IS NULL OR btrim(p_queue) = '' OR length(p_queue) > 256 THEN
        RAISE EXCEPTION 'p_queue must be 1 to 256 characters, got %', coalesce(length(p_queue)::text, 'null')
            USING ERRCODE = '22023';
    END IF;
    IF p_message_id IS NULL OR btrim(p_message_id) = '' OR length(p_message_id) > 256 THEN
        RAISE EXCEPTION 'p_message_id must be 1 to 256 characters, got %', coalesce(length(p_message_id)::text, 'null')
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO shotlist.rejected_messages AS r (queue, message_id, body, error)
    VALUES (p_queue, p_message_id, left(coalesce(p_body, ''), 4096),
            left(coalesce(p_error, 'unknown error'), 2000))
    ON CONFLICT (queue, message_id) DO UPDATE
    SET receive_count = r.receive_count + 1,
        error = EXCLUDED.error,
        last_seen = now()
    RETURNING * INTO v_row;
    RETURN jsonb_build_object(
        'queue', v_row.queue,
        'messageId', v_row.message_id,
        'receiveCount', v_row.receive_count,
        'firstSeen', v_row.first_seen,
        'lastSeen', v_row.last_seen);
END
$$;

-- The rejected messages of one queue, oldest first, for operators and tests.
CREATE OR REPLACE FUNCTION public.rejected_messages(p_queue text)
RETURNS jsonb
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'queue', r.queue,
               'messageId', r.message_id,
               'body', r.body,
               'error', r.error,
               'receiveCount', r.receive_count,
               'firstSeen', r.first_seen,
               'lastSeen', r.last_seen)
           ORDER BY r.first_seen, r.message_id), '[]'::jsonb)
    FROM shotlist.rejected_messages AS r
    WHERE r.queue = p_queue
$$;

-- As in 0001: the service role only. The grants on all tables and functions
-- of the schema "shotlist" are repeated for what this file added there.
REVOKE ALL ON SCHEMA shotlist FROM PUBLIC, anon, authenticated;
GRANT USAGE ON SCHEMA shotlist TO service_role;
REVOKE ALL ON ALL TABLES IN SCHEMA shotlist FROM PUBLIC, anon, authenticated;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA shotlist TO service_role;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA shotlist FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA shotlist TO service_role;
REVOKE EXECUTE ON FUNCTION
    public.submit_video(uuid, uuid, double precision, double precision, double precision, text, integer, integer,
                        bigint, jsonb, uuid),
    public.mark_enqueued(uuid),
    public.release_enqueue(uuid),
    public.video_owner(uuid),
    public.force_finalize(uuid, text),
    public.unfinished_chunks(uuid),
    public.record_rejected_message(text, text, text, text),
    public.rejected_messages(text)
FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION
    public.submit_video(uuid, uuid, double precision, double precision, double precision, text, integer, integer,
                        bigint, jsonb, uuid),
    public.mark_enqueued(uuid),
    public.release_enqueue(uuid),
    public.video_owner(uuid),
    public.force_finalize(uuid, text),
    public.unfinished_chunks(uuid),
    public.record_rejected_message(text, text, text, text),
    public.rejected_messages(text)
TO service_role;

INSERT INTO shotlist.schema_migrations (name) VALUES ('0002_cloud') ON CONFLICT (name) DO NOTHING;
