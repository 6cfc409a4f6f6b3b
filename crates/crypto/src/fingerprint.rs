//! Keyed fingerprints of secret values for the audit trail: equal values give equal
//! fingerprints, but without the server key a fingerprint reveals nothing.

use ring::hmac;

use crate::SecretValue;

/// HMAC-SHA256 of the value under `key`, as 32 hex digits (128 bits).
pub fn fingerprint(key: &[u8], value: &SecretValue) -> String {
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, key),
        value.expose_secret(),
    );
    tag.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
