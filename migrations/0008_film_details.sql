-- Film details: what a delivery sheet says about its film above the shot
-- table (title, year, director, studio, country), given when the film is
-- submitted and kept with it, so that a sheet downloaded later, in any
-- format, carries them. And a progress document a page can draw without
-- guessing: when the film was submitted, the database's clock (a browser's
-- may be wrong), the details, and when each chunk last changed.
--
-- The details are one jsonb object per film: they are read and replaced
-- whole, never queried field by field. The functions that write them check
-- their shape (the five names, strings, one line of at most 300 characters,
-- as the Rust side's FilmDetails::checked does) so that a hand-made call
-- cannot store what no sheet could show; the table itself only insists on
-- an object, which every reader can take. The noncharacters U+FFFE and
-- U+FFFF, which the Rust side also refuses, pass here: the sheets replace
-- them where XML cannot hold them.
--
-- The file can be applied again, and while workers run: only the videos
-- table changes, locked all at once or not at all (shotlist.lock_all_or_none,
-- 0006), and the new column has a constant default, so adding it rewrites
-- nothing. Row security (0007) needs nothing new: the column belongs to
-- videos, whose policies already let a signed-in user read their own films.

SELECT shotlist.lock_all_or_none(ARRAY['shotlist.videos']::regclass[]);

ALTER TABLE shotlist.videos
    ADD COLUMN IF NOT EXISTS details jsonb NOT NULL DEFAULT '{}'::jsonb
        CONSTRAINT videos_details_check CHECK (jsonb_typeof(details) = 'object');

-- A time as RFC 3339 in UTC with milliseconds ("2026-12-04T12:00:00.000Z"),
-- whatever the session's TimeZone: to_jsonb(timestamptz) would follow it,
-- and a page compares these times with each other.
CREATE OR REPLACE FUNCTION shotlist.rfc3339(p_time timestamptz)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT to_char(p_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$;

-- Replaces the film's details with p_details, a JSON object of at most the
-- keys title, year, director, studio and country, each a string of one line
-- and at most 300 characters ({} clears them). One UPDATE of the film's row:
-- concurrent calls do not mix, the last one wins. It locks no chunk row, so
-- it cannot close a cycle with a worker (workers lock chunks, then the film).
-- Unknown film: P0002; bad details: 22023.
CREATE OR REPLACE FUNCTION public.set_video_details(p_video_id uuid, p_details jsonb)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_key text;
    v_value jsonb;
BEGIN
    IF p_details IS NULL OR jsonb_typeof(p_details) <> 'object' THEN
        RAISE EXCEPTION 'the details of video % must be a JSON object, got %',
            p_video_id, coalesce(jsonb_typeof(p_details), 'null') USING ERRCODE = '22023';
    END IF;
    FOR v_key, v_value IN SELECT key, value FROM jsonb_each(p_details) LOOP
        IF v_key NOT IN ('title', 'year', 'director', 'studio', 'country') THEN
            RAISE EXCEPTION 'unknown film detail %; expected title, year, director, studio, country',
                left(v_key, 100) USING ERRCODE = '22023';
        END IF;
        IF jsonb_typeof(v_value) <> 'string' THEN
            RAISE EXCEPTION 'film detail % must be a string, got %', v_key, jsonb_typeof(v_value)
                USING ERRCODE = '22023';
        END IF;
        -- The control characters Rust's char::is_control names (C0, DEL,
        -- C1), not [[:cntrl:]], whose meaning follows the server's locale.
        IF length(v_value #>> '{}') > 300 OR (v_value #>> '{}') ~ '[\u0001-\u001f\u007f-\u009f]' THEN
            RAISE EXCEPTION 'film detail % must be one line of at most 300 characters', v_key
                USING ERRCODE = '22023';
        END IF;
    END LOOP;
    UPDATE shotlist.videos
    SET details = p_details
    WHERE video_id = p_video_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown video %', p_video_id USING ERRCODE = 'P0002';
    END IF;
END
$$;

-- The progress view of 0001, with the time the film was registered
-- ("createdAt"), the database's clock ("now"), the film's details, and when
-- each chunk last changed ("updatedAt"). Every key of 0001 stays.
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
        'createdAt', shotlist.rfc3339(v_video.created_at),
        'now', shotlist.rfc3339(now()),
        'details', v_video.details,
        'chunks', coalesce((
            SELECT jsonb_agg(jsonb_build_object(
                       'index', c.chunk_index,
                       'status', c.status,
                       'startTimecode', shotlist.timecode(c.start_frame, v_video.fps_num, v_video.fps_den),
                       'endTimecode', shotlist.timecode(c.end_frame, v_video.fps_num, v_video.fps_den),
                       'attempts', c.attempts,
                       'error', c.error,
                       'updatedAt', shotlist.rfc3339(c.updated_at))
                   ORDER BY c.chunk_index)
            FROM shotlist.chunks AS c
            WHERE c.video_id = p_video_id), '[]'::jsonb));
END
$$;

REVOKE EXECUTE ON FUNCTION shotlist.rfc3339(timestamptz) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION shotlist.rfc3339(timestamptz) TO service_role;
REVOKE EXECUTE ON FUNCTION public.set_video_details(uuid, jsonb) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.set_video_details(uuid, jsonb) TO service_role;
REVOKE EXECUTE ON FUNCTION public.chunk_progress(uuid) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.chunk_progress(uuid) TO service_role;

INSERT INTO shotlist.schema_migrations (name) VALUES ('0008_film_details') ON CONFLICT (name) DO NOTHING;
