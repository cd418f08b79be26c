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
