-- Giving a chunk back without spending an attempt. A worker that claimed a
-- chunk and then could not even ask the model (every API key of the provider
-- was rate-limited) releases it: the chunk is pending again, its attempt is
-- not counted, and the reason is kept in "error" for the progress view. An
-- attempt that only waited on the provider's limits says nothing about the
-- chunk, so it must not bring the chunk nearer to failing for good.
--
-- A chunk can be released only so often (p_max_releases): a limit that never
-- passes (a daily quota used up, a key without access to the model) must not
-- keep a film open for ever. Past it the chunk fails for good with the reason,
-- which may finish the film.
--
-- Same rules as 0001: the chunk row is locked before anything else is read.

-- How often the chunk was given back unanalyzed.
ALTER TABLE shotlist.chunks ADD COLUMN IF NOT EXISTS releases integer NOT NULL DEFAULT 0;

-- Releases chunk p_chunk_index of p_video_id held with p_lease_token. Answers
-- {"outcome": "released", "attempts", "releases"} when this call gave it back,
-- {"outcome": "failed", ...progress} when it was released p_max_releases times
-- already and is failed instead, or, as fail_chunk does, "already_completed",
-- "already_failed" or "lease_lost" (another worker took the chunk over, or
-- this call already released it).
CREATE OR REPLACE FUNCTION public.release_chunk(
    p_video_id uuid,
    p_chunk_index integer,
    p_lease_token uuid,
    p_reason text,
    p_max_releases integer DEFAULT 40
) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_chunk shotlist.chunks;
    v_reason text := left(coalesce(p_reason, 'released'), 2000);
    v_progress jsonb;
BEGIN
    IF p_max_releases IS NULL OR p_max_releases < 0 THEN
        RAISE EXCEPTION 'p_max_releases must be 0 or more, got %', p_max_releases USING ERRCODE = '22023';
    END IF;
    v_chunk := shotlist.lock_chunk(p_video_id, p_chunk_index);
    IF v_chunk.status IN ('completed', 'failed') THEN
        RETURN shotlist.progress_json(shotlist.video_row(p_video_id), false)
            || jsonb_build_object('outcome', 'already_' || v_chunk.status);
    END IF;
    IF v_chunk.status <> 'processing' OR v_chunk.lease_token IS DISTINCT FROM p_lease_token THEN
        RETURN shotlist.progress_json(shotlist.video_row(p_video_id), false)
            || jsonb_build_object('outcome', 'lease_lost', 'status', v_chunk.status);
    END IF;
    IF v_chunk.releases >= p_max_releases THEN
        v_progress := shotlist.count_terminal(p_video_id, 'failed');
        UPDATE shotlist.chunks
        SET status = 'failed',
            error = left(format('given back %s times without being analyzed: %s', v_chunk.releases + 1,
                                v_reason), 2000),
            lease_token = NULL,
            lease_until = NULL,
            committed_token = p_lease_token,
            finished_film = (v_progress ->> 'finished')::boolean,
            updated_at = now()
        WHERE video_id = p_video_id
          AND chunk_index = p_chunk_index;
        RETURN v_progress || jsonb_build_object('outcome', 'failed', 'attempts', v_chunk.attempts);
    END IF;
    UPDATE shotlist.chunks
    SET status = 'pending',
        attempts = greatest(attempts - 1, 0),
        releases = releases + 1,
        error = v_reason,
        lease_token = NULL,
        lease_until = NULL,
        updated_at = now()
    WHERE video_id = p_video_id
      AND chunk_index = p_chunk_index
    RETURNING * INTO v_chunk;
    RETURN shotlist.progress_json(shotlist.video_row(p_video_id), false)
        || jsonb_build_object('outcome', 'released', 'attempts', v_chunk.attempts, 'releases', v_chunk.releases);
END
$$;

REVOKE EXECUTE ON FUNCTION public.release_chunk(uuid, integer, uuid, text, integer) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.release_chunk(uuid, integer, uuid, text, integer) TO service_role;

INSERT INTO shotlist.schema_migrations (name) VALUES ('0004_release_chunk') ON CONFLICT (name) DO NOTHING;
