//! Envelope encryption: a fresh data key per secret version, wrapped by the KEK.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::{CryptoError, KeyProvider, SecretValue};

/// What is stored for one secret version: no plaintext, no usable key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Which KEK wrapped the data key.
    pub kek_id: String,
    /// nonce || AES-256-GCM(KEK, data key) || tag.
    pub wrapped_key: Vec<u8>,
    /// nonce || AES-256-GCM(data key, value) || tag.
    pub ciphertext: Vec<u8>,
}

/// AES-256-GCM with a random nonce, prepended.
pub(crate) fn encrypt(key: &[u8], plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let key =
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).map_err(|_| CryptoError::Decrypt)?);
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| CryptoError::Random)?;
    let mut buf = Zeroizing::new(plaintext.to_vec());
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut *buf,
    )
    .map_err(|_| CryptoError::Decrypt)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Ok(out)
}

pub(crate) fn decrypt(
    key: &[u8],
    sealed: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.len() < NONCE_LEN {
        return Err(CryptoError::Decrypt);
    }
    let key =
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).map_err(|_| CryptoError::Decrypt)?);
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Decrypt)?;
    let mut buf = Zeroizing::new(body.to_vec());
    let plain_len = key
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .map_err(|_| CryptoError::Decrypt)?
        .len();
    buf.truncate(plain_len);
    Ok(buf)
}

/// Encrypts `value` under a new data key, wrapped by the provider's current KEK. `aad` binds the
/// result to where it is stored.
pub fn seal(
    provider: &dyn KeyProvider,
    value: &SecretValue,
    aad: &[u8],
) -> Result<Sealed, CryptoError> {
    let mut data_key = Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(&mut *data_key)
        .map_err(|_| CryptoError::Random)?;
    let ciphertext = encrypt(&*data_key, value.expose_secret(), aad)?;
    let (kek_id, wrapped_key) = provider.wrap(&*data_key, aad)?;
    Ok(Sealed {
        kek_id,
        wrapped_key,
        ciphertext,
    })
}

/// Decrypts a sealed value; any tampering, a wrong `aad` or a wrong key is an error, never garbage.
pub fn open(
    provider: &dyn KeyProvider,
    sealed: &Sealed,
    aad: &[u8],
) -> Result<SecretValue, CryptoError> {
    let data_key = provider.unwrap(&sealed.kek_id, &sealed.wrapped_key, aad)?;
    let plain = decrypt(&data_key, &sealed.ciphertext, aad)?;
    Ok(SecretValue::new(plain.to_vec()))
}

/// Re-wraps a sealed value's data key under the provider's current KEK; the value itself is not
/// decrypted and its ciphertext is unchanged.
pub fn rewrap(
    provider: &dyn KeyProvider,
    sealed: &Sealed,
    aad: &[u8],
) -> Result<Sealed, CryptoError> {
    let data_key = provider.unwrap(&sealed.kek_id, &sealed.wrapped_key, aad)?;
    let (kek_id, wrapped_key) = provider.wrap(&data_key, aad)?;
    Ok(Sealed {
        kek_id,
        wrapped_key,
        ciphertext: sealed.ciphertext.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyRing;

    fn ring() -> (tempfile::TempDir, KeyRing) {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::open_or_create(&dir.path().join("kek")).unwrap();
        (dir, ring)
    }

    #[test]
    fn values_round_trip_byte_for_byte() {
        let (_d, ring) = ring();
        let value = SecretValue::new(b"line1\nline2 `echo hi` $HOME \"q\" \xff\x00".to_vec());
        let sealed = seal(&ring, &value, b"ws|workspace||A|1").unwrap();
        assert!(!sealed.ciphertext.windows(5).any(|w| w == b"line1"));
        assert_eq!(
            open(&ring, &sealed, b"ws|workspace||A|1")
                .unwrap()
                .expose_secret(),
            value.expose_secret()
        );
    }

    #[test]
    fn tampering_or_moving_a_ciphertext_is_an_error_never_garbage() {
        let (_d, ring) = ring();
        let sealed = seal(&ring, &SecretValue::new(b"canary".to_vec()), b"ws|A|1").unwrap();
        assert!(
            matches!(open(&ring, &sealed, b"ws|B|1"), Err(CryptoError::Decrypt)),
            "copied to another row"
        );
        let mut flipped = sealed.clone();
        let last = flipped.ciphertext.len() - 1;
        flipped.ciphertext[last] ^= 1;
        assert!(matches!(
            open(&ring, &flipped, b"ws|A|1"),
            Err(CryptoError::Decrypt)
        ));
        let mut wrapped = sealed.clone();
        wrapped.wrapped_key[20] ^= 1;
        assert!(matches!(
            open(&ring, &wrapped, b"ws|A|1"),
            Err(CryptoError::Decrypt)
        ));
    }
}
