//! API tokens for `vipvisor serve`: a name, a role (`viewer` reads, `admin` also writes)
//! and a secret shown once at creation. Only the secret's SHA-256 is stored, so a copy of
//! the store gives no token; a token is checked by hashing what the caller sent and
//! looking the hash up. The secret is 256 random bits from a CSPRNG seeded by the OS.

use rand::Rng as _;
use serde::Serialize;
use sha2::{Digest, Sha256};
use vipvisor_store::TokenRow;

use crate::{ApiError, App, ErrorCode, Result};

/// What a token may do.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Reads and writes.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = ApiError;
    fn from_str(s: &str) -> Result<Role> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "admin" => Ok(Role::Admin),
            _ => Err(ApiError::new(ErrorCode::InvalidValue, format!("invalid role {s:?}; expected viewer or admin"))),
        }
    }
}

/// Who is calling: the token's name (the audit log's actor) and role.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

/// A token as listed (never its secret).
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenView {
    pub name: String,
    pub role: Role,
    pub created: String,
}

/// A token just created: the only time its secret is seen.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct CreatedToken {
    pub name: String,
    pub role: Role,
    pub token: String,
}

impl std::fmt::Debug for CreatedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedToken").field("name", &self.name).field("role", &self.role).finish_non_exhaustive()
    }
}

/// Tokens start with this, so a leaked one is recognisable (secret scanners).
pub const PREFIX: &str = "vv_";

/// The hex SHA-256 of a secret: what is kept instead of it.
pub fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// 256 random bits from a CSPRNG seeded by the OS, as base64url text.
pub fn random_secret() -> String {
    use base64::Engine as _;
    let mut secret = [0u8; 32];
    let mut rng: rand::rngs::StdRng = rand::make_rng();
    rng.fill_bytes(&mut secret);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidValue,
            format!("invalid token name {name:?}; expected 1 to 63 of a-z, 0-9, '-', '.', '_'"),
        ))
    }
}

fn role_of(row: &TokenRow) -> Result<Role> {
    row.role.parse().map_err(|_| {
        ApiError::new(ErrorCode::Internal, format!("token {:?} has role {:?} in the store", row.name, row.role))
    })
}

impl App {
    /// Creates a token; its secret is in the answer and nowhere else.
    pub async fn create_token(&self, name: &str, role: Role) -> Result<CreatedToken> {
        check_name(name)?;
        if self.store().tokens().await?.iter().any(|t| t.name == name) {
            return Err(ApiError::new(
                ErrorCode::TokenExists,
                format!("token {name:?} already exists; expected a new name (or revoke it first)"),
            ));
        }
        let token = format!("{PREFIX}{}", random_secret());
        let row =
            TokenRow { name: name.to_owned(), role: role.as_str().to_owned(), hash: hash(&token), created: self.now() };
        self.store().add_token(&row).await?;
        Ok(CreatedToken { name: name.to_owned(), role, token })
    }

    /// Every token, without secrets.
    pub async fn tokens(&self) -> Result<Vec<TokenView>> {
        self.store()
            .tokens()
            .await?
            .iter()
            .map(|t| Ok(TokenView { name: t.name.clone(), role: role_of(t)?, created: t.created.rfc3339_seconds() }))
            .collect()
    }

    /// Revokes `name`: from now on it is refused.
    pub async fn revoke_token(&self, name: &str) -> Result<()> {
        if self.store().revoke_token(name, self.now()).await? {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::UnknownToken,
                format!("no token named {name:?}; expected one of `vipvisor token list`"),
            ))
        }
    }

    /// The caller a bearer token stands for, or `None` for a token that is not (or no
    /// longer) known.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Caller>> {
        if !token.starts_with(PREFIX) || token.len() > 256 {
            return Ok(None);
        }
        match self.store().token_by_hash(&hash(token)).await? {
            Some(row) => Ok(Some(Caller { name: row.name.clone(), role: role_of(&row)? })),
            None => Ok(None),
        }
    }

    /// The same application acting as `caller` (its writes are audited under the token's
    /// name, as `token:NAME`).
    pub fn as_caller(&self, caller: &Caller) -> App {
        let mut app = self.clone();
        app.store = std::sync::Arc::new(self.store().as_actor(format!("token:{}", caller.name)));
        app
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_are_shown_once_stored_hashed_checked_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/s.db", dir.path().display());
        let app = App::open(&url, "test", std::time::Duration::ZERO).await.unwrap();
        let t = app.create_token("ci", Role::Admin).await.unwrap();
        assert!(t.token.starts_with(PREFIX) && t.token.len() == 46, "{}", t.token);
        assert!(!format!("{t:?}").contains(&t.token), "Debug never shows the secret");
        assert_eq!(app.authenticate(&t.token).await.unwrap(), Some(Caller { name: "ci".into(), role: Role::Admin }));
        assert_eq!(app.authenticate("vv_wrong").await.unwrap(), None);
        let e = app.create_token("ci", Role::Viewer).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::TokenExists);
        assert_eq!(app.create_token("Bad Name", Role::Viewer).await.unwrap_err().code, ErrorCode::InvalidValue);
        let stored = std::fs::read(dir.path().join("s.db")).unwrap();
        assert!(!stored.windows(t.token.len()).any(|w| w == t.token.as_bytes()), "the secret is not in the store");
        assert_eq!(app.tokens().await.unwrap()[0].name, "ci");
        app.revoke_token("ci").await.unwrap();
        assert_eq!(app.authenticate(&t.token).await.unwrap(), None, "revoked");
        assert_eq!(app.revoke_token("ci").await.unwrap_err().code, ErrorCode::UnknownToken);
        assert_eq!("root".parse::<Role>().unwrap_err().message, "invalid role \"root\"; expected viewer or admin");
    }
}
