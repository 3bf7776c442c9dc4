-- Films uploaded to a provider's file store (Gemini's File API), so that all
-- the chunks of a film share one upload instead of each sending the film.
--
-- A provider's files belong to the account that uploaded them (for Gemini:
-- the Cloud project of the API key), so a row is per film, provider and
-- account. The account is the key's 1-based number in the configured key
-- list, as text: never the key itself.
--
-- The chunks of a film start at once on several workers, and exactly one of
-- them may upload: claims of one film take turns under an advisory lock, and
-- a film has at most one upload under way over all of its accounts (a second
-- account would only double the transfer while the first one finishes). The
-- others wait and then use the first one's file through the same key. Only
-- the accounts the claiming worker has keys for count: a file under a key
-- since removed from its list is one it could never use.
--
-- States:
--   uploading   a worker holds the claim (claim_token) until claim_until and
--               is sending the film; no file yet. A claim that ran out may be
--               taken over: its holder died.
--   processing  the file is uploaded and the provider is preparing it; any
--               worker of the same account may poll it and save it active.
--   active      the file may be used until expires_at.
--   failed      the provider could not process the film: permanent, and for
--               every account, since the same bytes would fail again.
-- A row of an expired file counts as missing: the next claim uploads again.
--
-- The file can be applied again; it creates what is missing and replaces the
-- functions.

CREATE TABLE IF NOT EXISTS shotlist.provider_files (
    video_id uuid NOT NULL,
    -- The analyzer's name: "gemini".
    provider text NOT NULL,
    account text NOT NULL,
    state text NOT NULL,
    -- The uploading worker's proof: only it may save or release the upload.
    claim_token uuid,
    claim_until timestamptz,
    -- When the current upload was claimed: the provider's file is younger,
    -- so its lifetime is counted from here, to be safe.
    upload_started_at timestamptz NOT NULL DEFAULT now(),
    -- Known from processing on: "files/abc123", its URI and its MIME type.
    file_name text,
    file_uri text,
    mime_type text,
    uploaded_at timestamptz,
    expires_at timestamptz,
    -- Why the provider could not process the film (state failed).
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT provider_files_pkey PRIMARY KEY (video_id, provider, account),
    CONSTRAINT provider_files_video_id_fkey
        FOREIGN KEY (video_id) REFERENCES shotlist.videos (video_id) ON DELETE CASCADE,
    CONSTRAINT provider_files_state_check
        CHECK (state IN ('uploading', 'processing', 'active', 'failed')),
    CONSTRAINT provider_files_claim_check
        CHECK ((state = 'uploading') = (claim_token IS NOT NULL AND claim_until IS NOT NULL)),
    CONSTRAINT provider_files_file_check
        CHECK (state NOT IN ('processing', 'active')
               OR (file_name IS NOT NULL AND file_uri IS NOT NULL AND mime_type IS NOT NULL
                   AND expires_at IS NOT NULL)),
    CONSTRAINT provider_files_account_check CHECK (length(account) BETWEEN 1 AND 64),
    CONSTRAINT provider_files_provider_check CHECK (length(provider) BETWEEN 1 AND 64)
);

-- Checks the arguments that name a row; every function below starts here.
CREATE OR REPLACE FUNCTION shotlist.check_provider_file_key(
    p_video_id uuid,
    p_provider text,
    p_account text
) RETURNS void
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_video_id IS NULL THEN
        RAISE EXCEPTION 'p_video_id must not be null' USING ERRCODE = '22023';
    END IF;
    IF p_provider IS NULL OR length(p_provider) NOT BETWEEN 1 AND 64 THEN
        RAISE EXCEPTION 'p_provider must be 1 to 64 characters' USING ERRCODE = '22023';
    END IF;
    IF p_account IS NULL OR length(p_account) NOT BETWEEN 1 AND 64 THEN
        RAISE EXCEPTION 'p_account must be 1 to 64 characters' USING ERRCODE = '22023';
    END IF;
END
$$;

-- Decides what a worker of account p_account does about the film's file:
--   {"state":"ready", "name", "uri", "mimeType", "expiresAt"}: use it;
--   {"state":"processing", "name", "uri", "mimeType", "processingSeconds"}:
--       poll it until the provider says it is active (or failed);
--   {"state":"claimed", "token", "claimUntil"}: upload it now, then
--       save_provider_file (or release_provider_file after a failure);
--   {"state":"busy", "account", "claimUntil", "waitSeconds"}: another worker
--       is uploading it (to "account"): wait and ask again. "claimUntil" and
--       "waitSeconds" are null while that file is processing;
--   {"state":"failed", "account", "error"}: the provider could not process it.
-- The claim lasts p_claim_seconds (at most an hour): the holder's deadline.
-- p_accounts are all the accounts the worker has keys for: another account's
-- upload makes it wait only when listed, since it could not use that file.
CREATE OR REPLACE FUNCTION public.claim_provider_file(
    p_video_id uuid,
    p_provider text,
    p_account text,
    p_claim_seconds double precision,
    p_accounts text[]
) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row shotlist.provider_files;
    v_other shotlist.provider_files;
BEGIN
    PERFORM shotlist.check_provider_file_key(p_video_id, p_provider, p_account);
    IF p_claim_seconds IS NULL OR NOT (p_claim_seconds > 0 AND p_claim_seconds <= 3600) THEN
        RAISE EXCEPTION 'p_claim_seconds must be in (0, 3600], got %', coalesce(p_claim_seconds::text, 'null')
            USING ERRCODE = '22023';
    END IF;
    IF p_accounts IS NULL THEN
        RAISE EXCEPTION 'p_accounts must not be null' USING ERRCODE = '22023';
    END IF;
    -- Claims of one film take turns, so that of simultaneous first claims
    -- (even for different accounts) exactly one finds nothing under way.
    -- Only this function takes the lock, before any row lock. Two films whose
    -- hashes collide merely wait for each other.
    PERFORM pg_advisory_xact_lock(1392967683, hashtext(p_provider || '/' || p_video_id::text));

    SELECT * INTO v_other
    FROM shotlist.provider_files
    WHERE video_id = p_video_id
      AND provider = p_provider
      AND state = 'failed'
    ORDER BY length(account), account
    LIMIT 1;
    IF FOUND THEN
        RETURN jsonb_build_object('state', 'failed', 'account', v_other.account, 'error', v_other.error);
    END IF;

    SELECT * INTO v_row
    FROM shotlist.provider_files
    WHERE video_id = p_video_id
      AND provider = p_provider
      AND account = p_account
    FOR UPDATE;
    IF FOUND AND v_row.state = 'active' AND v_row.expires_at > now() THEN
        RETURN jsonb_build_object(
            'state', 'ready',
            'name', v_row.file_name,
            'uri', v_row.file_uri,
            'mimeType', v_row.mime_type,
            'expiresAt', v_row.expires_at);
    END IF;
    IF FOUND AND v_row.state = 'processing' AND v_row.expires_at > now() THEN
        RETURN jsonb_build_object(
            'state', 'processing',
            'name', v_row.file_name,
            'uri', v_row.file_uri,
            'mimeType', v_row.mime_type,
            'processingSeconds', extract(epoch FROM now() - v_row.uploaded_at));
    END IF;

    -- One upload of the film at a time, over the worker's accounts: this
    -- account's live claim, or another listed account's live claim or
    -- processing file.
    SELECT * INTO v_other
    FROM shotlist.provider_files
    WHERE video_id = p_video_id
      AND provider = p_provider
      AND (account = p_account OR account = ANY (p_accounts))
      AND ((state = 'uploading' AND claim_until > now())
           OR (state = 'processing' AND expires_at > now() AND account <> p_account))
    ORDER BY account = p_account DESC, length(account), account
    LIMIT 1;
    IF FOUND THEN
        RETURN jsonb_build_object(
            'state', 'busy',
            'account', v_other.account,
            'claimUntil', v_other.claim_until,
            'waitSeconds', extract(epoch FROM v_other.claim_until - now()));
    END IF;

    -- Nothing usable: a new upload (over an expired file or a dead claim).
    INSERT INTO shotlist.provider_files AS f (
        video_id, provider, account, state, claim_token, claim_until, upload_started_at)
    VALUES (
        p_video_id, p_provider, p_account, 'uploading', gen_random_uuid(),
        now() + make_interval(secs => p_claim_seconds), now())
    ON CONFLICT (video_id, provider, account) DO UPDATE
    SET state = 'uploading',
        claim_token = EXCLUDED.claim_token,
        claim_until = EXCLUDED.claim_until,
        upload_started_at = EXCLUDED.upload_started_at,
        file_name = NULL,
        file_uri = NULL,
        mime_type = NULL,
        uploaded_at = NULL,
        expires_at = NULL,
        error = NULL,
        updated_at = now()
    RETURNING * INTO v_row;
    RETURN jsonb_build_object('state', 'claimed', 'token', v_row.claim_token, 'claimUntil', v_row.claim_until);
END
$$;

-- Records the uploaded file: as processing (p_active false) or active. The
-- holder of the claim p_token may record its upload, even after its claim ran
-- out as long as nobody took it over (the file is good); anyone may record a
-- processing file of the same name as active. The file expires 47 hours after
-- the upload was claimed (files live 48 hours; the hour to spare covers clock
-- skew and a chunk that starts just before), or an hour before the provider's
-- p_expire_time (RFC 3339) when that is sooner. Answers {"saved", "state"}:
-- "saved" is false when the claim was lost, and nothing is written.
CREATE OR REPLACE FUNCTION public.save_provider_file(
    p_video_id uuid,
    p_provider text,
    p_account text,
    p_token uuid,
    p_name text,
    p_uri text,
    p_mime_type text,
    p_active boolean,
    p_expire_time text DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_provider_expiry timestamptz;
    v_row shotlist.provider_files;
BEGIN
    PERFORM shotlist.check_provider_file_key(p_video_id, p_provider, p_account);
    IF coalesce(p_name, '') = '' OR coalesce(p_uri, '') = '' OR coalesce(p_mime_type, '') = '' THEN
        RAISE EXCEPTION 'p_name, p_uri and p_mime_type must not be empty' USING ERRCODE = '22023';
    END IF;
    IF p_active IS NULL THEN
        RAISE EXCEPTION 'p_active must not be null' USING ERRCODE = '22023';
    END IF;
    -- The provider's word is a hint: an unreadable one is ignored, and the
    -- 47 hours still apply.
    BEGIN
        v_provider_expiry := p_expire_time::timestamptz;
    EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow THEN
        v_provider_expiry := NULL;
    END;
    UPDATE shotlist.provider_files AS f
    SET state = CASE WHEN p_active THEN 'active' ELSE 'processing' END,
        file_name = p_name,
        file_uri = p_uri,
        mime_type = p_mime_type,
        uploaded_at = coalesce(f.uploaded_at, now()),
        -- least() skips a NULL provider expiry.
        expires_at = least(f.upload_started_at + interval '47 hours',
                           v_provider_expiry - interval '1 hour'),
        claim_token = NULL,
        claim_until = NULL,
        updated_at = now()
    WHERE f.video_id = p_video_id
      AND f.provider = p_provider
      AND f.account = p_account
      AND ((f.state = 'uploading' AND f.claim_token = p_token)
           OR (p_active AND f.state = 'processing' AND f.file_name = p_name))
    RETURNING * INTO v_row;
    IF FOUND THEN
        RETURN jsonb_build_object('saved', true, 'state', v_row.state);
    END IF;
    RETURN jsonb_build_object('saved', false, 'state', (
        SELECT state FROM shotlist.provider_files
        WHERE video_id = p_video_id AND provider = p_provider AND account = p_account));
END
$$;

-- Records that the provider could not process the film: the claim holder
-- p_token, or anyone naming the recorded file p_name, may. From then on every
-- claim of the film, on any account, answers "failed". Answers {"failed"}:
-- false when neither matched (nothing written).
CREATE OR REPLACE FUNCTION public.fail_provider_file(
    p_video_id uuid,
    p_provider text,
    p_account text,
    p_token uuid,
    p_name text,
    p_error text
) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM shotlist.check_provider_file_key(p_video_id, p_provider, p_account);
    UPDATE shotlist.provider_files AS f
    SET state = 'failed',
        error = left(coalesce(nullif(btrim(p_error), ''), 'unknown error'), 2000),
        claim_token = NULL,
        claim_until = NULL,
        updated_at = now()
    WHERE f.video_id = p_video_id
      AND f.provider = p_provider
      AND f.account = p_account
      AND ((f.state = 'uploading' AND f.claim_token = p_token)
           OR (f.state IN ('processing', 'active') AND f.file_name = p_name));
    RETURN jsonb_build_object('failed', FOUND);
END
$$;

-- Gives up the claim p_token after an upload that failed for a passing
-- reason (network, rate limit, deadline), so that the next claim uploads at
-- once instead of waiting for the claim to run out. Answers {"released"}.
CREATE OR REPLACE FUNCTION public.release_provider_file(
    p_video_id uuid,
    p_provider text,
    p_account text,
    p_token uuid
) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM shotlist.check_provider_file_key(p_video_id, p_provider, p_account);
    DELETE FROM shotlist.provider_files
    WHERE video_id = p_video_id
      AND provider = p_provider
      AND account = p_account
      AND state = 'uploading'
      AND claim_token = p_token;
    RETURN jsonb_build_object('released', FOUND);
END
$$;

-- Forgets the recorded file p_name, which the provider no longer has (it
-- answered 403 or 404 for it): the next claim uploads the film again. Naming
-- the file keeps a late caller from forgetting a newer upload. Answers
-- {"forgotten"}.
CREATE OR REPLACE FUNCTION public.forget_provider_file(
    p_video_id uuid,
    p_provider text,
    p_account text,
    p_name text
) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM shotlist.check_provider_file_key(p_video_id, p_provider, p_account);
    DELETE FROM shotlist.provider_files
    WHERE video_id = p_video_id
      AND provider = p_provider
      AND account = p_account
      AND state IN ('processing', 'active')
      AND file_name = p_name;
    RETURN jsonb_build_object('forgotten', FOUND);
END
$$;

-- The film's accounts that hold a file or an upload under way, for choosing
-- a key that already has the film: [{"account", "state"}], state being
-- active, processing or uploading, by account number. Expired files and dead
-- claims are left out.
CREATE OR REPLACE FUNCTION public.provider_file_accounts(p_video_id uuid, p_provider text)
RETURNS jsonb
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_object('account', f.account, 'state', f.state)
                              ORDER BY length(f.account), f.account), '[]'::jsonb)
    FROM shotlist.provider_files AS f
    WHERE f.video_id = p_video_id
      AND f.provider = p_provider
      AND ((f.state IN ('active', 'processing') AND f.expires_at > now())
           OR (f.state = 'uploading' AND f.claim_until > now()))
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
    public.claim_provider_file(uuid, text, text, double precision, text[]),
    public.save_provider_file(uuid, text, text, uuid, text, text, text, boolean, text),
    public.fail_provider_file(uuid, text, text, uuid, text, text),
    public.release_provider_file(uuid, text, text, uuid),
    public.forget_provider_file(uuid, text, text, text),
    public.provider_file_accounts(uuid, text)
FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION
    public.claim_provider_file(uuid, text, text, double precision, text[]),
    public.save_provider_file(uuid, text, text, uuid, text, text, text, boolean, text),
    public.fail_provider_file(uuid, text, text, uuid, text, text),
    public.release_provider_file(uuid, text, text, uuid),
    public.forget_provider_file(uuid, text, text, text),
    public.provider_file_accounts(uuid, text)
TO service_role;

INSERT INTO shotlist.schema_migrations (name) VALUES ('0003_provider_files') ON CONFLICT (name) DO NOTHING;
