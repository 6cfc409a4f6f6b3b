//! RSA signing keys for the tokens tresor issues (RS256: the one algorithm every relying party
//! accepts). The private key leaves this module only as PKCS#1 DER in a zeroed buffer, to be
//! sealed under the KEK or handed to the JWT encoder.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use zeroize::Zeroizing;

use crate::CryptoError;

/// Modulus size of new signing keys.
pub const RSA_BITS: usize = 2048;

/// A new RSA key pair.
pub struct RsaKeyPair {
    /// The private key, PKCS#1 DER.
    pub private_pkcs1_der: Zeroizing<Vec<u8>>,
    /// The public key as JWK members: modulus and exponent, base64url without padding.
    pub n: String,
    pub e: String,
}

impl std::fmt::Debug for RsaKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsaKeyPair")
            .field("kid", &jwk_thumbprint(&self.n, &self.e))
            .finish_non_exhaustive()
    }
}

/// Generates an RSA key pair from the operating system's random source.
pub fn generate_rsa() -> Result<RsaKeyPair, CryptoError> {
    let mut rng = rsa::rand_core::OsRng;
    let key = rsa::RsaPrivateKey::new(&mut rng, RSA_BITS).map_err(|_| CryptoError::Random)?;
    let der = key.to_pkcs1_der().map_err(|_| CryptoError::Random)?;
    Ok(RsaKeyPair {
        private_pkcs1_der: Zeroizing::new(der.as_bytes().to_vec()),
        n: URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
        e: URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
    })
}

/// The RFC 7638 thumbprint of an RSA public key: the SHA-256 of its required members in
/// lexicographic order, base64url. Used as `kid`, so a key id names exactly one key.
pub fn jwk_thumbprint(n: &str, e: &str) -> String {
    let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        canonical.as_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thumbprint_matches_rfc_7638s_example() {
        // RFC 7638 section 3.1.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        assert_eq!(
            jwk_thumbprint(n, "AQAB"),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn a_generated_key_signs_what_its_public_half_verifies() {
        let pair = generate_rsa().expect("keygen");
        let n = URL_SAFE_NO_PAD.decode(&pair.n).expect("n");
        let e = URL_SAFE_NO_PAD.decode(&pair.e).expect("e");
        assert!(n.len() * 8 >= RSA_BITS);
        let key = ring::signature::RsaPublicKeyComponents { n: &n, e: &e };
        // Sign with the DER through ring, verify with the published components.
        let signer = ring::rsa::KeyPair::from_der(&pair.private_pkcs1_der).expect("der");
        let mut sig = vec![0u8; signer.public().modulus_len()];
        signer
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                b"payload",
                &mut sig,
            )
            .expect("sign");
        key.verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            b"payload",
            &sig,
        )
        .expect("verify");
    }
}
