//! Connections that ask for TLS get it, with the certificate checked: a
//! private PostgreSQL on 127.0.0.1 that accepts only TLS connections, with a
//! server certificate signed by a test CA, as Supabase's is by its own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use shotlist_shared::db::{Db, DbError};

/// A PostgreSQL server that refuses connections without TLS.
struct TlsServer {
    child: Child,
    port: u16,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown.
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

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
    use std::os::unix::process::CommandExt;
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
    .unwrap();
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
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_tls_server() -> TlsServer {
    let dir = tempfile::tempdir().unwrap();
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
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "-D",
        ])
        .arg(&data));
    std::fs::write(
        data.join("pg_hba.conf"),
        "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
    )
    .unwrap();
    let port = free_port();
    let child = pg_command("postgres")
        .arg("-D")
        .arg(&data)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            &format!("port={port}"),
        ])
        .args([
            "-c",
            &format!("unix_socket_directories={}", root.display()),
            "-c",
            "fsync=off",
        ])
        .args([
            "-c",
            "ssl=on",
            "-c",
            &format!("ssl_cert_file={}", root.join("server.pem").display()),
        ])
        .args([
            "-c",
            &format!("ssl_key_file={}", root.join("server.key").display()),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(root.join("server.log")).unwrap())
        .spawn()
        .expect("postgres starts");
    let server = TlsServer {
        child,
        port,
        ca: root.join("ca.pem"),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        let log =
            std::fs::read_to_string(server._dir.path().join("server.log")).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "the TLS server did not start: {log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}

async fn connect(url: &str) -> Result<Db, DbError> {
    Db::connect(url, 1).await
}

// One test, because DATABASE_CA_CERT is process-wide.
#[tokio::test]
async fn a_url_asking_for_tls_gets_a_verified_tls_connection() {
    let server = start_tls_server();
    let url = |mode: &str| {
        format!(
            "postgresql://postgres@127.0.0.1:{}/postgres?sslmode={mode}",
            server.port
        )
    };

    // Without our CA the server's certificate is not trusted: refused.
    std::env::remove_var("DATABASE_CA_CERT");
    let err = connect(&url("require"))
        .await
        .err()
        .expect("an untrusted certificate is refused")
        .to_string();
    assert!(err.contains("certificate"), "{err}");

    // With it, TLS works and the whole schema installs over it.
    std::env::set_var("DATABASE_CA_CERT", &server.ca);
    let db = connect(&url("require"))
        .await
        .expect("a verified TLS connection");
    let every: Vec<String> = shotlist_shared::db::MIGRATIONS
        .iter()
        .map(|(name, _)| name.to_string())
        .collect();
    assert_eq!(db.migrate().await.unwrap(), every);
    let count = db
        .register_video(uuid::Uuid::new_v4(), 2940.0, Default::default())
        .await
        .unwrap();
    assert_eq!(count, 18);

    // The server takes only TLS: asking for none is refused, by the server.
    let err = connect(&url("disable"))
        .await
        .err()
        .expect("plain TCP is refused")
        .to_string();
    assert!(
        err.contains("no encryption") || err.contains("rejects"),
        "{err}"
    );

    // A CA file that is not a certificate is named.
    let bogus = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bogus.path(), "not a certificate").unwrap();
    std::env::set_var("DATABASE_CA_CERT", bogus.path());
    let err = connect(&url("require"))
        .await
        .err()
        .expect("a bad CA file is an error")
        .to_string();
    assert!(
        err.contains("DATABASE_CA_CERT") && err.contains("not a PEM certificate"),
        "{err}"
    );
    std::env::remove_var("DATABASE_CA_CERT");
}
