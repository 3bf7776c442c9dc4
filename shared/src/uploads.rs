//! Films uploaded to a provider's file store, recorded in Postgres so that
//! every chunk of a film reuses one upload.
//!
//! Lambda instances come and go and the five chunks of a film start at once
//! on different ones, so which worker uploads, and where the file is, lives
//! in the database (`migrations/0003_provider_files.sql`), never in memory.
//! A worker asks [`UploadStore::claim_upload`] what to do: use a ready file,
//! poll one the provider is still processing, upload the film itself (it then
//! holds a claim until its deadline), wait for another worker's upload, or
//! give up on a film the provider could not process.
//!
//! Files belong to the account that uploaded them (for Gemini, the API key's
//! Cloud project), so records are per account: the key's 1-based number in
//! the configured list, as text, never the key itself. [`UploadSlot::accounts`]
//! names all the accounts of a list of keys.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

use crate::db::{Db, DbError};

const CLAIM: &str = "SELECT public.claim_provider_file($1, $2, $3, $4, $5)";
const SAVE: &str = "SELECT public.save_provider_file($1, $2, $3, $4, $5, $6, $7, $8, $9)";
const FAIL: &str = "SELECT public.fail_provider_file($1, $2, $3, $4, $5, $6)";
const RELEASE: &str = "SELECT public.release_provider_file($1, $2, $3, $4)";
const FORGET: &str = "SELECT public.forget_provider_file($1, $2, $3, $4)";
const ACCOUNTS: &str = "SELECT public.provider_file_accounts($1, $2)";

/// Which record: a film's file at one provider account.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UploadSlot {
    pub video_id: Uuid,
    /// The analyzer's name (`gemini`).
    pub provider: &'static str,
    /// The API key's 1-based number, as text.
    pub account: String,
}

impl UploadSlot {
    /// The slot of `video_id` at `provider` for the key numbered `key_number`
    /// (1-based, as [`KeyLease::number`] gives it).
    ///
    /// [`KeyLease::number`]: crate::analyzer::keys::KeyLease::number
    pub fn new(video_id: Uuid, provider: &'static str, key_number: usize) -> UploadSlot {
        UploadSlot {
            video_id,
            provider,
            account: key_number.to_string(),
        }
    }
}

impl UploadSlot {
    /// The accounts of a list of `keys` keys: `"1"` to `keys`, as
    /// [`UploadSlot::new`] names them.
    pub fn accounts(keys: usize) -> Vec<String> {
        (1..=keys).map(|n| n.to_string()).collect()
    }
}

/// A file in the provider's store.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderFile {
    /// The provider's name for it (`files/abc123`).
    pub name: String,
    /// What requests refer to it by.
    pub uri: String,
    pub mime_type: String,
    /// When the provider deletes it, as it said (RFC 3339); saved as a hint
    /// (the database keeps its own, earlier expiry). Not read back.
    #[serde(skip)]
    pub expire_time: Option<String>,
}

/// What [`UploadStore::claim_upload`] tells a worker to do.
#[derive(Debug, Clone, PartialEq)]
pub enum UploadClaim {
    /// Use this file.
    Ready(ProviderFile),
    /// The file is uploaded; the provider is still processing it, for
    /// `since` now. Poll it, then save it active (or fail it).
    Processing { file: ProviderFile, since: Duration },
    /// Upload the film now, then [`save_upload`] with this token (or
    /// [`release_upload`] after a failure that may pass).
    ///
    /// [`save_upload`]: UploadStore::save_upload
    /// [`release_upload`]: UploadStore::release_upload
    Claimed { token: Uuid },
    /// Another worker is uploading the film to `account` (or the provider is
    /// processing it there): ask again later. `wait` is how long its claim
    /// still runs, when it holds one.
    Busy {
        account: String,
        wait: Option<Duration>,
    },
    /// The provider could not process the film (on `account`): permanent.
    Failed { account: String, error: String },
}

/// Where an account's upload of a film stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadState {
    Uploading,
    Processing,
    Active,
}

/// An account that holds the film's file, or an upload of it under way.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AccountUpload {
    pub account: String,
    pub state: UploadState,
}

/// The records of films uploaded to providers. [`Db`] keeps them in
/// Postgres; every method is one call that may be repeated harmlessly.
#[async_trait::async_trait]
pub trait UploadStore: Send + Sync {
    /// The accounts that hold the film's file (unexpired) or a live upload
    /// of it, by account number.
    async fn upload_accounts(
        &self,
        video_id: Uuid,
        provider: &'static str,
    ) -> Result<Vec<AccountUpload>, DbError>;

    /// Decides what the worker of `slot` does about the film's file; see
    /// [`UploadClaim`]. `accounts` are all the accounts the worker has keys
    /// for: another account's upload under way makes it wait only when it
    /// is one of them, since it could not use that file otherwise (a key
    /// removed from the list). A claim it gets lasts `hold` (at most an
    /// hour).
    async fn claim_upload(
        &self,
        slot: &UploadSlot,
        accounts: &[String],
        hold: Duration,
    ) -> Result<UploadClaim, DbError>;

    /// Records `file` as active, or as processing when `active` is false.
    /// With `token`, the claim holder records its upload; without, anyone
    /// records a processing file of the same name as active. False when
    /// neither applies (the claim was lost): nothing is written.
    async fn save_upload(
        &self,
        slot: &UploadSlot,
        token: Option<Uuid>,
        file: &ProviderFile,
        active: bool,
    ) -> Result<bool, DbError>;

    /// Records that the provider could not process the film, for every
    /// account: by the claim holder (`token`) or by anyone naming the
    /// recorded file (`file_name`). False when neither matched.
    async fn fail_upload(
        &self,
        slot: &UploadSlot,
        token: Option<Uuid>,
        file_name: Option<&str>,
        error: &str,
    ) -> Result<bool, DbError>;

    /// Gives up the claim `token` after an upload failed for a reason that
    /// may pass, so that the next worker uploads at once.
    async fn release_upload(&self, slot: &UploadSlot, token: Uuid) -> Result<bool, DbError>;

    /// Forgets the recorded file `file_name`, which the provider no longer
    /// has: the next claim uploads again. False when another file is
    /// recorded by now.
    async fn forget_upload(&self, slot: &UploadSlot, file_name: &str) -> Result<bool, DbError>;
}

#[derive(Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum ClaimAnswer {
    Ready(ProviderFile),
    #[serde(rename_all = "camelCase")]
    Processing {
        #[serde(flatten)]
        file: ProviderFile,
        processing_seconds: Option<f64>,
    },
    Claimed {
        token: Uuid,
    },
    #[serde(rename_all = "camelCase")]
    Busy {
        account: String,
        wait_seconds: Option<f64>,
    },
    Failed {
        account: String,
        error: Option<String>,
    },
}

impl From<ClaimAnswer> for UploadClaim {
    fn from(answer: ClaimAnswer) -> UploadClaim {
        match answer {
            ClaimAnswer::Ready(file) => UploadClaim::Ready(file),
            ClaimAnswer::Processing {
                file,
                processing_seconds,
            } => UploadClaim::Processing {
                file,
                since: seconds(processing_seconds).unwrap_or_default(),
            },
            ClaimAnswer::Claimed { token } => UploadClaim::Claimed { token },
            ClaimAnswer::Busy {
                account,
                wait_seconds,
            } => UploadClaim::Busy {
                account,
                wait: seconds(wait_seconds),
            },
            ClaimAnswer::Failed { account, error } => UploadClaim::Failed {
                account,
                error: error.unwrap_or_else(|| "unknown error".to_string()),
            },
        }
    }
}

/// A non-negative number of seconds as a duration.
fn seconds(value: Option<f64>) -> Option<Duration> {
    value
        .filter(|s| s.is_finite())
        .map(|s| Duration::from_secs_f64(s.max(0.0)))
}

/// The boolean `field` of a call's answer.
fn flag(answer: &Value, field: &str) -> bool {
    answer.get(field).and_then(Value::as_bool).unwrap_or(false)
}

/// One SQL parameter with its type.
type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// Calls the function of `sql` (`SELECT public.f($1, ...)`) about `slot`:
/// its first three parameters name the slot's row (video, provider,
/// account), and `more` follow.
async fn call_for_slot<T: DeserializeOwned>(
    db: &Db,
    sql: &'static str,
    slot: &UploadSlot,
    more: &[Param<'_>],
) -> Result<T, DbError> {
    let provider = slot.provider.to_string();
    let mut params: Vec<Param<'_>> = vec![
        (&slot.video_id, Type::UUID),
        (&provider, Type::TEXT),
        (&slot.account, Type::TEXT),
    ];
    params.extend_from_slice(more);
    db.call(function_name(sql), sql, &params).await
}

/// [`call_for_slot`], answering the boolean `field` of the function's
/// answer.
async fn flag_for_slot(
    db: &Db,
    sql: &'static str,
    slot: &UploadSlot,
    more: &[Param<'_>],
    field: &str,
) -> Result<bool, DbError> {
    let answer: Value = call_for_slot(db, sql, slot, more).await?;
    Ok(flag(&answer, field))
}

/// The name of the function a `SELECT public.name(...)` statement calls,
/// which errors and logs give.
fn function_name(sql: &str) -> &str {
    let call = sql.strip_prefix("SELECT public.").unwrap_or(sql);
    call.split_once('(').map_or(call, |(name, _)| name)
}

#[async_trait::async_trait]
impl UploadStore for Db {
    async fn upload_accounts(
        &self,
        video_id: Uuid,
        provider: &'static str,
    ) -> Result<Vec<AccountUpload>, DbError> {
        let provider = provider.to_string();
        self.call(
            "provider_file_accounts",
            ACCOUNTS,
            &[(&video_id, Type::UUID), (&provider, Type::TEXT)],
        )
        .await
    }

    async fn claim_upload(
        &self,
        slot: &UploadSlot,
        accounts: &[String],
        hold: Duration,
    ) -> Result<UploadClaim, DbError> {
        // The function refuses claims outside (0 s, 1 h].
        let hold = hold.as_secs_f64().clamp(1.0, 3600.0);
        let more: [Param<'_>; 2] = [(&hold, Type::FLOAT8), (&accounts, Type::TEXT_ARRAY)];
        let answer: ClaimAnswer = call_for_slot(self, CLAIM, slot, &more).await?;
        Ok(answer.into())
    }

    async fn save_upload(
        &self,
        slot: &UploadSlot,
        token: Option<Uuid>,
        file: &ProviderFile,
        active: bool,
    ) -> Result<bool, DbError> {
        let more: [Param<'_>; 6] = [
            (&token, Type::UUID),
            (&file.name, Type::TEXT),
            (&file.uri, Type::TEXT),
            (&file.mime_type, Type::TEXT),
            (&active, Type::BOOL),
            (&file.expire_time, Type::TEXT),
        ];
        flag_for_slot(self, SAVE, slot, &more, "saved").await
    }

    async fn fail_upload(
        &self,
        slot: &UploadSlot,
        token: Option<Uuid>,
        file_name: Option<&str>,
        error: &str,
    ) -> Result<bool, DbError> {
        let more: [Param<'_>; 3] = [
            (&token, Type::UUID),
            (&file_name, Type::TEXT),
            (&error, Type::TEXT),
        ];
        flag_for_slot(self, FAIL, slot, &more, "failed").await
    }

    async fn release_upload(&self, slot: &UploadSlot, token: Uuid) -> Result<bool, DbError> {
        flag_for_slot(self, RELEASE, slot, &[(&token, Type::UUID)], "released").await
    }

    async fn forget_upload(&self, slot: &UploadSlot, file_name: &str) -> Result<bool, DbError> {
        flag_for_slot(self, FORGET, slot, &[(&file_name, Type::TEXT)], "forgotten").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(json: &str) -> UploadClaim {
        serde_json::from_str::<ClaimAnswer>(json).unwrap().into()
    }

    #[test]
    fn every_claim_answer_is_read() {
        let file = ProviderFile {
            name: "files/a".into(),
            uri: "u".into(),
            mime_type: "video/mp4".into(),
            expire_time: None,
        };
        let file_json = r#""name":"files/a","uri":"u","mimeType":"video/mp4""#;
        let ready = format!(r#"{{"state":"ready",{file_json},"expiresAt":"x"}}"#);
        assert_eq!(claim(&ready), UploadClaim::Ready(file.clone()));
        let processing = format!(r#"{{"state":"processing",{file_json},"processingSeconds":2.5}}"#);
        assert_eq!(
            claim(&processing),
            UploadClaim::Processing {
                file,
                since: Duration::from_millis(2500)
            }
        );
        let token = Uuid::new_v4();
        let claimed = format!(r#"{{"state":"claimed","token":"{token}","claimUntil":"x"}}"#);
        assert_eq!(claim(&claimed), UploadClaim::Claimed { token });
        let busy = r#"{"state":"busy","account":"2","claimUntil":null,"waitSeconds":null}"#;
        assert_eq!(
            claim(busy),
            UploadClaim::Busy {
                account: "2".into(),
                wait: None
            }
        );
        let failed = r#"{"state":"failed","account":"1","error":"bad codec"}"#;
        assert_eq!(
            claim(failed),
            UploadClaim::Failed {
                account: "1".into(),
                error: "bad codec".into()
            }
        );
    }

    #[test]
    fn calls_are_named_after_their_function() {
        assert_eq!(function_name(CLAIM), "claim_provider_file");
        assert_eq!(function_name(SAVE), "save_provider_file");
        assert_eq!(function_name(FAIL), "fail_provider_file");
        assert_eq!(function_name(RELEASE), "release_provider_file");
        assert_eq!(function_name(FORGET), "forget_provider_file");
    }
}
