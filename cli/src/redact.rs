//! Keeping database passwords out of everything `shotlist` prints.
//!
//! A password can reach a message through a library's error text. Before an
//! error is printed, every form of the password found in the database URL
//! (as written, and decoded) is replaced with `***`.

use std::str::FromStr;

/// What a password is replaced with.
const MASK: &str = "***";

/// The password of a `postgresql://` URL or `key=value` connection string,
/// in every form it may be printed in: as written in the URL (maybe
/// percent-encoded) and as decoded. Empty when there is none.
pub fn secrets(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(config) = tokio_postgres::Config::from_str(url) {
        if let Some(password) = config.get_password() {
            found.push(String::from_utf8_lossy(password).into_owned());
        }
    }
    if let Some(raw) = url_password(url) {
        found.push(raw.to_string());
    }
    found.retain(|secret| !secret.is_empty());
    found.sort();
    found.dedup();
    // Longest first, so a password containing another is masked whole.
    found.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
    found
}

/// `text` with every secret replaced by `***`.
pub fn redact(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .fold(text.to_string(), |text, secret| text.replace(secret, MASK))
}

/// The password part of a URL's user info, exactly as written.
fn url_password(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("postgresql://")
        .or_else(|| url.strip_prefix("postgres://"))?;
    let authority = rest.split(['/', '?']).next()?;
    let (user_info, _) = authority.rsplit_once('@')?;
    let (_, password) = user_info.split_once(':')?;
    Some(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_found_raw_and_decoded() {
        let found = secrets("postgresql://u:se%40cret@db.example:5432/x?sslmode=require");
        assert!(found.contains(&"se%40cret".to_string()), "{found:?}");
        assert!(found.contains(&"se@cret".to_string()), "{found:?}");
    }

    #[test]
    fn key_value_passwords_are_found() {
        let found = secrets("host=localhost user=u password='pa ss' dbname=x");
        assert_eq!(found, vec!["pa ss".to_string()]);
    }

    #[test]
    fn urls_without_password_have_no_secret() {
        assert!(secrets("postgresql://u@127.0.0.1/x").is_empty());
        assert!(secrets("host=/tmp/dir user=postgres").is_empty());
        assert!(secrets("not a url").is_empty());
    }

    #[test]
    fn redact_masks_every_occurrence() {
        let found = secrets("postgres://u:hunter2@127.0.0.1:1/x");
        let text = redact(
            "failed for postgres://u:hunter2@127.0.0.1:1/x (hunter2)",
            &found,
        );
        assert_eq!(text, "failed for postgres://u:***@127.0.0.1:1/x (***)");
    }
}
