#![doc = include_str!("../README.md")]

pub mod envelope;
pub mod fingerprint;
pub mod keyring;
pub mod plain_sight;
#[cfg(test)]
mod proptests;
pub mod redact;
pub mod signing;
mod value;

pub use envelope::{Sealed, open, seal};
pub use keyring::{KeyProvider, KeyRing};
pub use value::SecretValue;

/// Cryptographic failures; none carries key material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "the ciphertext does not decrypt: it was altered, moved to another secret, or sealed under another key"
    )]
    Decrypt,
    #[error("no key-encryption key with id {0}")]
    UnknownKey(String),
    #[error("the key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("the system random number generator failed")]
    Random,
}
