-- shotlist core: films, their chunks, the shots each chunk found, and the
-- finished sheets, with the functions that coordinate chunk workers.
--
-- Coordination rests on one row per chunk: workers of different chunks never
-- touch the same row, so no update of one chunk can erase another's. The
-- film's row holds the completed/failed counters, which only a chunk's move to
-- a terminal status changes, in the same transaction; the row lock that this
-- takes makes exactly one caller see the last chunk finish.
--
-- The file can be applied again (by the CLI or by hand with psql): it creates
-- what is missing and replaces functions in place. Runs on PostgreSQL 15+ and
-- on Supabase. Tables live in the schema "shotlist"; the functions callers use
-- live in "public", where Supabase's RPC finds them.

CREATE SCHEMA IF NOT EXISTS shotlist;

CREATE TABLE IF NOT EXISTS shotlist.schema_migrations (
    name text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Supabase has these roles. Vanilla PostgreSQL gets NOLOGIN stand-ins so the
-- grants below read the same everywhere. Roles are per cluster: another
-- database of the same cluster may be creating one at this very moment, which
-- surfaces as duplicate_object or unique_violation and is fine.
DO $roles$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['service_role', 'anon', 'authenticated'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = v_role) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END
$roles$;

CREATE TABLE IF NOT EXISTS shotlist.videos (
    video_id uuid NOT NULL,
    duration_seconds double precision NOT NULL,
    chunk_seconds double precision NOT NULL,
    overlap_seconds double precision NOT NULL,
    total_chunks integer NOT NULL,
    -- Kept by the chunk transitions themselves, never recounted: see above.
    completed_chunks integer NOT NULL DEFAULT 0,
    failed_chunks integer NOT NULL DEFAULT 0,
    -- Known once the film has been probed (describe_video).
    source text,
    fps_num integer,
    fps_den integer,
    duration_frames bigint,
    media jsonb NOT NULL DEFAULT '{}'::jsonb,
    owner_id uuid,
    -- Set by the one call whose change made every chunk terminal.
    finished_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT videos_pkey PRIMARY KEY (video_id),
    CONSTRAINT videos_counts_check
        CHECK (completed_chunks >= 0 AND failed_chunks >= 0
               AND completed_chunks + failed_chunks <= total_chunks),
    CONSTRAINT videos_fps_check CHECK ((fps_num IS NULL) = (fps_den IS NULL) AND fps_num > 0 AND fps_den > 0),
    CONSTRAINT videos_duration_frames_check CHECK (duration_frames > 0)
);

CREATE TABLE IF NOT EXISTS shotlist.chunks (
    video_id uuid NOT NULL,
    chunk_index integer NOT NULL,
    start_seconds double precision NOT NULL,
    end_seconds double precision NOT NULL,
    -- Known once the frame rate is (describe_video).
    start_frame bigint,
    end_frame bigint,
    status text NOT NULL DEFAULT 'pending',
    attempts integer NOT NULL DEFAULT 0,
    -- A claim's proof: only the holder of the current token may commit.
    lease_token uuid,
    lease_until timestamptz,
    -- The attempt that made the chunk terminal, and whether that finished
    -- the film: the same attempt repeating its call (its answer was lost on
    -- the way) gets the same answer again.
    committed_token uuid,
    finished_film boolean NOT NULL DEFAULT false,
    error text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT chunks_pkey PRIMARY KEY (video_id, chunk_index),
    CONSTRAINT chunks_video_fkey FOREIGN KEY (video_id) REFERENCES shotlist.videos (video_id) ON DELETE CASCADE,
    CONSTRAINT chunks_status_check CHECK (status IN ('pending', 'processing', 'completed', 'failed'))
);

CREATE TABLE IF NOT EXISTS shotlist.shots (
    video_id uuid NOT NULL,
    chunk_index integer NOT NULL,
    ordinal integer NOT NULL,
    -- Absolute frames of the film, [start_frame, end_frame).
    start_frame bigint NOT NULL,
    end_frame bigint NOT NULL,
    shot_type text NOT NULL,
    description text NOT NULL,
    dialogue jsonb NOT NULL DEFAULT '[]'::jsonb,
    CONSTRAINT shots_pkey PRIMARY KEY (video_id, chunk_index, ordinal),
    CONSTRAINT shots_chunk_fkey FOREIGN KEY (video_id, chunk_index)
        REFERENCES shotlist.chunks (video_id, chunk_index) ON DELETE CASCADE,
    CONSTRAINT shots_frames_check CHECK (start_frame >= 0 AND start_frame < end_frame),
    CONSTRAINT shots_type_check CHECK (shot_type IN ('close-up', 'medium', 'wide', 'detail', 'insert', 'other')),
    CONSTRAINT shots_dialogue_check CHECK (jsonb_typeof(dialogue) = 'array')
);

CREATE TABLE IF NOT EXISTS shotlist.sheets (
    video_id uuid NOT NULL,
    sheet jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT sheets_pkey PRIMARY KEY (video_id),
    CONSTRAINT sheets_video_fkey FOREIGN KEY (video_id) REFERENCES shotlist.videos (video_id) ON DELETE CASCADE
);

-- The number of chunks for a film, by the rule in plan.rs (same floating-point
-- operations, so both sides agree). Raises 22023 naming the bad argument.
CREATE OR REPLACE FUNCTION shotlist.chunk_count(
    p_duration_seconds double precision,
    p_chunk_seconds double precision,
    p_overlap_seconds double precision
) RETURNS integer
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_chunks double precision;
BEGIN
    IF p_duration_seconds IS NULL OR p_duration_seconds = 'NaN' OR p_duration_seconds <= 0
       OR p_duration_seconds = 'Infinity' THEN
        RAISE EXCEPTION 'p_duration_seconds must be a positive finite number, got %', p_duration_seconds
            USING ERRCODE = '22023';
    END IF;
    IF p_chunk_seconds IS NULL OR p_chunk_seconds = 'NaN' OR p_chunk_seconds <= 0
       OR p_chunk_seconds = 'Infinity' THEN
        RAISE EXCEPTION 'p_chunk_seconds must be a positive finite number, got %', p_chunk_seconds
            USING ERRCODE = '22023';
    END IF;
    IF p_overlap_seconds IS NULL OR p_overlap_seconds = 'NaN' OR p_overlap_seconds <= 0
       OR p_overlap_seconds = 'Infinity' THEN
        RAISE EXCEPTION 'p_overlap_seconds must be a positive finite number, got %', p_overlap_seconds
            USING ERRCODE = '22023';
    END IF;
    IF p_overlap_seconds >= p_chunk_seconds THEN
        RAISE EXCEPTION 'p_overlap_seconds (%) must be smaller than p_chunk_seconds (%)',
            p_overlap_seconds, p_chunk_seconds
            USING ERRCODE = '22023';
    END IF;
    IF p_duration_seconds <= p_chunk_seconds THEN
        RETURN 1;
    END IF;
    v_chunks := ceil((p_duration_seconds - p_overlap_seconds) / (p_chunk_seconds - p_overlap_seconds) - 1e-9);
    IF v_chunks > 10000 THEN
        RAISE EXCEPTION 'p_duration_seconds % gives % chunks, more than the limit of 10000',
            p_duration_seconds, v_chunks
            USING ERRCODE = '22023';
    END IF;
    RETURN v_chunks::integer;
END
$$;

-- Frame f as a non-drop HH:MM:SS:FF timecode at the nominal rate (the rate
-- rounded half up), the same rule as time.rs.
CREATE OR REPLACE FUNCTION shotlist.timecode(p_frame bigint, p_fps_num integer, p_fps_den integer)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN p_frame IS NULL OR p_fps_num IS NULL OR p_fps_den IS NULL THEN NULL ELSE
        lpad((s / 3600)::text, greatest(2, length((s / 3600)::text)), '0')
        || ':' || lpad(((s / 60) % 60)::text, 2, '0')
        || ':' || lpad((s % 60)::text, 2, '0')
        || ':' || lpad((f % n)::text, greatest(2, length((f % n)::text)), '0')
    END
    FROM (SELECT greatest(p_frame, 0) AS f,
                 greatest((p_fps_num + p_fps_den / 2) / p_fps_den, 1) AS n) AS r,
         LATERAL (SELECT r.f / r.n AS s) AS t
$$;

-- The frame nearest to p_seconds (half up), the same rule as Fps::frame_at.
CREATE OR REPLACE FUNCTION shotlist.frame_at(p_seconds double precision, p_fps_num integer, p_fps_den integer)
RETURNS bigint
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT floor(p_seconds * p_fps_num / p_fps_den + 0.5)::bigint
$$;

-- The film's counters as the callers see them. "finished" is true only for
-- the call whose change finished the film; "filmFinished" says whether the
-- film is finished at all (a caller whose answer was lost and who repeats its
-- call learns it that way).
CREATE OR REPLACE FUNCTION shotlist.progress_json(p_video shotlist.videos, p_finished boolean)
RETURNS jsonb
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_build_object(
        'completedChunks', p_video.completed_chunks,
        'failedChunks', p_video.failed_chunks,
        'totalChunks', p_video.total_chunks,
        'finished', p_finished,
        'filmFinished', p_video.finished_at IS NOT NULL)
$$;

-- Counts one chunk's move into a terminal status. The caller has already
-- changed the chunk row in this transaction. The UPDATE locks the film's row
-- until commit, so concurrent terminal moves of one film are counted one
-- after another, and exactly one of them sees the count reach the total.
CREATE OR REPLACE FUNCTION shotlist.count_terminal(p_video_id uuid, p_status text)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_video shotlist.videos;
BEGIN
    UPDATE shotlist.videos
    SET completed_chunks = completed_chunks + (p_status = 'completed')::integer,
        failed_chunks = failed_chunks + (p_status = 'failed')::integer,
        finished_at = CASE
            WHEN completed_chunks + failed_chunks + 1 = total_chunks THEN now()
            ELSE finished_at
        END
    WHERE video_id = p_video_id
    RETURNING * INTO v_video;
    RETURN shotlist.progress_json(v_video, v_video.completed_chunks + v_video.failed_chunks = v_video.total_chunks);
END
$$;

-- The chunk row, locked for this transaction, or P0002 naming what is unknown.
CREATE OR REPLACE FUNCTION shotlist.lock_chunk(p_video_id uuid, p_chunk_index integer)
RETURNS shotlist.chunks
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_chunk shotlist.chunks;
    v_total integer;
BEGIN
    SELECT * INTO v_chunk
    FROM shotlist.chunks
    WHERE video_id = p_video_id
      AND chunk_index = p_chunk_index
    FOR UPDATE;
    IF FOUND THEN
        RETURN v_chunk;
    END IF;
    SELECT total_chunks INTO v_total FROM shotlist.videos WHERE video_id = p_video_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown video %', p_video_id USING ERRCODE = 'P0002';
    END IF;
    RAISE EXCEPTION 'video % has no chunk % (it has chunks 0 to %)', p_video_id, p_chunk_index, v_total - 1
        USING ERRCODE = 'P0002';
END
$$;

CREATE OR REPLACE FUNCTION shotlist.video_row(p_video_id uuid)
RETURNS shotlist.videos
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_video shotlist.videos;
BEGIN
    SELECT * INTO v_video FROM shotlist.videos WHERE video_id = p_video_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown video %', p_video_id USING ERRCODE = 'P0002';
    END IF;
    RETURN v_video;
END
$$;

-- Registers a film and plans its chunks (pending). Repeating the same call
-- changes nothing and returns the same count; the same id with another plan
-- is refused.
CREATE OR REPLACE FUNCTION public.register_video(
    p_video_id uuid,
    p_duration_seconds double precision,
    p_chunk_seconds double precision DEFAULT 180,
    p_overlap_seconds double precision DEFAULT 15
) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_count integer;
    v_step double precision := p_chunk_seconds - p_overlap_seconds;
    v_video shotlist.videos;
BEGIN
    IF p_video_id IS NULL THEN
        RAISE EXCEPTION 'p_video_id must not be null' USING ERRCODE = '22023';
    END IF;
    v_count := shotlist.chunk_count(p_duration_seconds, p_chunk_seconds, p_overlap_seconds);
    INSERT INTO shotlist.videos (video_id, duration_seconds, chunk_seconds, overlap_seconds, total_chunks)
    VALUES (p_video_id, p_duration_seconds, p_chunk_seconds, p_overlap_seconds, v_count)
    ON CONFLICT (video_id) DO NOTHING;
    IF FOUND THEN
        INSERT INTO shotlist.chunks (video_id, chunk_index, start_seconds, end_seconds)
        SELECT p_video_id,
               k,
               k * v_step,
               CASE WHEN k = v_count - 1 THEN p_duration_seconds
                    ELSE least(k * v_step + p_chunk_seconds, p_duration_seconds) END
        FROM generate_series(0, v_count - 1) AS k;
        RETURN v_count;
    END IF;
    v_video := shotlist.video_row(p_video_id);
    IF (v_video.duration_seconds, v_video.chunk_seconds, v_video.overlap_seconds)
       IS DISTINCT FROM (p_duration_seconds, p_chunk_seconds, p_overlap_seconds) THEN
        RAISE EXCEPTION 'video % is already registered with p_duration_seconds %, p_chunk_seconds %, p_overlap_seconds %',
            p_video_id, v_video.duration_seconds, v_video.chunk_seconds, v_video.overlap_seconds
            USING ERRCODE = '22023';
    END IF;
    RETURN v_video.total_chunks;
END
$$;

-- Records what probing the film found: where it is, its exact frame rate and
-- length in frames, and analyzer details (media). Fixes every chunk's frames.
-- Repeating it with the same facts changes nothing; other facts are refused.
CREATE OR REPLACE FUNCTION public.describe_video(
    p_video_id uuid,
    p_source text,
    p_fps_num integer,
    p_fps_den integer,
    p_duration_frames bigint,
    p_media jsonb DEFAULT '{}'::jsonb
) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_video shotlist.videos;
BEGIN
    IF p_fps_num IS NULL OR p_fps_den IS NULL OR p_fps_den <= 0 OR p_fps_num < p_fps_den
       OR p_fps_num > 1000 * p_fps_den THEN
        RAISE EXCEPTION 'p_fps_num/p_fps_den must be 1 to 1000 frames per second, got %/%', p_fps_num, p_fps_den
            USING ERRCODE = '22023';
    END IF;
    IF p_duration_frames IS NULL OR p_duration_frames <= 0 THEN
        RAISE EXCEPTION 'p_duration_frames must be positive, got %', p_duration_frames USING ERRCODE = '22023';
    END IF;
    IF p_media IS NULL OR jsonb_typeof(p_media) <> 'object' THEN
        RAISE EXCEPTION 'p_media must be a JSON object' USING ERRCODE = '22023';
    END IF;
    -- Locks in the order every writer uses, chunks before the film, so that
    -- no chunk update can deadlock with this.
    PERFORM 1
    FROM shotlist.chunks
    WHERE video_id = p_video_id
    ORDER BY chunk_index
    FOR UPDATE;
    SELECT * INTO v_video FROM shotlist.videos WHERE video_id = p_video_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown video %', p_video_id USING ERRCODE = 'P0002';
    END IF;
    IF v_video.fps_num IS NOT NULL THEN
        IF (v_video.fps_num, v_video.fps_den, v_video.duration_frames) IS DISTINCT FROM
           (p_fps_num, p_fps_den, p_duration_frames) THEN
            RAISE EXCEPTION 'video % is already described as % frames at %/% fps',
                p_video_id, v_video.duration_frames, v_video.fps_num, v_video.fps_den
                USING ERRCODE = '22023';
        END IF;
        RETURN shotlist.progress_json(v_video, false);
    END IF;
    UPDATE shotlist.videos
    SET source = p_source,
        fps_num = p_fps_num,
        fps_den = p_fps_den,
        duration_frames = p_duration_frames,
        media = p_media
    WHERE video_id = p_video_id
    RETURNING * INTO v_video;
    UPDATE shotlist.chunks
    SET start_frame = least(shotlist.frame_at(start_seconds, p_fps_num, p_fps_den), p_duration_frames),
        end_frame = CASE
            WHEN chunk_index = v_video.total_chunks - 1 THEN p_duration_frames
            ELSE least(shotlist.frame_at(end_seconds, p_fps_num, p_fps_den), p_duration_frames)
        END
    WHERE video_id = p_video_id;
    RETURN shotlist.progress_json(v_video, false);
END
$$;

-- The old system's entry point, made safe: it changes one chunk row, moves
-- status only forward, and reports "finished" to exactly one caller per film.
-- 'processing' counts as an attempt with a 10-minute lease.
CREATE OR REPLACE FUNCTION public.update_chunk_status(
    p_video_id uuid,
    p_chunk_index integer,
    p_status text,
    p_error text DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_chunk shotlist.chunks;
BEGIN
    IF p_status IS NULL OR p_status NOT IN ('pending', 'processing', 'completed', 'failed') THEN
        RAISE EXCEPTION 'unknown status %: expected pending, processing, completed or failed', quote_nullable(p_status)
            USING ERRCODE = '22023';
    END IF;
    v_chunk := shotlist.lock_chunk(p_video_id, p_chunk_index);
    -- Status only moves forward: pending -> processing -> completed | failed.
    -- Anything else (a duplicate, a late 'processing', a 'pending' for a
    -- claimed chunk) changes nothing.
    IF v_chunk.status IN ('completed', 'failed') OR v_chunk.status = p_status
       OR p_status = 'pending' THEN
        RETURN shotlist.progress_json(shotlist.video_row(p_video_id), false);
    END IF;
    IF p_status = 'completed' AND v_chunk.lease_token IS NOT NULL THEN
        RAISE EXCEPTION 'chunk % of video % is held by a worker until %: it completes with its shots through complete_chunk',
            p_chunk_index, p_video_id, v_chunk.lease_until
            USING ERRCODE = '55000';
    END IF;
    UPDATE shotlist.chunks
    SET status = p_status,
        attempts = attempts + (p_status = 'processing')::integer,
        lease_token = NULL,
        lease_until = CASE WHEN p_status = 'processing' THEN now() + interval '10 minutes' END,
        error = CASE WHEN p_status = 'failed' THEN coalesce(p_error, 'failed') ELSE coalesce(p_error, error) END,
        updated_at = now()
    WHERE video_id = p_video_id
      AND chunk_index = p_chunk_index;
    IF p_status IN ('completed', 'failed') THEN
        RETURN shotlist.count_terminal(p_video_id, p_status);
    END IF;
    RETURN shotlist.progress_json(shotlist.video_row(p_video_id), false);
END
$$;

-- Takes a chunk for analysis. A pending chunk, or a processing one whose lease
-- ran out (its worker died), gets a new attempt, a fresh lease token and
-- lease_until = now() + p_lease_seconds. Returns {"claimed": true, ...} with
-- what the worker needs, or {"claimed": false, "status": ...} when the chunk
-- is terminal or another worker holds a live lease. A chunk that already used
-- p_max_attempts attempts is failed instead (which may finish the film).
CREATE OR REPLACE FUNCTION public.claim_chunk(
    p_video_id uuid,
    p_chunk_index integer,
    p_lease_seconds double precision DEFAULT 600,
    p_max_attempts integer DEFAULT 3
) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_chunk shotlist.chunks;
    v_video shotlist.videos;
    v_progress jsonb;
BEGIN
    -- NaN compares greater than every number in PostgreSQL, hence its own
    -- test; a day bounds the interval arithmetic below (as in renew_lease).
    IF p_lease_seconds IS NULL OR p_lease_seconds = 'NaN' OR NOT p_lease_seconds > 0
       OR p_lease_seconds > 86400 THEN
        RAISE EXCEPTION 'p_lease_seconds must be more than 0 and at most 86400, got %', p_lease_seconds
            USING ERRCODE = '22023';
    END IF;
    IF p_max_attempts IS NULL OR p_max_attempts < 1 THEN
        RAISE EXCEPTION 'p_max_attempts must be at least 1, got %', p_max_attempts USING ERRCODE = '22023';
    END IF;
    v_chunk := shotlist.lock_chunk(p_video_id, p_chunk_index);
    IF v_chunk.status IN ('completed', 'failed')
       OR (v_chunk.status = 'processing' AND v_chunk.lease_until > now()) THEN
        RETURN jsonb_build_object('claimed', false, 'status', v_chunk.status, 'attempts', v_chunk.attempts,
                                  'leaseUntil', v_chunk.lease_until, 'finished', false);
    END IF;
    IF v_chunk.attempts >= p_max_attempts THEN
        UPDATE shotlist.chunks
        SET status = 'failed',
            error = format('gave up after %s attempts: %s', v_chunk.attempts,
                           coalesce(v_chunk.error, 'the worker stopped without a word')),
            lease_token = NULL,
            lease_until = NULL,
            updated_at = now()
        WHERE video_id = p_video_id
          AND chunk_index = p_chunk_index;
        v_progress := shotlist.count_terminal(p_video_id, 'failed');
        RETURN v_progress || jsonb_build_object('claimed', false, 'status', 'failed', 'attempts', v_chunk.attempts);
    END IF;
    v_video := shotlist.video_row(p_video_id);
    IF v_video.fps_num IS NULL THEN
        RAISE EXCEPTION 'video % has not been described yet (describe_video)', p_video_id USING ERRCODE = '55000';
    END IF;
    UPDATE shotlist.chunks
    SET status = 'processing',
        attempts = attempts + 1,
        lease_token = gen_random_uuid(),
        lease_until = now() + p_lease_seconds * interval '1 second',
        error = CASE WHEN v_chunk.status = 'processing' THEN 'lease expired: the previous worker was lost'
                     ELSE error END,
        updated_at = now()
    WHERE video_id = p_video_id
      AND chunk_index = p_chunk_index
    RETURNING * INTO v_chunk;
    RETURN jsonb_build_object(
        'claimed', true,
        'status', 'processing',
        'leaseToken', v_chunk.lease_token,
        'leaseUntil', v_chunk.lease_until,
        'attempt', v_chunk.attempts,
        'chunkIndex', v_chunk.chunk_index,
        'totalChunks', v_video.total_chunks,
        'startFrame', v_chunk.start_frame,
        'endFrame', v_chunk.end_frame,
        'source', v_video.source,
        'fps', v_video.fps_num || '/' || v_video.fps_den,
        'durationFrames', v_video.duration_frames,
        'media', v_video.media);
END
$$;

-- What is wrong with one element of complete_chunk's p_shots, or NULL when
-- it is a shot inside the chunk's frames [p_start, p_end). Checked in order,
-- so that no cast below can fail.
CREATE OR REPLACE FUNCTION shotlist.shot_problem(p_shot jsonb, p_start bigint, p_end bigint)
RETURNS text
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_start numeric;
    v_end numeric;
BEGIN
    IF jsonb_typeof(p_shot) IS DISTINCT FROM 'object' THEN
        RETURN 'is not an object';
    END IF;
    IF jsonb_typeof(p_shot -> 'startFrame') IS DISTINCT FROM 'number'
       OR jsonb_typeof(p_shot -> 'endFrame') IS DISTINCT FROM 'number' THEN
        RETURN 'needs numeric startFrame and endFrame';
    END IF;
    v_start := (p_shot ->> 'startFrame')::numeric;
    v_end := (p_shot ->> 'endFrame')::numeric;
    IF v_start <> trunc(v_start) OR v_end <> trunc(v_end) THEN
        RETURN 'has a fractional frame';
    END IF;
    IF v_start < p_start OR v_end > p_end OR v_start >= v_end THEN
        RETURN format('is not a shot inside the chunk''s frames %s to %s', p_start, p_end);
    END IF;
    IF coalesce(p_shot ->> 'type', 'other') NOT IN ('close-up', 'medium', 'wide', 'detail', 'insert', 'other') THEN
        RETURN 'has an unknown type (expected close-up, medium, wide, detail, insert or other)';
    END IF;
    IF p_shot ? 'dialogue' AND jsonb_typeof(p_shot -> 'dialogue') IS DISTINCT FROM 'array' THEN
        RETURN 'has a dialogue that is not an array';
    END IF;
    -- Each line must read back as a DialogueLine (model.rs), or the film's
    -- results could not be merged into its sheet at all.
    IF p_shot ? 'dialogue' AND EXISTS (
        SELECT
        FROM jsonb_array_elements(p_shot -> 'dialogue') AS d(line)
        WHERE jsonb_typeof(d.line) IS DISTINCT FROM 'object'
           OR jsonb_typeof(d.line -> 'line') IS DISTINCT FROM 'string'
           OR coalesce(jsonb_typeof(d.line -> 'speaker'), 'string') <> 'string'
           OR coalesce(jsonb_typeof(d.line -> 'offscreen'), 'boolean') <> 'boolean'
           OR coalesce(jsonb_typeof(d.line -> 'startFrame'), 'null') NOT IN ('null', 'number')
    ) THEN
        RETURN 'has a dialogue line that is not {"line": text, "speaker": text, "offscreen": true or false, '
            || '"startFrame": a frame}';
    END IF;
    IF p_shot ? 'dialogue' AND EXISTS (
        SELECT
        FROM jsonb_array_elements(p_shot -> 'dialogue') AS d(line)
        WHERE jsonb_typeof(d.line -> 'startFrame') = 'number'
          AND ((d.line ->> 'startFrame')::numeric <> trunc((d.line ->> 'startFrame')::numeric)
               OR abs((d.line ->> 'startFrame')::numeric) > 9223372036854775807)
    ) THEN
        RETURN 'has a dialogue line whose startFrame is not a whole frame';
    END IF;
    IF p_shot ? 'description' AND jsonb_typeof(p_shot -> 'description') IS DISTINCT FROM 'string' THEN
        RETURN 'has a description that is not a string';
    END IF;
    RETURN NULL;
END
$$;

-- Saves a chunk's shots and marks it completed, in one transaction, for the
-- holder of the current lease only. p_shots is a JSON array of
-- {"startFrame", "endFrame", "type", "description", "dialogue"} in absolute
-- frames inside the chunk. Shots of an earlier attempt are replaced.
-- Returns the film's progress with "outcome": "completed", or
-- "already_completed" / "lease_lost" (nothing written) for a late or
-- duplicate commit.
CREATE OR REPLACE FUNCTION public.complete_chunk(
    p_video_id uuid,
    p_chunk_index integer,
    p_lease_token uuid,
    p_shots jsonb
) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_chunk shotlist.chunks;
    v_bad record;
    v_progress jsonb;
BEGIN
    IF p_shots IS NULL OR jsonb_typeof(p_shots) <> 'array' THEN
        RAISE EXCEPTION 'p_shots must be a JSON array' USING ERRCODE = '22023';
    END IF;
    v_chunk := shotlist.lock_chunk(p_video_id, p_chunk_index);
    IF v_chunk.status IN ('completed', 'failed') THEN
        -- The same attempt asking again (its answer was lost) gets the same
        -- answer, "finished" included; anyone else learns it is too late.
        IF v_chunk.status = 'completed' AND v_chunk.committed_token = p_lease_token THEN
            RETURN shotlist.progress_json(shotlist.video_row(p_video_id), v_chunk.finished_film)
                || jsonb_build_object('outcome', 'completed');
        END IF;
        RETURN shotlist.progress_json(shotlist.video_row(p_video_id), false)
            || jsonb_build_object('outcome', 'already_' || v_chunk.status);
    END IF;
    IF v_chunk.status <> 'processing' OR v_chunk.lease_token IS DISTINCT FROM p_lease_token THEN
        RETURN shotlist.progress_json(shotlist.video_row(p_video_id), false)
            || jsonb_build_object('outcome', 'lease_lost', 'status', v_chunk.status);
    END IF;
    SELECT s.ordinality, s.value, shotlist.shot_problem(s.value, v_chunk.start_frame, v_chunk.end_frame) AS problem
    INTO v_bad
    FROM jsonb_array_elements(p_shots) WITH ORDINALITY AS s
    WHERE shotlist.shot_problem(s.value, v_chunk.start_frame, v_chunk.end_frame) IS NOT NULL
    ORDER BY s.ordinality
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'p_shots[%] %: %', v_bad.ordinality - 1, v_bad.problem, left(v_bad.value::text, 200)
            USING ERRCODE = '22023';
    END IF;
    DELETE FROM shotlist.shots
    WHERE video_id = p_video_id
      AND chunk_index = p_chunk_index;
    INSERT INTO shotlist.shots (video_id, chunk_index, ordinal, start_frame, end_frame, shot_type, description, dialogue)
    SELECT p_video_id,
           p_chunk_index,
           s.ordinality - 1,
           (s.value ->> 'startFrame')::bigint,
           (s.value ->> 'endFrame')::bigint,
           coalesce(s.value ->> 'type', 'other'),
           coalesce(s.value ->> 'description', ''),
           coalesce(s.value -> 'dialogue', '[]'::jsonb)
    FROM jsonb_array_elements(p_shots) WITH ORDINALITY AS s;
    v_progress := shotlist.count_terminal(p_video_id, 'completed');
    UPDATE shotlist.chunks
    SET status = 'completed',
        error = NULL,
        lease_token = NULL,
        lease_until = NULL,
        committed_token = p_lease_token,
        finished_film = (v_progress ->> 'finished')::boolean,
        updated_at = now()
    WHERE video_id = p_video_id
      AND chunk_index = p_chunk_index;
    RETURN v_progress || jsonb_build_object('outcome', 'completed');
END
$$;

-- Records a failed attempt for the holder of the current lease. A retryable
-- failure with attempts left puts the chunk back to pending (outcome
-- "retry"); otherwise the chunk is failed for good (outcome "failed", which
-- may finish the film). A late or duplicate report changes nothing.
CREATE OR REPLACE FUNCTION public.fail_chunk(
    p_video_id uuid,
    p_chunk_index integer,
    p_lease_token uuid,
    p_error text,
    p_retryable boolean,
    p_max_attempts integer DEFAULT 3
) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_chunk shotlist.chunks;
    v_error text := left(coalesce(p_error, 'unknown error'), 2000);
    v_progress jsonb;
BEGIN
    v_chunk := shotlist.lock_chunk(p_video_id, p_chunk_index);
    IF v_chunk.status IN ('completed', 'failed') THEN
        IF v_chunk.status = 'failed' AND v_chunk.committed_token = p_lease_token THEN
            RETURN shotlist.progress_json(shotlist.video_row(p_video_id), v_chunk.finished_film)
                || jsonb_build_object('outcome', 'failed', 'attempts', v_chunk.attempts);
        END IF;
        RETURN shotlist.progress_json(shotlist.video_row(p_video_id), false)
            || jsonb_build_object('outcome', 'already_' || v_chunk.status);
    END IF;
    IF v_chunk.status <> 'processing' OR v_chunk.lease_token IS DISTINCT FROM p_lease_token THEN
        RETURN shotlist.progress_json(shotlist.video_row(p_video_id), false)
            || jsonb_build_object('outcome', 'lease_lost', 'status', v_chunk.status);
    END IF;
    IF coalesce(p_retryable, false) AND v_chunk.attempts < coalesce(p_max_attempts, 3) THEN
        UPDATE shotlist.chunks
        SET status = 'pending',
            error = v_error,
            lease_token = NULL,
            lease_until = NULL,
            updated_at = now()
        WHERE video_id = p_video_id
          AND chunk_index = p_chunk_index;
        RETURN shotlist.progress_json(shotlist.video_row(p_video_id), false)
            || jsonb_build_object('outcome', 'retry', 'attempts', v_chunk.attempts);
    END IF;
    v_progress := shotlist.count_terminal(p_video_id, 'failed');
    UPDATE shotlist.chunks
    SET status = 'failed',
        error = v_error,
        lease_token = NULL,
        lease_until = NULL,
        committed_token = p_lease_token,
        finished_film = (v_progress ->> 'finished')::boolean,
        updated_at = now()
    WHERE video_id = p_video_id
      AND chunk_index = p_chunk_index;
    RETURN v_progress || jsonb_build_object('outcome', 'failed', 'attempts', v_chunk.attempts);
END
$$;

-- A progress view of one film, built on read from the chunk rows.
CREATE OR REPLACE FUNCTION public.chunk_progress(p_video_id uuid)
RETURNS jsonb
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_video shotlist.videos := shotlist.video_row(p_video_id);
BEGIN
    RETURN jsonb_build_object(
        'videoId', v_video.video_id,
        'totalChunks', v_video.total_chunks,
        'completedChunks', v_video.completed_chunks,
        'failedChunks', v_video.failed_chunks,
        'finished', v_video.finished_at IS NOT NULL,
        'chunks', coalesce((
            SELECT jsonb_agg(jsonb_build_object(
                       'index', c.chunk_index,
                       'status', c.status,
                       'startTimecode', shotlist.timecode(c.start_frame, v_video.fps_num, v_video.fps_den),
                       'endTimecode', shotlist.timecode(c.end_frame, v_video.fps_num, v_video.fps_den),
                       'attempts', c.attempts,
                       'error', c.error)
                   ORDER BY c.chunk_index)
            FROM shotlist.chunks AS c
            WHERE c.video_id = p_video_id), '[]'::jsonb));
END
$$;

-- Everything the merge needs: the film, and every chunk with its frames,
-- status, error and shots.
CREATE OR REPLACE FUNCTION public.chunk_results(p_video_id uuid)
RETURNS jsonb
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_video shotlist.videos := shotlist.video_row(p_video_id);
BEGIN
    RETURN jsonb_build_object(
        'videoId', v_video.video_id,
        'source', v_video.source,
        'fps', v_video.fps_num || '/' || v_video.fps_den,
        'durationFrames', v_video.duration_frames,
        'totalChunks', v_video.total_chunks,
        'finished', v_video.finished_at IS NOT NULL,
        'chunks', coalesce((
            SELECT jsonb_agg(jsonb_build_object(
                       'index', c.chunk_index,
                       'startFrame', c.start_frame,
                       'endFrame', c.end_frame,
                       'status', c.status,
                       'error', c.error,
                       'shots', coalesce((
                           SELECT jsonb_agg(jsonb_build_object(
                                      'startFrame', s.start_frame,
                                      'endFrame', s.end_frame,
                                      'type', s.shot_type,
                                      'description', s.description,
                                      'dialogue', s.dialogue)
                                  ORDER BY s.ordinal)
                           FROM shotlist.shots AS s
                           WHERE s.video_id = c.video_id
                             AND s.chunk_index = c.chunk_index), '[]'::jsonb))
                   ORDER BY c.chunk_index)
            FROM shotlist.chunks AS c
            WHERE c.video_id = p_video_id), '[]'::jsonb));
END
$$;

-- Stores a finished film's sheet once and returns the stored one: a second
-- finalize, or two racing, get the first sheet back unchanged. Refused (55000)
-- while any chunk is still open.
CREATE OR REPLACE FUNCTION public.store_sheet(p_video_id uuid, p_sheet jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_video shotlist.videos := shotlist.video_row(p_video_id);
    v_sheet jsonb;
BEGIN
    IF p_sheet IS NULL OR jsonb_typeof(p_sheet) <> 'object' THEN
        RAISE EXCEPTION 'p_sheet must be a JSON object' USING ERRCODE = '22023';
    END IF;
    IF v_video.finished_at IS NULL THEN
        RAISE EXCEPTION 'video % is not finished: % of % chunks are done',
            p_video_id, v_video.completed_chunks + v_video.failed_chunks, v_video.total_chunks
            USING ERRCODE = '55000';
    END IF;
    INSERT INTO shotlist.sheets (video_id, sheet)
    VALUES (p_video_id, p_sheet)
    ON CONFLICT (video_id) DO NOTHING;
    SELECT sheet INTO v_sheet FROM shotlist.sheets WHERE video_id = p_video_id;
    RETURN v_sheet;
END
$$;

-- The stored sheet, or NULL while there is none.
CREATE OR REPLACE FUNCTION public.get_sheet(p_video_id uuid)
RETURNS jsonb
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT sheet FROM shotlist.sheets WHERE video_id = p_video_id
$$;

-- Only the service role may call these or touch the tables; Supabase's anon
-- and authenticated roles, and everyone else, may not.
REVOKE ALL ON SCHEMA shotlist FROM PUBLIC, anon, authenticated;
GRANT USAGE ON SCHEMA shotlist TO service_role;
REVOKE ALL ON ALL TABLES IN SCHEMA shotlist FROM PUBLIC, anon, authenticated;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA shotlist TO service_role;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA shotlist FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA shotlist TO service_role;
REVOKE EXECUTE ON FUNCTION
    public.register_video(uuid, double precision, double precision, double precision),
    public.describe_video(uuid, text, integer, integer, bigint, jsonb),
    public.update_chunk_status(uuid, integer, text, text),
    public.claim_chunk(uuid, integer, double precision, integer),
    public.complete_chunk(uuid, integer, uuid, jsonb),
    public.fail_chunk(uuid, integer, uuid, text, boolean, integer),
    public.chunk_progress(uuid),
    public.chunk_results(uuid),
    public.store_sheet(uuid, jsonb),
    public.get_sheet(uuid)
FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION
    public.register_video(uuid, double precision, double precision, double precision),
    public.describe_video(uuid, text, integer, integer, bigint, jsonb),
    public.update_chunk_status(uuid, integer, text, text),
    public.claim_chunk(uuid, integer, double precision, integer),
    public.complete_chunk(uuid, integer, uuid, jsonb),
    public.fail_chunk(uuid, integer, uuid, text, boolean, integer),
    public.chunk_progress(uuid),
    public.chunk_results(uuid),
    public.store_sheet(uuid, jsonb),
    public.get_sheet(uuid)
TO service_role;

INSERT INTO shotlist.schema_migrations (name) VALUES ('0001_core') ON CONFLICT (name) DO NOTHING;
