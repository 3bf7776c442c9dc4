//! `shotlist export`: one finished film's sheet as one file, in any of the
//! formats of [`shotlist_shared::export::Format`].
//!
//! The sheet and the film's details come from the database when a URL is
//! given (`--database-url` or `DATABASE_URL`), else from the folder
//! `shotlist process` wrote (`--from DIR`, by default
//! `shotlist-out/<VIDEO_ID>`): its `sheet.json` and, when present,
//! `details.json`. `--from` wins over `DATABASE_URL`, so that a folder can
//! be exported from a shell that has a database set. Details given as flags
//! are put over the stored ones, field by field. The file is written
//! atomically, or to stdout with `--out -`; the path written is printed.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use shotlist_shared::db::{Db, DbError};
use shotlist_shared::export::{self, ExportError, Format, Lang, CSV_FILE, DETAILS_FILE, JSON_FILE};
use shotlist_shared::sheet::{FilmDetails, Sheet};
use uuid::Uuid;

use crate::args::{parse_lang, ArgError, DetailsArgs};

/// Where `process` writes without `--out`, and so where `export` looks
/// without `--from`: `<this>/<video id>`.
const DEFAULT_FOLDER_ROOT: &str = "shotlist-out";

/// `shotlist export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The film's id, as `process` printed it (the name of its folder).
    #[arg(value_name = "VIDEO_ID")]
    pub video_id: Uuid,
    /// The file's format: json (the sheet as stored), or the trade's
    /// six-column table as csv, xlsx (Excel) or docx (Word).
    #[arg(long, value_name = "json|csv|xlsx|docx")]
    pub format: String,
    /// The language of the table's headers and shot types: en or ru.
    #[arg(long, value_name = "en|ru", default_value = "en")]
    pub lang: String,
    /// The file to write, `-` for stdout
    /// [default: ./shotlist-<VIDEO_ID>.<lang>.<format>, or
    /// ./shotlist-<VIDEO_ID>.json for json].
    #[arg(long, value_name = "FILE", allow_hyphen_values = true)]
    pub out: Option<PathBuf>,
    /// Read the sheet and details from this PostgreSQL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// Read sheet.json (and details.json) from this folder instead of a
    /// database [default: ./shotlist-out/<VIDEO_ID>].
    #[arg(long, value_name = "DIR")]
    pub from: Option<PathBuf>,
    #[command(flatten)]
    pub details: DetailsArgs,
}

/// Where the sheet is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Database(String),
    Folder(PathBuf),
}

/// Where the file goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

/// An `export` request whose arguments passed every check.
#[derive(Debug, Clone)]
pub struct ExportSettings {
    pub video_id: Uuid,
    pub format: Format,
    pub lang: Lang,
    pub source: Source,
    pub target: Target,
    /// The details given as flags, put over the stored ones.
    pub details: FilmDetails,
}

impl ExportArgs {
    /// Checks every argument; the first one that is wrong is named.
    pub fn validate(self) -> Result<ExportSettings, ArgError> {
        let format = self
            .format
            .parse::<Format>()
            .map_err(|reason| ArgError(format!("--format: {reason}")))?;
        let lang = parse_lang(&self.lang)?;
        let details = self.details.checked()?;
        // An empty DATABASE_URL counts as unset.
        let url = self.database_url.filter(|url| !url.trim().is_empty());
        let source = match (self.from, url) {
            (Some(from), _) => Source::Folder(from),
            (None, Some(url)) => Source::Database(url),
            (None, None) => {
                Source::Folder(Path::new(DEFAULT_FOLDER_ROOT).join(self.video_id.to_string()))
            }
        };
        let target = match self.out {
            Some(out) if out.as_os_str() == "-" => Target::Stdout,
            Some(out) => Target::File(check_out_file(out, &source)?),
            None => Target::File(default_file(self.video_id, format, lang)),
        };
        Ok(ExportSettings {
            video_id: self.video_id,
            format,
            lang,
            source,
            target,
            details,
        })
    }
}

/// `./shotlist-<id>.<lang>.<ext>`; the JSON, which has no language, without
/// the language part.
fn default_file(video_id: Uuid, format: Format, lang: Lang) -> PathBuf {
    PathBuf::from(shotlist_shared::page::download_name(video_id, format, lang))
}

/// Refuses an `--out` that is a folder (or is written as one), anything
/// else that is there and is not a regular file (the file is renamed into
/// place, which would put it instead of a symbolic link, a device, a FIFO or
/// a socket), one whose folder does not exist (the file is written beside
/// itself first), and the `sheet.json` or `details.json` of the folder the
/// sheet is read from (the only copy would be lost).
fn check_out_file(out: PathBuf, source: &Source) -> Result<PathBuf, ArgError> {
    let shown = out.display();
    let written_as_folder = out.as_os_str().to_string_lossy().ends_with('/');
    let there = match written_as_folder {
        true => Some("a folder"),
        false => export::not_a_regular_file(&out)
            .map_err(|e| ArgError(format!("--out {shown}: could not look at it: {e}")))?,
    };
    match there {
        None => {}
        Some("a folder") => {
            return Err(ArgError(format!(
                "--out {shown} is a folder; give the file to write"
            )))
        }
        Some("a symbolic link") => {
            return Err(ArgError(format!(
                "--out {shown} is a symbolic link; give a regular file or - for stdout"
            )))
        }
        Some(kind) => {
            return Err(ArgError(format!(
                "--out {shown} is not a regular file ({kind}); give a regular file or - \
                 for stdout"
            )))
        }
    }
    let parent = out.parent().filter(|dir| !dir.as_os_str().is_empty());
    if let Some(parent) = parent {
        if !parent.is_dir() {
            return Err(ArgError(format!(
                "--out {shown}: the folder {} does not exist",
                parent.display()
            )));
        }
    }
    if let Source::Folder(from) = source {
        if let Some(what) = read_from(&out, from) {
            return Err(ArgError(format!(
                "--out {shown} would overwrite the {what} of the folder it reads from; give \
                 another file or - for stdout"
            )));
        }
    }
    Ok(out)
}

/// Whether `out` is, by another spelling, a link or a hard link, one of the
/// files of the folder `from` that export reads or cannot write again:
/// `sheet.json`, `details.json`, or the machine `sheet.csv`. Names what it
/// would overwrite, else `None`. A folder that does not resolve holds
/// nothing to lose.
fn read_from(out: &Path, from: &Path) -> Option<&'static str> {
    use std::os::unix::fs::MetadataExt;
    const KEPT: [(&str, &str); 3] = [
        (JSON_FILE, "sheet"),
        (DETAILS_FILE, "details"),
        (CSV_FILE, "machine CSV (sheet.csv)"),
    ];
    let same_file = |a: &Path, b: &Path| match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    if let Some((_, what)) = KEPT
        .iter()
        .find(|(name, _)| same_file(out, &from.join(name)))
    {
        return Some(what);
    }
    let name = out.file_name()?;
    let (_, what) = KEPT.iter().find(|(kept, _)| name == *kept)?;
    let parent = out
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let same = std::fs::canonicalize(parent).ok()? == std::fs::canonicalize(from).ok()?;
    same.then_some(what)
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportFailed {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("no video {0} in the database")]
    UnknownVideo(Uuid),
    /// In [`shotlist_shared::page::not_ready`]'s words, as the servers say it.
    #[error("{0}")]
    Unfinished(String),
    #[error("{0}")]
    Folder(String),
    #[error("could not write the {format} sheet of video {video_id}: {source}")]
    Write {
        video_id: Uuid,
        format: Format,
        #[source]
        source: ExportError,
    },
    #[error(
        "could not write the {format} sheet of video {video_id}: {source}; --out must be a \
         regular file in a writable folder, or - for stdout"
    )]
    OutFile {
        video_id: Uuid,
        format: Format,
        #[source]
        source: ExportError,
    },
    #[error("could not write the sheet of video {video_id} to stdout: {source}")]
    Stdout {
        video_id: Uuid,
        #[source]
        source: std::io::Error,
    },
}

/// Reads the sheet and details, renders the file and writes it.
pub async fn run(settings: ExportSettings) -> Result<(), ExportFailed> {
    let (sheet, stored) = match &settings.source {
        Source::Database(url) => from_database(url, settings.video_id).await?,
        Source::Folder(dir) => from_folder(dir, settings.video_id)?,
    };
    let details = stored.overlaid(settings.details.clone());
    let write_error = |source| ExportFailed::Write {
        video_id: settings.video_id,
        format: settings.format,
        source,
    };
    let bytes =
        export::render(&sheet, &details, settings.format, settings.lang).map_err(write_error)?;
    match &settings.target {
        Target::Stdout => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(&bytes)
                .and_then(|()| stdout.flush())
                .map_err(|source| ExportFailed::Stdout {
                    video_id: settings.video_id,
                    source,
                })?;
        }
        Target::File(path) => {
            export::write_file(path, &bytes).map_err(|source| ExportFailed::OutFile {
                video_id: settings.video_id,
                format: settings.format,
                source,
            })?;
            out!("{}", path.display());
        }
    }
    Ok(())
}

/// The stored sheet and details of `video_id`; a film without a sheet is
/// an error saying how far it got.
async fn from_database(url: &str, video_id: Uuid) -> Result<(Sheet, FilmDetails), ExportFailed> {
    let db = Db::connect(url, 1).await?;
    let applied = db.migrate().await?;
    tracing::debug!(?applied, "migrations applied");
    let Some(sheet) = db.get_sheet(video_id).await? else {
        return Err(
            match shotlist_shared::page::not_ready(&db, video_id).await {
                Ok(why) => ExportFailed::Unfinished(why),
                Err(DbError::NotFound(_)) => ExportFailed::UnknownVideo(video_id),
                Err(error) => error.into(),
            },
        );
    };
    let details = db.video_details(video_id).await?;
    Ok((sheet, details))
}

/// The sheet and details `process` wrote to `dir`: `sheet.json`, which must
/// be the sheet of `video_id`, and `details.json` when there is one.
fn from_folder(dir: &Path, video_id: Uuid) -> Result<(Sheet, FilmDetails), ExportFailed> {
    const HINT: &str = "export reads the folder process wrote (--from DIR), or the film's \
                        database (--database-url or DATABASE_URL)";
    if dir.is_file() {
        return Err(ExportFailed::Folder(format!(
            "{} is a file, not a folder; {HINT}",
            dir.display()
        )));
    }
    if !dir.is_dir() {
        return Err(ExportFailed::Folder(format!(
            "no folder {} for the sheet of video {video_id}; {HINT}",
            dir.display()
        )));
    }
    let sheet_path = dir.join(JSON_FILE);
    let Some(text) = read_if_present(&sheet_path)? else {
        return Err(ExportFailed::Folder(format!(
            "no {} for the sheet of video {video_id}; {HINT}",
            sheet_path.display()
        )));
    };
    let sheet: Sheet = serde_json::from_slice(&text).map_err(|e| {
        ExportFailed::Folder(format!("{} is not a sheet: {e}", sheet_path.display()))
    })?;
    if sheet.video_id != video_id {
        return Err(ExportFailed::Folder(format!(
            "{} is the sheet of video {}, not of video {video_id}",
            sheet_path.display(),
            sheet.video_id
        )));
    }
    let details_path = dir.join(DETAILS_FILE);
    let details = match read_if_present(&details_path)? {
        None => FilmDetails::default(),
        Some(text) => serde_json::from_slice::<FilmDetails>(&text)
            .map_err(|e| e.to_string())
            .and_then(|details| details.checked().map_err(|(_, reason)| reason))
            .map_err(|reason| {
                ExportFailed::Folder(format!(
                    "{} is not film details: {reason}",
                    details_path.display()
                ))
            })?,
    };
    Ok((sheet, details))
}

/// The bytes of `path`, or `None` when there is no such file.
fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>, ExportFailed> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ExportFailed::Folder(format!(
            "could not read {}: {e}",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Command};
    use clap::Parser;

    const ID: &str = "5b0c2f5e-7a49-4c1e-9d0a-4a1f1c7d2e10";

    fn parse(extra: &[&str]) -> Result<ExportSettings, ArgError> {
        let mut argv = vec!["shotlist", "export", ID];
        argv.extend_from_slice(extra);
        let cli = Cli::try_parse_from(argv).expect("clap accepts it");
        let Command::Export(args) = cli.command else {
            panic!("not an export command");
        };
        ExportArgs {
            // The test must not depend on the shell's DATABASE_URL.
            database_url: args
                .database_url
                .filter(|_| extra.contains(&"--database-url")),
            ..args
        }
        .validate()
    }

    fn sheet(video_id: Uuid) -> Sheet {
        Sheet {
            video_id,
            source: None,
            fps: "25/1".into(),
            duration_frames: 25,
            total_chunks: 1,
            completed_chunks: 1,
            failed_chunks: 0,
            status: shotlist_shared::sheet::SheetStatus::Complete,
            shots: Vec::new(),
            gaps: Vec::new(),
        }
    }

    #[test]
    fn default_file_names_carry_the_id_the_lang_and_the_format() {
        let settings = parse(&["--format", "xlsx", "--lang", "ru"]).expect("valid");
        assert_eq!(
            settings.target,
            Target::File(PathBuf::from(format!("shotlist-{ID}.ru.xlsx")))
        );
        assert_eq!(
            settings.source,
            Source::Folder(Path::new("shotlist-out").join(ID))
        );
        let json = parse(&["--format", "JSON"]).expect("valid");
        assert_eq!(
            json.target,
            Target::File(PathBuf::from(format!("shotlist-{ID}.json")))
        );
        let stdout = parse(&["--format", "csv", "--out", "-"]).expect("valid");
        assert_eq!(stdout.target, Target::Stdout);
    }

    #[test]
    fn from_wins_over_a_database_url() {
        let settings = parse(&[
            "--format",
            "csv",
            "--database-url",
            "postgresql://u@127.0.0.1/x",
            "--from",
            "some/dir",
        ])
        .expect("valid");
        assert_eq!(settings.source, Source::Folder(PathBuf::from("some/dir")));
        let settings = parse(&[
            "--format",
            "csv",
            "--database-url",
            "postgresql://u@127.0.0.1/x",
        ])
        .expect("valid");
        assert_eq!(
            settings.source,
            Source::Database("postgresql://u@127.0.0.1/x".into())
        );
    }

    #[test]
    fn each_bad_export_flag_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let folder = dir.path().to_string_lossy().into_owned();
        let missing_parent = dir.path().join("no/such/file.xlsx");
        let missing_parent = missing_parent.to_string_lossy().into_owned();
        let cases: [(&[&str], &str); 6] = [
            (&["--format", "pdf"], "--format"),
            (&["--format", "xlsx", "--lang", "de"], "--lang"),
            (&["--format", "xlsx", "--out", &folder], "is a folder"),
            (&["--format", "xlsx", "--out", "some/dir/"], "is a folder"),
            (
                &["--format", "xlsx", "--out", &missing_parent],
                "does not exist",
            ),
            (&["--format", "xlsx", "--year", "19\n79"], "--year"),
        ];
        for (flags, expected) in cases {
            let error = parse(flags).expect_err("invalid").to_string();
            assert!(error.contains(expected), "{flags:?}: {error:?}");
            assert!(!error.contains('\n'), "{error:?} is one line");
        }
    }

    #[test]
    fn out_is_refused_when_it_is_a_link_a_fifo_or_a_file_the_sheet_is_read_from() {
        let dir = tempfile::tempdir().expect("tempdir");
        let from = dir.path().join("from");
        std::fs::create_dir(&from).expect("mkdir");
        let link = dir.path().join("link.csv");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &link).expect("symlink");
        let fifo = dir.path().join("fifo.csv");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let show = |path: PathBuf| path.to_string_lossy().into_owned();
        let from_arg = show(from.clone());
        let cases = [
            (
                show(link),
                "is a symbolic link; give a regular file or - for stdout",
            ),
            (show(fifo), "is not a regular file (a FIFO)"),
            (
                show(from.join(JSON_FILE)),
                "would overwrite the sheet of the folder it reads from",
            ),
            (
                show(dir.path().join("from/../from/./details.json")),
                "would overwrite the details of the folder it reads from",
            ),
        ];
        for (out, expected) in cases {
            let flags = ["--format", "json", "--from", &from_arg, "--out", &out];
            let error = parse(&flags).expect_err("refused").to_string();
            assert!(error.starts_with(&format!("--out {out} ")), "{error}");
            assert!(error.contains(expected), "{out}: {error}");
        }
        // The same name in another folder is only a file.
        let elsewhere = show(dir.path().join(JSON_FILE));
        let flags = ["--format", "json", "--from", &from_arg, "--out", &elsewhere];
        assert!(parse(&flags).is_ok());

        // Unless the folder's own sheet.json is a link to it, or the machine
        // CSV is asked for, which export cannot write again.
        std::fs::write(dir.path().join(JSON_FILE), "{}").expect("write");
        let linked = dir.path().join("linked");
        std::fs::create_dir(&linked).expect("mkdir");
        std::os::unix::fs::symlink(dir.path().join(JSON_FILE), linked.join(JSON_FILE))
            .expect("symlink");
        let linked_arg = show(linked);
        let flags = [
            "--format",
            "csv",
            "--from",
            &linked_arg,
            "--out",
            &elsewhere,
        ];
        let error = parse(&flags).expect_err("the linked sheet").to_string();
        assert!(
            error.contains("would overwrite the sheet of the folder it reads from"),
            "{error}"
        );
        let machine_csv = show(from.join(CSV_FILE));
        let flags = [
            "--format",
            "csv",
            "--from",
            &from_arg,
            "--out",
            &machine_csv,
        ];
        let error = parse(&flags).expect_err("the machine csv").to_string();
        assert!(error.contains("the machine CSV (sheet.csv)"), "{error}");
    }

    #[test]
    fn flags_are_put_over_the_details_in_the_folder_field_by_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id: Uuid = ID.parse().expect("uuid");
        let json = serde_json::to_vec(&sheet(id)).expect("json");
        std::fs::write(dir.path().join(JSON_FILE), json).expect("write sheet");
        std::fs::write(
            dir.path().join(DETAILS_FILE),
            r#"{"title": "Stalker", "year": "1979"}"#,
        )
        .expect("write details");
        let (read, stored) = from_folder(dir.path(), id).expect("read");
        assert_eq!(read, sheet(id));
        let flags = DetailsArgs {
            title: Some("Сталкер".into()),
            director: Some("А. Тарковский".into()),
            ..DetailsArgs::default()
        }
        .checked()
        .expect("valid");
        let both = stored.overlaid(flags);
        assert_eq!(both.title.as_deref(), Some("Сталкер"));
        assert_eq!(both.year.as_deref(), Some("1979"));
        assert_eq!(both.director.as_deref(), Some("А. Тарковский"));
    }

    #[test]
    fn details_json_that_is_not_details_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id: Uuid = ID.parse().expect("uuid");
        let json = serde_json::to_vec(&sheet(id)).expect("json");
        std::fs::write(dir.path().join(JSON_FILE), json).expect("write sheet");
        std::fs::write(dir.path().join(DETAILS_FILE), r#"{"rating": 5}"#).expect("write");
        let error = from_folder(dir.path(), id).expect_err("bad details");
        assert!(error.to_string().contains(DETAILS_FILE), "{error}");
    }
}
