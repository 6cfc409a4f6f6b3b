//! Key-encryption keys. `KeyProvider` is the boundary a Vault transit or cloud KMS backend would
//! implement; `KeyRing` is the local one: a 0600 file of `id:base64(key)` lines, current first.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::CryptoError;
use crate::envelope::{decrypt, encrypt};

/// Wraps and unwraps data keys under key-encryption keys.
pub trait KeyProvider: Send + Sync {
    /// Wraps a data key under the current KEK; returns the KEK's id and the wrapped key.
    fn wrap(&self, data_key: &[u8], aad: &[u8]) -> Result<(String, Vec<u8>), CryptoError>;
    /// Unwraps a data key wrapped under the KEK `kek_id`.
    fn unwrap(
        &self,
        kek_id: &str,
        wrapped: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError>;
}

struct Kek {
    id: String,
    key: Zeroizing<Vec<u8>>,
}

/// The local key ring, read from its file (and re-read when a key id is unknown, so a rotation
/// done by `tresor admin rotate-kek` reaches a running server without a restart).
pub struct KeyRing {
    path: PathBuf,
    keys: RwLock<Vec<Kek>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").field("path", &self.path).finish()
    }
}

fn file_error(path: &Path, reason: impl ToString) -> CryptoError {
    CryptoError::KeyFile {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn new_kek() -> Result<Kek, CryptoError> {
    let rng = SystemRandom::new();
    let mut key = Zeroizing::new(vec![0u8; 32]);
    rng.fill(&mut key).map_err(|_| CryptoError::Random)?;
    let mut id = [0u8; 6];
    rng.fill(&mut id).map_err(|_| CryptoError::Random)?;
    Ok(Kek {
        id: id.iter().map(|b| format!("{b:02x}")).collect(),
        key,
    })
}

fn read_keys(path: &Path) -> Result<Vec<Kek>, CryptoError> {
    let meta = std::fs::metadata(path).map_err(|e| file_error(path, e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(file_error(
            path,
            "is readable by group or others; chmod 600 it",
        ));
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| file_error(path, e))?);
    let mut keys = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (id, b64) = line
            .split_once(':')
            .ok_or_else(|| file_error(path, "a line is not id:key"))?;
        let key = Zeroizing::new(
            STANDARD
                .decode(b64.trim())
                .map_err(|_| file_error(path, "a key is not base64"))?,
        );
        if key.len() != 32 {
            return Err(file_error(path, "a key is not 32 bytes"));
        }
        keys.push(Kek {
            id: id.trim().to_owned(),
            key,
        });
    }
    if keys.is_empty() {
        return Err(file_error(path, "holds no key"));
    }
    Ok(keys)
}

fn write_keys(path: &Path, keys: &[Kek]) -> Result<(), CryptoError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut text = Zeroizing::new(String::new());
    for kek in keys {
        text.push_str(&kek.id);
        text.push(':');
        text.push_str(&STANDARD.encode(&*kek.key));
        text.push('\n');
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| file_error(&tmp, e))?;
    file.write_all(text.as_bytes())
        .map_err(|e| file_error(&tmp, e))?;
    file.sync_all().map_err(|e| file_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_error(path, e))
}

impl KeyRing {
    /// Opens the key file, creating it (0600, one new key) if it does not exist.
    pub fn open_or_create(path: &Path) -> Result<KeyRing, CryptoError> {
        if !path.exists() {
            write_keys(path, &[new_kek()?])?;
        }
        Ok(KeyRing {
            path: path.to_owned(),
            keys: RwLock::new(read_keys(path)?),
        })
    }

    /// Opens an existing key file; never creates one.
    pub fn open(path: &Path) -> Result<KeyRing, CryptoError> {
        Ok(KeyRing {
            path: path.to_owned(),
            keys: RwLock::new(read_keys(path)?),
        })
    }

    /// The ids of every KEK the file holds.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys
            .read()
            .map(|keys| keys.iter().map(|k| k.id.clone()).collect())
            .unwrap_or_default()
    }

    /// The current KEK's id.
    pub fn current_id(&self) -> Result<String, CryptoError> {
        let keys = self
            .keys
            .read()
            .map_err(|_| CryptoError::UnknownKey("poisoned".to_owned()))?;
        keys.first()
            .map(|k| k.id.clone())
            .ok_or_else(|| CryptoError::UnknownKey("none".to_owned()))
    }

    /// Step one of a rotation: a new current KEK, the old ones kept so nothing becomes unreadable.
    pub fn add_current(&self) -> Result<String, CryptoError> {
        let mut keys = self
            .keys
            .write()
            .map_err(|_| CryptoError::UnknownKey("poisoned".to_owned()))?;
        let kek = new_kek()?;
        let id = kek.id.clone();
        keys.insert(0, kek);
        write_keys(&self.path, &keys)?;
        Ok(id)
    }

    /// Last step of a rotation, once every data key is re-wrapped: forget all but the current KEK.
    pub fn retire_old(&self) -> Result<(), CryptoError> {
        let mut keys = self
            .keys
            .write()
            .map_err(|_| CryptoError::UnknownKey("poisoned".to_owned()))?;
        keys.truncate(1);
        write_keys(&self.path, &keys)
    }

    fn with_key<T>(
        &self,
        id: &str,
        f: impl Fn(&[u8]) -> Result<T, CryptoError>,
    ) -> Result<T, CryptoError> {
        {
            let keys = self
                .keys
                .read()
                .map_err(|_| CryptoError::UnknownKey(id.to_owned()))?;
            if let Some(k) = keys.iter().find(|k| k.id == id) {
                return f(&k.key);
            }
        }
        // Another process (tresor admin rotate-kek) may have added it.
        let fresh = read_keys(&self.path)?;
        let mut keys = self
            .keys
            .write()
            .map_err(|_| CryptoError::UnknownKey(id.to_owned()))?;
        *keys = fresh;
        let k = keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| CryptoError::UnknownKey(id.to_owned()))?;
        f(&k.key)
    }
}

impl KeyProvider for KeyRing {
    fn wrap(&self, data_key: &[u8], aad: &[u8]) -> Result<(String, Vec<u8>), CryptoError> {
        // New data keys always go under the file's current KEK, even when another process
        // rotated it since this one started.
        let fresh = read_keys(&self.path)?;
        if let Ok(mut keys) = self.keys.write() {
            *keys = fresh;
        }
        let id = self.current_id()?;
        let wrapped = self.with_key(&id, |kek| encrypt(kek, data_key, aad))?;
        Ok((id, wrapped))
    }

    fn unwrap(
        &self,
        kek_id: &str,
        wrapped: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.with_key(kek_id, |kek| decrypt(kek, wrapped, aad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SecretValue, envelope};

    #[test]
    fn the_key_file_is_private_and_rotation_keeps_everything_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        let ring = KeyRing::open_or_create(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let sealed = envelope::seal(&ring, &SecretValue::new(b"v".to_vec()), b"a").unwrap();

        // Another process rotates; this one still opens old values and learns the new key.
        let other = KeyRing::open_or_create(&path).unwrap();
        let new_id = other.add_current().unwrap();
        let rewrapped = envelope::rewrap(&other, &sealed, b"a").unwrap();
        assert_eq!(rewrapped.kek_id, new_id);
        assert_eq!(
            envelope::open(&ring, &rewrapped, b"a")
                .unwrap()
                .expose_secret(),
            b"v"
        );
        other.retire_old().unwrap();
        let fresh = KeyRing::open_or_create(&path).unwrap();
        assert!(matches!(
            envelope::open(&fresh, &sealed, b"a"),
            Err(CryptoError::UnknownKey(_))
        ));
        assert_eq!(
            envelope::open(&fresh, &rewrapped, b"a")
                .unwrap()
                .expose_secret(),
            b"v"
        );

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            KeyRing::open_or_create(&path),
            Err(CryptoError::KeyFile { .. })
        ));
    }
}
