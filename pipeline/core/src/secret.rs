//! Secrets: a string type that never prints, one constant-time comparison
//! for every key, token and signature, and fresh random tokens.

use serde::Deserialize;

/// A secret string whose `Debug` never prints the value.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    /// Whether `presented` is this secret, in time independent of where
    /// they differ.
    pub fn matches(&self, presented: &str) -> bool {
        same(&self.0, presented)
    }
}

/// Constant-time string equality, for comparing secrets and signatures:
/// a caller learns whether they are equal, never how long a prefix is.
pub fn same(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// What an `Authorization` header presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `Bearer <token>`.
    Bearer(String),
    /// `Basic <base64 of user:password>`; a value without `:` is all user.
    Basic {
        /// The user name (Segment's SDKs put the write key here).
        user: String,
        /// The password (browsers prompting for a report token put it here).
        password: String,
    },
}

/// Why an `Authorization` header value is not credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// Neither `Basic` nor `Bearer`, or no value after the scheme.
    #[error("is not `Basic <base64>` or `Bearer <token>`")]
    Scheme,
    /// The Basic value is not base64.
    #[error("has a Basic value that is not base64: {0}")]
    Base64(String),
    /// The decoded Basic value is not UTF-8.
    #[error("has a Basic value that is not UTF-8 text")]
    Utf8,
}

impl Credentials {
    /// Parses an `Authorization` header value.
    ///
    /// Written here rather than taken from the `headers` crate: that one
    /// refuses a Basic value without `:` and keeps a Bearer token's
    /// trailing spaces, both of which clients send.
    pub fn parse(value: &str) -> Result<Credentials, CredentialsError> {
        use base64::Engine as _;
        let (scheme, rest) = value
            .trim()
            .split_once(' ')
            .ok_or(CredentialsError::Scheme)?;
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("Bearer") {
            return Ok(Credentials::Bearer(rest.to_string()));
        }
        if !scheme.eq_ignore_ascii_case("Basic") {
            return Err(CredentialsError::Scheme);
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|e| CredentialsError::Base64(e.to_string()))?;
        let text = String::from_utf8(decoded).map_err(|_| CredentialsError::Utf8)?;
        Ok(match text.split_once(':') {
            Some((user, password)) => Credentials::Basic {
                user: user.to_string(),
                password: password.to_string(),
            },
            None => Credentials::Basic {
                user: text,
                password: String::new(),
            },
        })
    }
}

/// A fresh random token of `bytes` random bytes, hex (URL- and header-safe).
pub fn random_token(bytes: usize) -> String {
    use rand::Rng as _;
    let mut rng = rand::rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_is_equality() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"), "a prefix is not the secret");
        assert!(!same("", "a"));
        assert!(Secret("k".into()).matches("k"));
        assert!(!Secret("k".into()).matches("K"));
    }

    #[test]
    fn tokens_are_fresh_hex() {
        let (a, b) = (random_token(16), random_token(16));
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}

#[cfg(test)]
mod credentials_tests {
    use super::*;

    #[test]
    fn bearer_and_basic_parse_as_clients_send_them() {
        assert_eq!(
            Credentials::parse("Bearer k1 "),
            Ok(Credentials::Bearer("k1".into()))
        );
        // base64("key:") as Segment's SDKs send a write key.
        assert_eq!(
            Credentials::parse("Basic a2V5Og=="),
            Ok(Credentials::Basic {
                user: "key".into(),
                password: String::new()
            })
        );
        // base64("any:s3cret"), base64("key") (no colon).
        assert_eq!(
            Credentials::parse("basic YW55OnMzY3JldA=="),
            Ok(Credentials::Basic {
                user: "any".into(),
                password: "s3cret".into()
            })
        );
        assert_eq!(
            Credentials::parse("Basic a2V5"),
            Ok(Credentials::Basic {
                user: "key".into(),
                password: String::new()
            })
        );
        assert!(matches!(
            Credentials::parse("Basic !!!"),
            Err(CredentialsError::Base64(_))
        ));
        assert_eq!(
            Credentials::parse("Digest x"),
            Err(CredentialsError::Scheme)
        );
        assert_eq!(Credentials::parse("Bearer"), Err(CredentialsError::Scheme));
    }
}
