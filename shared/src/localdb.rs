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
//! `initdb` is most of a start's cost, and its output depends only on the
//! PostgreSQL installation and its arguments. So the first start keeps a
//! never-started copy of the fresh data directory, a *template*, in
//! `$XDG_CACHE_HOME/shotlist/pg-template` (else `~/.cache/shotlist/...`),
//! and later starts copy it (`cp -a`, keeping owners and modes) instead of
//! running `initdb`. A template appears only whole (made beside its place,
//! then renamed into it); a cluster always runs on its own copy; and any
//! trouble with the cache costs only speed: an unusable cache means a plain
//! `initdb`, and a template whose server exits while starting is thrown away
//! and made again (a server that is merely slow to start keeps it: the
//! machine is busy, not the template broken). Storing a template also removes
//! staging and discarded copies that a killed process left behind, once they
//! are an hour old.
//!
//! A template's `postgresql.conf` decides what the server runs (an
//! `archive_command`, a preloaded library), so whoever can write to the cache
//! could run code as the server's user. The cache is therefore used only when
//! nobody else can change it: its folder must be owned by the current user
//! (root when root) and not group- or world-writable, every folder above it
//! owned by that user or root and not writable by others (unless sticky, as
//! `/tmp` is), and the template itself owned by the user the server runs as.
//! This matters most as root: `sudo -E` keeps `$HOME` and `$XDG_CACHE_HOME`
//! pointing at the invoking user's folders, which that user controls, and
//! there the cache is simply not used.
//!
//! Starting takes a few tenths of a second with a template (about a second
//! without) and blocks the calling thread; from async code, call it through
//! `tokio::task::spawn_blocking`.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

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

/// `initdb`'s settings. They are part of a template's key, so changing them
/// never reuses a template made with the old ones.
const INITDB_ARGS: [&str; 7] = [
    "-U",
    "postgres",
    "--auth=trust",
    "-E",
    "UTF8",
    "--no-locale",
    "--no-sync",
];

/// Bump when templates must be made again for a reason their key does not
/// see (the server's folder, [`INITDB_ARGS`] and the owner are in it).
const TEMPLATE_GENERATION: u32 = 1;

/// How a template being stored, and one being thrown away, are named while
/// they sit beside the templates.
const STAGING_PREFIX: &str = ".staging-";
const DISCARD_PREFIX: &str = ".discard-";

/// How old a staging or discarded copy must be before a store removes it as
/// left behind by a killed process; copying one takes about a second.
const LEFTOVER_AGE: Duration = Duration::from_secs(60 * 60);

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
    /// Blocks for a few tenths of a second when a cached `initdb` template
    /// exists, about a second when it must be made (see the module docs).
    /// Errors say what is missing (PostgreSQL not installed, no `postgres`
    /// user when root) or quote the tail of `initdb`'s output or of the
    /// server log; a problem with the template cache alone is never one.
    pub fn start() -> Result<TempCluster, LocalDbError> {
        TempCluster::start_in(default_template_root().as_deref(), false)
    }

    /// Starts a cluster as [`TempCluster::start`] does, but with PostgreSQL's
    /// durable defaults (`fsync`, `synchronous_commit` and
    /// `full_page_writes` on): every commit waits until its WAL is on disk,
    /// as on a production server. Command-line settings outrank `ALTER
    /// SYSTEM`, so this cannot be switched on later.
    pub fn start_durable() -> Result<TempCluster, LocalDbError> {
        TempCluster::start_in(default_template_root().as_deref(), true)
    }

    /// Starts a cluster, keeping `initdb` templates under `templates` (no
    /// cache when `None`). Tests pass their own folder so they never touch
    /// the real cache.
    fn start_in(templates: Option<&Path>, durable: bool) -> Result<TempCluster, LocalDbError> {
        let started = Instant::now();
        let bin = find_bindir().ok_or(LocalDbError::NotInstalled)?;
        let run_as = run_as()?;
        let template = templates
            .and_then(trusted_template_root)
            .map(|root| Template::new(&root, &bin, run_as));
        if let Some(template) = &template {
            let dir = make_dir(run_as)?;
            if template.copy_to(&dir.path().join("data")) {
                match TempCluster::launch(&bin, dir, run_as, durable) {
                    Ok(cluster) => {
                        cluster.log_started(true, started);
                        return Ok(cluster);
                    }
                    // Only a server that died says the template may be bad;
                    // a timeout means a busy machine, where a plain initdb
                    // would only wait out a second timeout.
                    Err(error @ LocalDbError::ServerExited { .. }) => {
                        tracing::debug!(
                            %error,
                            template = %template.path.display(),
                            "a cluster copied from the initdb template did not start; making it again"
                        );
                        template.discard();
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        let dir = make_dir(run_as)?;
        initdb(&bin, dir.path(), run_as)?;
        if let Some(template) = &template {
            // Before the server first touches the data, so the template is
            // exactly what initdb made.
            template.store(&dir.path().join("data"));
        }
        let cluster = TempCluster::launch(&bin, dir, run_as, durable)?;
        cluster.log_started(false, started);
        Ok(cluster)
    }

    /// Starts the server on the data directory in `dir` and waits until it
    /// accepts connections; on an error, the cluster is stopped and `dir`
    /// removed.
    fn launch(
        bin: &Path,
        dir: TempDir,
        run_as: Option<RunAs>,
        durable: bool,
    ) -> Result<TempCluster, LocalDbError> {
        let server = spawn_server(bin, dir.path(), run_as, durable)?;
        let mut cluster = TempCluster {
            server,
            durable,
            dir,
        };
        cluster.wait_ready()?;
        Ok(cluster)
    }

    fn log_started(&self, from_template: bool, started: Instant) {
        // `dir` goes last: tests read the folder from the end of this line.
        tracing::debug!(
            from_template,
            elapsed_ms = started.elapsed().as_millis() as u64,
            dir = %self.dir.path().display(),
            "private postgres started"
        );
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

/// A new private folder, owned by the user the server runs as, whose socket
/// path fits a unix socket.
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
    let socket = dir.path().join(format!(".s.PGSQL.{PORT}"));
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(LocalDbError::SocketPathTooLong(dir.path().to_path_buf()));
    }
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
        .args(INITDB_ARGS)
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

/// Where templates are kept: `$XDG_CACHE_HOME/shotlist/pg-template`, else
/// `$HOME/.cache/shotlist/pg-template`; `None` (no cache) when neither
/// variable holds an absolute path.
fn default_template_root() -> Option<PathBuf> {
    let absolute = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|path| path.is_absolute())
    };
    let cache =
        absolute("XDG_CACHE_HOME").or_else(|| absolute("HOME").map(|home| home.join(".cache")))?;
    Some(cache.join("shotlist").join("pg-template"))
}

/// The template folder `root`, created (mode 0700) if missing, as a canonical
/// path; `None`, with a debug line saying why, when it cannot be made or
/// someone other than this user or root could change it (see the module docs).
///
/// The canonical path is what is used from then on, so a symbolic link on the
/// way, which its owner could repoint, is followed once, when checked.
fn trusted_template_root(root: &Path) -> Option<PathBuf> {
    match open_template_root(root) {
        Ok(root) => Some(root),
        Err(error) => {
            tracing::debug!(
                %error,
                cache = %root.display(),
                "not using the initdb template cache; running initdb"
            );
            None
        }
    }
}

fn open_template_root(root: &Path) -> io::Result<PathBuf> {
    if !root.is_absolute() {
        return Err(io::Error::other("the cache folder is not an absolute path"));
    }
    let me = unistd::geteuid();
    // Checked before creating anything, so nothing is made inside a folder
    // someone else controls.
    let existing = root
        .ancestors()
        .find(|folder| folder.exists())
        .unwrap_or(Path::new("/"));
    let existing = fs::canonicalize(existing)?;
    check_folders_above(&existing, me, existing != root)?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)?;
    let root = fs::canonicalize(root)?;
    check_folders_above(&root, me, false)?;
    Ok(root)
}

/// Checks that only the current user (and root) can change `folder`: the
/// folder itself owned by this user and not group- or world-writable, every
/// folder above it owned by this user or root and not writable by others
/// unless sticky. The same rule the template cache follows, for other
/// private files (`shotlist serve`'s announcement). The error names the
/// first folder that breaks it.
pub fn check_private_folder(folder: &Path) -> io::Result<()> {
    let folder = fs::canonicalize(folder)?;
    check_folders_above(&folder, unistd::geteuid(), false)
}

/// Checks that only `me` and root can change `folder` and the folders above
/// it: each is a folder, owned by `me` or root, and not writable by group or
/// others unless sticky (where others cannot rename or remove what is not
/// theirs). `folder` itself, unless `lenient`, must be owned by `me` and not
/// writable by others even when sticky.
fn check_folders_above(folder: &Path, me: Uid, lenient: bool) -> io::Result<()> {
    for (depth, path) in folder.ancestors().enumerate() {
        let meta = fs::symlink_metadata(path)?;
        let strict = depth == 0 && !lenient;
        let owner = Uid::from_raw(meta.uid());
        let others_write = meta.mode() & 0o022 != 0;
        let sticky = meta.mode() & 0o1000 != 0;
        let problem = if !meta.is_dir() {
            "not a folder"
        } else if owner != me && (strict || !owner.is_root()) {
            "owned by another user"
        } else if others_write && (strict || !sticky) {
            "writable by other users"
        } else {
            continue;
        };
        return Err(io::Error::other(format!(
            "{} is {problem} (uid {owner}, mode {:o})",
            path.display(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// A cached data directory as `initdb` left it, never started, which new
/// clusters copy instead of running `initdb`.
///
/// Its key hashes the server's folder, [`INITDB_ARGS`], the user the server
/// runs as and [`TEMPLATE_GENERATION`], so another installation or other
/// settings never reuse it. A major upgrade installed in place (same folder)
/// is not in the key; its server refuses the old template, which is then
/// made again.
#[derive(Debug)]
struct Template {
    /// The folder holding all templates and, briefly, their staging folders.
    root: PathBuf,
    /// `root/<key>`.
    path: PathBuf,
    /// Who must own the template: the user `initdb` ran as, which `cp -a`
    /// keeps.
    owner: Uid,
}

impl Template {
    fn new(root: &Path, bin: &Path, run_as: Option<RunAs>) -> Template {
        let generation = TEMPLATE_GENERATION.to_le_bytes();
        let owner = run_as
            .map_or(u64::MAX, |user| u64::from(user.uid.as_raw()))
            .to_le_bytes();
        let mut parts: Vec<&[u8]> = vec![&generation, bin.as_os_str().as_bytes(), &owner];
        parts.extend(INITDB_ARGS.iter().map(|arg| arg.as_bytes()));
        let key = format!("g{TEMPLATE_GENERATION}-{:016x}", fnv1a(&parts));
        Template {
            root: root.to_path_buf(),
            path: root.join(key),
            owner: run_as.map_or_else(unistd::geteuid, |user| user.uid),
        }
    }

    /// Copies the template to `data`, which must not exist yet. False when
    /// there is no template yet or the copy failed; the caller then runs
    /// `initdb`.
    fn copy_to(&self, data: &Path) -> bool {
        let meta = match fs::symlink_metadata(&self.path) {
            Ok(meta) => meta,
            Err(_) => return false,
        };
        // Templates appear whole and private, so one without PG_VERSION, or
        // that someone else could have changed, was damaged later; it would
        // also block storing a good one.
        let trusted =
            meta.is_dir() && Uid::from_raw(meta.uid()) == self.owner && meta.mode() & 0o022 == 0;
        if !trusted || !self.path.join("PG_VERSION").is_file() {
            tracing::debug!(
                template = %self.path.display(),
                "the initdb template is damaged or writable by others; making it again"
            );
            self.discard();
            return false;
        }
        match copy_tree(&self.path, data) {
            Ok(()) => true,
            Err(error) => {
                tracing::debug!(
                    %error,
                    template = %self.path.display(),
                    "could not copy the initdb template; running initdb"
                );
                false
            }
        }
    }

    /// Keeps a copy of the fresh data directory `data` as the template,
    /// unless another process stored one first. A failure only costs the
    /// next start an `initdb`.
    fn store(&self, data: &Path) {
        if let Err(error) = self.try_store(data) {
            tracing::debug!(
                %error,
                template = %self.path.display(),
                "could not keep the initdb template; the next start runs initdb again"
            );
        }
    }

    fn try_store(&self, data: &Path) -> io::Result<()> {
        self.remove_leftovers();
        // Copied whole beside its place, then renamed into it: other
        // processes see no template or a complete one, never a partial one.
        // The staging folder (with our copy, if another process won) is
        // removed when it drops.
        let staging = tempfile::Builder::new()
            .prefix(STAGING_PREFIX)
            .tempdir_in(&self.root)?;
        let copy = staging.path().join("data");
        copy_tree(data, &copy)?;
        match fs::rename(&copy, &self.path) {
            Ok(()) => Ok(()),
            // A non-empty target makes the rename fail: another process won.
            Err(_) if self.path.join("PG_VERSION").is_file() => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Removes staging and discarded copies older than [`LEFTOVER_AGE`],
    /// which a process killed while copying leaves behind (tens of MB each).
    /// Younger ones may be another process's work in progress. Best effort:
    /// what cannot be removed now is tried again at the next store.
    fn remove_leftovers(&self) {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            if !is_stale_leftover(&entry) {
                continue;
            }
            let path = entry.path();
            // Neither removal follows a link out of the cache.
            let removed = match entry.file_type() {
                Ok(kind) if kind.is_dir() => fs::remove_dir_all(&path),
                _ => fs::remove_file(&path),
            };
            if let Err(error) = removed {
                tracing::debug!(
                    %error,
                    leftover = %path.display(),
                    "could not remove a stale template copy"
                );
            }
        }
    }

    /// Removes a template that did not work, so the next start makes it again.
    fn discard(&self) {
        // Renamed away first: a process that starts copying now finds no
        // template rather than a half-deleted one.
        let removed = tempfile::Builder::new()
            .prefix(DISCARD_PREFIX)
            .tempdir_in(&self.root)
            .and_then(|trash| {
                fs::rename(&self.path, trash.path().join("data"))?;
                trash.close()
            });
        if let Err(error) = removed {
            tracing::debug!(
                %error,
                template = %self.path.display(),
                "could not remove the initdb template"
            );
        }
    }
}

/// Whether `entry` is a staging or discarded template copy last changed more
/// than [`LEFTOVER_AGE`] ago.
fn is_stale_leftover(entry: &fs::DirEntry) -> bool {
    let name = entry.file_name();
    let leftover = [STAGING_PREFIX, DISCARD_PREFIX]
        .iter()
        .any(|prefix| name.as_bytes().starts_with(prefix.as_bytes()));
    // `DirEntry::metadata` describes a link itself, not its target.
    leftover
        && entry
            .metadata()
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|modified| SystemTime::now().duration_since(modified).ok())
            .is_some_and(|age| age > LEFTOVER_AGE)
}

/// FNV-1a over `parts`, each followed by a zero byte so that parts cannot
/// run into each other. Unlike std's `DefaultHasher`, it never changes
/// between Rust releases, which would orphan every cached template.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    parts
        .iter()
        .flat_map(|part| part.iter().copied().chain([0]))
        .fold(OFFSET, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(PRIME)
        })
}

/// Copies the folder `from` to `to` (which must not exist) with `cp -a`:
/// contents, modes, and owners when root, as the data directory needs.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let output = Command::new("cp")
        .arg("-a")
        .arg("--")
        .arg(from)
        .arg(to)
        .stdin(Stdio::null())
        .output()?;
    if output.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "cp -a {} {} failed ({}): {}",
        from.display(),
        to.display(),
        output.status,
        tail(&String::from_utf8_lossy(&output.stderr))
    )))
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

    /// The template a cluster started with `cache` uses.
    fn template_in(cache: &Path) -> Template {
        let bin = find_bindir().expect("PostgreSQL is installed");
        Template::new(cache, &bin, run_as().expect("a user to run postgres as"))
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read the cache folder")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    /// Every file and folder under `dir` with its size, mode and mtime.
    fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, u32, std::time::SystemTime)> {
        use std::os::unix::fs::PermissionsExt;
        let mut found = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(folder) = pending.pop() {
            for entry in fs::read_dir(&folder).expect("read the template") {
                let path = entry.expect("entry").path();
                let meta = fs::symlink_metadata(&path).expect("metadata");
                if meta.is_dir() {
                    pending.push(path.clone());
                }
                let relative = path.strip_prefix(dir).expect("inside").to_path_buf();
                let modified = meta.modified().expect("mtime");
                found.push((relative, meta.len(), meta.permissions().mode(), modified));
            }
        }
        found.sort();
        found
    }

    /// Runs `sql` on `cluster` and returns the first column of its one row.
    fn query_one<T>(runtime: &tokio::runtime::Runtime, cluster: &TempCluster, sql: &str) -> T
    where
        T: for<'a> tokio_postgres::types::FromSql<'a>,
    {
        runtime.block_on(async {
            let (client, connection) =
                tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls)
                    .await
                    .expect("connects");
            tokio::spawn(connection);
            client.query_one(sql, &[]).await.expect("query").get(0)
        })
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// `initdb` gives every cluster a new identifier; copies share their
    /// template's.
    const SYSTEM_ID: &str = "SELECT system_identifier FROM pg_control_system()";

    #[test]
    fn clusters_started_at_once_on_an_empty_cache_leave_exactly_one_template() {
        let cache = tempfile::tempdir().expect("tempdir");
        let clusters: Vec<TempCluster> = thread::scope(|scope| {
            let starts: Vec<_> = (0..3)
                .map(|_| scope.spawn(|| TempCluster::start_in(Some(cache.path()), false)))
                .collect();
            starts
                .into_iter()
                .map(|start| {
                    start
                        .join()
                        .expect("no panic")
                        .expect("private postgres starts")
                })
                .collect()
        });
        let runtime = runtime();
        for cluster in &clusters {
            assert_eq!(query_one::<i32>(&runtime, cluster, "SELECT 41 + 1"), 42);
        }
        let template = template_in(cache.path());
        let key = template.path.file_name().expect("key").to_string_lossy();
        assert_eq!(
            entries(cache.path()),
            [key.into_owned()],
            "one template and no staging folder"
        );
        assert!(template.path.join("global").join("pg_control").is_file());
        assert!(
            !template.path.join("postmaster.pid").exists(),
            "the template was never started"
        );
    }

    #[test]
    fn clusters_copied_from_one_template_are_independent_and_leave_it_unchanged() {
        let cache = tempfile::tempdir().expect("tempdir");
        drop(TempCluster::start_in(Some(cache.path()), false).expect("first start"));
        let template = template_in(cache.path());
        let before = snapshot(&template.path);
        assert!(!before.is_empty(), "the first start made the template");

        let runtime = runtime();
        let first = TempCluster::start_in(Some(cache.path()), false).expect("first copy starts");
        let second = TempCluster::start_in(Some(cache.path()), true).expect("second copy starts");
        assert_eq!(
            query_one::<i64>(&runtime, &first, SYSTEM_ID),
            query_one::<i64>(&runtime, &second, SYSTEM_ID),
            "both were copied from the template rather than made by initdb"
        );
        let created = "CREATE TABLE only_in_first (id int)";
        runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&first.url(), tokio_postgres::NoTls)
                .await
                .expect("connects");
            tokio::spawn(connection);
            client.batch_execute(created).await.expect("table created");
        });
        let lookup = "SELECT to_regclass('only_in_first') IS NOT NULL";
        assert!(query_one::<bool>(&runtime, &first, lookup));
        assert!(
            !query_one::<bool>(&runtime, &second, lookup),
            "a table made in one copy is absent in the other"
        );
        drop((first, second));
        assert_eq!(
            snapshot(&template.path),
            before,
            "the template is unchanged"
        );
    }

    #[test]
    fn a_damaged_template_is_replaced_and_the_cluster_still_starts() {
        let cache = tempfile::tempdir().expect("tempdir");
        drop(TempCluster::start_in(Some(cache.path()), false).expect("first start"));
        let template = template_in(cache.path());
        let control = template.path.join("global").join("pg_control");
        fs::remove_file(&control).expect("damage the template");

        let runtime = runtime();
        let healed = TempCluster::start_in(Some(cache.path()), false)
            .expect("starts despite the damaged template");
        assert!(control.is_file(), "the template was made again");
        let key = template.path.file_name().expect("key").to_string_lossy();
        assert_eq!(
            entries(cache.path()),
            [key.into_owned()],
            "nothing left over"
        );
        let copy =
            TempCluster::start_in(Some(cache.path()), false).expect("the new template works");
        assert_eq!(
            query_one::<i64>(&runtime, &healed, SYSTEM_ID),
            query_one::<i64>(&runtime, &copy, SYSTEM_ID),
            "the new template is the healed cluster's fresh initdb output"
        );
    }

    #[test]
    fn an_unusable_cache_folder_only_costs_the_cache() {
        let parent = tempfile::tempdir().expect("tempdir");
        let file = parent.path().join("not-a-folder");
        fs::write(&file, "").expect("write");
        let cache = file.join("pg-template");
        let cluster = TempCluster::start_in(Some(&cache), false).expect("private postgres starts");
        assert_eq!(query_one::<i32>(&runtime(), &cluster, "SELECT 41 + 1"), 42);
        assert_eq!(entries(parent.path()), ["not-a-folder"]);
    }

    fn set_mode(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn a_world_writable_cache_folder_is_not_used() {
        let cache = tempfile::tempdir().expect("tempdir");
        set_mode(cache.path(), 0o777);
        assert_starts_without_a_template_in(cache.path(), "a folder others can write to");
    }

    /// A cluster started with `cache` runs, and leaves nothing in it.
    fn assert_starts_without_a_template_in(cache: &Path, what: &str) {
        let cluster = TempCluster::start_in(Some(cache), false).expect("private postgres starts");
        assert_eq!(query_one::<i32>(&runtime(), &cluster, "SELECT 41 + 1"), 42);
        assert!(entries(cache).is_empty(), "no template in {what}");
    }

    #[test]
    fn a_cache_folder_owned_by_another_user_is_not_used() {
        if !unistd::geteuid().is_root() {
            // Only root can give a folder away; the rule is the same one the
            // world-writable test exercises.
            return;
        }
        let nobody = User::from_name("nobody")
            .expect("look up nobody")
            .expect("a nobody user");
        let cache = tempfile::tempdir().expect("tempdir");
        unistd::chown(cache.path(), Some(nobody.uid), Some(nobody.gid)).expect("chown");
        assert_starts_without_a_template_in(cache.path(), "another user's folder");
    }

    #[test]
    fn a_sticky_folder_is_trusted_above_the_cache_but_not_as_the_cache() {
        let sticky = tempfile::tempdir().expect("tempdir");
        let cache = sticky.path().join("cache");
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&cache)
            .expect("mkdir");
        set_mode(sticky.path(), 0o1777);
        let me = unistd::geteuid();
        check_folders_above(&cache, me, false).expect("others cannot touch the cache");
        assert!(check_folders_above(sticky.path(), me, false).is_err());
        set_mode(sticky.path(), 0o777);
        assert!(
            check_folders_above(&cache, me, false).is_err(),
            "without the sticky bit others could rename the cache away"
        );
    }

    #[test]
    fn a_template_writable_by_others_is_thrown_away_not_copied() {
        let cache = tempfile::tempdir().expect("tempdir");
        drop(TempCluster::start_in(Some(cache.path()), false).expect("first start"));
        let template = template_in(cache.path());
        // The server would refuse such a copy too, but only after it was
        // made: the cache must not rely on that.
        set_mode(&template.path, 0o777);

        let target = tempfile::tempdir().expect("tempdir");
        let data = target.path().join("data");
        assert!(!template.copy_to(&data), "the open template is not used");
        assert!(!data.exists(), "nothing was copied");
        assert!(entries(cache.path()).is_empty(), "the template was removed");
        let cluster =
            TempCluster::start_in(Some(cache.path()), false).expect("private postgres starts");
        assert_eq!(query_one::<i32>(&runtime(), &cluster, "SELECT 41 + 1"), 42);
        let mode = fs::metadata(&template.path).expect("made again").mode();
        assert_eq!(mode & 0o077, 0, "the new template is private");
    }

    #[test]
    fn storing_a_template_removes_stale_leftovers_and_keeps_fresh_ones() {
        use nix::sys::time::{TimeVal, TimeValLike};
        let cache = tempfile::tempdir().expect("tempdir");
        let leftovers = [".staging-old", ".discard-old", ".staging-new"];
        for name in leftovers {
            let data = cache.path().join(name).join("data");
            fs::create_dir_all(&data).expect("mkdir");
            fs::write(data.join("PG_VERSION"), "16\n").expect("write");
        }
        let two_hours_ago = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .saturating_sub(Duration::from_secs(2 * 60 * 60));
        let old = TimeVal::seconds(two_hours_ago.as_secs() as i64);
        for name in &leftovers[..2] {
            nix::sys::stat::utimes(&cache.path().join(name), &old, &old).expect("utimes");
        }

        drop(TempCluster::start_in(Some(cache.path()), false).expect("private postgres starts"));
        let key = template_in(cache.path()).path;
        let key = key.file_name().expect("key").to_string_lossy();
        assert_eq!(
            entries(cache.path()),
            [".staging-new".to_string(), key.into_owned()],
            "the stale copies went, the fresh one (maybe in use) stayed"
        );
    }

    #[test]
    fn template_keys_differ_by_installation_and_owner() {
        let root = Path::new("/cache");
        let key =
            |bin: &str, run_as: Option<RunAs>| Template::new(root, Path::new(bin), run_as).path;
        let postgres = Some(RunAs {
            uid: Uid::from_raw(104),
            gid: Gid::from_raw(104),
        });
        let base = key("/usr/lib/postgresql/15/bin", None);
        assert!(base.starts_with(root));
        assert_eq!(base, key("/usr/lib/postgresql/15/bin", None), "stable");
        assert_ne!(base, key("/usr/lib/postgresql/16/bin", None));
        assert_ne!(base, key("/usr/lib/postgresql/15/bin", postgres));
        assert_eq!(fnv1a(&[b"a"]), fnv1a(&[b"a"]));
        assert_ne!(
            fnv1a(&[b"ab", b""]),
            fnv1a(&[b"a", b"b"]),
            "parts are separated"
        );
    }
}
