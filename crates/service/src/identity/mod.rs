//! tresor as an OIDC issuer for workloads: RS256 signing keys sealed under the KEK, rotated on a
//! schedule, the discovery document and JWKS that relying parties read, and the short-lived,
//! single-audience identity tokens each running task gets.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::json;
use time::OffsetDateTime;
use tresor_crypto::{SecretValue, envelope};
use tresor_store::{AuditEvent, SealedRow, SigningKeyRow, Store};

use crate::{SecretService, ServiceError};

/// Longest lifetime of a task identity token.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// How long a retired key stays published beyond the lifetime of the last token it signed, for
/// relying parties whose clocks run behind.
const PUBLISH_GRACE: Duration = Duration::from_secs(5 * 60);

/// The issuer's slice of the settings.
#[derive(Debug, Clone)]
pub struct IdentitySettings {
    /// The `iss` of every token, exactly as relying parties reach tresor (`https://…`, no
    /// trailing slash). Empty: the server's own URL, filled in once it listens.
    pub issuer: String,
    /// Lifetime of each token (at most 15 minutes).
    pub token_ttl: Duration,
    /// Audiences a task may ask for; the first is the one its token file holds.
    pub audiences: Vec<String>,
    /// A signing key older than this is replaced by a new one.
    pub rotation_period: Duration,
    /// Standard variables set to the token file's path in every executor, such as
    /// `AWS_WEB_IDENTITY_TOKEN_FILE` and `AZURE_FEDERATED_TOKEN_FILE`.
    pub sdk_env: Vec<String>,
}

/// The workload a token is for.
#[derive(Debug, Clone)]
pub struct TaskSubject {
    pub workspace: String,
    pub user: String,
    pub task: String,
    /// The workflow run the task belongs to; a standalone TES task is its own run.
    pub run: String,
}

impl TaskSubject {
    /// The stable `sub`: `workspace:{ws}:task:{id}`.
    pub fn sub(&self) -> String {
        format!("workspace:{}:task:{}", self.workspace, self.task)
    }
}

/// A token and when it stops being valid (Unix seconds).
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub expires_at: i64,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: String,
    aud: &'a str,
    exp: i64,
    iat: i64,
    nbf: i64,
    jti: String,
    workspace: &'a str,
    user: &'a str,
    task: &'a str,
    run: &'a str,
    /// Only the task's own workspace, whatever else its submitter belongs to.
    groups: [&'a str; 1],
}

struct Signer {
    kid: String,
    key: EncodingKey,
}

/// The issuer; cheap to clone.
#[derive(Clone)]
pub struct IdentityService {
    store: Store,
    secrets: SecretService,
    settings: Arc<IdentitySettings>,
    signer: Arc<tokio::sync::Mutex<Option<Signer>>>,
}

impl std::fmt::Debug for IdentityService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityService")
            .field("issuer", &self.settings.issuer)
            .finish_non_exhaustive()
    }
}

/// Binds a sealed signing key to its id.
pub(crate) fn signing_key_aad(kid: &str) -> Vec<u8> {
    format!("tresor signing key\0{kid}").into_bytes()
}

fn internal(e: impl Into<anyhow::Error>) -> ServiceError {
    ServiceError::Internal(e.into())
}

impl IdentityService {
    pub fn new(store: Store, secrets: SecretService, settings: IdentitySettings) -> Self {
        IdentityService {
            store,
            secrets,
            settings: Arc::new(settings),
            signer: Arc::new(tokio::sync::Mutex::new(None)),
        }
    }

    pub fn settings(&self) -> &IdentitySettings {
        &self.settings
    }

    pub fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    /// Creates the first key, or a new one when the current key is older than the rotation
    /// period. Runs at start and then hourly.
    pub async fn ensure_current_key(&self) -> Result<(), ServiceError> {
        let due = match self.store.active_signing_key().await? {
            None => true,
            Some(key) => OffsetDateTime::parse(
                &key.created_at,
                &time::format_description::well_known::Rfc3339,
            )
            .map(|created| OffsetDateTime::now_utc() - created >= self.settings.rotation_period)
            .unwrap_or(true),
        };
        if due {
            let kid = self
                .rotate("system", "signing_key.rotate_scheduled")
                .await?;
            tracing::info!(%kid, "new token signing key");
        }
        Ok(())
    }

    /// Starts signing with a new key; the old one stays published until its tokens expired.
    pub async fn rotate(&self, actor: &str, action: &str) -> Result<String, ServiceError> {
        let pair = tokio::task::spawn_blocking(tresor_crypto::signing::generate_rsa)
            .await
            .map_err(internal)?
            .map_err(internal)?;
        let kid = tresor_crypto::signing::jwk_thumbprint(&pair.n, &pair.e);
        let jwk = json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": pair.n, "e": pair.e,
        });
        let sealed = envelope::seal(
            self.secrets.key_provider(),
            &SecretValue::new(pair.private_pkcs1_der.to_vec()),
            &signing_key_aad(&kid),
        )
        .map_err(internal)?;
        let row = SigningKeyRow {
            kid: kid.clone(),
            alg: "RS256".to_owned(),
            public_jwk: jwk.to_string(),
            sealed: SealedRow {
                kek_id: sealed.kek_id,
                wrapped_key: sealed.wrapped_key,
                ciphertext: sealed.ciphertext,
            },
            created_at: OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .map_err(internal)?,
            retired_at: None,
        };
        let publish_until = OffsetDateTime::now_utc() + MAX_TOKEN_TTL + PUBLISH_GRACE;
        let event = AuditEvent {
            actor: actor.to_owned(),
            action: action.to_owned(),
            object: format!("signing_key:{kid}"),
            workspace: None,
            source: None,
            result: "ok".to_owned(),
            detail: None,
        };
        self.store
            .rotate_signing_key(&row, publish_until, &event)
            .await?;
        Ok(kid)
    }

    /// The JWKS: every key whose tokens may still be valid.
    pub async fn jwks(&self) -> Result<serde_json::Value, ServiceError> {
        let keys = self
            .store
            .published_signing_keys(OffsetDateTime::now_utc())
            .await?;
        let keys: Vec<serde_json::Value> = keys
            .iter()
            .filter_map(|k| serde_json::from_str(&k.public_jwk).ok())
            .collect();
        Ok(json!({ "keys": keys }))
    }

    /// The discovery document, with every field strict relying parties require (the
    /// `openidconnect` crate, and so RustFS, refuses one without `authorization_endpoint`).
    pub fn discovery(&self) -> serde_json::Value {
        let iss = &self.settings.issuer;
        json!({
            "issuer": iss,
            "jwks_uri": format!("{iss}/.well-known/jwks.json"),
            "authorization_endpoint": format!("{iss}/oauth2/authorize"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid"],
            "claims_supported": [
                "iss", "sub", "aud", "exp", "iat", "nbf", "jti",
                "workspace", "user", "task", "run", "groups"
            ],
        })
    }

    /// The key that signs now, loaded (and decrypted) again only when another process, such as
    /// `tresor admin rotate-signing-key`, replaced it.
    async fn with_signer<T>(
        &self,
        f: impl FnOnce(&Signer) -> Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        let active = self
            .store
            .active_signing_key()
            .await?
            .ok_or_else(|| internal(anyhow::anyhow!("no signing key")))?;
        let mut signer = self.signer.lock().await;
        if signer.as_ref().is_none_or(|s| s.kid != active.kid) {
            let der = envelope::open(
                self.secrets.key_provider(),
                &envelope::Sealed {
                    kek_id: active.sealed.kek_id.clone(),
                    wrapped_key: active.sealed.wrapped_key.clone(),
                    ciphertext: active.sealed.ciphertext.clone(),
                },
                &signing_key_aad(&active.kid),
            )
            .map_err(internal)?;
            *signer = Some(Signer {
                kid: active.kid.clone(),
                key: EncodingKey::from_rsa_der(der.expose_secret()),
            });
        }
        match signer.as_ref() {
            Some(s) => f(s),
            None => Err(internal(anyhow::anyhow!("no signing key"))),
        }
    }

    /// Checks that `audience` is one tasks may ask for; `None` is the default audience.
    pub fn audience<'a>(&'a self, audience: Option<&'a str>) -> Result<&'a str, ServiceError> {
        let allowed = &self.settings.audiences;
        match audience {
            None => allowed
                .first()
                .map(String::as_str)
                .ok_or_else(|| internal(anyhow::anyhow!("no audience configured"))),
            Some(a) if allowed.iter().any(|x| x == a) => Ok(a),
            Some(a) => Err(ServiceError::invalid(
                "audience",
                format!(
                    "{a:?} is not an audience tasks may ask for; allowed: {}",
                    allowed.join(", ")
                ),
            )),
        }
    }

    /// Issues a token for `subject`, valid for the configured lifetime, for one audience.
    pub async fn mint(
        &self,
        subject: &TaskSubject,
        audience: Option<&str>,
    ) -> Result<IssuedToken, ServiceError> {
        let aud = self.audience(audience)?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let ttl = self.settings.token_ttl.min(MAX_TOKEN_TTL).as_secs();
        let exp = now + i64::try_from(ttl).unwrap_or(900);
        let claims = Claims {
            iss: &self.settings.issuer,
            sub: subject.sub(),
            aud,
            exp,
            iat: now,
            nbf: now,
            jti: uuid::Uuid::now_v7().to_string(),
            workspace: &subject.workspace,
            user: &subject.user,
            task: &subject.task,
            run: &subject.run,
            groups: [&subject.workspace],
        };
        let token = self
            .with_signer(|signer| {
                let mut header = Header::new(Algorithm::RS256);
                header.kid = Some(signer.kid.clone());
                jsonwebtoken::encode(&header, &claims, &signer.key).map_err(internal)
            })
            .await?;
        Ok(IssuedToken {
            token,
            expires_at: exp,
        })
    }
}

/// Re-wraps every signing key's data key under the current KEK (part of a KEK rotation, which
/// retires the old KEK right after).
pub(crate) async fn rewrap_signing_keys(
    store: &Store,
    provider: &dyn tresor_crypto::KeyProvider,
) -> Result<usize, ServiceError> {
    let mut rows = store.all_signing_keys().await?;
    for row in &mut rows {
        let sealed = envelope::rewrap(
            provider,
            &envelope::Sealed {
                kek_id: row.sealed.kek_id.clone(),
                wrapped_key: row.sealed.wrapped_key.clone(),
                ciphertext: row.sealed.ciphertext.clone(),
            },
            &signing_key_aad(&row.kid),
        )
        .map_err(internal)?;
        row.sealed.kek_id = sealed.kek_id;
        row.sealed.wrapped_key = sealed.wrapped_key;
    }
    store.replace_signing_key_wraps(&rows).await?;
    Ok(rows.len())
}

/// Keeps a current signing key: checks at start, then hourly.
pub async fn rotate_on_schedule(identity: IdentityService) {
    loop {
        if let Err(e) = identity.ensure_current_key().await {
            tracing::error!(error = %e, "rotating the token signing key");
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn issuer(dir: &std::path::Path, rotation: Duration) -> IdentityService {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = Store::connect(&tresor_store::StoreSettings {
            path: dir.join("db"),
            durability: tresor_store::Durability::Normal,
            audit_key_file: dir.join("audit-key"),
        })
        .await
        .unwrap();
        let keys = tresor_crypto::KeyRing::open_or_create(&dir.join("kek")).unwrap();
        let platform = crate::PlatformService::new(
            store.clone(),
            tresor_auth::oidc::OidcVerifier::new(Vec::new()).unwrap(),
        );
        let secrets = SecretService::new(store.clone(), platform, keys)
            .await
            .unwrap();
        IdentityService::new(
            store,
            secrets,
            IdentitySettings {
                issuer: "https://tresor.test".to_owned(),
                token_ttl: Duration::from_secs(60),
                audiences: vec!["tresor".to_owned()],
                rotation_period: rotation,
                sdk_env: Vec::new(),
            },
        )
    }

    fn kid_of(token: &str) -> String {
        jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
    }

    #[tokio::test]
    async fn a_key_older_than_the_rotation_period_is_replaced_and_stays_published() {
        let dir = tempfile::tempdir().unwrap();
        let identity = issuer(dir.path(), Duration::from_secs(1)).await;
        let subject = TaskSubject {
            workspace: "ws".to_owned(),
            user: "u".to_owned(),
            task: "t".to_owned(),
            run: "t".to_owned(),
        };
        identity.ensure_current_key().await.unwrap();
        let first = identity.mint(&subject, None).await.unwrap();
        identity.ensure_current_key().await.unwrap();
        assert_eq!(
            kid_of(&identity.mint(&subject, None).await.unwrap().token),
            kid_of(&first.token),
            "a young key keeps signing"
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        identity.ensure_current_key().await.unwrap();
        let second = identity.mint(&subject, None).await.unwrap();
        assert_ne!(kid_of(&second.token), kid_of(&first.token), "rotated");
        let jwks = identity.jwks().await.unwrap();
        let published: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert!(published.contains(&kid_of(&first.token).as_str()), "{jwks}");
        assert!(
            published.contains(&kid_of(&second.token).as_str()),
            "{jwks}"
        );
        assert!(identity.mint(&subject, Some("elsewhere")).await.is_err());
    }
}
