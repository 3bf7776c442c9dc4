//! The embedded default database: a private, throwaway PostgreSQL cluster.
//!
//! [`TempCluster::start`] runs `initdb` and `postgres` from the machine's
//! PostgreSQL installation in a fresh temporary folder. The server listens
//! only on a unix socket inside that folder (no TCP port, so nothing clashes
//! with another server or another test), trusts local connections as
//! `postgres`, and trades durability for speed (`fsync=off` and friends): the
//! data is thrown away anyway. [`TempCluster::start_durable`] keeps
//! PostgreSQL's durable defaults instead, for benchmarks that must pay for
//! each commit's flush as a production server does. Dropping the
//! [`TempCluster`] stops the server and removes the folder.
//!
//! `initdb` and `postgres` refuse to run as root. When the current process is
//! root, both run as the `postgres` system user (which Debian's `postgresql`
//! package creates), and the folder is handed to that user.
//!
//! Starting takes about a second and blocks the calling thread; from async
//! code, call it through `tokio::task::spawn_blocking`.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::{self, Gid, Pid, Uid, User};
use tempfile::TempDir;

/// Where Debian and Ubuntu install the server binaries, one folder per major
/// version.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// The port only names the socket file (`.s.PGSQL.5432`); no TCP port is
/// opened. It is passed explicitly so a `PGPORT` in the environment cannot
/// make the server and [`TempCluster::url`] disagree.
const PORT: u16 = 5432;

/// How long the server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a fast shutdown may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the start and stop waits look again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The longest unix socket path Linux accepts is 107 bytes.
const MAX_SOCKET_PATH: usize = 107;

/// How many lines of a log an error quotes.
const LOG_TAIL_LINES: usize = 5;

/// The message for a machine without PostgreSQL's server binaries.
const NOT_INSTALLED: &str =
    "PostgreSQL server binaries not found: install postgresql (Debian: apt-get install postgresql)";

/// What went wrong starting or using the private cluster.
#[derive(Debug, thiserror::Error)]
pub enum LocalDbError {
    /// Neither `/usr/lib/postgresql/*/bin`, `pg_config --bindir` nor `PATH`
    /// has `initdb` and `postgres`.
    #[error("{NOT_INSTALLED}")]
    NotInstalled,
    /// Running as root, but there is no unprivileged user to run the server as.
    #[error(
        "running as root, but there is no `postgres` system user to run the private \
         PostgreSQL as: install postgresql (Debian: apt-get install postgresql)"
    )]
    NoPostgresUser,
    /// The temporary folder's socket path would be too long for a unix socket.
    #[error(
        "the temporary folder {0} is too deep for a unix socket path: set TMPDIR to a shorter path"
    )]
    SocketPathTooLong(PathBuf),
    /// A file-system or process operation failed.
    #[error("could not {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// `initdb` ran but failed.
    #[error("initdb failed ({status}): {output}")]
    Initdb { status: ExitStatus, output: String },
    /// `postgres` stopped before it accepted connections.
    #[error("postgres exited while starting ({status}): {log}")]
    ServerExited { status: ExitStatus, log: String },
    /// `postgres` did not accept connections in time.
    #[error("postgres did not accept connections within {}s: {log}", .timeout.as_secs())]
    StartTimeout { timeout: Duration, log: String },
    /// A database name that is not a plain identifier.
    #[error("invalid database name {0:?}: use letters, digits and underscores")]
    BadDatabaseName(String),
    /// Talking to the private server failed.
    #[error("could not {what} on the private PostgreSQL: {source}")]
    Sql {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl LocalDbError {
    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> LocalDbError {
        let what = what.into();
        move |source| LocalDbError::Io { what, source }
    }
}

/// A running private PostgreSQL cluster in a temporary folder, stopped and
/// deleted on drop.
#[derive(Debug)]
pub struct TempCluster {
    server: Child,
    /// Whether the server keeps PostgreSQL's durable defaults, also after a
    /// restart.
    durable: bool,
    /// Removed when dropped, which is after `Drop::drop` stopped the server.
    dir: TempDir,
}

/// The user `initdb` and `postgres` run as when this process is root.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: Uid,
    gid: Gid,
}

impl TempCluster {
    /// Creates a cluster in a new temporary folder, starts its server and
    /// waits (at most 30 s) until it accepts connections.
    ///
    /// Blocks for about a second. Errors say what is missing (PostgreSQL not
    /// installed, no `postgres` user when root) or quote the tail of
    /// `initdb`'s output or of the server log.
    pub fn start() -> Result<TempCluster, LocalDbError> {
        TempCluster::start_with(false)
    }

    /// Starts a cluster as [`TempCluster::start`] does, but with PostgreSQL's
    /// durable defaults (`fsync`, `synchronous_commit` and
    /// `full_page_writes` on): every commit waits until its WAL is on disk,
    /// as on a production server. Command-line settings outrank `ALTER
    /// SYSTEM`, so this cannot be switched on later.
    pub fn start_durable() -> Result<TempCluster, LocalDbError> {
        TempCluster::start_with(true)
    }

    fn start_with(durable: bool) -> Result<TempCluster, LocalDbError> {
        let bin = find_bindir().ok_or(LocalDbError::NotInstalled)?;
        let run_as = run_as()?;
        let dir = make_dir(run_as)?;
        let socket = dir.path().join(format!(".s.PGSQL.{PORT}"));
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(LocalDbError::SocketPathTooLong(dir.path().to_path_buf()));
        }
        initdb(&bin, dir.path(), run_as)?;
        let server = spawn_server(&bin, dir.path(), run_as, durable)?;
        let mut cluster = TempCluster {
            server,
            durable,
            dir,
        };
        cluster.wait_ready()?;
        tracing::debug!(dir = %cluster.dir.path().display(), "private postgres started");
        Ok(cluster)
    }

    /// The folder holding the data directory, the log and the socket.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A connection string for the `postgres` database, in the key=value form
    /// `tokio_postgres::Config::from_str` (and libpq) accept.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// A connection string for database `name` of this cluster.
    pub fn database_url(&self, name: &str) -> String {
        format!(
            "host={} port={PORT} user=postgres dbname={}",
            quote_value(&self.dir.path().to_string_lossy()),
            quote_value(name)
        )
    }

    /// Creates database `name` (letters, digits and underscores) and returns
    /// its connection string.
    pub async fn create_database(&self, name: &str) -> Result<String, LocalDbError> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(LocalDbError::BadDatabaseName(name.to_string()));
        }
        let config =
            tokio_postgres::Config::from_str(&self.url()).map_err(|source| LocalDbError::Sql {
                what: "parse the connection string",
                source,
            })?;
        let (client, connection) =
            config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|source| LocalDbError::Sql {
                    what: "connect",
                    source,
                })?;
        let task = tokio::spawn(connection);
        let created = client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .map_err(|source| LocalDbError::Sql {
                what: "create a database",
                source,
            });
        drop(client);
        // The connection ends once the client is gone; its result adds nothing.
        let _ = task.await;
        created?;
        Ok(self.database_url(name))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Stops the server with a fast shutdown, keeping its data: open
    /// connections are cut as in a restart of a real database, and new ones
    /// are refused until [`TempCluster::start_server`]. For tests of what
    /// survives a database restart.
    pub fn stop_server(&mut self) {
        self.stop();
    }

    /// Starts the server again on the same data and socket after
    /// [`TempCluster::stop_server`], and waits (at most 30 s) until it
    /// accepts connections. Does nothing while the server runs.
    pub fn start_server(&mut self) -> Result<(), LocalDbError> {
        if matches!(self.server.try_wait(), Ok(None)) {
            return Ok(());
        }
        let bin = find_bindir().ok_or(LocalDbError::NotInstalled)?;
        self.server = spawn_server(&bin, self.dir.path(), run_as()?, self.durable)?;
        self.wait_ready()
    }

    /// Waits until `postmaster.pid` says "ready", as `pg_ctl -w` does.
    fn wait_ready(&mut self) -> Result<(), LocalDbError> {
        let pid_file = self.dir.path().join("data").join("postmaster.pid");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .server
                .try_wait()
                .map_err(LocalDbError::io("wait for postgres"))?
            {
                return Err(LocalDbError::ServerExited {
                    status,
                    log: log_tail(&self.log_path()),
                });
            }
            if is_ready(&pid_file) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LocalDbError::StartTimeout {
                    timeout: START_TIMEOUT,
                    log: log_tail(&self.log_path()),
                });
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Fast shutdown (SIGINT), then SIGKILL if the server is still there
    /// after [`STOP_TIMEOUT`].
    fn stop(&mut self) {
        if matches!(self.server.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = Pid::from_raw(self.server.id() as i32);
        if let Err(error) = signal::kill(pid, Signal::SIGINT) {
            tracing::warn!(%error, "could not ask the private postgres to stop");
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            match self.server.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => thread::sleep(POLL_INTERVAL),
            }
        }
        tracing::warn!("the private postgres did not stop in time; killing it");
        // Killing an already-gone process fails harmlessly.
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        self.stop();
        // `self.dir` is removed when its own drop runs, right after this.
    }
}

/// Quotes a key=value connection parameter value.
fn quote_value(value: &str) -> String {
    let escaped = value.replace('\\', "\\\\").replace('\'', "\\'");
    format!("'{escaped}'")
}

/// The folder with `initdb` and `postgres`: the highest major version under
/// `/usr/lib/postgresql`, else `pg_config --bindir`, else `PATH`.
fn find_bindir() -> Option<PathBuf> {
    debian_bindir()
        .or_else(pg_config_bindir)
        .or_else(path_bindir)
}

fn has_server(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("postgres").is_file()
}

fn debian_bindir() -> Option<PathBuf> {
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir(DEBIAN_ROOT)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.to_string();
            let key = version
                .split('.')
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()
                .ok()?;
            Some((key, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_server(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn pg_config_bindir() -> Option<PathBuf> {
    let output = Command::new("pg_config").arg("--bindir").output().ok()?;
    if !output.status.success() {
        return None;
    }
    let dir = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
    has_server(&dir).then_some(dir)
}

fn path_bindir() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|dir| has_server(dir))
}

/// `None` when the server may run as the current user; the `postgres` user
/// when this process is root.
fn run_as() -> Result<Option<RunAs>, LocalDbError> {
    if !unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = User::from_name("postgres")
        .map_err(|errno| LocalDbError::Io {
            what: "look up the postgres user".to_string(),
            source: io::Error::from(errno),
        })?
        .ok_or(LocalDbError::NoPostgresUser)?;
    Ok(Some(RunAs {
        uid: user.uid,
        gid: user.gid,
    }))
}

/// A new private folder, owned by the user the server runs as.
///
/// As root it goes under `/tmp`: a `TMPDIR` inside root's home would not be
/// reachable by the `postgres` user.
fn make_dir(run_as: Option<RunAs>) -> Result<TempDir, LocalDbError> {
    let base = match run_as {
        Some(_) => PathBuf::from("/tmp"),
        None => std::env::temp_dir(),
    };
    let dir = tempfile::Builder::new()
        .prefix("shotlist-pg-")
        .tempdir_in(&base)
        .map_err(LocalDbError::io(format!(
            "create a temporary folder in {}",
            base.display()
        )))?;
    if let Some(user) = run_as {
        unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).map_err(|errno| {
            LocalDbError::Io {
                what: format!("hand {} to the postgres user", dir.path().display()),
                source: io::Error::from(errno),
            }
        })?;
    }
    Ok(dir)
}

/// A command for one of the server binaries, run as `run_as` when set, in
/// `dir` (the caller's working folder may be closed to that user), with a
/// fixed locale so the host's locale settings cannot break it.
fn server_command(bin: &Path, program: &str, dir: &Path, run_as: Option<RunAs>) -> Command {
    let mut command = Command::new(bin.join(program));
    command
        .current_dir(dir)
        .env("LC_ALL", "C")
        .env_remove("PGDATA")
        .stdin(Stdio::null());
    if let Some(user) = run_as {
        command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    command
}

fn initdb(bin: &Path, dir: &Path, run_as: Option<RunAs>) -> Result<(), LocalDbError> {
    let output = server_command(bin, "initdb", dir, run_as)
        .arg("-D")
        .arg(dir.join("data"))
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ])
        .output()
        .map_err(LocalDbError::io("run initdb"))?;
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Err(LocalDbError::Initdb {
        status: output.status,
        output: tail(&text),
    })
}

fn spawn_server(
    bin: &Path,
    dir: &Path,
    run_as: Option<RunAs>,
    durable: bool,
) -> Result<Child, LocalDbError> {
    let log_path = dir.join("postgres.log");
    // Appended to, so that a restarted server's log follows the first one's.
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(LocalDbError::io("open the server log"))?;
    let log_err = log
        .try_clone()
        .map_err(LocalDbError::io("open the server log"))?;
    let mut command = server_command(bin, "postgres", dir, run_as);
    command
        .arg("-D")
        .arg(dir.join("data"))
        .arg("-k")
        .arg(dir)
        .args(["-p", &PORT.to_string()])
        .args(["-c", "listen_addresses="]);
    if !durable {
        command
            .args(["-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"]);
    }
    command
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(LocalDbError::io("start postgres"))
}

/// Whether the server wrote "ready" as its status (line 8 of
/// `postmaster.pid`, PostgreSQL 10 and later).
fn is_ready(pid_file: &Path) -> bool {
    fs::read_to_string(pid_file)
        .map(|text| text.lines().nth(7).is_some_and(|s| s.trim() == "ready"))
        .unwrap_or(false)
}

/// The last lines of a log file, on one line.
fn log_tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        // Only the end matters; a huge log is not read whole.
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(8192)));
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    tail(&text)
}

/// The last few non-empty lines of `text`, joined with " | ".
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    if lines.is_empty() {
        return "(no output)".to_string();
    }
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_values_parse_back() {
        let url = format!("host={} user=postgres", quote_value("/tmp/it's a \\ dir"));
        let config = tokio_postgres::Config::from_str(&url).expect("parses");
        assert_eq!(
            config.get_hosts(),
            &[tokio_postgres::config::Host::Unix(PathBuf::from(
                "/tmp/it's a \\ dir"
            ))]
        );
    }

    #[test]
    fn tail_keeps_last_lines_on_one_line() {
        let text = "a\n\nb\nc\nd\ne\nf\n";
        assert_eq!(tail(text), "b | c | d | e | f");
        assert_eq!(tail(""), "(no output)");
    }

    #[test]
    fn ready_status_is_read_from_line_eight() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("postmaster.pid");
        fs::write(&file, "1\n/d\n0\n5432\n/s\n\n 1 2\nstarting\n").expect("write");
        assert!(!is_ready(&file));
        fs::write(&file, "1\n/d\n0\n5432\n/s\n\n 1 2\nready   \n").expect("write");
        assert!(is_ready(&file));
    }

    #[test]
    fn cluster_starts_accepts_connections_and_cleans_up() {
        let cluster = TempCluster::start().expect("private postgres starts");
        let dir = cluster.dir().to_path_buf();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let url = runtime
            .block_on(cluster.create_database("shotlist_check"))
            .expect("database created");
        let answer: i32 = runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connects");
            tokio::spawn(connection);
            client
                .query_one("SELECT 41 + 1", &[])
                .await
                .expect("query")
                .get(0)
        });
        assert_eq!(answer, 42);
        assert!(
            runtime
                .block_on(cluster.create_database("bad name;"))
                .is_err(),
            "a name that is not an identifier is refused"
        );
        drop(cluster);
        assert!(!dir.exists(), "the folder is removed on drop");
    }

    #[test]
    fn a_stopped_server_refuses_connections_and_starts_again_with_its_data() {
        let mut cluster = TempCluster::start().expect("private postgres starts");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let url = runtime
            .block_on(cluster.create_database("shotlist_restart"))
            .expect("database created");
        let connect = || {
            runtime.block_on(async {
                let (client, connection) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                Ok::<_, tokio_postgres::Error>(client)
            })
        };
        cluster.stop_server();
        assert!(connect().is_err(), "a stopped server refuses connections");
        cluster.start_server().expect("the server starts again");
        let client = connect().expect("connects after the restart");
        let found = runtime
            .block_on(client.query_one(
                "SELECT count(*) FROM pg_database WHERE datname = 'shotlist_restart'",
                &[],
            ))
            .expect("query");
        assert_eq!(found.get::<_, i64>(0), 1, "the data survived the restart");
    }

    #[test]
    fn a_durable_cluster_flushes_every_commit_and_the_default_one_does_not() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let settings = |cluster: &TempCluster| {
            runtime.block_on(async {
                let (client, connection) =
                    tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls)
                        .await
                        .expect("connects");
                tokio::spawn(connection);
                let row = client
                    .query_one(
                        "SELECT current_setting('fsync'), current_setting('synchronous_commit')",
                        &[],
                    )
                    .await
                    .expect("query");
                (row.get::<_, String>(0), row.get::<_, String>(1))
            })
        };
        let durable = TempCluster::start_durable().expect("durable postgres starts");
        assert_eq!(settings(&durable), ("on".into(), "on".into()));
        let fast = TempCluster::start().expect("private postgres starts");
        assert_eq!(settings(&fast), ("off".into(), "off".into()));
    }
}
