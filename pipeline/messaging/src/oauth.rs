//! Google service-account credentials for FCM: the JSON file Firebase's
//! console hands out is all a user configures. Kairos signs a JWT with the
//! account's RSA key (RS256), trades it at the token endpoint for an access
//! token (OAuth 2.0 JWT bearer grant, RFC 7523), and reuses that token until
//! a minute before it expires.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::channel::Failure;

/// The scope FCM HTTP v1 needs.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// Where tokens come from when the file names no `token_uri`.
const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// A service-account file Kairos cannot use.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// Not JSON, or a field missing (serde names it).
    #[error("{0}")]
    File(#[from] serde_json::Error),
    /// `client_email` is empty: Google needs it as the token's issuer.
    #[error("field `client_email` is empty; use the file Firebase's console downloads")]
    NoEmail,
    /// `private_key` is not an RSA key in PEM.
    #[error(
        "field `private_key`: not a PEM RSA key ({0}); use the file Firebase's console downloads"
    )]
    Key(jsonwebtoken::errors::Error),
}

/// The fields of the file Kairos reads; the others are ignored.
#[derive(Deserialize)]
struct AccountFile {
    client_email: String,
    private_key: String,
    #[serde(default)]
    token_uri: Option<String>,
}

/// A service account: who it is, its signing key, where tokens come from.
pub struct ServiceAccount {
    /// `client_email`.
    pub client_email: String,
    /// `token_uri` (Google's, or a local one in tests).
    pub token_uri: String,
    key: jsonwebtoken::EncodingKey,
}

/// The claims of the JWT bearer grant (RFC 7523 section 3).
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

impl ServiceAccount {
    /// Reads the service-account JSON (`client_email`, `private_key` as a
    /// PEM, optional `token_uri`).
    pub fn from_json(text: &str) -> Result<ServiceAccount, AccountError> {
        let file: AccountFile = serde_json::from_str(text)?;
        if file.client_email.is_empty() {
            return Err(AccountError::NoEmail);
        }
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(file.private_key.as_bytes())
            .map_err(AccountError::Key)?;
        Ok(ServiceAccount {
            client_email: file.client_email,
            token_uri: file
                .token_uri
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| GOOGLE_TOKEN_URI.into()),
            key,
        })
    }

    /// The RS256-signed JWT asking for `scope`, issued at `now` (Unix
    /// seconds), valid one hour.
    pub fn assertion(&self, scope: &str, now: i64) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = Claims {
            iss: &self.client_email,
            scope,
            aud: &self.token_uri,
            iat: now,
            exp: now + 3600,
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &self.key,
        )
    }
}

/// Access tokens of one service account, fetched when needed and cached.
pub struct TokenSource {
    account: ServiceAccount,
    scope: String,
    cached: Mutex<Option<(String, Instant)>>,
}

impl TokenSource {
    /// Tokens for `scope`.
    pub fn new(account: ServiceAccount, scope: &str) -> TokenSource {
        TokenSource {
            account,
            scope: scope.to_string(),
            cached: Mutex::new(None),
        }
    }

    /// A valid access token. One exchange at a time: concurrent sends wait
    /// for it instead of each asking.
    pub async fn token(&self, client: &reqwest::Client) -> Result<String, Failure> {
        let mut cached = self.cached.lock().await;
        if let Some((t, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(t.clone());
        }
        let assertion = self
            .account
            .assertion(&self.scope, chrono::Utc::now().timestamp())
            .map_err(|e| Failure::Permanent {
                reason: format!("signing the token request failed: {e}"),
            })?;
        let resp = client
            .post(&self.account.token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| Failure::Retryable {
                reason: format!("token endpoint {}: {e}", self.account.token_uri),
                retry_after: None,
            })?;
        let status = resp.status();
        // An answer that is not JSON (a proxy's error page) is kept as its
        // status alone: the reason below still names it.
        let body: Value = match resp.json().await {
            Ok(v) => v,
            Err(e) if status.is_success() => {
                return Err(Failure::Retryable {
                    reason: format!(
                        "token endpoint {} answered {} without a JSON body: {e}",
                        self.account.token_uri,
                        status.as_u16()
                    ),
                    retry_after: None,
                });
            }
            Err(_) => Value::Null,
        };
        if !status.is_success() {
            let reason = format!(
                "token endpoint {} answered {}: {} (check the service account file and that it may use FCM)",
                self.account.token_uri,
                status.as_u16(),
                body["error_description"]
                    .as_str()
                    .or(body["error"].as_str())
                    .unwrap_or("")
            );
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                Failure::Retryable {
                    reason,
                    retry_after: None,
                }
            } else {
                Failure::Permanent { reason }
            });
        }
        let token = body["access_token"]
            .as_str()
            .ok_or_else(|| Failure::Retryable {
                reason: "token endpoint answered without access_token".into(),
                retry_after: None,
            })?
            .to_string();
        // Renew a minute early, so no send carries a token about to lapse.
        // `expires_in` is only RECOMMENDED (RFC 6749 5.1); Google's tokens
        // live an hour, so that is the life of one without it.
        let life = body["expires_in"]
            .as_u64()
            .unwrap_or(3600)
            .saturating_sub(60);
        *cached = Some((token.clone(), Instant::now() + Duration::from_secs(life)));
        Ok(token)
    }
}
