-- Row security: Supabase clients may read their own films, and nothing else.
--
-- Until now only the service role could touch the schema "shotlist" (0001 to
-- 0004 revoke everything from PUBLIC, anon and authenticated). A signed-in
-- user of a Supabase app (role "authenticated", user id auth.uid()) may now
-- SELECT the rows of videos, chunks, shots and sheets that belong to films
-- whose owner_id is that user. No client may write anything, read
-- provider_files, rejected_messages or schema_migrations, or call any
-- function: the coordination functions stay the service role's.
--
-- Every table of the schema gets row level security, so that a grant alone
-- never shows a row: a table without a policy for a role shows that role no
-- row at all. The service role keeps full access through a policy of its
-- own. On Supabase it bypasses row security anyway (BYPASSRLS), but the
-- NOLOGIN stand-in made by 0001 on plain PostgreSQL does not, and the
-- functions must work the same for it everywhere. Security is ENABLEd, not
-- FORCEd: the tables' owner (the "postgres" user the functions connect as)
-- is not subject to it, as on Supabase.
--
-- The file can be applied again. It must come after every migration that
-- repeats the grant block of 0001 (REVOKE ALL ON ALL TABLES ... FROM
-- authenticated), or that block takes the read grants back: clients then
-- see nothing, which fails closed. tests/security.rs checks both the grants
-- and the policies.

-- Supabase's auth.uid() is the "sub" claim of the request's JWT, which
-- PostgREST puts in the setting request.jwt.claims. Plain PostgreSQL has no
-- schema "auth": it gets a stand-in that reads the same setting, so that the
-- policies below read the same everywhere. Supabase's own function is never
-- replaced.
DO $auth$
BEGIN
    IF to_regnamespace('auth') IS NULL THEN
        CREATE SCHEMA auth;
        GRANT USAGE ON SCHEMA auth TO authenticated;
    END IF;
    IF to_regprocedure('auth.uid()') IS NULL THEN
        -- Older PostgREST versions set request.jwt.claim.sub alone.
        CREATE FUNCTION auth.uid()
        RETURNS uuid
        LANGUAGE sql
        STABLE
        SET search_path = pg_catalog, pg_temp
        AS $uid$
            SELECT coalesce(
                nullif(current_setting('request.jwt.claim.sub', true), ''),
                nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
            )::uuid
        $uid$;
        REVOKE EXECUTE ON FUNCTION auth.uid() FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION auth.uid() TO authenticated;
    END IF;
END
$auth$;

-- Row level security on every table of the schema, each with a policy that
-- lets the service role do what its grants allow. A loop, so that no table
-- made by an earlier migration is forgotten; a table added later needs the
-- same two statements (tests/security.rs fails without them).
--
-- The tables are first locked all at once, or not at all
-- (shotlist.lock_all_or_none, 0006): this file changes every one of them,
-- and a migration that held one while it waited for another would close a
-- cycle with a live writer that takes them the other way round
-- (register_video inserts into videos, then into chunks).
DO $rls$
DECLARE
    v_table text;
BEGIN
    PERFORM shotlist.lock_all_or_none(ARRAY(
        SELECT c.oid::regclass
        FROM pg_catalog.pg_class AS c
        WHERE c.relnamespace = 'shotlist'::regnamespace
          AND c.relkind IN ('r', 'p')
        ORDER BY c.relname));
    FOR v_table IN
        SELECT c.relname
        FROM pg_catalog.pg_class AS c
        WHERE c.relnamespace = 'shotlist'::regnamespace
          AND c.relkind IN ('r', 'p')
        ORDER BY c.relname
    LOOP
        EXECUTE format('ALTER TABLE shotlist.%I ENABLE ROW LEVEL SECURITY', v_table);
        EXECUTE format('DROP POLICY IF EXISTS %I ON shotlist.%I', v_table || '_service_role', v_table);
        EXECUTE format(
            'CREATE POLICY %I ON shotlist.%I AS PERMISSIVE FOR ALL TO service_role USING (true) WITH CHECK (true)',
            v_table || '_service_role', v_table);
    END LOOP;
END
$rls$;

-- A signed-in user reads the rows of their own films. "(SELECT auth.uid())"
-- is evaluated once per statement, not once per row. A request without a
-- user (no JWT, or one without "sub") has a NULL uid, which matches no owner;
-- neither does a film without one (submitted by the service role alone).
DROP POLICY IF EXISTS videos_owner_read ON shotlist.videos;
CREATE POLICY videos_owner_read ON shotlist.videos
    AS PERMISSIVE FOR SELECT TO authenticated
    USING (owner_id = (SELECT auth.uid()));

DROP POLICY IF EXISTS chunks_owner_read ON shotlist.chunks;
CREATE POLICY chunks_owner_read ON shotlist.chunks
    AS PERMISSIVE FOR SELECT TO authenticated
    USING (EXISTS (
        SELECT
        FROM shotlist.videos AS v
        WHERE v.video_id = chunks.video_id
          AND v.owner_id = (SELECT auth.uid())));

DROP POLICY IF EXISTS shots_owner_read ON shotlist.shots;
CREATE POLICY shots_owner_read ON shotlist.shots
    AS PERMISSIVE FOR SELECT TO authenticated
    USING (EXISTS (
        SELECT
        FROM shotlist.videos AS v
        WHERE v.video_id = shots.video_id
          AND v.owner_id = (SELECT auth.uid())));

DROP POLICY IF EXISTS sheets_owner_read ON shotlist.sheets;
CREATE POLICY sheets_owner_read ON shotlist.sheets
    AS PERMISSIVE FOR SELECT TO authenticated
    USING (EXISTS (
        SELECT
        FROM shotlist.videos AS v
        WHERE v.video_id = sheets.video_id
          AND v.owner_id = (SELECT auth.uid())));

-- The grants the policies need, and no more: USAGE on the schema and SELECT
-- on the four tables for authenticated; anon and PUBLIC keep nothing. The
-- revokes first, so that applying this file again leaves exactly this.
-- Functions stay revoked (0001 to 0004): USAGE on a schema gives no EXECUTE.
REVOKE ALL ON SCHEMA shotlist FROM PUBLIC, anon, authenticated;
REVOKE ALL ON ALL TABLES IN SCHEMA shotlist FROM PUBLIC, anon, authenticated;
GRANT USAGE ON SCHEMA shotlist TO authenticated;
GRANT SELECT ON shotlist.videos, shotlist.chunks, shotlist.shots, shotlist.sheets TO authenticated;

INSERT INTO shotlist.schema_migrations (name) VALUES ('0007_row_security') ON CONFLICT (name) DO NOTHING;
