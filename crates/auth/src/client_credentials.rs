//! Outbound authentication for the server itself: OAuth2 client credentials (RFC 6749 §4.4) with
//! a client secret read from a file, or with `private_key_jwt` (RFC 7523), where the server
//! proves itself with a short JWT signed by its own key and no shared secret exists at all.
//! Tokens are cached until shortly before they expire.

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;

/// How the client proves who it is.
pub enum ClientAuth {
    /// `client_secret_post`: the secret, read from a file at start.
    Secret(String),
    /// `private_key_jwt`: a PEM private key (RSA for RS256, EC P-256 for ES256).
    PrivateKeyJwt {
        key: EncodingKey,
        alg: Algorithm,
        kid: Option<String>,
    },
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientAuth::Secret(_) => f.write_str("Secret(***)"),
            ClientAuth::PrivateKeyJwt { alg, kid, .. } => f
                .debug_struct("PrivateKeyJwt")
                .field("alg", alg)
                .field("kid", kid)
                .finish_non_exhaustive(),
        }
    }
}

impl ClientAuth {
    /// A `private_key_jwt` client from a PEM file's contents: RS256 for an RSA key, ES256 for EC.
    pub fn private_key_pem(pem: &[u8], kid: Option<String>) -> Result<ClientAuth, OutboundError> {
        if let Ok(key) = EncodingKey::from_rsa_pem(pem) {
            return Ok(ClientAuth::PrivateKeyJwt {
                key,
                alg: Algorithm::RS256,
                kid,
            });
        }
        EncodingKey::from_ec_pem(pem)
            .map(|key| ClientAuth::PrivateKeyJwt {
                key,
                alg: Algorithm::ES256,
                kid,
            })
            .map_err(|_| {
                OutboundError::Config(
                    "the private key is neither an RSA nor an EC P-256 key in PEM form".to_owned(),
                )
            })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("{0}")]
    Config(String),
    #[error("the token endpoint {url} could not be reached: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the token endpoint {url} refused the client: {reason}")]
    Refused { url: String, reason: String },
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

struct Cached {
    token: String,
    renew_at: Instant,
}

/// A client-credentials client; cheap to share behind an `Arc`.
pub struct ClientCredentials {
    pub token_url: String,
    pub client_id: String,
    auth: ClientAuth,
    scope: Option<String>,
    /// RFC 8707 resource indicator, for providers that bind audiences to resources.
    resource: Option<String>,
    http: reqwest::Client,
    cache: tokio::sync::Mutex<Option<Cached>>,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl ClientCredentials {
    pub fn new(
        token_url: String,
        client_id: String,
        auth: ClientAuth,
        scope: Option<String>,
        resource: Option<String>,
    ) -> Result<ClientCredentials, OutboundError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| OutboundError::Config(e.to_string()))?;
        Ok(ClientCredentials {
            token_url,
            client_id,
            auth,
            scope,
            resource,
            http,
            cache: tokio::sync::Mutex::new(None),
        })
    }

    /// An access token: the cached one while it has more than a tenth of its life (at least
    /// 30 s) left, otherwise a fresh one.
    pub async fn token(&self) -> Result<String, OutboundError> {
        let mut cache = self.cache.lock().await;
        if let Some(cached) = cache.as_ref()
            && Instant::now() < cached.renew_at
        {
            return Ok(cached.token.clone());
        }
        let (token, lifetime) = self.fetch().await?;
        let margin = (lifetime / 10).max(Duration::from_secs(30));
        *cache = Some(Cached {
            token: token.clone(),
            renew_at: Instant::now() + lifetime.saturating_sub(margin),
        });
        Ok(token)
    }

    async fn fetch(&self) -> Result<(String, Duration), OutboundError> {
        let mut form: Vec<(&str, String)> = vec![
            ("grant_type", "client_credentials".to_owned()),
            ("client_id", self.client_id.clone()),
        ];
        if let Some(scope) = &self.scope {
            form.push(("scope", scope.clone()));
        }
        if let Some(resource) = &self.resource {
            form.push(("resource", resource.clone()));
        }
        match &self.auth {
            ClientAuth::Secret(secret) => form.push(("client_secret", secret.clone())),
            ClientAuth::PrivateKeyJwt { key, alg, kid } => {
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                let claims = serde_json::json!({
                    "iss": self.client_id,
                    "sub": self.client_id,
                    "aud": self.token_url,
                    "iat": now,
                    "exp": now + 60,
                    "jti": uuid::Uuid::now_v7().to_string(),
                });
                let mut header = Header::new(*alg);
                header.kid = kid.clone();
                let assertion = jsonwebtoken::encode(&header, &claims, key).map_err(|e| {
                    OutboundError::Config(format!("signing the client assertion: {e}"))
                })?;
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
                ));
                form.push(("client_assertion", assertion));
            }
        }
        let response = self
            .http
            .post(&self.token_url)
            .form(&form)
            .send()
            .await
            .map_err(|e| OutboundError::Unreachable {
                url: self.token_url.clone(),
                reason: e.without_url().to_string(),
            })?;
        let status = response.status();
        if !status.is_success() {
            // OAuth errors are `{error, error_description}`; they never echo the credential.
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            let reason = [body.get("error"), body.get("error_description")]
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(": ");
            return Err(OutboundError::Refused {
                url: self.token_url.clone(),
                reason: format!("{status} {reason}"),
            });
        }
        let body: TokenResponse = response.json().await.map_err(|e| OutboundError::Refused {
            url: self.token_url.clone(),
            reason: format!("the answer is not a token response: {}", e.without_url()),
        })?;
        Ok((
            body.access_token,
            Duration::from_secs(body.expires_in.unwrap_or(300)),
        ))
    }
}
