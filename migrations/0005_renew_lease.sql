-- Keeping a chunk while it is analyzed. A claim's lease used to have to
-- outlast the longest analysis (the chunk timeout and a minute more), so the
-- chunk of a worker that died stayed out of reach for that long. Now the lease
-- is short, a minute by default, and the worker renews it while its analysis
-- runs: a dead worker's chunk can be claimed again within one lease, and a
-- live worker keeps its chunk however long the analysis takes.
--
-- Only the holder of the chunk's current token can renew, and only while the
-- chunk is processing: a worker whose chunk was taken over, force-finalized or
-- completed learns that it lost it and stops. A lease that ran out but that
-- nobody took over is still the worker's, and renewing it is harmless.
--
-- Same rules as 0001: the chunk row is locked before anything else is read.

-- Extends the lease of chunk p_chunk_index of p_video_id held with
-- p_lease_token to now() + p_lease_seconds. Answers {"renewed": true,
-- "leaseUntil"} or, when p_lease_token no longer holds the chunk,
-- {"renewed": false, "status"} with the chunk's status (nothing changed).
CREATE OR REPLACE FUNCTION public.renew_lease(
    p_video_id uuid,
    p_chunk_index integer,
    p_lease_token uuid,
    p_lease_seconds double precision
) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_chunk shotlist.chunks;
BEGIN
    IF p_video_id IS NULL THEN
        RAISE EXCEPTION 'p_video_id must be given' USING ERRCODE = '22023';
    END IF;
    IF p_chunk_index IS NULL THEN
        RAISE EXCEPTION 'p_chunk_index must be given' USING ERRCODE = '22023';
    END IF;
    IF p_lease_token IS NULL THEN
        RAISE EXCEPTION 'p_lease_token must be given' USING ERRCODE = '22023';
    END IF;
    -- NaN compares greater than every number in PostgreSQL, hence its own
    -- test. A day is far beyond any sane lease, and keeps the interval
    -- arithmetic below from overflowing.
    IF p_lease_seconds IS NULL OR p_lease_seconds = 'NaN' OR NOT p_lease_seconds > 0
       OR p_lease_seconds > 86400 THEN
        RAISE EXCEPTION 'p_lease_seconds must be more than 0 and at most 86400, got %', p_lease_seconds
            USING ERRCODE = '22023';
    END IF;
    v_chunk := shotlist.lock_chunk(p_video_id, p_chunk_index);
    IF v_chunk.status <> 'processing' OR v_chunk.lease_token IS DISTINCT FROM p_lease_token THEN
        RETURN jsonb_build_object('renewed', false, 'status', v_chunk.status);
    END IF;
    UPDATE shotlist.chunks
    SET lease_until = now() + p_lease_seconds * interval '1 second'
    WHERE video_id = p_video_id
      AND chunk_index = p_chunk_index
    RETURNING * INTO v_chunk;
    RETURN jsonb_build_object('renewed', true, 'leaseUntil', v_chunk.lease_until);
END
$$;

REVOKE EXECUTE ON FUNCTION public.renew_lease(uuid, integer, uuid, double precision) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.renew_lease(uuid, integer, uuid, double precision) TO service_role;

INSERT INTO shotlist.schema_migrations (name) VALUES ('0005_renew_lease') ON CONFLICT (name) DO NOTHING;
