//! How `shotlist process` finds a running `shotlist serve`.
//!
//! While it serves, `shotlist serve` keeps an announcement file,
//! `{"url": "http://127.0.0.1:PORT", "databaseUrl": "...", "pid": N}`, at
//! [`path`]: `$SHOTLIST_SERVE_FILE`, else
//! `$XDG_RUNTIME_DIR/shotlist/serve.json`, else
//! `$XDG_CACHE_HOME/shotlist/serve.json` (or `~/.cache/shotlist/...`). It
//! names a database, perhaps with its password, so the folder is made 0700,
//! the file 0600, and the file appears only whole (written beside its place,
//! then renamed).
//!
//! A reader would run its film against whatever database the file names and
//! send the user to whatever address it gives, so it trusts the file only
//! when nobody else could have written it (the folder rule of
//! [`shotlist_shared::localdb::check_private_folder`], and the file itself
//! owned by this user and not writable by others), only when the address is
//! this machine's `127.0.0.1`, only while the process that wrote it lives,
//! only when the socket listening on that port is this user's (read from
//! [`TCP_TABLE`]), and only when it answers `GET /health` within
//! [`HEALTH_TIMEOUT`]. The process and socket checks matter after a serve
//! is killed (`kill -9` leaves its file): another local user may then
//! listen on the freed port and answer health like a serve, and would be
//! sent the run's database and the user's browser. A file whose process is
//! gone is ignored and removed.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal;
use nix::unistd::{self, Pid};
use serde::{Deserialize, Serialize};
use shotlist_shared::localdb::check_private_folder;

/// Names the announcement file, overriding the default place (tests point
/// it into their own folder).
pub const FILE_VAR: &str = "SHOTLIST_SERVE_FILE";

/// How long a serve may take to answer `GET /health` before its
/// announcement is taken for stale.
pub const HEALTH_TIMEOUT: Duration = Duration::from_millis(300);

/// How often a run in a serve's private database checks that serve is
/// still there.
pub const WATCH_EVERY: Duration = Duration::from_secs(2);

/// The start every announced address must have: serve listens only there.
const LOOPBACK_URL: &str = "http://127.0.0.1:";

/// A real announcement is under 1 KB; a larger file is not one.
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// The kernel's table of this network namespace's IPv4 TCP sockets, with
/// the uid owning each. Serve listens on IPv4 only, so its socket is here.
const TCP_TABLE: &str = "/proc/net/tcp";

/// The only address serve listens on.
const LOOPBACK: std::net::Ipv4Addr = std::net::Ipv4Addr::LOCALHOST;

/// The state [`TCP_TABLE`] gives a listening socket (`TCP_LISTEN`).
const LISTEN_STATE: &str = "0A";

/// What a running serve tells other `shotlist` commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Announcement {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The database whose films the serve shows.
    pub database_url: String,
    /// The serve's process id, to tell a stale file from a slow serve.
    pub pid: u32,
    /// Whether the database is serve's own, removed when serve stops (a run
    /// that joined it then cannot go on).
    #[serde(default)]
    pub private_database: bool,
}

/// Where the announcement file goes, from the environment; `None` when no
/// variable names an absolute folder for it.
pub fn path() -> Option<PathBuf> {
    path_from(&|name| std::env::var_os(name))
}

fn path_from(var: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let set = |name: &str| var(name).filter(|value| !value.is_empty());
    if let Some(file) = set(FILE_VAR) {
        return std::path::absolute(PathBuf::from(file)).ok();
    }
    let absolute = |name: &str| set(name).map(PathBuf::from).filter(|p| p.is_absolute());
    let folder = absolute("XDG_RUNTIME_DIR")
        .or_else(|| absolute("XDG_CACHE_HOME"))
        .or_else(|| absolute("HOME").map(|home| home.join(".cache")))?;
    Some(folder.join("shotlist").join("serve.json"))
}

/// An announcement on disk, removed when dropped (unless another serve has
/// replaced it since).
#[derive(Debug)]
pub struct Announced {
    path: PathBuf,
    pid: u32,
}

impl Announced {
    /// Writes `announcement` at `path`, creating its folder (0700) when
    /// missing. Refuses a folder that others could change: a reader would
    /// not trust the file there anyway.
    pub fn write(path: &Path, announcement: &Announcement) -> io::Result<Announced> {
        let folder = private_folder(path)?;
        let mut file = tempfile::Builder::new()
            .prefix(".serve-")
            .tempfile_in(folder)?;
        // tempfile makes it 0600 already; said again because the file names
        // a database.
        file.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))?;
        let text = serde_json::to_string(announcement).map_err(io::Error::other)?;
        file.write_all(text.as_bytes())?;
        file.as_file().sync_all()?;
        file.persist(path).map_err(|error| error.error)?;
        Ok(Announced {
            path: path.to_path_buf(),
            pid: announcement.pid,
        })
    }
}

impl Drop for Announced {
    fn drop(&mut self) {
        let ours = read(&self.path).is_ok_and(|found| found.pid == self.pid);
        if ours {
            if let Err(error) = std::fs::remove_file(&self.path) {
                tracing::warn!(
                    %error,
                    file = %self.path.display(),
                    "could not remove the serve announcement"
                );
            }
        }
    }
}

/// The folder of the announcement at `path`, made (0700) when missing and
/// refused when others could change it: a reader would not trust a file
/// there anyway.
fn private_folder(path: &Path) -> io::Result<&Path> {
    let folder = path
        .parent()
        .ok_or_else(|| io::Error::other("the announcement path has no folder"))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(folder)?;
    check_private_folder(folder)?;
    Ok(folder)
}

/// An exclusive lock on `<announcement>.lock`, held by a serve from before
/// it takes its port until it exits. Two serves started together both find
/// no announcement (it is written only once serve answers); the lock lets
/// only one of them go on.
#[derive(Debug)]
pub struct Claim {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// Takes the lock beside the announcement at `path`; `Ok(None)` when
/// another serve holds it.
pub fn claim(path: &Path) -> io::Result<Option<Claim>> {
    use nix::fcntl::{Flock, FlockArg};
    private_folder(path)?;
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(PathBuf::from(name))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(Claim { _lock: lock })),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(errno.into()),
    }
}

/// The running serve announced at [`path`], if there is one that can be
/// trusted and answers; why not, at debug level, otherwise.
pub async fn find_live() -> Option<Announcement> {
    let path = path()?;
    match find_live_at(&path).await {
        Ok(found) => Some(found),
        Err(reason) => {
            tracing::debug!(file = %path.display(), reason, "no shotlist serve to use");
            None
        }
    }
}

async fn find_live_at(path: &Path) -> Result<Announcement, String> {
    let found = read_trusted(path)?;
    let port = loopback_port(&found.url)
        .ok_or_else(|| "the announced address is not http://127.0.0.1:PORT".to_string())?;
    if is_gone(found.pid) {
        // A serve that was killed left it; nobody will remove it otherwise.
        // Whatever answers on its port now is not that serve.
        let _ = std::fs::remove_file(path);
        return Err(format!(
            "stale: process {} is gone (file removed)",
            found.pid
        ));
    }
    serves_at(port).await.map(|()| found)
}

/// Whether this user's serve is what listens on 127.0.0.1:`port`: the
/// listening socket is this user's and answers `GET /health`; why not
/// otherwise.
async fn serves_at(port: u16) -> Result<(), String> {
    let table = std::fs::read_to_string(TCP_TABLE)
        .map_err(|e| format!("cannot read {TCP_TABLE} to see who listens there: {e}"))?;
    let me = unistd::geteuid().as_raw();
    listener_is_mine(&table, port, me)?;
    if answers_health(port).await {
        Ok(())
    } else {
        Err(format!("127.0.0.1:{port} does not answer GET /health"))
    }
}

/// Whether every socket listening on 127.0.0.1:`port` in `table` (the text
/// of [`TCP_TABLE`]) belongs to uid `me`, and there is one; why not
/// otherwise. A row that cannot be read makes the whole table untrusted:
/// it might be the one that matters.
fn listener_is_mine(table: &str, port: u16, me: u32) -> Result<(), String> {
    let mut listeners = Vec::new();
    // The first line names the columns.
    for (number, row) in table.lines().enumerate().skip(1) {
        if row.trim().is_empty() {
            continue;
        }
        let socket = TcpRow::parse(row)
            .ok_or_else(|| format!("line {} of {TCP_TABLE} cannot be read", number + 1))?;
        if socket.listening && socket.local == (LOOPBACK, port) {
            listeners.push(socket.uid);
        }
    }
    match listeners.iter().find(|&&uid| uid != me) {
        _ if listeners.is_empty() => Err(format!("nothing listens on 127.0.0.1:{port}")),
        Some(uid) => Err(format!(
            "127.0.0.1:{port} is listened on by uid {uid}, not {me}"
        )),
        None => Ok(()),
    }
}

/// What discovery needs of one row of [`TCP_TABLE`]:
/// `sl local_address rem_address st tx:rx tr:when retrnsmt uid ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TcpRow {
    local: (std::net::Ipv4Addr, u16),
    listening: bool,
    uid: u32,
}

impl TcpRow {
    fn parse(row: &str) -> Option<TcpRow> {
        let columns: Vec<&str> = row.split_whitespace().collect();
        let (address, port) = columns.get(1)?.split_once(':')?;
        // The kernel prints the address's network-order bytes as a native
        // u32, so reading it back natively gives those bytes again.
        let address = u32::from_str_radix(address, 16).ok()?.to_ne_bytes();
        Some(TcpRow {
            local: (address.into(), u16::from_str_radix(port, 16).ok()?),
            listening: *columns.get(3)? == LISTEN_STATE,
            uid: columns.get(7)?.parse().ok()?,
        })
    }
}

/// The announcement at `path` if only this user could have written it.
fn read_trusted(path: &Path) -> Result<Announcement, String> {
    let folder = path.parent().ok_or("the path has no folder")?;
    check_private_folder(folder).map_err(|e| format!("untrusted folder: {e}"))?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    let me = unistd::geteuid().as_raw();
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.uid() != me {
        return Err(format!("owned by uid {}, not {me}", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "writable by others (mode {:o})",
            meta.mode() & 0o777
        ));
    }
    read(path)
}

/// The announcement at `path`, unchecked.
fn read(path: &Path) -> Result<Announcement, String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_FILE_BYTES).read_to_string(&mut text))
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("not an announcement: {e}"))
}

/// The port of `http://127.0.0.1:PORT`, the only address serve announces.
fn loopback_port(url: &str) -> Option<u16> {
    url.strip_prefix(LOOPBACK_URL)?
        .parse::<u16>()
        .ok()
        .filter(|&port| port != 0)
}

/// Whether a serve answers `GET /health` on 127.0.0.1:`port` within
/// [`HEALTH_TIMEOUT`] with exactly [`super::routes::HEALTH_BODY`].
async fn answers_health(port: u16) -> bool {
    // No proxy: whatever the environment names, loopback is asked directly.
    let Ok(client) = reqwest::Client::builder()
        .no_proxy()
        .timeout(HEALTH_TIMEOUT)
        .build()
    else {
        return false;
    };
    let answer = async {
        let response = client
            .get(format!("{LOOPBACK_URL}{port}/health"))
            .send()
            .await?
            .error_for_status()?;
        response.text().await
    };
    answer
        .await
        .is_ok_and(|body| body == super::routes::HEALTH_BODY)
}

/// Returns once the serve `found` has stopped answering (twice in a row,
/// [`WATCH_EVERY`] apart) or its process is gone: a run in its private
/// database cannot go on.
pub async fn until_gone(found: &Announcement) {
    let Some(port) = loopback_port(&found.url) else {
        return;
    };
    let mut misses = 0;
    while misses < 2 {
        tokio::time::sleep(WATCH_EVERY).await;
        if is_gone(found.pid) {
            return;
        }
        misses = match serves_at(port).await {
            Ok(()) => 0,
            Err(reason) => {
                tracing::debug!(reason, "shotlist serve did not answer");
                misses + 1
            }
        };
    }
}

/// Whether the serve that announced `pid` is gone: no process has that
/// pid, or one this user may not signal does (the pid was reused by another
/// user's process; a serve of this user's could always be signalled).
fn is_gone(pid: u32) -> bool {
    match i32::try_from(pid) {
        // Signal 0 only asks whether the process exists; pids 0 and 1 are
        // never a serve's.
        Ok(raw) if raw > 1 => match signal::kill(Pid::from_raw(raw), None) {
            Ok(()) => false,
            Err(errno) => {
                tracing::debug!(pid, %errno, "the announced serve's process cannot be signalled");
                true
            }
        },
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: Vars<'a>) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| OsString::from(value))
        }
    }

    /// Variables and their values.
    type Vars<'a> = &'a [(&'a str, &'a str)];

    #[test]
    fn the_file_goes_where_the_first_set_variable_says() {
        let cases: [(Vars, Option<&str>); 5] = [
            (
                &[(FILE_VAR, "/x/s.json"), ("XDG_RUNTIME_DIR", "/run/user/1")],
                Some("/x/s.json"),
            ),
            (
                &[(FILE_VAR, ""), ("XDG_RUNTIME_DIR", "/run/user/1")],
                Some("/run/user/1/shotlist/serve.json"),
            ),
            (
                &[("XDG_RUNTIME_DIR", "relative"), ("HOME", "/home/a")],
                Some("/home/a/.cache/shotlist/serve.json"),
            ),
            (
                &[("XDG_CACHE_HOME", "/c"), ("HOME", "/home/a")],
                Some("/c/shotlist/serve.json"),
            ),
            (&[], None),
        ];
        for (vars, expected) in cases {
            assert_eq!(
                path_from(&env(vars)),
                expected.map(PathBuf::from),
                "{vars:?}"
            );
        }
    }

    #[test]
    fn only_a_loopback_http_address_with_a_port_is_taken() {
        assert_eq!(loopback_port("http://127.0.0.1:8787"), Some(8787));
        for url in [
            "http://127.0.0.1:0",
            "http://127.0.0.1",
            "http://localhost:8787",
            "http://127.0.0.1:8787/x",
            "http://10.0.0.1:8787",
            "https://127.0.0.1:8787",
        ] {
            assert_eq!(loopback_port(url), None, "{url}");
        }
    }

    #[test]
    fn a_written_announcement_reads_back_is_private_and_goes_when_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("new").join("serve.json");
        let announcement = Announcement {
            url: "http://127.0.0.1:1".into(),
            database_url: "host=/tmp/x user=postgres".into(),
            pid: std::process::id(),
            private_database: true,
        };
        let announced = Announced::write(&path, &announcement).expect("written");
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().expect("folder")), 0o700);
        assert_eq!(read_trusted(&path), Ok(announcement));
        drop(announced);
        assert!(!path.exists(), "removed when dropped");
    }

    /// A [`TCP_TABLE`] row: `address` and `port` local, `state`, `uid`.
    fn row(sl: u32, address: [u8; 4], port: u16, state: &str, uid: u32) -> String {
        let address = u32::from_ne_bytes(address);
        format!(
            "{sl:4}: {address:08X}:{port:04X} 00000000:0000 {state} 00000000:00000000 \
             00:00000000 00000000 {uid:5}        0 {inode} 1 0000000000000000 100 0 0 10 0",
            inode = 40_000 + sl
        )
    }

    const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when \
                          retrnsmt   uid  timeout inode";

    fn table(rows: &[String]) -> String {
        std::iter::once(HEADER.to_string())
            .chain(rows.iter().cloned())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn a_row_of_the_tcp_table_reads_as_its_address_state_and_uid() {
        let parsed = TcpRow::parse(&row(3, [127, 0, 0, 1], 8787, "0A", 1000));
        assert_eq!(
            parsed,
            Some(TcpRow {
                local: (LOOPBACK, 8787),
                listening: true,
                uid: 1000,
            })
        );
        let established = TcpRow::parse(&row(4, [10, 1, 2, 3], 443, "01", 0)).expect("a row");
        assert_eq!(established.local, ([10, 1, 2, 3].into(), 443));
        assert!(!established.listening);
        for broken in [
            "",
            "0:",
            "0: 0100007F 00000000:0000 0A",
            "0: XYZ:1F 0:0 0A 0:0 0:0 0 1",
        ] {
            assert_eq!(TcpRow::parse(broken), None, "{broken:?}");
        }
    }

    #[test]
    fn only_a_loopback_listener_of_this_user_on_the_port_is_trusted() {
        let me = 1000;
        let mine = row(0, [127, 0, 0, 1], 8787, "0A", me);
        let others_elsewhere = [
            // Another user listening on another port, on every address, or
            // connected from the port: none of them takes 127.0.0.1:8787.
            row(1, [127, 0, 0, 1], 8788, "0A", 1001),
            row(2, [0, 0, 0, 0], 9000, "0A", 1001),
            row(3, [127, 0, 0, 1], 8787, "01", 1001),
        ];
        let with = |extra: &[String]| {
            let mut rows = others_elsewhere.to_vec();
            rows.extend_from_slice(extra);
            table(&rows)
        };
        assert_eq!(
            listener_is_mine(&with(std::slice::from_ref(&mine)), 8787, me),
            Ok(())
        );

        let taken = with(&[row(4, [127, 0, 0, 1], 8787, "0A", 1001)]);
        let refused = listener_is_mine(&taken, 8787, me).expect_err("another user's listener");
        assert!(refused.contains("uid 1001, not 1000"), "{refused}");

        let beside = with(&[mine.clone(), row(5, [127, 0, 0, 1], 8787, "0A", 0)]);
        let refused = listener_is_mine(&beside, 8787, me).expect_err("a second listener");
        assert!(refused.contains("uid 0"), "{refused}");

        // The wildcard takes 127.0.0.1 too when nothing listens there
        // exactly; it is not a serve's socket.
        let wildcard = with(&[row(6, [0, 0, 0, 0], 8787, "0A", me)]);
        let refused = listener_is_mine(&wildcard, 8787, me).expect_err("no loopback listener");
        assert!(refused.contains("nothing listens"), "{refused}");

        let garbled = with(&[mine, "  7: garbled".to_string()]);
        let refused = listener_is_mine(&garbled, 8787, me).expect_err("an unreadable row");
        assert!(refused.contains("cannot be read"), "{refused}");
    }

    #[test]
    fn this_machines_tcp_table_shows_a_listener_of_this_process_as_this_users() {
        let listener = std::net::TcpListener::bind((LOOPBACK, 0)).expect("bind");
        let port = listener.local_addr().expect("address").port();
        let table = std::fs::read_to_string(TCP_TABLE).expect("the kernel's TCP table");
        let me = unistd::geteuid().as_raw();
        assert_eq!(listener_is_mine(&table, port, me), Ok(()));
        let refused = listener_is_mine(&table, port, me.wrapping_add(1)).expect_err("not theirs");
        assert!(refused.contains(&format!("uid {me}")), "{refused}");
    }

    #[test]
    fn a_file_others_may_write_is_not_trusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("serve.json");
        let announcement = Announcement {
            url: "http://127.0.0.1:1".into(),
            database_url: "x".into(),
            pid: 1,
            private_database: false,
        };
        let _announced = Announced::write(&path, &announcement).expect("written");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o622)).expect("chmod");
        let refused = read_trusted(&path).expect_err("group-writable file");
        assert!(refused.contains("writable by others"), "{refused}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod folder");
        let refused = read_trusted(&path).expect_err("world-writable folder");
        assert!(refused.contains("untrusted folder"), "{refused}");
    }
}
