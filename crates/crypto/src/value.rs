//! `SecretValue`: a secret's bytes, zeroed on drop and never shown.

use secrecy::{ExposeSecret, SecretBox};

/// A secret value. `Debug` prints `***`; there is no `Display` and no `Serialize`.
pub struct SecretValue(SecretBox<[u8]>);

impl SecretValue {
    pub fn new(bytes: Vec<u8>) -> SecretValue {
        SecretValue(SecretBox::new(bytes.into_boxed_slice()))
    }

    /// The plaintext. Every call site is a place where a secret leaves protection.
    pub fn expose_secret(&self) -> &[u8] {
        self.0.expose_secret()
    }

    pub fn len(&self) -> usize {
        self.0.expose_secret().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(***)")
    }
}

impl Clone for SecretValue {
    fn clone(&self) -> Self {
        SecretValue::new(self.expose_secret().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let v = SecretValue::new(b"canary-1234".to_vec());
        assert_eq!(format!("{v:?}"), "SecretValue(***)");
        assert_eq!(v.expose_secret(), b"canary-1234");
    }
}
