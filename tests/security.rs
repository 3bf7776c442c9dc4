//! Security, against a real PostgreSQL and the real handlers:
//!
//! - privileges as pg_catalog has them: every function of `public` and
//!   `shotlist` runs for the service role only, a SECURITY DEFINER function
//!   pins its search_path, every table of `shotlist` has row level security;
//!   the same audit flags a function or table that forgets any of it;
//! - row security at work (`migrations/0007_row_security.sql`): a signed-in
//!   Supabase user reads the rows of their own films and nothing else, anon
//!   reads nothing, no client writes a row or calls a function, and the
//!   service role still runs whole films;
//! - hostile text (quotes, `;--`, dollar quotes, RTL and zero-width
//!   characters, emoji, NUL) in every text field is stored byte for byte or
//!   refused as data, and never runs;
//! - no secret in any log line or answer of a whole cloud-shape run;
//! - a burst of 1000 unauthenticated or malformed requests is refused with
//!   4xx answers and writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::{json, Value};
use shotlist_shared::analyzer::setup::{self, AnalyzerKind, AnalyzerSetup};
use shotlist_shared::analyzer::{AnalyzeError, Analyzer, ChunkRequest};
use shotlist_shared::cloud::api::{Api, Endpoint, SourceRoot};
use shotlist_shared::cloud::auth::{self, Claims, Verifier};
use shotlist_shared::cloud::chunk::{ChunkHandler, RecordOutcome};
use shotlist_shared::cloud::finalize::FinalizeHandler;
use shotlist_shared::db::{Db, DbError, Submission};
use shotlist_shared::model::{storable_text, ChunkAnalysis, DialogueLine, Shot, ShotType};
use shotlist_shared::plan::PlanParams;
use shotlist_shared::probe::ProbeOptions;
use shotlist_shared::sheet::SheetStatus;
use shotlist_shared::time::Fps;
use shotlist_shared::uploads::{UploadClaim, UploadSlot, UploadStore};
use shotlist_shared::worker::{self, Done, WorkerConfig};
use shotlist_tests::cloud::{
    bearer, http_request, service_token, sqs_event, sqs_message, sqs_record, user_token,
    RecordingQueue, Script, ScriptedAnalyzer, JWT_SECRET,
};
use shotlist_tests::fake_gemini::{self, FakeGemini, Reply};
use shotlist_tests::film::{film_dir, make_film, Film};
use shotlist_tests::fixtures::{self, described_film};
use shotlist_tests::logs;
use shotlist_tests::pg::{connect, fresh_database, fresh_db};
use shotlist_tests::roles::as_client;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row};
use uuid::Uuid;

/// The tables a signed-in user may read rows of (their own films' rows).
const CLIENT_TABLES: [&str; 4] = ["videos", "chunks", "shots", "sheets"];

/// Tables no client may read at all.
const INTERNAL_TABLES: [&str; 3] = ["provider_files", "rejected_messages", "schema_migrations"];

/// Text that would do harm if it were ever spliced into SQL, or shown
/// unescaped: quotes, comments, statement breaks, dollar quotes, format
/// directives, RTL overrides, zero-width characters, emoji, line breaks
/// (storable, but not in a bucket key) and NUL (never storable).
const HOSTILE: [&str; 14] = [
    "it's a \"quoted\" shot",
    "'; DROP TABLE shotlist.videos; --",
    "'); DROP TABLE shotlist.videos;--",
    "Robert'); DELETE FROM shotlist.shots WHERE ('1'='1",
    "'); CREATE TABLE public.pwned (x int); --",
    "$$; DROP TABLE shotlist.chunks; $$",
    "$tag$ SELECT 1 $tag$ ; SELECT pg_terminate_backend(pg_backend_pid());",
    "\\'; SELECT 1; --",
    "%s %n %x {} {{}} %%",
    "\u{202E}4pm.exe\u{202C} right-to-left",
    "zero\u{200B}width\u{FEFF}no\u{200D}break",
    "🎬 emoji 👩‍👩‍👧 ñ é 漢字 עברית العربية",
    "two\nlines\tand a tab",
    "nul\u{0}inside",
];

fn fps() -> Fps {
    Fps::new(25, 1).expect("a valid rate")
}

/// 200 s at 25 fps with two cuts: two chunks (the film of cloud_api.rs).
async fn two_chunk_film() -> Film {
    tokio::task::spawn_blocking(|| make_film(&film_dir(), fps(), &[1_000, 3_000], 5_000, false))
        .await
        .expect("making the test film")
}

/// Rows of `table` that belong to `films`, as the table owner sees them.
async fn rows_of(client: &Client, table: &str, films: &[Uuid]) -> i64 {
    let films = films.to_vec();
    client
        .query_typed_one(
            &format!("SELECT count(*) FROM shotlist.{table} WHERE video_id = ANY($1)"),
            &[(&films, Type::UUID_ARRAY)],
        )
        .await
        .expect("counting rows")
        .get(0)
}

/// Every table of the schema with its row count, as the owner sees them.
async fn table_counts(client: &Client) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    for table in schema_tables(client).await {
        let count: i64 = client
            .query_typed_one(&format!("SELECT count(*) FROM shotlist.{table}"), &[])
            .await
            .expect("counting rows")
            .get(0);
        counts.insert(table, count);
    }
    counts
}

/// The tables of schema `shotlist`, by name.
async fn schema_tables(client: &Client) -> Vec<String> {
    client
        .query_typed(
            "SELECT relname::text FROM pg_catalog.pg_class \
             WHERE relnamespace = 'shotlist'::regnamespace AND relkind IN ('r', 'p') \
             ORDER BY 1",
            &[],
        )
        .await
        .expect("listing tables")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// What the schemas hold: every table and function of `public` and
/// `shotlist`, for proving that hostile text created or dropped nothing.
async fn catalog(client: &Client) -> Vec<String> {
    client
        .query_typed(
            "SELECT 'table ' || c.oid::regclass::text FROM pg_catalog.pg_class AS c \
             WHERE c.relnamespace IN ('public'::regnamespace, 'shotlist'::regnamespace) \
             UNION ALL \
             SELECT 'function ' || p.oid::regprocedure::text FROM pg_catalog.pg_proc AS p \
             WHERE p.pronamespace IN ('public'::regnamespace, 'shotlist'::regnamespace) \
             ORDER BY 1",
            &[],
        )
        .await
        .expect("reading the catalog")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

// The privilege audit.

/// One function of `public` or `shotlist` as pg_catalog describes it.
#[derive(Debug)]
struct FunctionGrants {
    signature: String,
    service_role: bool,
    anon: bool,
    authenticated: bool,
    /// PUBLIC may execute it: an explicit grant, or no ACL at all (the
    /// default for a new function).
    public: bool,
    security_definer: bool,
    /// The `search_path=...` entry of its settings, if any.
    search_path: Option<String>,
}

/// Every function the migrations made (functions of extensions excluded).
async fn function_grants(client: &Client) -> Vec<FunctionGrants> {
    let rows = client
        .query_typed(
            "SELECT p.oid::regprocedure::text,
                    has_function_privilege('service_role', p.oid, 'EXECUTE'),
                    has_function_privilege('anon', p.oid, 'EXECUTE'),
                    has_function_privilege('authenticated', p.oid, 'EXECUTE'),
                    p.proacl IS NULL OR EXISTS (
                        SELECT FROM aclexplode(p.proacl) AS a
                        WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'),
                    p.prosecdef,
                    (SELECT s FROM unnest(p.proconfig) AS s WHERE s LIKE 'search_path=%')
             FROM pg_catalog.pg_proc AS p
             WHERE p.pronamespace IN ('public'::regnamespace, 'shotlist'::regnamespace)
               AND NOT EXISTS (
                   SELECT FROM pg_catalog.pg_depend AS d
                   WHERE d.classid = 'pg_catalog.pg_proc'::regclass
                     AND d.objid = p.oid
                     AND d.deptype = 'e')
             ORDER BY 1",
            &[],
        )
        .await
        .expect("reading pg_proc");
    rows.iter()
        .map(|r| FunctionGrants {
            signature: r.get(0),
            service_role: r.get(1),
            anon: r.get(2),
            authenticated: r.get(3),
            public: r.get(4),
            security_definer: r.get(5),
            search_path: r.get(6),
        })
        .collect()
}

/// What is wrong with the functions' privileges, one line per problem.
fn function_problems(functions: &[FunctionGrants]) -> Vec<String> {
    let mut problems = Vec::new();
    for f in functions {
        let name = &f.signature;
        if !f.service_role {
            problems.push(format!("{name}: service_role may not execute it"));
        }
        for (role, may) in [
            ("PUBLIC", f.public),
            ("anon", f.anon),
            ("authenticated", f.authenticated),
        ] {
            if may {
                problems.push(format!("{name}: {role} may execute it"));
            }
        }
        let pinned = f
            .search_path
            .as_deref()
            .is_some_and(|s| s.len() > "search_path=".len());
        if f.security_definer && !pinned {
            problems.push(format!("{name}: SECURITY DEFINER without a search_path"));
        }
    }
    problems
}

/// What is wrong with the tables' row security, one line per problem.
async fn table_problems(client: &Client) -> Vec<String> {
    let rows = client
        .query_typed(
            "SELECT c.relname::text,
                    c.relrowsecurity,
                    c.relforcerowsecurity,
                    EXISTS (
                        SELECT FROM pg_catalog.pg_policies AS p
                        WHERE p.schemaname = 'shotlist'
                          AND p.tablename = c.relname
                          AND p.cmd = 'ALL'
                          AND 'service_role'::name = ANY (p.roles))
             FROM pg_catalog.pg_class AS c
             WHERE c.relnamespace = 'shotlist'::regnamespace
               AND c.relkind IN ('r', 'p')
             ORDER BY 1",
            &[],
        )
        .await
        .expect("reading pg_class");
    let mut problems = Vec::new();
    for row in rows {
        let (table, enabled, forced, service): (String, bool, bool, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if !enabled {
            problems.push(format!("shotlist.{table}: row level security is off"));
        }
        if forced {
            problems.push(format!(
                "shotlist.{table}: row level security is forced on its owner"
            ));
        }
        if !service {
            problems.push(format!("shotlist.{table}: no policy for service_role"));
        }
    }
    problems
}

#[tokio::test]
async fn every_function_runs_for_the_service_role_only_and_definers_pin_their_search_path() {
    let (_db, url) = fresh_db().await;
    let client = connect(&url).await;
    let functions = function_grants(&client).await;
    // The audit reads what is really there: the known functions are in it.
    let names: Vec<&str> = functions.iter().map(|f| f.signature.as_str()).collect();
    for known in [
        "register_video(uuid,double precision,double precision,double precision)",
        "submit_video(",
        "release_chunk(",
        "claim_provider_file(",
        "shotlist.lock_chunk(uuid,integer)",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(known)),
            "{known} is not in {names:?}"
        );
    }
    assert!(functions.len() >= 30, "only {} functions", functions.len());
    assert_eq!(function_problems(&functions), Vec::<String>::new());
}

#[tokio::test]
async fn every_table_of_the_schema_has_row_level_security_and_a_service_role_policy() {
    let (_db, url) = fresh_db().await;
    let client = connect(&url).await;
    let tables = schema_tables(&client).await;
    for table in CLIENT_TABLES.iter().chain(&INTERNAL_TABLES) {
        assert!(tables.iter().any(|t| t == table), "{table} in {tables:?}");
    }
    assert_eq!(table_problems(&client).await, Vec::<String>::new());

    // Clients may read the four tables of their films and nothing else.
    let grants = client
        .query_typed(
            "SELECT r.role || ' ' || p.privilege || ' ' || c.relname
             FROM pg_catalog.pg_class AS c,
                  unnest(ARRAY['anon', 'authenticated']) AS r(role),
                  unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE',
                               'REFERENCES', 'TRIGGER']) AS p(privilege)
             WHERE c.relnamespace = 'shotlist'::regnamespace
               AND c.relkind IN ('r', 'p')
               AND has_table_privilege(r.role, c.oid, p.privilege)
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let granted: Vec<String> = grants.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        granted,
        [
            "authenticated SELECT chunks",
            "authenticated SELECT sheets",
            "authenticated SELECT shots",
            "authenticated SELECT videos",
        ]
    );
}

#[tokio::test]
async fn the_audit_flags_a_function_or_table_that_forgets_its_revoke_search_path_or_row_security() {
    let (_db, url) = fresh_db().await;
    let client = connect(&url).await;
    // What a careless future migration could add.
    client
        .batch_execute(
            "CREATE FUNCTION public.open_to_all() RETURNS int LANGUAGE sql AS 'SELECT 1';
             CREATE FUNCTION shotlist.definer_unpinned() RETURNS int
                 LANGUAGE sql SECURITY DEFINER AS 'SELECT 1';
             REVOKE EXECUTE ON FUNCTION shotlist.definer_unpinned() FROM PUBLIC;
             GRANT EXECUTE ON FUNCTION shotlist.definer_unpinned() TO service_role;
             CREATE FUNCTION public.granted_to_clients() RETURNS int LANGUAGE sql
                 SET search_path = pg_catalog AS 'SELECT 1';
             REVOKE EXECUTE ON FUNCTION public.granted_to_clients() FROM PUBLIC;
             GRANT EXECUTE ON FUNCTION public.granted_to_clients() TO authenticated, service_role;
             CREATE TABLE shotlist.unguarded (x int);",
        )
        .await
        .expect("the careless additions");
    let problems = function_problems(&function_grants(&client).await);
    assert_eq!(
        problems,
        [
            "granted_to_clients(): authenticated may execute it",
            "open_to_all(): PUBLIC may execute it",
            "open_to_all(): anon may execute it",
            "open_to_all(): authenticated may execute it",
            "shotlist.definer_unpinned(): SECURITY DEFINER without a search_path",
        ]
    );
    assert_eq!(
        table_problems(&client).await,
        [
            "shotlist.unguarded: row level security is off",
            "shotlist.unguarded: no policy for service_role",
        ]
    );
}

// Row security at work.

#[tokio::test]
async fn the_stand_in_auth_uid_reads_the_tokens_user_and_only_authenticated_may_call_it() {
    let (_db, url) = fresh_db().await;
    let mut client = connect(&url).await;
    let row = client
        .query_typed_one(
            "SELECT has_function_privilege('anon', 'auth.uid()', 'EXECUTE'),
                    has_function_privilege('authenticated', 'auth.uid()', 'EXECUTE'),
                    EXISTS (SELECT FROM pg_catalog.pg_proc AS p, aclexplode(p.proacl) AS a
                            WHERE p.oid = 'auth.uid()'::regprocedure AND a.grantee = 0)",
            &[],
        )
        .await
        .unwrap();
    let (anon, authenticated, public): (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((anon, authenticated, public), (false, true, false));

    let user = Uuid::new_v4();
    let sql = "SELECT auth.uid()";
    let rows = as_client(&mut client, "authenticated", Some(user), sql, &[]).await;
    assert_eq!(rows.unwrap()[0].get::<_, Option<Uuid>>(0), Some(user));
    let rows = as_client(&mut client, "authenticated", None, sql, &[]).await;
    assert_eq!(rows.unwrap()[0].get::<_, Option<Uuid>>(0), None);
    // Older PostgREST versions set the claim on its own.
    let legacy = "SELECT set_config('request.jwt.claim.sub', $1, true), auth.uid()";
    let sub = user.to_string();
    let rows = as_client(
        &mut client,
        "authenticated",
        None,
        legacy,
        &[(&sub, Type::TEXT)],
    )
    .await;
    assert_eq!(rows.unwrap()[0].get::<_, Option<Uuid>>(1), Some(user));
}

#[tokio::test]
async fn an_existing_auth_uid_such_as_supabases_is_kept_and_used_by_the_policies() {
    let url = fresh_database().await;
    let mut client = connect(&url).await;
    // Supabase's own, as far as the migrations can tell: it answers one user.
    let owner = Uuid::new_v4();
    // Roles are per cluster: another test's migration may be making it.
    client
        .batch_execute(&format!(
            "DO $role$ BEGIN
                 CREATE ROLE authenticated NOLOGIN;
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
             END $role$;
             CREATE SCHEMA auth;
             GRANT USAGE ON SCHEMA auth TO authenticated;
             CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE
                 AS $$ SELECT '{owner}'::uuid $$;"
        ))
        .await
        .expect("a Supabase-like auth.uid()");
    let db = Db::connect(&url, 2).await.unwrap();
    db.migrate().await.expect("migrated over it");

    let source: String = client
        .query_typed_one(
            "SELECT prosrc FROM pg_catalog.pg_proc WHERE oid = 'auth.uid()'::regprocedure",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(source.contains(&owner.to_string()), "replaced: {source}");
    let film = finished_film(&db, Some(owner)).await;
    finished_film(&db, Some(Uuid::new_v4())).await;
    let sql = "SELECT video_id FROM shotlist.videos";
    let rows = as_client(&mut client, "authenticated", None, sql, &[])
        .await
        .unwrap();
    let seen: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(seen, [film], "the policies ask the existing auth.uid()");
}

/// A film of two chunks owned by `owner`, analyzed and finalized: it has
/// rows in videos, chunks, shots and sheets.
async fn finished_film(db: &Db, owner: Option<Uuid>) -> Uuid {
    let video_id = Uuid::new_v4();
    let submission = Submission {
        video_id,
        owner_id: owner,
        source: "/films/owned.mp4".into(),
        media: fixtures::media(5_000, fps()),
        plan: PlanParams::default(),
    };
    let submitted = db.submit_video(&submission).await.expect("submitted");
    let analyzer = ScriptedAnalyzer::new();
    for index in 0..submitted.total_chunks {
        let done = worker::process_chunk(
            db,
            analyzer.as_ref(),
            video_id,
            index,
            &WorkerConfig::default(),
        )
        .await
        .expect("processed");
        assert!(matches!(done, Done::Completed(_)), "{done:?}");
    }
    db.finalize(video_id).await.expect("finalized");
    video_id
}

#[tokio::test]
async fn a_signed_in_user_reads_the_rows_of_their_own_films_and_no_one_elses() {
    let (db, url) = fresh_db().await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let alices = [
        finished_film(&db, Some(alice)).await,
        finished_film(&db, Some(alice)).await,
    ];
    let bobs = [finished_film(&db, Some(bob)).await];
    let ownerless = finished_film(&db, None).await;
    let mut client = connect(&url).await;
    for (user, films) in [(alice, &alices[..]), (bob, &bobs[..])] {
        for table in CLIENT_TABLES {
            let sql = format!("SELECT video_id FROM shotlist.{table}");
            let rows = as_client(&mut client, "authenticated", Some(user), &sql, &[])
                .await
                .unwrap_or_else(|code| panic!("{table}: {code}"));
            let seen: BTreeSet<Uuid> = rows.iter().map(|r| r.get(0)).collect();
            assert_eq!(seen, films.iter().copied().collect(), "{table}");
            let owned = rows_of(&client, table, films).await;
            assert!(owned > 0, "{table} has rows of the user's films");
            assert_eq!(rows.len() as i64, owned, "{table}: every row of them");
        }
    }
    // A user without films, and a request that names no user, see nothing,
    // although there are rows (the film without an owner among them).
    assert!(rows_of(&client, "shots", &[ownerless]).await > 0);
    for sub in [Some(Uuid::new_v4()), None] {
        for table in CLIENT_TABLES {
            let sql = format!("SELECT video_id FROM shotlist.{table}");
            let rows = as_client(&mut client, "authenticated", sub, &sql, &[])
                .await
                .unwrap_or_else(|code| panic!("{table}: {code}"));
            assert!(
                rows.is_empty(),
                "{sub:?} sees {} rows of {table}",
                rows.len()
            );
        }
    }
}

#[tokio::test]
async fn anon_reads_nothing_and_no_client_writes_calls_a_function_or_reads_internal_tables() {
    let (db, url) = fresh_db().await;
    let alice = Uuid::new_v4();
    let film = finished_film(&db, Some(alice)).await;
    let stuck = described_film(&db, 5_000, "25/1").await;
    db.record_rejected_message("shotlist-chunks", "m-1", "not json", "bad body")
        .await
        .unwrap();
    let mut client = connect(&url).await;
    let before = table_counts(&client).await;
    let check = |what: &str, got: Result<Vec<Row>, String>| {
        let got = got.map(|rows| rows.len());
        assert_eq!(got, Err("42501".to_string()), "{what}");
    };

    for table in before.keys() {
        let sql = format!("SELECT count(*) FROM shotlist.{table}");
        check(&sql, as_client(&mut client, "anon", None, &sql, &[]).await);
    }
    for table in INTERNAL_TABLES {
        let sql = format!("SELECT count(*) FROM shotlist.{table}");
        let got = as_client(&mut client, "authenticated", Some(alice), &sql, &[]).await;
        check(&sql, got);
    }
    for table in CLIENT_TABLES {
        for sql in [
            format!("INSERT INTO shotlist.{table} DEFAULT VALUES"),
            format!("UPDATE shotlist.{table} SET video_id = video_id"),
            format!("DELETE FROM shotlist.{table}"),
            format!("TRUNCATE shotlist.{table} CASCADE"),
        ] {
            for role in ["authenticated", "anon"] {
                let got = as_client(&mut client, role, Some(alice), &sql, &[]).await;
                check(&format!("{role}: {sql}"), got);
            }
        }
    }
    for sql in [
        "SELECT public.chunk_results($1)",
        "SELECT public.chunk_progress($1)",
        "SELECT public.get_sheet($1)",
        "SELECT public.force_finalize($1, 'mine now')",
        "SELECT public.claim_chunk($1, 0, 60, 3)",
        "SELECT public.register_video($1, 100)",
        "SELECT public.unfinished_chunks($1)",
        "SELECT shotlist.video_row($1)",
    ] {
        for (role, id) in [
            ("authenticated", film),
            ("authenticated", stuck),
            ("anon", film),
        ] {
            let got = as_client(&mut client, role, Some(alice), sql, &[(&id, Type::UUID)]).await;
            check(&format!("{role}: {sql}"), got);
        }
    }

    assert_eq!(table_counts(&client).await, before, "nothing changed");
    assert_eq!(db.unfinished_chunks(stuck).await.unwrap(), [0, 1]);
    // The refusals are not a broken role: the owner still reads her film.
    let sql = "SELECT video_id FROM shotlist.videos";
    let rows = as_client(&mut client, "authenticated", Some(alice), sql, &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
}

#[tokio::test]
async fn the_service_role_still_runs_whole_films_with_row_security_on() {
    let (_owner_db, url) = fresh_db().await;
    // Every connection of this pool is the service role from its start.
    let service_url = format!("{url} options='-c role=service_role'");
    let client = connect(&service_url).await;
    let row = client
        .query_typed_one(
            "SELECT current_user::text, current_setting('row_security')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("service_role".into(), "on".into())
    );
    let db = Db::connect(&service_url, 4).await.unwrap();

    let owner = Uuid::new_v4();
    let film = finished_film(&db, Some(owner)).await;
    let sheet = db.get_sheet(film).await.unwrap().expect("a sheet");
    assert_eq!(sheet.status, SheetStatus::Complete);
    assert_eq!(sheet.completed_chunks, 2);
    assert!(!sheet.shots.is_empty());
    assert_eq!(db.video_owner(film).await.unwrap(), Some(owner));

    let stuck = described_film(&db, 5_000, "25/1").await;
    let forced = db.force_finalize(stuck, "stuck").await.unwrap();
    assert_eq!(forced.forced_chunks, [0, 1]);
    assert_eq!(
        db.finalize(stuck).await.unwrap().status,
        SheetStatus::Partial
    );

    db.record_rejected_message("q", "m-1", "body", "error")
        .await
        .unwrap();
    db.record_rejected_message("q", "m-1", "body", "error")
        .await
        .unwrap();
    let rejected = db.rejected_messages("q").await.unwrap();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].receive_count, 2);

    // The upload record is seen by the next claim: it waits, it does not
    // upload the film again.
    let slot = UploadSlot::new(film, "gemini", 1);
    let accounts = ["1".to_string()];
    let hold = Duration::from_secs(60);
    let first = db.claim_upload(&slot, &accounts, hold).await.unwrap();
    let second = db.claim_upload(&slot, &accounts, hold).await.unwrap();
    assert!(matches!(first, UploadClaim::Claimed { .. }), "{first:?}");
    assert!(matches!(second, UploadClaim::Busy { .. }), "{second:?}");
}

// Hostile text.

/// Answers every chunk with one shot whose description, speaker and line
/// are `texts[chunk_index]` (cycling), exactly as given.
struct Parrot {
    texts: Vec<String>,
}

#[async_trait]
impl Analyzer for Parrot {
    fn name(&self) -> &'static str {
        "parrot"
    }

    async fn analyze(&self, request: &ChunkRequest) -> Result<ChunkAnalysis, AnalyzeError> {
        let text = &self.texts[request.chunk_index as usize % self.texts.len()];
        Ok(ChunkAnalysis {
            shots: vec![Shot {
                start_frame: 0,
                end_frame: request.end_frame - request.start_frame,
                shot_type: ShotType::Medium,
                description: text.clone(),
                dialogue: vec![DialogueLine {
                    speaker: text.clone(),
                    line: text.clone(),
                    offscreen: true,
                    start_frame: None,
                }],
            }],
        })
    }
}

/// Whether `text` can name a file under the source root: a bucket key
/// refuses control characters and backslashes.
fn usable_as_key(text: &str) -> bool {
    !text.chars().any(char::is_control) && !text.contains('\\')
}

/// `text` with every byte outside the unreserved set percent-encoded.
fn percent_encoded(text: &str, upper: bool) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ if upper => format!("%{b:02X}"),
            _ => format!("%{b:02x}"),
        })
        .collect()
}

/// The API of one test: a database, a recording chunk queue, and bucket
/// keys under `root`.
struct ApiRig {
    db: Db,
    url: String,
    api: Api,
    queue: Arc<RecordingQueue>,
    root: PathBuf,
}

impl ApiRig {
    async fn new(root: &Path, secret: &str, db: Db, url: String) -> ApiRig {
        let queue = RecordingQueue::new();
        let api = Api {
            db: db.clone(),
            verifier: Verifier::new(secret).expect("a long enough secret"),
            chunk_queue: queue.clone(),
            source_root: Some(SourceRoot::Folder(root.to_path_buf())),
            plan: PlanParams::default(),
            probe: ProbeOptions::default(),
            allow_private_sources: false,
        };
        ApiRig {
            db,
            url,
            api,
            queue,
            root: root.to_path_buf(),
        }
    }

    /// Status, raw body and header values of one request.
    async fn call(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String, Vec<String>) {
        let request = http_request(method, path, auth, body);
        let response = self.api.handle(&Endpoint::ALL, request).await;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .values()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        let text = match response.body() {
            lambda_http::Body::Text(t) => t.clone(),
            other => String::from_utf8_lossy(other.as_ref()).into_owned(),
        };
        (status, text, headers)
    }

    /// Status and JSON body of one request.
    async fn json(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        let (status, text, _) = self.call(method, path, auth, body).await;
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
        (status, value)
    }
}

/// Delivers the chunk messages the API queued after the first `already` to
/// `handler`, again while it lists them for retry (at most five deliveries
/// each), then the finalize messages that sent to `finalize`. Answers how
/// many finalize messages there were.
async fn drain(
    chunk_queue: &RecordingQueue,
    already: usize,
    handler: &ChunkHandler,
    finalize_queue: &RecordingQueue,
    finalize: &FinalizeHandler,
) -> usize {
    let deadline = SystemTime::now() + Duration::from_secs(300);
    let finalized_before = finalize_queue.sent().len();
    let mut pending: Vec<(String, u32)> = chunk_queue.sent()[already..]
        .iter()
        .map(|body| (body.to_string(), 1))
        .collect();
    for delivery in 1..=5 {
        let mut again = Vec::new();
        for (n, (body, receives)) in pending.iter().enumerate() {
            let id = format!("chunk-{delivery}-{n}-{}", Uuid::new_v4().simple());
            let event = sqs_event(vec![sqs_record(&id, body, *receives)]);
            if !handler
                .handle(event, Some(deadline))
                .await
                .batch_item_failures
                .is_empty()
            {
                again.push((body.clone(), receives + 1));
            }
        }
        pending = again;
        if pending.is_empty() {
            break;
        }
    }
    assert!(pending.is_empty(), "still listed for retry: {pending:?}");
    let messages = finalize_queue.sent().split_off(finalized_before);
    for (n, body) in messages.iter().enumerate() {
        let id = format!("finalize-{n}-{}", Uuid::new_v4().simple());
        let event = sqs_event(vec![sqs_record(&id, &body.to_string(), 1)]);
        let response = finalize.handle(event).await;
        assert!(response.batch_item_failures.is_empty(), "finalize {body}");
    }
    messages.len()
}

/// The handlers behind the queues, with `analyzer` and a recording
/// finalize queue.
fn handlers(
    db: &Db,
    analyzer: Arc<dyn Analyzer>,
) -> (ChunkHandler, FinalizeHandler, Arc<RecordingQueue>) {
    let finalize_queue = RecordingQueue::new();
    let chunks = ChunkHandler {
        db: db.clone(),
        analyzer,
        finalize_queue: finalize_queue.clone(),
        worker: WorkerConfig::default(),
        max_receives: 5,
        queue_name: "shotlist-chunks".into(),
        redelivery: None,
    };
    let finalize = FinalizeHandler {
        db: db.clone(),
        queue_name: "shotlist-finalize".into(),
    };
    (chunks, finalize, finalize_queue)
}

#[tokio::test]
async fn hostile_text_sent_to_the_api_is_stored_byte_for_byte_or_refused_and_never_runs() {
    let film = two_chunk_film().await;
    let (db, url) = fresh_db().await;
    // The film under every hostile name that can be a file name.
    let root = film_dir().join(format!("hostile-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&root).unwrap();
    for text in HOSTILE.iter().filter(|t| usable_as_key(t)) {
        let name = root.join(format!("{text}.mp4"));
        std::fs::hard_link(&film.path, &name)
            .or_else(|_| std::fs::copy(&film.path, &name).map(drop))
            .unwrap_or_else(|e| panic!("{}: {e}", name.display()));
    }
    let rig = ApiRig::new(&root, JWT_SECRET, db, url).await;
    let client = connect(&rig.url).await;
    let bystander = finished_film(&rig.db, Some(Uuid::new_v4())).await;
    let catalog_before = catalog(&client).await;
    let bystander_before = rig.db.chunk_results(bystander).await.unwrap();
    let alice = Uuid::new_v4();
    let token = user_token(alice);
    let analyzer = Arc::new(Parrot {
        texts: HOSTILE.map(String::from).to_vec(),
    });
    let (chunks, finalize, finalize_queue) = handlers(&rig.db, analyzer);
    let mut accepted = 0;

    for (n, text) in HOSTILE.iter().enumerate() {
        let key = format!("{text}.mp4");
        let video_id = Uuid::new_v4();
        let body = json!({ "source": key, "videoId": video_id }).to_string();
        let (status, answer) = rig.json("POST", "/videos", Some(&token), Some(&body)).await;
        if !usable_as_key(text) {
            assert_eq!(
                (status, &answer["field"]),
                (400, &json!("source")),
                "{text:?}: {answer}"
            );
            assert!(matches!(
                rig.db.video_owner(video_id).await,
                Err(DbError::NotFound(_))
            ));
            continue;
        }
        assert_eq!(status, 202, "{text:?}: {answer}");
        accepted += 1;
        let stored: String = client
            .query_typed_one(
                "SELECT source FROM shotlist.videos WHERE video_id = $1",
                &[(&video_id, Type::UUID)],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(stored, rig.root.join(&key).to_string_lossy(), "{text:?}");

        // Its chunks are described with the same text, whatever chunk it is.
        let parrot = Arc::new(Parrot {
            texts: vec![text.to_string()],
        });
        let chunks = ChunkHandler {
            analyzer: parrot,
            ..chunks.clone()
        };
        let sent_before = rig.queue.sent().len() - 2;
        let finalized = drain(&rig.queue, sent_before, &chunks, &finalize_queue, &finalize).await;
        assert_eq!(finalized, 1, "{text:?}");
        let (status, progress) = rig
            .json("GET", &format!("/videos/{video_id}"), Some(&token), None)
            .await;
        assert_eq!(status, 200, "{progress}");
        let sheet = &progress["sheet"];
        assert_eq!(sheet["source"], json!(key), "{n}: the key as it was sent");
        let shots = sheet["shots"].as_array().expect("shots");
        assert!(!shots.is_empty());
        for shot in shots {
            assert_eq!(shot["description"], json!(text), "{shot}");
            assert_eq!(shot["dialogue"][0]["speaker"], json!(text), "{shot}");
            assert_eq!(shot["dialogue"][0]["line"], json!(text), "{shot}");
        }
    }
    assert_eq!(
        accepted,
        HOSTILE.iter().filter(|t| usable_as_key(t)).count()
    );
    assert!(accepted >= 10);

    // In every other field and in the path it is refused, naming the field.
    let known = format!("{}.mp4", HOSTILE[0]);
    let service = service_token();
    for text in HOSTILE {
        for (field, body) in [
            ("videoId", json!({ "source": known, "videoId": text })),
            ("ownerId", json!({ "source": known, "ownerId": text })),
            (
                "durationSeconds",
                json!({ "source": known, "durationSeconds": text }),
            ),
        ] {
            let (status, answer) = rig
                .json("POST", "/videos", Some(&service), Some(&body.to_string()))
                .await;
            assert_eq!(
                (status, &answer["field"]),
                (400, &json!(field)),
                "{text:?}: {answer}"
            );
        }
        let body = json!({ "source": known, text: 1 }).to_string();
        let (status, answer) = rig
            .json("POST", "/videos", Some(&service), Some(&body))
            .await;
        assert_eq!(status, 400, "{text:?}: {answer}");
        for upper in [true, false] {
            let id = percent_encoded(text, upper);
            for (method, path) in [
                ("GET", format!("/videos/{id}")),
                ("POST", format!("/videos/{id}/finalize")),
                ("POST", format!("/videos/{id}/force-finalize")),
            ] {
                let (status, answer) = rig.json(method, &path, Some(&service), None).await;
                assert_eq!(
                    (status, &answer["field"]),
                    (400, &json!("id")),
                    "{path}: {answer}"
                );
            }
        }
    }

    assert_eq!(
        catalog(&client).await,
        catalog_before,
        "nothing made or dropped"
    );
    let bystander_after = rig.db.chunk_results(bystander).await.unwrap();
    assert_eq!(
        format!("{bystander_after:?}"),
        format!("{bystander_before:?}"),
        "another film is untouched"
    );
    let films: i64 = client
        .query_typed_one("SELECT count(*) FROM shotlist.videos", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        films,
        1 + accepted as i64,
        "one film per accepted submission"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[tokio::test]
async fn hostile_text_in_shots_errors_reasons_and_rejected_messages_is_stored_as_data() {
    let (db, url) = fresh_db().await;
    let client = connect(&url).await;
    let bystander = finished_film(&db, None).await;
    let catalog_before = catalog(&client).await;
    let bystander_before = format!("{:?}", db.chunk_results(bystander).await.unwrap());
    let texts: Vec<String> = HOSTILE.map(String::from).to_vec();
    let n = texts.len() as u32;
    // One chunk per text: 165 s steps with 15 s of overlap.
    let frames = 25 * (165 * i64::from(n) + 15);
    let config = WorkerConfig::default();

    // Shots: description, speaker and line, as the analyzer gave them, with
    // what no database can store (NUL) removed.
    let described = described_film(&db, frames, "25/1").await;
    let parrot = Parrot {
        texts: texts.clone(),
    };
    for index in 0..n {
        let done = worker::process_chunk(&db, &parrot, described, index, &config)
            .await
            .unwrap();
        assert!(matches!(done, Done::Completed(_)), "{index}: {done:?}");
    }
    let results = db.chunk_results(described).await.unwrap();
    assert_eq!(results.chunks.len(), texts.len());
    for (chunk, text) in results.chunks.iter().zip(&texts) {
        let expected = storable_text(text);
        let shot = &chunk.shots[0];
        assert_eq!(shot.description, expected, "{text:?}");
        assert_eq!(shot.dialogue[0].speaker, expected, "{text:?}");
        assert_eq!(shot.dialogue[0].line, expected, "{text:?}");
    }
    let sheet = db.finalize(described).await.unwrap();
    assert_eq!(sheet.status, SheetStatus::Complete);
    // No cut anywhere: one shot, described part by part.
    let parts: Vec<String> = texts
        .iter()
        .map(|t| storable_text(t).into_owned())
        .collect();
    assert_eq!(sheet.shots.len(), 1);
    assert_eq!(sheet.shots[0].description, parts.join("; then "));

    // Errors: a failed attempt's error keeps the text.
    let failing = described_film(&db, frames, "25/1").await;
    let scripted = ScriptedAnalyzer::new();
    for (index, text) in texts.iter().enumerate() {
        scripted.script(index as u32, Script::Transient(text.clone()));
    }
    for index in 0..n {
        let done = worker::process_chunk(&db, scripted.as_ref(), failing, index, &config)
            .await
            .unwrap();
        assert!(matches!(done, Done::Retry { .. }), "{index}: {done:?}");
    }
    let progress = db.chunk_progress(failing).await.unwrap();
    for (chunk, text) in progress["chunks"].as_array().unwrap().iter().zip(&texts) {
        let error = chunk["error"].as_str().expect("an error");
        assert!(
            error.contains(storable_text(text).as_ref()),
            "{text:?}: {error:?}"
        );
    }

    // Force-finalize reasons: stored as given, or refused before any change.
    for text in &texts {
        let stuck = described_film(&db, 5_000, "25/1").await;
        match db.force_finalize(stuck, text).await {
            Ok(forced) => {
                assert_eq!(forced.forced_chunks, [0, 1], "{text:?}");
                let progress = db.chunk_progress(stuck).await.unwrap();
                assert_eq!(progress["chunks"][0]["error"], json!(text), "{text:?}");
            }
            Err(e) => {
                assert!(text.contains('\0'), "{text:?} refused: {e}");
                assert!(e.is_refused_data(), "{text:?}: {e}");
                assert_eq!(db.unfinished_chunks(stuck).await.unwrap(), [0, 1]);
            }
        }
    }

    // Rejected messages: queue, id, body and error, stored as given; a NUL
    // in the key (queue, id) is refused, in the body or error removed.
    for text in &texts {
        match db.record_rejected_message(text, text, text, text).await {
            Ok(()) => {
                let rows = db.rejected_messages(text).await.unwrap();
                assert_eq!(rows.len(), 1, "{text:?}");
                let row = &rows[0];
                assert_eq!(
                    [&row.queue, &row.message_id, &row.body, &row.error],
                    [text; 4],
                    "{text:?}"
                );
            }
            Err(e) => {
                assert!(text.contains('\0'), "{text:?} refused: {e}");
                assert!(e.is_refused_data(), "{text:?}: {e}");
            }
        }
    }
    // Through the chunk handler, as message bodies no handler can use.
    let (chunks, _, _) = handlers(&db, Arc::new(parrot));
    for (n, text) in texts.iter().enumerate() {
        let id = format!("hostile-{n}");
        let outcome = chunks
            .handle_record(&id, &sqs_message(&id, text, 1), None)
            .await;
        assert_eq!(
            outcome,
            RecordOutcome::Acknowledged("rejected and recorded"),
            "{text:?}"
        );
    }
    let rejected = db.rejected_messages("shotlist-chunks").await.unwrap();
    let bodies: Vec<&str> = rejected.iter().map(|r| r.body.as_str()).collect();
    let expected: Vec<String> = texts
        .iter()
        .map(|t| storable_text(t).into_owned())
        .collect();
    assert_eq!(bodies, expected);

    // Sources: stored as given, or refused.
    for text in &texts {
        let video_id = Uuid::new_v4();
        let submission = Submission {
            video_id,
            owner_id: None,
            source: text.clone(),
            media: fixtures::media(5_000, fps()),
            plan: PlanParams::default(),
        };
        match db.submit_video(&submission).await {
            Ok(_) => {
                let source: String = client
                    .query_typed_one(
                        "SELECT source FROM shotlist.videos WHERE video_id = $1",
                        &[(&video_id, Type::UUID)],
                    )
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(&source, text);
            }
            Err(e) => {
                assert!(text.contains('\0'), "{text:?} refused: {e}");
                assert!(e.is_refused_data(), "{text:?}: {e}");
                assert!(matches!(
                    db.video_owner(video_id).await,
                    Err(DbError::NotFound(_))
                ));
            }
        }
    }

    assert_eq!(
        catalog(&client).await,
        catalog_before,
        "nothing made or dropped"
    );
    assert_eq!(
        format!("{:?}", db.chunk_results(bystander).await.unwrap()),
        bystander_before,
        "another film is untouched"
    );
}

// Secrets.

/// Standard base64 (`url_safe`: the URL-safe alphabet), without padding.
fn base64(bytes: &[u8], url_safe: bool) -> String {
    let alphabet: &[u8; 64] = if url_safe {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::new();
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=group.len() {
            out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Every form in which `secret` could show up in a log or a body: as it is,
/// percent-encoded, JSON- and Debug-escaped, and in base64 (both
/// alphabets) at each of the three alignments it can have inside a longer
/// encoded text, keeping only the characters that depend on the secret
/// alone.
fn forms(secret: &str) -> Vec<String> {
    let mut forms = vec![
        secret.to_string(),
        percent_encoded(secret, true),
        percent_encoded(secret, false),
        serde_json::to_string(secret)
            .unwrap()
            .trim_matches('"')
            .to_string(),
        format!("{secret:?}").trim_matches('"').to_string(),
    ];
    for offset in 0..3usize {
        let mut bytes = vec![0u8; offset];
        bytes.extend_from_slice(secret.as_bytes());
        let first = (8 * offset).div_ceil(6);
        let last = 8 * bytes.len() / 6;
        for url_safe in [false, true] {
            let encoded = base64(&bytes, url_safe);
            forms.push(encoded[first..last].to_string());
        }
    }
    forms.sort();
    forms.dedup();
    forms
}

#[test]
fn secret_forms_include_base64_at_every_alignment() {
    assert_eq!(base64(b"Man", false), "TWFu");
    assert_eq!(base64(b"Ma", false), "TWE");
    assert_eq!(base64(&[0xfb, 0xff], true), "-_8");
    let secret = "p@ss:w/rd";
    let forms = forms(secret);
    assert!(forms.contains(&"p%40ss%3Aw%2Frd".to_string()), "{forms:?}");
    for prefix in ["", "x", "xy", "xyz"] {
        let text = base64(format!("{prefix}{secret}!").as_bytes(), false);
        assert!(
            forms.iter().any(|f| text.contains(f.as_str())),
            "{prefix:?}: {text} has none of {forms:?}"
        );
    }
}

/// A token signed with `secret`.
fn signed(secret: &str, sub: Option<Uuid>, role: &str, seconds: i64) -> String {
    let claims = Claims {
        sub: sub.map(|u| u.to_string()),
        role: role.into(),
        exp: (auth::now_epoch() as i64 + seconds).max(0) as u64,
    };
    format!("Bearer {}", auth::sign(secret, &claims).expect("signed"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_shows_in_any_log_line_or_answer_of_a_whole_cloud_run() {
    let capture = logs::capture();
    let film = two_chunk_film().await;
    let (_owner_db, url) = fresh_db().await;
    let password = "sl-pg-P@ss:w/rd+7c1e9b=&?#x";
    let jwt_secret = "sl-jwt-secret-0f3a9b7c5d1e2f4a6b8c0d2e4f6a8b0c";
    let keys = fake_gemini::keys(2);
    let fake = FakeGemini::start(keys.clone());
    // The first upload of key 1 is rate-limited, and one answer quotes the
    // key back, as a careless proxy might: both reach the logs.
    fake.rate_limit_uploads(1, 1, Duration::from_secs(1));
    fake.script([Reply::StatusQuotingKey(503)]);

    // As the Lambda functions connect, with a password, here also as the
    // service role, so the run proves the functions work for it too.
    let database_url = format!("{url} password='{password}' options='-c role=service_role'");
    let db = Db::connect(&database_url, 4).await.expect("connected");
    let vars = {
        let (keys, base) = (keys.join(","), fake.base_url().to_string());
        move |name: &str| match name {
            "GEMINI_API_KEYS" => Some(keys.clone()),
            "GEMINI_BASE_URL" => Some(base.clone()),
            _ => None,
        }
    };
    let gemini = AnalyzerSetup {
        kind: AnalyzerKind::Gemini,
        ..AnalyzerSetup::default()
    };
    let analyzer = setup::build(&gemini, &vars, &db)
        .expect("a Gemini analyzer")
        .analyzer;
    let root = film.path.parent().unwrap();
    let rig = ApiRig::new(root, jwt_secret, db.clone(), database_url.clone()).await;
    let (chunks, finalize, finalize_queue) = handlers(&db, analyzer);
    let owner = Uuid::new_v4();
    let user = signed(jwt_secret, Some(owner), "authenticated", 600);
    let service = signed(jwt_secret, None, "service_role", 600);
    let key = film
        .path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let mut answers: Vec<String> = Vec::new();
    let mut call = async |method: &str, path: &str, auth: Option<&str>, body: Option<&str>| {
        let (status, text, headers) = rig.call(method, path, auth, body).await;
        answers.push(text.clone());
        answers.extend(headers);
        (status, text)
    };

    let (status, text) = call(
        "POST",
        "/videos",
        Some(&user),
        Some(&json!({ "source": key }).to_string()),
    )
    .await;
    assert_eq!(status, 202, "{text}");
    let video_id: Uuid = serde_json::from_str::<Value>(&text).unwrap()["videoId"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        drain(&rig.queue, 0, &chunks, &finalize_queue, &finalize).await,
        1
    );
    let status_path = format!("/videos/{video_id}");
    let (status, text) = call("GET", &status_path, Some(&user), None).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"status\":\"complete\""), "{text}");
    let forged = signed(
        "another-secret-of-32-bytes-or-more!!",
        None,
        "service_role",
        600,
    );
    let expired = signed(jwt_secret, None, "service_role", -3600);
    let unknown = format!("/videos/{}", Uuid::new_v4());
    for (method, path, auth, expected) in [
        ("POST", format!("{status_path}/finalize"), &service, 200),
        (
            "POST",
            format!("{status_path}/force-finalize"),
            &service,
            200,
        ),
        ("POST", format!("{status_path}/finalize"), &user, 403),
        ("GET", status_path.clone(), &forged, 401),
        ("GET", status_path.clone(), &expired, 401),
        ("GET", unknown, &service, 404),
    ] {
        let (status, text) = call(method, &path, Some(auth.as_str()), None).await;
        assert_eq!(status, expected, "{path}: {text}");
    }
    // Connection errors name the server, never the password.
    for broken in [
        format!("{url} password='{password}' dbname=no_such_database"),
        format!(
            "postgresql://postgres:{}@127.0.0.1:notaport/db",
            percent_encoded(password, true)
        ),
    ] {
        let error = Db::connect(&broken, 1).await.err().expect("refused");
        answers.push(format!("{error} {error:?}"));
    }

    let logs = capture.text();
    // The capture saw the run at trace level, keys named by number.
    assert!(
        logs.contains("generateContent"),
        "trace-level provider logs"
    );
    assert!(
        logs.contains("key=1") && logs.contains("key=2"),
        "keys by number"
    );
    assert!(logs.contains("chunk completed"), "the workers' logs");
    let tokens = [&user, &service].map(|t| t.trim_start_matches("Bearer ").to_string());
    let secrets = [("database password", password), ("JWT secret", jwt_secret)]
        .into_iter()
        .chain(keys.iter().map(|k| ("Gemini key", k.as_str())))
        .chain(tokens.iter().map(|t| ("bearer token", t.as_str())));
    let texts: Vec<&str> = logs
        .lines()
        .chain(answers.iter().map(String::as_str))
        .collect();
    let mut leaks = Vec::new();
    for (what, secret) in secrets {
        for form in forms(secret) {
            let found = texts.iter().filter(|t| t.contains(&form));
            leaks.extend(found.map(|text| format!("the {what} as {form:?} in {text}")));
        }
    }
    assert_eq!(leaks, Vec::<String>::new());
}

/// One kind of bad request in the burst, and the status it must get.
struct Bad {
    case: &'static str,
    expected: u16,
    method: &'static str,
    path: String,
    auth: Option<String>,
    body: Option<String>,
}

fn bad(
    case: &'static str,
    expected: u16,
    (method, path): (&'static str, &str),
    auth: Option<&str>,
    body: Option<&str>,
) -> Bad {
    Bad {
        case,
        expected,
        method,
        path: path.to_string(),
        auth: auth.map(str::to_string),
        body: body.map(str::to_string),
    }
}

/// A token with `"alg": "none"` and no signature, claiming the service role.
fn unsigned_token() -> String {
    let header = base64(br#"{"alg":"none","typ":"JWT"}"#, true);
    let exp = auth::now_epoch() + 600;
    let claims = base64(
        format!(r#"{{"role":"service_role","exp":{exp}}}"#).as_bytes(),
        true,
    );
    format!("Bearer {header}.{claims}.")
}

/// Every kind of bad request the burst sends; `key` names a real film. A
/// table, kept one case a line.
#[rustfmt::skip]
fn bad_requests(key: &str) -> Vec<Bad> {
    let submit = &json!({ "source": key }).to_string();
    let huge = &json!({ "source": key, "padding": "A".repeat(1 << 20) }).to_string();
    let huge_array = &format!("[{}1]", "1,".repeat(1 << 19));
    let not_yours = &json!({ "source": key, "ownerId": Uuid::new_v4() }).to_string();
    let traversal = &json!({ "source": "../../etc/passwd" }).to_string();
    let metadata = &json!({ "source": "http://169.254.169.254/latest/meta-data/" }).to_string();
    let someone = Uuid::new_v4();
    let (film, videos) = (&format!("/videos/{someone}"), ("POST", "/videos"));
    let (finalize, force) = (&format!("{film}/finalize"), &format!("{film}/force-finalize"));
    let service = &service_token();
    let service = Some(service.as_str());
    let expired = &bearer(None, "service_role", -3600);
    let no_user = &bearer(None, "authenticated", 600);
    let anon = &bearer(None, "anon", 600);
    let user = &user_token(someone);
    let alg_none = &unsigned_token();
    let claims = Claims { sub: None, role: "service_role".into(), exp: auth::now_epoch() + 600 };
    let other_secret = "not-the-project-secret-but-32-bytes-long";
    let wrong_secret = &format!("Bearer {}", auth::sign(other_secret, &claims).unwrap());
    vec![
        bad("no token", 401, videos, None, Some(submit)),
        bad("garbage token", 401, videos, Some("Bearer not.a.jwt"), Some(submit)),
        bad("empty bearer", 401, videos, Some("Bearer "), Some(submit)),
        bad("basic auth", 401, ("GET", film), Some("Basic dXNlcjpwYXNz"), None),
        bad("expired", 401, videos, Some(expired), Some(submit)),
        bad("alg none", 401, videos, Some(alg_none), Some(submit)),
        bad("wrong secret", 401, videos, Some(wrong_secret), Some(submit)),
        bad("user without sub", 401, videos, Some(no_user), Some(submit)),
        bad("huge body, no token", 401, videos, None, Some(huge)),
        bad("malformed JSON", 400, videos, service, Some("{\"source\": ")),
        bad("not an object", 400, videos, service, Some("[\"source\"]")),
        bad("huge body", 413, videos, service, Some(huge)),
        bad("huge array", 413, videos, service, Some(huge_array)),
        bad("traversal", 400, videos, service, Some(traversal)),
        bad("metadata URL", 400, videos, service, Some(metadata)),
        bad("anon submits", 403, videos, Some(anon), Some(submit)),
        bad("another owner", 403, videos, Some(user), Some(not_yours)),
        bad("user finalizes", 403, ("POST", finalize), Some(user), None),
        bad("anon forces", 403, ("POST", force), Some(anon), None),
        bad("bad id", 400, ("GET", "/videos/1%27%20OR%201%3D1"), service, None),
        bad("unknown film", 404, ("GET", film), service, None),
        bad("sheet, no token", 401, ("GET", &format!("{film}/sheet.csv")), None, None),
        bad("sheet, bad format", 400, ("GET", &format!("{film}/sheet.exe")), service, None),
        bad("sheet of no film", 404, ("GET", &format!("{film}/sheet.xlsx")), service, None),
        bad("page, bad id", 404, ("GET", "/videos/%3Cscript%3E/progress"), None, None),
        bad("unknown route", 404, ("GET", "/admin"), service, None),
        bad("too deep", 404, ("POST", "/videos/a/b/c"), None, None),
        bad("DELETE", 405, ("DELETE", film), service, None),
        bad("GET /videos", 405, ("GET", "/videos"), None, None),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_1000_bad_requests_gets_4xx_answers_writes_nothing_and_a_good_one_then_works() {
    let film = two_chunk_film().await;
    let (db, url) = fresh_db().await;
    let root = film.path.parent().unwrap();
    let rig = ApiRig::new(root, JWT_SECRET, db, url).await;
    let client = connect(&rig.url).await;
    let before = table_counts(&client).await;
    let key = film
        .path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let cases = bad_requests(&key);
    let requests: Vec<usize> = (0..1000).map(|i| i % cases.len()).collect();
    let answers: Vec<(usize, u16, String)> = futures::stream::iter(requests)
        .map(|i| {
            let (bad, rig) = (&cases[i], &rig);
            async move {
                let (auth, body) = (bad.auth.as_deref(), bad.body.as_deref());
                let (status, text, _) = rig.call(bad.method, &bad.path, auth, body).await;
                (i, status, text)
            }
        })
        .buffer_unordered(50)
        .collect()
        .await;

    assert_eq!(answers.len(), 1000);
    let mut seen: BTreeMap<u16, usize> = BTreeMap::new();
    for (i, status, text) in &answers {
        let (case, expected) = (cases[*i].case, cases[*i].expected);
        assert_eq!(*status, expected, "{case}: {text}");
        let answer: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{case}: {text}"
        );
        *seen.entry(*status).or_default() += 1;
    }
    assert!(seen.keys().all(|s| (400..500).contains(s)), "{seen:?}");
    assert_eq!(table_counts(&client).await, before, "nothing was written");
    assert!(rig.queue.sent().is_empty(), "nothing was queued");

    // The API is still healthy: a good request goes through.
    let owner = Uuid::new_v4();
    let submit = json!({ "source": key }).to_string();
    let (status, answer) = rig
        .json("POST", "/videos", Some(&user_token(owner)), Some(&submit))
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(rig.queue.sent().len(), 2);
    let (status, answer) = rig
        .json(
            "GET",
            &format!("/videos/{}", answer["videoId"].as_str().unwrap()),
            Some(&user_token(owner)),
            None,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
}
