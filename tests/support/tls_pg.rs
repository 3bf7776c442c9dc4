//! A private PostgreSQL on 127.0.0.1 that accepts only TLS connections,
//! with a server certificate signed by a CA of its own (as Supabase signs
//! its servers' certificates with its own CA): what a URL with
//! `sslmode=require` and a `DATABASE_CA_CERT` naming that CA connect to.
//!
//! The private cluster of [`shotlist_shared::localdb`] listens only on a
//! unix socket, where no TLS is negotiated; this one listens on TCP, and
//! its `pg_hba.conf` rejects every connection without TLS. It trusts every
//! TLS connection (no password). The CA and the server's key are made with
//! the `openssl` command line in the server's temporary folder.
//!
//! Starting takes a second or two and blocks; from async code, call
//! [`TlsPostgres::start`] through `tokio::task::spawn_blocking`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A PostgreSQL server that refuses connections without TLS; stopped and
/// its folder removed when dropped.
pub struct TlsPostgres {
    child: Child,
    port: u16,
    ca: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown.
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

impl TlsPostgres {
    /// Makes the certificates, initializes a cluster and starts its server
    /// on a free port of 127.0.0.1, then waits until it accepts TCP
    /// connections.
    ///
    /// # Panics
    /// When any of that fails (no `openssl`, no PostgreSQL server binaries,
    /// no `postgres` user when root, a server that does not start within
    /// 30 s): this is test support; the message quotes the failing command
    /// or the server's log.
    pub fn start() -> TlsPostgres {
        let dir = tempfile::tempdir().expect("a temporary folder for the TLS server");
        let root = dir.path();
        make_certificates(root);
        let data = root.join("data");
        if is_root() {
            run(Command::new("chown").args(["-R", "postgres"]).arg(root));
            run(Command::new("chmod").arg("755").arg(root));
        }
        // PostgreSQL refuses a key others can read.
        run(Command::new("chmod")
            .arg("600")
            .arg(root.join("server.key")));
        run(pg_command("initdb")
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .arg("--no-sync")
            .arg("-D")
            .arg(&data));
        std::fs::write(
            data.join("pg_hba.conf"),
            "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        )
        .expect("writing the TLS server's pg_hba.conf");
        let port = free_port();
        let log = std::fs::File::create(root.join("server.log"))
            .expect("creating the TLS server's log file");
        let child = pg_command("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", &format!("port={port}")])
            .args(["-c", &format!("unix_socket_directories={}", root.display())])
            .args(["-c", "fsync=off", "-c", "ssl=on"])
            .args([
                "-c",
                &format!("ssl_cert_file={}", root.join("server.pem").display()),
            ])
            .args([
                "-c",
                &format!("ssl_key_file={}", root.join("server.key").display()),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("postgres starts");
        let server = TlsPostgres {
            child,
            port,
            ca: root.join("ca.pem"),
            dir,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the TLS server did not start within {START_TIMEOUT:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The port it listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The PEM file of the CA that signed the server's certificate: the
    /// value for `DATABASE_CA_CERT`.
    pub fn ca(&self) -> &Path {
        &self.ca
    }

    /// A URL of its `postgres` database as user `postgres`, with `sslmode`.
    pub fn url(&self, sslmode: &str) -> String {
        format!(
            "postgresql://postgres@127.0.0.1:{}/postgres?sslmode={sslmode}",
            self.port
        )
    }
}

/// The newest installed PostgreSQL's server binary `name`.
fn postgres_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server binaries in /usr/lib/postgresql")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin").join(name)))
        .filter(|p| p.exists())
        .collect();
    versions.sort_by_key(|p| {
        let major = p
            .iter()
            .rev()
            .nth(2)
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok());
        major.unwrap_or(0)
    });
    versions.pop().expect("an initdb and a postgres binary")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The `postgres` system user's uid and gid.
fn postgres_user() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let output = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id runs");
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("a postgres user")
    };
    (id("-u"), id("-g"))
}

/// Runs a PostgreSQL program as the `postgres` user when we are root
/// (PostgreSQL refuses to run as root), else as ourselves.
fn pg_command(program: &str) -> Command {
    let mut command = Command::new(postgres_bin(program));
    if is_root() {
        let (uid, gid) = postgres_user();
        command.uid(uid).gid(gid);
    }
    command
}

fn run(command: &mut Command) {
    let output = command.output().expect("the command starts");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA, and a server certificate for 127.0.0.1 and localhost signed by it.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| run(Command::new("openssl").current_dir(dir).args(args));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=shotlist test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("writing the certificate's subjectAltName extension");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ]);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}
