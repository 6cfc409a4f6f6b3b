//! Personal access tokens: minting, parsing, hashing and constant-time checking.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SecureRandom;
use subtle::ConstantTimeEq;

/// Every token starts with this, so scanners and people recognise one.
pub const PREFIX: &str = "trp_";
const ID_LEN: usize = 16;
const SECRET_LEN: usize = 43; // 32 random bytes, base64url
const CHECK_LEN: usize = 6; // 4 bytes of SHA-256, base64url
const TOKEN_LEN: usize = PREFIX.len() + ID_LEN + SECRET_LEN + CHECK_LEN;

/// Why a string is not a well-formed token. Deliberately vague towards callers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatError {
    #[error("not a tresor access token")]
    Malformed,
    #[error("the access token's checksum does not match; it was mistyped or truncated")]
    Checksum,
    #[error("the system random number generator failed")]
    Random,
}

/// A freshly minted token: show `token` once, store `id` and `secret_hash`.
pub struct MintedToken {
    pub id: String,
    pub token: String,
    pub secret_hash: [u8; 32],
}

impl std::fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedToken")
            .field("id", &self.id)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// A token parsed from a request: its id (for lookup) and the hash of its secret.
#[derive(Debug)]
pub struct PresentedToken {
    pub id: String,
    secret_hash: [u8; 32],
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn checksum(body: &str) -> String {
    URL_SAFE_NO_PAD.encode(&sha256(body.as_bytes())[..4])
}

/// Mints a new token from the system RNG.
pub fn mint() -> Result<MintedToken, PatError> {
    let rng = ring::rand::SystemRandom::new();
    let mut id = [0u8; ID_LEN / 2];
    let mut secret = [0u8; 32];
    rng.fill(&mut id).map_err(|_| PatError::Random)?;
    rng.fill(&mut secret).map_err(|_| PatError::Random)?;
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let secret = URL_SAFE_NO_PAD.encode(secret);
    let body = format!("{PREFIX}{id}{secret}");
    let token = format!("{body}{}", checksum(&body));
    Ok(MintedToken {
        id,
        secret_hash: sha256(secret.as_bytes()),
        token,
    })
}

/// Whether a credential looks like one of our tokens (as opposed to a JWT).
pub fn looks_like_pat(credential: &str) -> bool {
    credential.starts_with(PREFIX)
}

/// Parses a presented token and checks its checksum.
pub fn parse(token: &str) -> Result<PresentedToken, PatError> {
    if token.len() != TOKEN_LEN || !token.is_ascii() || !token.starts_with(PREFIX) {
        return Err(PatError::Malformed);
    }
    let (body, check) = token.split_at(TOKEN_LEN - CHECK_LEN);
    if !bool::from(checksum(body).as_bytes().ct_eq(check.as_bytes())) {
        return Err(PatError::Checksum);
    }
    let id = &body[PREFIX.len()..PREFIX.len() + ID_LEN];
    let secret = &body[PREFIX.len() + ID_LEN..];
    if !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PatError::Malformed);
    }
    Ok(PresentedToken {
        id: id.to_owned(),
        secret_hash: sha256(secret.as_bytes()),
    })
}

impl PresentedToken {
    /// Constant-time comparison against the stored hash.
    pub fn matches(&self, stored_hash: &[u8]) -> bool {
        bool::from(self.secret_hash.as_slice().ct_eq(stored_hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_parse_and_match_only_their_hash() {
        let minted = mint().unwrap();
        assert!(minted.token.starts_with("trp_") && minted.token.len() == TOKEN_LEN);
        let presented = parse(&minted.token).unwrap();
        assert_eq!(presented.id, minted.id);
        assert!(presented.matches(&minted.secret_hash));
        assert!(!presented.matches(&mint().unwrap().secret_hash));
        assert!(
            !format!("{minted:?}").contains(&minted.token[20..]),
            "Debug must not show the token"
        );
    }

    #[test]
    fn typos_and_garbage_are_refused_before_any_lookup() {
        let token = mint().unwrap().token;
        let mut typo = token.clone().into_bytes();
        typo[30] = if typo[30] == b'a' { b'b' } else { b'a' };
        assert_eq!(
            parse(&String::from_utf8(typo).unwrap()).unwrap_err(),
            PatError::Checksum
        );
        assert_eq!(
            parse(&token[..token.len() - 1]).unwrap_err(),
            PatError::Malformed
        );
        assert_eq!(parse("eyJhbGciOi.x.y").unwrap_err(), PatError::Malformed);
    }
}
