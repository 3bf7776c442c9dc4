//! Database access: the SQL functions of `migrations/`, called over
//! tokio-postgres.
//!
//! Every call is one unnamed statement with explicitly typed parameters
//! (`query_typed`), so it works through Supabase's transaction pooler, which
//! does not keep named prepared statements. The connection uses TLS through
//! postgres-native-tls when the URL asks for it (`sslmode=require`); a PEM
//! file named by `DATABASE_CA_CERT` is trusted as an extra root.
//!
//! A call rides out a database that goes away for a moment (a restart, a
//! failover): a connection found dead is replaced at once, together with the
//! pool's other idle ones, which died with it; a server that takes no
//! connections yet is tried again with a growing pause for up to
//! [`RECONNECT_WINDOW`]. The functions are written so that repeating a call
//! is harmless.

use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::Value;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Socket;
use uuid::Uuid;

use crate::merge::{self, ChunkOutcome, ChunkResult};
use crate::model::Shot;
use crate::plan::{FrameSpan, PlanParams};
use crate::probe::MediaInfo;
use crate::sheet::{FilmDetails, Sheet, SheetStatus};
use crate::time::Fps;

/// The migrations, applied in this order. A test checks that this list and
/// the `migrations/` folder agree.
pub const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_core", include_str!("../../migrations/0001_core.sql")),
    (
        "0002_cloud",
        include_str!("../../migrations/0002_cloud.sql"),
    ),
    (
        "0003_provider_files",
        include_str!("../../migrations/0003_provider_files.sql"),
    ),
    (
        "0004_release_chunk",
        include_str!("../../migrations/0004_release_chunk.sql"),
    ),
    (
        "0005_renew_lease",
        include_str!("../../migrations/0005_renew_lease.sql"),
    ),
    (
        "0006_sweep",
        include_str!("../../migrations/0006_sweep.sql"),
    ),
    (
        "0007_row_security",
        include_str!("../../migrations/0007_row_security.sql"),
    ),
    (
        "0008_film_details",
        include_str!("../../migrations/0008_film_details.sql"),
    ),
];

/// Serializes concurrent migrators of one database.
const MIGRATION_LOCK: i64 = 0x5307_1157;

/// How long a call keeps trying to reach a database that went away (a
/// restart, a failover) before it returns the error: shorter than the time
/// a Lambda invocation keeps back for its commit
/// ([`crate::cloud::chunk::DEADLINE_MARGIN`]), so that a chunk analyzed
/// just before a restart is still saved.
pub const RECONNECT_WINDOW: Duration = Duration::from_secs(10);

/// The pause before the second try to reconnect (the first is at once);
/// each later pause is twice as long, up to [`RECONNECT_PAUSE_MAX`].
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
const RECONNECT_PAUSE_MAX: Duration = Duration::from_secs(1);

/// Errors of database calls. Each knows whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database url: {0}")]
    BadUrl(String),
    #[error("cannot set up TLS for the database connection: {0}")]
    Tls(String),
    #[error("cannot connect to the database at {target}: {detail}")]
    Connect { target: String, detail: String },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NotReady(String),
    #[error("database error while {what}: {}", cause_chain(source))]
    Query {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("unexpected answer from {what}: {detail}")]
    Decode { what: String, detail: String },
}

impl DbError {
    /// True when the same call may succeed later: the database was
    /// unreachable, restarting, or chose this transaction as a deadlock or
    /// serialization victim. Bad arguments and unknown films are permanent.
    pub fn is_retryable(&self) -> bool {
        match self {
            DbError::Connect { .. } => true,
            DbError::Query { source, .. } => is_transient(source),
            _ => false,
        }
    }

    /// True when the database refused the data of a call (bad arguments,
    /// text it cannot store): sending the same data again cannot help.
    pub fn is_refused_data(&self) -> bool {
        match self {
            DbError::InvalidArgument(_) => true,
            DbError::Query { source, .. } => {
                source.code().is_some_and(|c| c.code().starts_with("22"))
            }
            _ => false,
        }
    }

    fn from_query(what: &str, source: tokio_postgres::Error) -> DbError {
        let message = || {
            source
                .as_db_error()
                .map(|e| e.message().to_string())
                .unwrap_or_default()
        };
        match source.code().map(|c| c.code()) {
            Some("22023") => DbError::InvalidArgument(message()),
            Some("P0002") => DbError::NotFound(message()),
            Some("55000") => DbError::NotReady(message()),
            _ => DbError::Query {
                what: what.to_string(),
                source,
            },
        }
    }
}

/// Whether a query error came from the connection rather than the query.
fn is_connection_lost(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    let code = error.code().map(|c| c.code()).unwrap_or("");
    if code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03") {
        return true;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = cause {
        if e.is::<std::io::Error>() {
            return true;
        }
        cause = e.source();
    }
    false
}

fn is_transient(error: &tokio_postgres::Error) -> bool {
    let code = error.code().map(|c| c.code()).unwrap_or("");
    is_connection_lost(error) || matches!(code, "40001" | "40P01" | "53300" | "57014")
}

/// Whether a failed attempt to connect says that the server is not there
/// right now (stopped, restarting, starting up or shutting down) rather than
/// that it refuses us: a refused or reset connection, a missing unix socket,
/// SQLSTATE class 08 or 57P01 to 57P03. A timed-out attempt is not among
/// them: another would wait as long again.
fn is_server_unavailable(error: &tokio_postgres::Error) -> bool {
    if let Some(code) = error.code() {
        let code = code.code();
        return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03");
    }
    if error.is_closed() {
        return true;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as Kind;
            return matches!(
                io.kind(),
                Kind::ConnectionRefused
                    | Kind::NotFound
                    | Kind::ConnectionReset
                    | Kind::ConnectionAborted
                    | Kind::BrokenPipe
                    | Kind::UnexpectedEof
            );
        }
        cause = e.source();
    }
    false
}

/// Why one try of a call failed, which decides whether to try again.
#[derive(Debug)]
enum Failure {
    /// The connection died under the call.
    Lost(DbError),
    /// No connection could be made: the server is not there right now.
    Unavailable(DbError),
    /// The server rolled the statement back to break a deadlock or a
    /// serialization conflict: a call is one statement, so running it again
    /// is safe.
    Conflict(DbError),
    /// Anything else, returned as it is.
    Other(DbError),
}

impl From<DbError> for Failure {
    fn from(error: DbError) -> Failure {
        Failure::Other(error)
    }
}

impl Failure {
    /// A query's error; a lost connection is told apart.
    fn of_query(what: &str, error: tokio_postgres::Error) -> Failure {
        let lost = is_connection_lost(&error);
        let conflict = matches!(error.code().map(|c| c.code()), Some("40P01" | "40001"));
        let error = DbError::from_query(what, error);
        if lost {
            Failure::Lost(error)
        } else if conflict {
            Failure::Conflict(error)
        } else {
            Failure::Other(error)
        }
    }
}

/// How often one call rolled back by a deadlock or serialization conflict
/// is run again, after a pause that grows by [`CONFLICT_PAUSE`] each time.
const MAX_CONFLICT_RETRIES: u32 = 3;
const CONFLICT_PAUSE: Duration = Duration::from_millis(20);

/// How one call rides out a database that went away: the first retry comes
/// at once, later ones after a pause that doubles, until
/// [`RECONNECT_WINDOW`] has passed since the call began.
struct Reconnect {
    began: tokio::time::Instant,
    tries: u32,
    /// Calls rolled back by a deadlock or serialization conflict so far.
    conflicts: u32,
    pause: Duration,
}

impl Reconnect {
    fn new() -> Reconnect {
        Reconnect {
            began: tokio::time::Instant::now(),
            tries: 0,
            conflicts: 0,
            pause: RECONNECT_PAUSE,
        }
    }

    /// Returns when call `what` is to be tried again after `failure`, having
    /// waited if need be; errs with the error to return otherwise. A lost
    /// connection takes the pool's other idle connections with it: a
    /// restart ends them all, and handing them out would only fail again.
    async fn again(&mut self, db: &Db, what: &str, failure: Failure) -> Result<(), DbError> {
        let (error, lost) = match failure {
            Failure::Lost(error) => (error, true),
            Failure::Unavailable(error) => (error, false),
            Failure::Conflict(error) if self.conflicts < MAX_CONFLICT_RETRIES => {
                self.conflicts += 1;
                tracing::debug!(call = what, error = %error, "rolled back by a conflict; trying again");
                tokio::time::sleep(CONFLICT_PAUSE * self.conflicts).await;
                return Ok(());
            }
            Failure::Conflict(error) | Failure::Other(error) => return Err(error),
        };
        if lost {
            db.drop_idle_connections();
        }
        let pause = if self.tries == 0 {
            Duration::ZERO
        } else {
            self.pause
        };
        if self.began.elapsed() + pause >= RECONNECT_WINDOW {
            return Err(error);
        }
        match (lost, self.tries) {
            (true, _) => tracing::warn!(
                call = what,
                error = %error,
                "database connection lost; trying again on a new one"
            ),
            (false, 0) => tracing::warn!(
                call = what,
                error = %error,
                window_s = RECONNECT_WINDOW.as_secs(),
                "database unavailable; trying again"
            ),
            (false, _) => {
                tracing::debug!(call = what, error = %error, "database still unavailable")
            }
        }
        if self.tries > 0 {
            tokio::time::sleep(pause).await;
            self.pause = (self.pause * 2).min(RECONNECT_PAUSE_MAX);
        }
        self.tries += 1;
        Ok(())
    }
}

/// The film's chunk counters after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub completed_chunks: u32,
    pub failed_chunks: u32,
    pub total_chunks: u32,
    /// True for exactly one call per film: the one whose change made every
    /// chunk completed or failed.
    pub finished: bool,
    /// Whether the film is finished at all.
    #[serde(default)]
    pub film_finished: bool,
}

/// What a commit or failure report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The shots are saved and the chunk is completed.
    Completed,
    /// A duplicate: the chunk was already completed; nothing was written.
    AlreadyCompleted,
    /// The chunk was already failed (e.g. force-finalized); nothing written.
    AlreadyFailed,
    /// Another worker holds the chunk now, or nobody does; nothing written.
    LeaseLost,
    /// The attempt failed and the chunk is pending again.
    Retry,
    /// The chunk failed for good.
    Failed,
    /// The chunk was given back without spending an attempt
    /// (`release_chunk`).
    Released,
}

/// The answer of `complete_chunk` and `fail_chunk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Report {
    pub outcome: Outcome,
    #[serde(flatten)]
    pub progress: Progress,
}

/// A chunk this worker now holds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimedChunk {
    pub lease_token: Uuid,
    pub attempt: u32,
    pub chunk_index: u32,
    pub total_chunks: u32,
    pub start_frame: i64,
    pub end_frame: i64,
    pub source: Option<String>,
    pub fps: String,
    pub duration_frames: i64,
    pub media: Value,
}

/// The answer of `claim_chunk`.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    Claimed(Box<ClaimedChunk>),
    /// Another worker holds a live lease on it.
    Busy,
    /// Completed or failed already (a duplicate delivery): nothing to do.
    /// `progress` is set when this claim itself failed the chunk for having
    /// used up its attempts.
    Terminal {
        status: String,
        progress: Option<Progress>,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaimAnswer {
    claimed: bool,
    status: String,
    #[serde(default)]
    total_chunks: Option<u32>,
}

/// Everything the merge needs, as `chunk_results` returns it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FilmResults {
    pub video_id: Uuid,
    pub source: Option<String>,
    pub fps: Option<String>,
    pub duration_frames: Option<i64>,
    pub total_chunks: u32,
    pub finished: bool,
    pub chunks: Vec<ChunkRow>,
}

/// One chunk in [`FilmResults`].
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkRow {
    pub index: u32,
    pub start_frame: Option<i64>,
    pub end_frame: Option<i64>,
    pub status: String,
    pub error: Option<String>,
    pub shots: Vec<Shot>,
}

/// A film to submit: registered, described and given its owner in one
/// transaction (`submit_video`).
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    pub video_id: Uuid,
    /// Who submitted it; `None` for a film without an owner.
    pub owner_id: Option<Uuid>,
    /// Where the workers read the film. A resubmission must give the same.
    pub source: String,
    pub media: MediaInfo,
    pub plan: PlanParams,
}

/// The answer of `submit_video`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Submitted {
    pub total_chunks: u32,
    /// True only for the call that inserted the film.
    pub created: bool,
    /// Whether every chunk message was sent already (`mark_enqueued`).
    pub enqueued: bool,
    /// Whether this caller is to send the chunk messages now, then
    /// `mark_enqueued` (or `release_enqueue` when sending failed). True for
    /// one caller at a time while the messages are not all sent.
    #[serde(default)]
    pub enqueue: bool,
    pub owner_id: Option<Uuid>,
}

/// The answer of `force_finalize`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Forced {
    /// The chunks this call failed, in order; empty when there was nothing
    /// left open (a second call, or a film that finished normally).
    pub forced_chunks: Vec<u32>,
    /// `finished` is true only when this call finished the film.
    #[serde(flatten)]
    pub progress: Progress,
}

/// The answer of `sweep_chunks`: what one sweep changed and found, each list
/// in (film, chunk) order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Swept {
    /// Chunks to put in front of a worker again.
    pub requeue: Vec<RequeuedChunk>,
    /// Chunks this call failed for good.
    pub failed: Vec<GivenUpChunk>,
    /// Finished films whose sheet is to be made.
    pub finalize: Vec<Uuid>,
}

/// A chunk [`Swept`] lists to be queued again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequeuedChunk {
    pub video_id: Uuid,
    pub chunk_index: u32,
    /// Attempts counted so far (an expired lease's attempt included).
    pub attempts: u32,
    pub reason: RequeueReason,
    /// Whether the film takes chunk messages (it was submitted through the
    /// queue); a film of `shotlist process` is analyzed by its own run.
    #[serde(default)]
    pub queued: bool,
}

/// Why a chunk is queued again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequeueReason {
    /// Its worker's lease ran out; the chunk is pending again.
    LeaseExpired,
    /// It was pending, untouched for the stale period: its message may be lost.
    Stale,
}

/// A chunk [`Swept`] failed for good: its lease ran out on its last attempt.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GivenUpChunk {
    pub video_id: Uuid,
    pub chunk_index: u32,
    pub attempts: u32,
    /// The error recorded on the chunk.
    pub error: String,
    /// True for the one failure that finished its film.
    pub finished: bool,
}

/// A queue message a handler rejected, as `rejected_messages` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectedMessage {
    pub queue: String,
    pub message_id: String,
    /// The first 4096 characters of the first delivery's body.
    pub body: String,
    /// The latest delivery's error.
    pub error: String,
    /// How many deliveries were rejected.
    pub receive_count: u32,
    /// RFC 3339 timestamps, as PostgreSQL writes them in JSON.
    pub first_seen: String,
    pub last_seen: String,
}

/// The plan a film was registered with, to tell a run that resumes it
/// with another film or plan what differs.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredPlan {
    pub duration_seconds: f64,
    pub chunk_seconds: f64,
    pub overlap_seconds: f64,
}

/// A live lease another worker holds on a chunk, by the database's clock.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldLease {
    /// When it runs out, `HH:MM:SS` in UTC.
    pub until_utc: String,
    /// How long until then.
    pub remaining_seconds: f64,
}

/// The registered plan of a film, or NULL. A plain read: no SQL function
/// answers it, and it serves only to word an error.
const REGISTERED_PLAN_SQL: &str = "SELECT (
    SELECT jsonb_build_object(
        'durationSeconds', duration_seconds,
        'chunkSeconds', chunk_seconds,
        'overlapSeconds', overlap_seconds)
    FROM shotlist.videos
    WHERE video_id = $1)";

/// The live lease on a chunk, or NULL when nobody holds it. A plain read
/// for a progress message; claims go through `claim_chunk`.
const HELD_LEASE_SQL: &str = "SELECT (
    SELECT jsonb_build_object(
        'untilUtc', to_char(lease_until AT TIME ZONE 'UTC', 'HH24:MI:SS'),
        'remainingSeconds', extract(epoch FROM lease_until - now()))
    FROM shotlist.chunks
    WHERE video_id = $1
      AND chunk_index = $2
      AND status = 'processing'
      AND lease_until > now())";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OwnerAnswer {
    owner_id: Option<Uuid>,
}

#[derive(Deserialize)]
struct MarkAnswer {
    marked: bool,
}

/// A pool of connections to the shotlist database.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    target: String,
}

impl Db {
    /// Opens a pool of at most `max_connections` to `url` (a `postgresql://`
    /// URL or `key=value` string) and checks that the server answers.
    pub async fn connect(url: &str, max_connections: usize) -> Result<Db, DbError> {
        let config =
            tokio_postgres::Config::from_str(url).map_err(|e| DbError::BadUrl(cause_chain(&e)))?;
        let target = describe_target(&config);
        let mut config = config;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = Manager::from_config(config, tls_connector()?, manager_config);
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            .build()
            .map_err(|e| DbError::BadUrl(e.to_string()))?;
        let db = Db { pool, target };
        drop(db.client().await?);
        Ok(db)
    }

    /// Where this pool connects, without user or password.
    pub fn target(&self) -> &str {
        &self.target
    }

    async fn client(&self) -> Result<Object, DbError> {
        self.pool.get().await.map_err(|e| self.connect_error(e))
    }

    /// A pooled connection for one try of a call; a server that is not
    /// there right now is told apart.
    async fn pooled(&self) -> Result<Object, Failure> {
        self.pool.get().await.map_err(|e| {
            let unavailable = matches!(&e, PoolError::Backend(e) if is_server_unavailable(e));
            let error = self.connect_error(e);
            if unavailable {
                Failure::Unavailable(error)
            } else {
                Failure::Other(error)
            }
        })
    }

    fn connect_error(&self, error: PoolError) -> DbError {
        DbError::Connect {
            target: self.target.clone(),
            detail: match error {
                PoolError::Backend(e) => connect_detail(&e),
                other => other.to_string(),
            },
        }
    }

    /// Drops the pool's idle connections, so that the next call connects
    /// anew.
    fn drop_idle_connections(&self) {
        let dropped = self.pool.retain(|_, _| false).removed.len();
        tracing::debug!(dropped, "idle database connections dropped");
    }

    /// Runs `sql`, which returns one row of one `jsonb` column, and decodes
    /// it. A database that went away is waited for (see [`Reconnect`]).
    pub(crate) async fn call<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<T, DbError> {
        let mut reconnect = Reconnect::new();
        loop {
            match self.query_once(what, sql, params).await {
                Ok(row) => return decode(what, row),
                Err(failure) => reconnect.again(self, what, failure).await?,
            }
        }
    }

    async fn query_once(
        &self,
        what: &str,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<tokio_postgres::Row, Failure> {
        let client = self.pooled().await?;
        client.query_typed_one(sql, params).await.map_err(|e| {
            let failure = Failure::of_query(what, e);
            if matches!(failure, Failure::Lost(_)) {
                // A dead connection must not go back into the pool.
                drop(Object::take(client));
            }
            failure
        })
    }

    /// Applies the migrations this database lacks, in order, each in its own
    /// transaction under an advisory lock; returns the names applied.
    pub async fn migrate(&self) -> Result<Vec<String>, DbError> {
        let mut client = self.client().await?;
        let mut applied = Vec::new();
        for (name, sql) in MIGRATIONS {
            let what = format!("applying migration {name}");
            let tx = client
                .transaction()
                .await
                .map_err(|e| DbError::from_query(&what, e))?;
            tx.execute_typed(
                "SELECT pg_advisory_xact_lock($1)",
                &[(&MIGRATION_LOCK, Type::INT8)],
            )
            .await
            .map_err(|e| DbError::from_query(&what, e))?;
            // Two statements: a statement that names a missing table fails
            // before any of it runs, whatever guards it.
            let has_table: bool = tx
                .query_typed_one(
                    "SELECT to_regclass('shotlist.schema_migrations') IS NOT NULL",
                    &[],
                )
                .await
                .map_err(|e| DbError::from_query(&what, e))?
                .get(0);
            let done = has_table
                && tx
                    .query_typed_one(
                        "SELECT EXISTS (SELECT FROM shotlist.schema_migrations WHERE name = $1)",
                        &[(name, Type::TEXT)],
                    )
                    .await
                    .map_err(|e| DbError::from_query(&what, e))?
                    .get::<_, bool>(0);
            if !done {
                tx.batch_execute(sql)
                    .await
                    .map_err(|e| DbError::from_query(&what, e))?;
                applied.push(name.to_string());
            }
            tx.commit()
                .await
                .map_err(|e| DbError::from_query(&what, e))?;
        }
        Ok(applied)
    }

    /// `register_video`: plans the chunks of a film; returns their number.
    pub async fn register_video(
        &self,
        video_id: Uuid,
        duration_seconds: f64,
        plan: PlanParams,
    ) -> Result<u32, DbError> {
        let count: i32 = self
            .call(
                "register_video",
                "SELECT to_jsonb(public.register_video($1, $2, $3, $4))",
                &[
                    (&video_id, Type::UUID),
                    (&duration_seconds, Type::FLOAT8),
                    (&plan.chunk_seconds, Type::FLOAT8),
                    (&plan.overlap_seconds, Type::FLOAT8),
                ],
            )
            .await?;
        u32::try_from(count).map_err(|_| decode_error("register_video", "negative chunk count"))
    }

    /// `describe_video`: records what probing found and fixes chunk frames.
    pub async fn describe_video(
        &self,
        video_id: Uuid,
        source: &str,
        media: &MediaInfo,
    ) -> Result<(), DbError> {
        let media_json =
            serde_json::to_value(media).map_err(|e| decode_error("describe_video", e))?;
        let (num, den) = (media.fps.num() as i32, media.fps.den() as i32);
        let _: Value = self
            .call(
                "describe_video",
                "SELECT public.describe_video($1, $2, $3, $4, $5, $6)",
                &[
                    (&video_id, Type::UUID),
                    (&source, Type::TEXT),
                    (&num, Type::INT4),
                    (&den, Type::INT4),
                    (&media.duration_frames, Type::INT8),
                    (&media_json, Type::JSONB),
                ],
            )
            .await?;
        Ok(())
    }

    /// Registers and describes a probed film; both calls are idempotent, so
    /// a runner that died between them simply repeats them.
    pub async fn register_film(
        &self,
        video_id: Uuid,
        source: &str,
        media: &MediaInfo,
        plan: PlanParams,
    ) -> Result<u32, DbError> {
        let duration = crate::plan::duration_seconds(media.duration_frames, media.fps);
        let count = self.register_video(video_id, duration, plan).await?;
        self.describe_video(video_id, source, media).await?;
        Ok(count)
    }

    /// `submit_video`: registers and describes the film and records its
    /// owner, in one transaction. Submitting the same film again with the
    /// same facts changes nothing (`created` is false); another owner,
    /// source, plan or frame rate/length is an [`DbError::InvalidArgument`]
    /// naming what differs.
    pub async fn submit_video(&self, submission: &Submission) -> Result<Submitted, DbError> {
        let what = "submit_video";
        let media = &submission.media;
        let media_json = serde_json::to_value(media).map_err(|e| decode_error(what, e))?;
        // The same duration register_film gives, so that both agree.
        let duration = crate::plan::duration_seconds(media.duration_frames, media.fps);
        let (num, den) = (media.fps.num() as i32, media.fps.den() as i32);
        // One id for this request: if its answer is lost and `call` repeats
        // it, the repetition keeps the claim to send the chunk messages.
        let request_id = Uuid::new_v4();
        self.call(
            what,
            "SELECT public.submit_video($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                (&submission.video_id, Type::UUID),
                (&submission.owner_id, Type::UUID),
                (&duration, Type::FLOAT8),
                (&submission.plan.chunk_seconds, Type::FLOAT8),
                (&submission.plan.overlap_seconds, Type::FLOAT8),
                (&submission.source, Type::TEXT),
                (&num, Type::INT4),
                (&den, Type::INT4),
                (&media.duration_frames, Type::INT8),
                (&media_json, Type::JSONB),
                (&request_id, Type::UUID),
            ],
        )
        .await
    }

    /// `mark_enqueued`: records that every chunk message of the film was
    /// sent. Returns whether this call marked it (false: it was already).
    pub async fn mark_enqueued(&self, video_id: Uuid) -> Result<bool, DbError> {
        let answer: MarkAnswer = self
            .call(
                "mark_enqueued",
                "SELECT public.mark_enqueued($1)",
                &[(&video_id, Type::UUID)],
            )
            .await?;
        Ok(answer.marked)
    }

    /// `release_enqueue`: gives back this caller's claim to send the film's
    /// chunk messages after a failed send.
    pub async fn release_enqueue(&self, video_id: Uuid) -> Result<(), DbError> {
        let _: Value = self
            .call(
                "release_enqueue",
                "SELECT public.release_enqueue($1)",
                &[(&video_id, Type::UUID)],
            )
            .await?;
        Ok(())
    }

    /// `video_owner`: the film's owner, `None` for a film without one;
    /// [`DbError::NotFound`] for an unknown film.
    pub async fn video_owner(&self, video_id: Uuid) -> Result<Option<Uuid>, DbError> {
        let answer: OwnerAnswer = self
            .call(
                "video_owner",
                "SELECT public.video_owner($1)",
                &[(&video_id, Type::UUID)],
            )
            .await?;
        Ok(answer.owner_id)
    }

    /// `set_video_details`: replaces the film's details (empty ones clear
    /// them); the last of concurrent calls wins. [`DbError::NotFound`] for
    /// an unknown film, [`DbError::InvalidArgument`] for details the
    /// database refuses (give them through [`FilmDetails::checked`]).
    pub async fn set_video_details(
        &self,
        video_id: Uuid,
        details: &FilmDetails,
    ) -> Result<(), DbError> {
        let details =
            serde_json::to_value(details).map_err(|e| decode_error("set_video_details", e))?;
        // The function returns void: selected FROM it, it still gives the
        // one jsonb row `call` decodes.
        let _: Value = self
            .call(
                "set_video_details",
                "SELECT NULL::jsonb FROM public.set_video_details($1, $2)",
                &[(&video_id, Type::UUID), (&details, Type::JSONB)],
            )
            .await?;
        Ok(())
    }

    /// The film's stored details (empty when none were given);
    /// [`DbError::NotFound`] for an unknown film.
    pub async fn video_details(&self, video_id: Uuid) -> Result<FilmDetails, DbError> {
        self.call(
            "video_details",
            "SELECT (shotlist.video_row($1)).details",
            &[(&video_id, Type::UUID)],
        )
        .await
    }

    /// `force_finalize`: fails every chunk still open with `reason` and
    /// finishes the film; completed chunks keep their shots.
    pub async fn force_finalize(&self, video_id: Uuid, reason: &str) -> Result<Forced, DbError> {
        self.call(
            "force_finalize",
            "SELECT public.force_finalize($1, $2)",
            &[(&video_id, Type::UUID), (&reason, Type::TEXT)],
        )
        .await
    }

    /// `unfinished_chunks`: the chunks still pending or processing, in order.
    pub async fn unfinished_chunks(&self, video_id: Uuid) -> Result<Vec<u32>, DbError> {
        self.call(
            "unfinished_chunks",
            "SELECT public.unfinished_chunks($1)",
            &[(&video_id, Type::UUID)],
        )
        .await
    }

    /// `sweep_chunks`: puts the chunks of lost workers back to pending (or
    /// fails those that used `max_attempts`), and lists them, the pending
    /// chunks untouched for `stale`, and the finished films without a sheet.
    /// At most `limit` chunks and `limit` films per call; rows another
    /// transaction holds are skipped.
    pub async fn sweep_chunks(
        &self,
        max_attempts: u32,
        stale: Duration,
        limit: u32,
    ) -> Result<Swept, DbError> {
        let max_attempts = max_attempts.min(i32::MAX as u32) as i32;
        let stale_seconds = stale.as_secs_f64();
        let limit = limit.min(i32::MAX as u32) as i32;
        self.call(
            "sweep_chunks",
            "SELECT public.sweep_chunks($1, $2, $3)",
            &[
                (&max_attempts, Type::INT4),
                (&stale_seconds, Type::FLOAT8),
                (&limit, Type::INT4),
            ],
        )
        .await
    }

    /// `record_rejected_message`: keeps a message no handler could use. A
    /// redelivery of the same message counts, it adds no row. What the
    /// database cannot store (NUL) is removed from the body and the error,
    /// so that any message can be recorded and acknowledged, never retried
    /// for ever; the queue and message id name the row and are not changed.
    pub async fn record_rejected_message(
        &self,
        queue: &str,
        message_id: &str,
        body: &str,
        error: &str,
    ) -> Result<(), DbError> {
        let body = crate::model::storable_text(body);
        let error = crate::model::storable_text(error);
        let _: Value = self
            .call(
                "record_rejected_message",
                "SELECT public.record_rejected_message($1, $2, $3, $4)",
                &[
                    (&queue, Type::TEXT),
                    (&message_id, Type::TEXT),
                    (&body, Type::TEXT),
                    (&error, Type::TEXT),
                ],
            )
            .await?;
        Ok(())
    }

    /// `rejected_messages`: the messages recorded for `queue`, oldest first.
    pub async fn rejected_messages(&self, queue: &str) -> Result<Vec<RejectedMessage>, DbError> {
        self.call(
            "rejected_messages",
            "SELECT public.rejected_messages($1)",
            &[(&queue, Type::TEXT)],
        )
        .await
    }

    /// `update_chunk_status`, the old system's entry point.
    pub async fn update_chunk_status(
        &self,
        video_id: Uuid,
        chunk_index: i32,
        status: &str,
        error: Option<&str>,
    ) -> Result<Progress, DbError> {
        self.call(
            "update_chunk_status",
            "SELECT public.update_chunk_status($1, $2, $3, $4)",
            &[
                (&video_id, Type::UUID),
                (&chunk_index, Type::INT4),
                (&status, Type::TEXT),
                (&error, Type::TEXT),
            ],
        )
        .await
    }

    /// `claim_chunk`: takes the chunk with a lease of `lease`.
    pub async fn claim_chunk(
        &self,
        video_id: Uuid,
        chunk_index: u32,
        lease: Duration,
        max_attempts: u32,
    ) -> Result<Claim, DbError> {
        let (index, seconds, attempts) = (
            index_param(chunk_index)?,
            lease.as_secs_f64(),
            max_attempts as i32,
        );
        let answer: Value = self
            .call(
                "claim_chunk",
                "SELECT public.claim_chunk($1, $2, $3, $4)",
                &[
                    (&video_id, Type::UUID),
                    (&index, Type::INT4),
                    (&seconds, Type::FLOAT8),
                    (&attempts, Type::INT4),
                ],
            )
            .await?;
        let head: ClaimAnswer = from_value("claim_chunk", answer.clone())?;
        if head.claimed {
            return Ok(Claim::Claimed(Box::new(from_value("claim_chunk", answer)?)));
        }
        if head.status == "processing" {
            return Ok(Claim::Busy);
        }
        let progress = match head.total_chunks {
            Some(_) => Some(from_value("claim_chunk", answer)?),
            None => None,
        };
        Ok(Claim::Terminal {
            status: head.status,
            progress,
        })
    }

    /// `complete_chunk`: saves `shots` (absolute frames) and marks the chunk
    /// completed, if `lease_token` still holds it.
    pub async fn complete_chunk(
        &self,
        video_id: Uuid,
        chunk_index: u32,
        lease_token: Uuid,
        shots: &[Shot],
    ) -> Result<Report, DbError> {
        let shots = serde_json::to_value(shots).map_err(|e| decode_error("complete_chunk", e))?;
        let index = index_param(chunk_index)?;
        self.call(
            "complete_chunk",
            "SELECT public.complete_chunk($1, $2, $3, $4)",
            &[
                (&video_id, Type::UUID),
                (&index, Type::INT4),
                (&lease_token, Type::UUID),
                (&shots, Type::JSONB),
            ],
        )
        .await
    }

    /// `fail_chunk`: records a failed attempt.
    pub async fn fail_chunk(
        &self,
        video_id: Uuid,
        chunk_index: u32,
        lease_token: Uuid,
        error: &str,
        retryable: bool,
        max_attempts: u32,
    ) -> Result<Report, DbError> {
        let (index, attempts) = (index_param(chunk_index)?, max_attempts as i32);
        let error = crate::model::storable_text(error);
        self.call(
            "fail_chunk",
            "SELECT public.fail_chunk($1, $2, $3, $4, $5, $6)",
            &[
                (&video_id, Type::UUID),
                (&index, Type::INT4),
                (&lease_token, Type::UUID),
                (&error, Type::TEXT),
                (&retryable, Type::BOOL),
                (&attempts, Type::INT4),
            ],
        )
        .await
    }

    /// `release_chunk`: gives a held chunk back, pending, without counting
    /// the attempt (the provider's rate limits kept it from being tried);
    /// after `max_releases` of those the chunk fails for good instead.
    pub async fn release_chunk(
        &self,
        video_id: Uuid,
        chunk_index: u32,
        lease_token: Uuid,
        reason: &str,
        max_releases: u32,
    ) -> Result<Report, DbError> {
        let index = index_param(chunk_index)?;
        let reason = crate::model::storable_text(reason);
        let max_releases = max_releases.min(i32::MAX as u32) as i32;
        self.call(
            "release_chunk",
            "SELECT public.release_chunk($1, $2, $3, $4, $5)",
            &[
                (&video_id, Type::UUID),
                (&index, Type::INT4),
                (&lease_token, Type::UUID),
                (&reason, Type::TEXT),
                (&max_releases, Type::INT4),
            ],
        )
        .await
    }

    /// `renew_lease`: extends the lease of a held chunk to `lease` from now.
    /// True when `lease_token` still holds the chunk; false when it was taken
    /// over, force-finalized or completed (then nothing changed, and the
    /// holder must stop: its commit would be refused).
    pub async fn renew_lease(
        &self,
        video_id: Uuid,
        chunk_index: u32,
        lease_token: Uuid,
        lease: Duration,
    ) -> Result<bool, DbError> {
        #[derive(Deserialize)]
        struct Renewal {
            renewed: bool,
        }
        let (index, seconds) = (index_param(chunk_index)?, lease.as_secs_f64());
        let answer: Renewal = self
            .call(
                "renew_lease",
                "SELECT public.renew_lease($1, $2, $3, $4)",
                &[
                    (&video_id, Type::UUID),
                    (&index, Type::INT4),
                    (&lease_token, Type::UUID),
                    (&seconds, Type::FLOAT8),
                ],
            )
            .await?;
        Ok(answer.renewed)
    }

    /// The plan `video_id` was registered with; `None` for an unknown film.
    pub async fn registered_plan(&self, video_id: Uuid) -> Result<Option<RegisteredPlan>, DbError> {
        self.call(
            "reading the registered plan",
            REGISTERED_PLAN_SQL,
            &[(&video_id, Type::UUID)],
        )
        .await
    }

    /// The live lease on chunk `chunk_index` of `video_id`; `None` when no
    /// worker holds it now.
    pub async fn held_lease(
        &self,
        video_id: Uuid,
        chunk_index: u32,
    ) -> Result<Option<HeldLease>, DbError> {
        let index = index_param(chunk_index)?;
        self.call(
            "reading a chunk's lease",
            HELD_LEASE_SQL,
            &[(&video_id, Type::UUID), (&index, Type::INT4)],
        )
        .await
    }

    /// `chunk_progress`: the progress document of a film.
    pub async fn chunk_progress(&self, video_id: Uuid) -> Result<Value, DbError> {
        self.call(
            "chunk_progress",
            "SELECT public.chunk_progress($1)",
            &[(&video_id, Type::UUID)],
        )
        .await
    }

    /// `chunk_results`: everything the merge needs.
    pub async fn chunk_results(&self, video_id: Uuid) -> Result<FilmResults, DbError> {
        self.call(
            "chunk_results",
            "SELECT public.chunk_results($1)",
            &[(&video_id, Type::UUID)],
        )
        .await
    }

    /// `get_sheet`: the stored sheet, if the film has one.
    pub async fn get_sheet(&self, video_id: Uuid) -> Result<Option<Sheet>, DbError> {
        let sheet: Option<Value> = self
            .call(
                "get_sheet",
                "SELECT public.get_sheet($1)",
                &[(&video_id, Type::UUID)],
            )
            .await?;
        sheet.map(|s| from_value("get_sheet", s)).transpose()
    }

    /// Builds a finished film's sheet and stores it, or returns the sheet
    /// stored before: running it again changes nothing. Reading the results
    /// and storing the sheet happen in one transaction.
    pub async fn finalize(&self, video_id: Uuid) -> Result<Sheet, DbError> {
        let mut reconnect = Reconnect::new();
        loop {
            match self.finalize_once(video_id).await {
                Ok(sheet) => return Ok(sheet),
                Err(failure) => reconnect.again(self, "finalizing", failure).await?,
            }
        }
    }

    async fn finalize_once(&self, video_id: Uuid) -> Result<Sheet, Failure> {
        let what = "finalizing";
        let failed = |e| Failure::of_query(what, e);
        let mut client = self.pooled().await?;
        let tx = client.transaction().await.map_err(failed)?;
        let row = tx
            .query_typed_one(
                "SELECT public.chunk_results($1)",
                &[(&video_id, Type::UUID)],
            )
            .await
            .map_err(failed)?;
        let results: FilmResults = decode("chunk_results", row)?;
        if !results.finished {
            let open = results
                .chunks
                .iter()
                .filter(|c| !matches!(c.status.as_str(), "completed" | "failed"))
                .count();
            return Err(Failure::Other(DbError::NotReady(format!(
                "video {video_id} is not finished: {open} of {} chunks are still open",
                results.total_chunks
            ))));
        }
        let sheet = build_sheet(&results)?;
        let sheet_json = serde_json::to_value(&sheet).map_err(|e| decode_error(what, e))?;
        let row = tx
            .query_typed_one(
                "SELECT public.store_sheet($1, $2)",
                &[(&video_id, Type::UUID), (&sheet_json, Type::JSONB)],
            )
            .await
            .map_err(failed)?;
        let stored: Sheet = decode("store_sheet", row)?;
        tx.commit().await.map_err(failed)?;
        Ok(stored)
    }
}

/// Merges a finished film's chunk results into its sheet.
pub fn build_sheet(results: &FilmResults) -> Result<Sheet, DbError> {
    let what = "chunk_results";
    let fps: Fps = results
        .fps
        .as_deref()
        .ok_or_else(|| decode_error(what, "the film has no frame rate (never described)"))?
        .parse()
        .map_err(|e| decode_error(what, e))?;
    let duration_frames = results
        .duration_frames
        .ok_or_else(|| decode_error(what, "no duration in frames"))?;
    let mut outcomes = Vec::with_capacity(results.chunks.len());
    for chunk in &results.chunks {
        let (Some(start_frame), Some(end_frame)) = (chunk.start_frame, chunk.end_frame) else {
            return Err(decode_error(
                what,
                format!("chunk {} has no frames", chunk.index),
            ));
        };
        let result = match chunk.status.as_str() {
            "completed" => ChunkResult::Completed(chunk.shots.clone()),
            _ => ChunkResult::Failed(
                chunk
                    .error
                    .clone()
                    .unwrap_or_else(|| format!("chunk ended {}", chunk.status)),
            ),
        };
        outcomes.push(ChunkOutcome {
            span: FrameSpan {
                index: chunk.index,
                start_frame,
                end_frame,
            },
            result,
        });
    }
    let merged = merge::merge(&outcomes, duration_frames, fps);
    let completed = results
        .chunks
        .iter()
        .filter(|c| c.status == "completed")
        .count() as u32;
    let failed = results.chunks.len() as u32 - completed;
    Ok(Sheet {
        video_id: results.video_id,
        source: results.source.clone(),
        fps: fps.to_string(),
        duration_frames,
        total_chunks: results.total_chunks,
        completed_chunks: completed,
        failed_chunks: failed,
        status: if failed == 0 {
            SheetStatus::Complete
        } else {
            SheetStatus::Partial
        },
        shots: merged.shots,
        gaps: merged.gaps,
    })
}

fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    row: tokio_postgres::Row,
) -> Result<T, DbError> {
    let value: Option<Value> = row.try_get(0).map_err(|e| decode_error(what, e))?;
    from_value(what, value.unwrap_or(Value::Null))
}

fn from_value<T: serde::de::DeserializeOwned>(what: &str, value: Value) -> Result<T, DbError> {
    serde_json::from_value(value).map_err(|e| decode_error(what, e))
}

/// A chunk index as the SQL functions take it (`integer`). Past `i32::MAX`
/// a cast would wrap to a negative index, and the error would name a chunk
/// nobody asked for.
fn index_param(chunk_index: u32) -> Result<i32, DbError> {
    i32::try_from(chunk_index).map_err(|_| {
        DbError::InvalidArgument(format!(
            "chunk index {chunk_index} is out of range: chunks are numbered from 0 to at most {}",
            i32::MAX
        ))
    })
}

fn decode_error(what: &str, detail: impl std::fmt::Display) -> DbError {
    DbError::Decode {
        what: what.to_string(),
        detail: detail.to_string(),
    }
}

/// `host:port/dbname`, for messages: never the user or the password.
fn describe_target(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{host}:{port}/{}",
        config.get_dbname().unwrap_or("(default)")
    )
}

/// A connection error's cause, which names the failure (refused, timed out,
/// authentication failed) but not the credentials.
fn connect_detail(error: &tokio_postgres::Error) -> String {
    cause_chain(error)
}

/// An error and its causes on one line. tokio-postgres says only "db error"
/// for an error the server sent; the server's message is what tells.
fn cause_chain(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut detail = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(e) = cause {
        detail = format!("{detail}: {e}");
        cause = e.source();
    }
    detail
}

/// The TLS side of the pool's connections. `DATABASE_CA_CERT` is read here,
/// so that a bad file fails [`Db::connect`] naming it; the connector itself
/// is built by the first connection that negotiates TLS ([`LazyTls`]).
fn tls_connector() -> Result<LazyTls, DbError> {
    let extra_root = match std::env::var_os("DATABASE_CA_CERT") {
        None => None,
        Some(path) => {
            let pem = std::fs::read(&path).map_err(|e| {
                DbError::Tls(format!(
                    "cannot read DATABASE_CA_CERT {}: {e}",
                    path.to_string_lossy()
                ))
            })?;
            let cert = native_tls::Certificate::from_pem(&pem).map_err(|e| {
                DbError::Tls(format!(
                    "DATABASE_CA_CERT {} is not a PEM certificate: {e}",
                    path.to_string_lossy()
                ))
            })?;
            Some(cert)
        }
    };
    Ok(LazyTls {
        extra_root,
        connector: Arc::new(OnceLock::new()),
    })
}

/// A native-tls connector built when the first connection asks for TLS,
/// then shared by all of them.
///
/// Building one loads the system's trust store: OpenSSL parses the whole CA
/// bundle twice (its default paths, then the ones openssl-probe finds),
/// about 30 ms of CPU, which was most of a Lambda function's start. A
/// connection over a unix socket, to a server without TLS or with
/// `sslmode=disable` never needs it; one with `sslmode=require` pays it
/// once, in its handshake.
#[derive(Clone)]
struct LazyTls {
    extra_root: Option<native_tls::Certificate>,
    connector: Arc<OnceLock<Result<postgres_native_tls::MakeTlsConnector, String>>>,
}

impl LazyTls {
    fn connector(&self) -> Result<postgres_native_tls::MakeTlsConnector, String> {
        self.connector
            .get_or_init(|| {
                let mut builder = native_tls::TlsConnector::builder();
                if let Some(cert) = &self.extra_root {
                    builder.add_root_certificate(cert.clone());
                }
                builder
                    .build()
                    .map(postgres_native_tls::MakeTlsConnector::new)
                    .map_err(|e| format!("cannot set up TLS: {e}"))
            })
            .clone()
    }
}

impl MakeTlsConnect<Socket> for LazyTls {
    type Stream = postgres_native_tls::TlsStream<Socket>;
    type TlsConnect = LazyTlsConnect;
    type Error = std::convert::Infallible;

    fn make_tls_connect(&mut self, domain: &str) -> Result<LazyTlsConnect, Self::Error> {
        Ok(LazyTlsConnect {
            tls: self.clone(),
            domain: domain.to_string(),
        })
    }
}

/// One connection's TLS handshake with `domain`, for [`LazyTls`].
struct LazyTlsConnect {
    tls: LazyTls,
    domain: String,
}

impl TlsConnect<Socket> for LazyTlsConnect {
    type Stream = postgres_native_tls::TlsStream<Socket>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = BoxFuture<'static, Result<Self::Stream, Self::Error>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let mut make = self.tls.connector()?;
            let handshake = MakeTlsConnect::<Socket>::make_tls_connect(&mut make, &self.domain)?;
            Ok(handshake.connect(stream).await?)
        })
    }
}
