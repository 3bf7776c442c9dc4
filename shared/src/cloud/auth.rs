//! Who is calling: Supabase JWTs from the `Authorization: Bearer` header.
//!
//! Supabase signs its tokens with HS256 and the project's JWT secret. The
//! `role` claim says `service_role` for the back end's own key, and
//! `authenticated` for a signed-in user, whose id is `sub`. Anything else
//! (the `anon` key, a token without a user) is a caller with no rights here.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The shortest JWT secret accepted: Supabase's are longer; a short one is a
/// configuration mistake that would make tokens guessable.
pub const MIN_SECRET_BYTES: usize = 32;

/// A verified caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The back end itself (`role: service_role`): may do everything.
    Service,
    /// A signed-in user: may submit films and read their own.
    User(Uuid),
    /// A valid token that names no user (`anon`, or another role).
    Anonymous,
}

impl Caller {
    /// Whether this caller may read or change a film owned by `owner`.
    pub fn may_access(&self, owner: Option<Uuid>) -> bool {
        match self {
            Caller::Service => true,
            Caller::User(id) => owner == Some(*id),
            Caller::Anonymous => false,
        }
    }
}

/// Why a request's token was refused. The message says what was wrong with
/// the token, never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization header: send `Authorization: Bearer <JWT>`")]
    Missing,
    #[error("malformed Authorization header: expected `Bearer <JWT>`")]
    NotBearer,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token expired")]
    Expired,
}

/// The claims shotlist reads from a Supabase JWT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id; absent on service and anon keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    pub role: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
}

/// Checks tokens against the project's JWT secret.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier { key: <redacted> }")
    }
}

impl Verifier {
    /// A verifier for HS256 tokens signed with `secret`.
    pub fn new(secret: &str) -> Result<Verifier, String> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the JWT secret is {} bytes long; at least {MIN_SECRET_BYTES} are required",
                secret.len()
            ));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp"]);
        // Supabase user tokens carry `aud: authenticated`, service keys none:
        // the role claim is what decides.
        validation.validate_aud = false;
        validation.leeway = 30;
        let key = DecodingKey::from_secret(secret.as_bytes())
            .map_err(|e| format!("the JWT secret cannot be used: {e}"))?;
        Ok(Verifier { key, validation })
    }

    /// Verifies the value of an `Authorization` header.
    pub fn verify(&self, header: Option<&str>) -> Result<Caller, AuthError> {
        let header = header.ok_or(AuthError::Missing)?.trim();
        let token = match header.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err(AuthError::NotBearer),
        };
        if token.is_empty() {
            return Err(AuthError::NotBearer);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    AuthError::Invalid("bad signature".into())
                }
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                    AuthError::Invalid("not signed with HS256".into())
                }
                _ => AuthError::Invalid(e.to_string()),
            },
        )?;
        let claims = data.claims;
        Ok(match claims.role.as_str() {
            "service_role" => Caller::Service,
            "authenticated" => match claims.sub.as_deref().map(Uuid::parse_str) {
                Some(Ok(id)) => Caller::User(id),
                _ => {
                    return Err(AuthError::Invalid(
                        "an authenticated token needs a user id (sub) that is a UUID".into(),
                    ))
                }
            },
            _ => Caller::Anonymous,
        })
    }
}

/// Signs `claims` with `secret` (HS256): for tests and the local runner,
/// which play Supabase's part.
pub fn sign(secret: &str, claims: &Claims) -> Result<String, String> {
    let key = EncodingKey::from_secret(secret.as_bytes()).map_err(|e| e.to_string())?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).map_err(|e| e.to_string())
}

/// Seconds since the epoch, for `exp`.
pub fn now_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";

    fn token(role: &str, sub: Option<&str>, exp: u64) -> String {
        let claims = Claims {
            sub: sub.map(str::to_string),
            role: role.into(),
            exp,
        };
        sign(SECRET, &claims).unwrap()
    }

    #[test]
    fn roles_map_to_callers() {
        let v = Verifier::new(SECRET).unwrap();
        let exp = now_epoch() + 600;
        let user = Uuid::new_v4();
        let bearer = |t: String| format!("Bearer {t}");
        assert_eq!(
            v.verify(Some(&bearer(token("service_role", None, exp)))),
            Ok(Caller::Service)
        );
        assert_eq!(
            v.verify(Some(&bearer(token(
                "authenticated",
                Some(&user.to_string()),
                exp
            )))),
            Ok(Caller::User(user))
        );
        assert_eq!(
            v.verify(Some(&bearer(token("anon", None, exp)))),
            Ok(Caller::Anonymous)
        );
        assert!(matches!(
            v.verify(Some(&bearer(token("authenticated", Some("bob"), exp)))),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn bad_tokens_are_refused_with_the_reason() {
        let v = Verifier::new(SECRET).unwrap();
        assert_eq!(v.verify(None), Err(AuthError::Missing));
        assert_eq!(v.verify(Some("Basic abc")), Err(AuthError::NotBearer));
        assert_eq!(v.verify(Some("Bearer ")), Err(AuthError::NotBearer));
        assert!(matches!(
            v.verify(Some("Bearer not.a.jwt")),
            Err(AuthError::Invalid(_))
        ));
        let expired = token("service_role", None, now_epoch() - 3600);
        assert_eq!(
            v.verify(Some(&format!("Bearer {expired}"))),
            Err(AuthError::Expired)
        );
        let other = sign(
            "another-secret-that-is-also-long-enough-000",
            &Claims {
                sub: None,
                role: "service_role".into(),
                exp: now_epoch() + 600,
            },
        )
        .unwrap();
        assert_eq!(
            v.verify(Some(&format!("Bearer {other}"))),
            Err(AuthError::Invalid("bad signature".into()))
        );
    }

    #[test]
    fn a_short_secret_is_refused() {
        let e = Verifier::new("short").unwrap_err();
        assert!(e.contains("5 bytes"), "{e}");
    }
}
