//! Google service-account credentials for FCM: the JSON file Firebase's
//! console hands out is all a user configures. Kairos signs a JWT with the
//! account's RSA key (RS256), trades it at the token endpoint for an access
//! token (OAuth 2.0 JWT bearer grant, RFC 7523), and reuses that token until
//! a minute before it expires.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::channel::Failure;

/// The scope FCM HTTP v1 needs.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// A service account: who it is, its signing key, where tokens come from.
pub struct ServiceAccount {
    /// `client_email`.
    pub client_email: String,
    /// `token_uri` (Google's, or a local one in tests).
    pub token_uri: String,
    key: ring::signature::RsaKeyPair,
}

impl ServiceAccount {
    /// Reads the service-account JSON (`client_email`, `private_key` as a
    /// PKCS#8 PEM, `token_uri`). Errors name the field.
    pub fn from_json(text: &str) -> Result<ServiceAccount, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let field = |name: &str| {
            v[name]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| format!("field `{name}` is missing"))
        };
        let pem = field("private_key")?;
        let b64: String = pem
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("field `private_key`: not a PEM key: {e}"))?;
        let key = ring::signature::RsaKeyPair::from_pkcs8(&der)
            .map_err(|e| format!("field `private_key`: not a PKCS#8 RSA key: {e}"))?;
        Ok(ServiceAccount {
            client_email: field("client_email")?,
            token_uri: field("token_uri")
                .unwrap_or_else(|_| "https://oauth2.googleapis.com/token".into()),
            key,
        })
    }

    /// The signed JWT asking for `scope`, issued at `now` (Unix seconds),
    /// valid one hour.
    pub fn assertion(&self, scope: &str, now: i64) -> Result<String, String> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(json!({"alg": "RS256", "typ": "JWT"}).to_string());
        let claims = b64.encode(
            json!({
                "iss": self.client_email,
                "scope": scope,
                "aud": self.token_uri,
                "iat": now,
                "exp": now + 3600,
            })
            .to_string(),
        );
        let signing_input = format!("{header}.{claims}");
        let mut sig = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                signing_input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| "signing the token request failed".to_string())?;
        Ok(format!("{signing_input}.{}", b64.encode(sig)))
    }

    /// The public key (DER `RSAPublicKey`), for checking assertions.
    pub fn public_key(&self) -> Vec<u8> {
        use ring::signature::KeyPair as _;
        self.key.public_key().as_ref().to_vec()
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
            .map_err(|reason| Failure::Permanent { reason })?;
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
        let body: Value = resp.json().await.unwrap_or_default();
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
        let life = body["expires_in"]
            .as_u64()
            .unwrap_or(3600)
            .saturating_sub(60);
        *cached = Some((token.clone(), Instant::now() + Duration::from_secs(life)));
        Ok(token)
    }
}
