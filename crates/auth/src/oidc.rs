//! OIDC JWT verification: trusted issuers from configuration, discovery and JWKS fetched over
//! HTTP and cached (refetched when a token names a `kid` the cache lacks, so key rotation works),
//! and strict checks before any claim is believed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Largest JWT accepted; anything longer is refused unparsed.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECONDS: u64 = 30;
/// A JWKS is refetched for an unknown `kid` at most this often, so junk tokens cannot make us
/// hammer the provider.
const REFETCH_AFTER: Duration = Duration::from_secs(1);
/// A cached JWKS is refreshed after this long even when every `kid` is known.
const MAX_AGE: Duration = Duration::from_secs(3600);

/// Only asymmetric algorithms that certified providers use; never `none` and never HS*.
const ALLOWED: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// A mapping from a claim value to a workspace role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleMapping {
    /// The value to look for in the issuer's roles claim, such as `admins` or an
    /// `eduperson_entitlement` URN.
    pub value: String,
    pub workspace: String,
    pub role: String,
}

/// An identity provider whose tokens are accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedIssuer {
    /// Exactly the `iss` its tokens carry; discovery is `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// The `aud` tokens must carry for tresor.
    pub audience: String,
    /// The claim whose values map to workspace roles (`groups`, `eduperson_entitlement`).
    pub roles_claim: Option<String>,
    pub role_mappings: Vec<RoleMapping>,
}

/// Why a token was refused. The message is safe to return to the caller.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's algorithm is not accepted; use RS256, ES256 or EdDSA")]
    Algorithm,
    #[error("the token's issuer is not trusted")]
    UnknownIssuer,
    #[error("the token was signed with a key its issuer does not publish")]
    UnknownKey,
    #[error("the token is invalid: {0}")]
    Invalid(String),
    #[error("the identity provider could not be reached to check the token")]
    Provider(String),
}

/// Claims of a token whose signature, issuer, audience and lifetime were checked.
#[derive(Debug, Clone)]
pub struct VerifiedClaims {
    pub issuer: String,
    pub subject: String,
    /// A name to show: `preferred_username`, `name`, `email` or the subject.
    pub name: String,
    /// Mapped workspace roles, `(workspace, role)`, from the issuer's roles claim.
    pub roles: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct Discovery {
    jwks_uri: String,
}

struct CachedKeys {
    keys: Vec<Jwk>,
    fetched: Instant,
}

/// Verifies JWTs from the trusted issuers.
pub struct OidcVerifier {
    issuers: Vec<TrustedIssuer>,
    http: reqwest::Client,
    cache: tokio::sync::Mutex<HashMap<String, CachedKeys>>,
    last_refetch: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("issuers", &self.issuers)
            .finish()
    }
}

/// The issuer a token claims, read without verifying anything; used only to pick the issuer
/// whose keys will verify it.
fn unverified_issuer(token: &str) -> Result<String, OidcError> {
    let payload = token.split('.').nth(1).ok_or(OidcError::Malformed)?;
    let raw = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| OidcError::Malformed)?;
    #[derive(Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    let iss: Iss = serde_json::from_slice(&raw).map_err(|_| OidcError::Malformed)?;
    iss.iss.ok_or(OidcError::Invalid("missing iss".to_owned()))
}

fn jwk_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    match jwk.common.key_algorithm? {
        KeyAlgorithm::RS256 => Some(Algorithm::RS256),
        KeyAlgorithm::ES256 => Some(Algorithm::ES256),
        KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
        _ => None,
    }
}

impl OidcVerifier {
    pub fn new(issuers: Vec<TrustedIssuer>) -> Result<OidcVerifier, OidcError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| OidcError::Provider(e.to_string()))?;
        Ok(OidcVerifier {
            issuers,
            http,
            cache: tokio::sync::Mutex::new(HashMap::new()),
            last_refetch: Mutex::new(HashMap::new()),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// GETs a JSON document from the identity provider.
    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, OidcError> {
        let provider = |e: reqwest::Error| OidcError::Provider(e.without_url().to_string());
        self.http
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(provider)?
            .json()
            .await
            .map_err(provider)
    }

    async fn fetch_keys(&self, issuer: &str) -> Result<Vec<Jwk>, OidcError> {
        let discovery: Discovery = self
            .get_json(&format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            ))
            .await?;
        let set: serde_json::Value = self.get_json(&discovery.jwks_uri).await?;
        // Keys we cannot use (encryption keys, other algorithms) are skipped, not fatal.
        Ok(set
            .get("keys")
            .and_then(|k| k.as_array())
            .into_iter()
            .flatten()
            .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
            .collect())
    }

    /// The issuer's key with `kid`, refetching the JWKS once if the cache lacks it.
    async fn key(&self, issuer: &str, kid: &str) -> Result<Jwk, OidcError> {
        let mut cache = self.cache.lock().await;
        let fresh = cache
            .get(issuer)
            .is_some_and(|c| c.fetched.elapsed() < MAX_AGE);
        if fresh
            && let Some(jwk) = cache.get(issuer).and_then(|c| {
                c.keys
                    .iter()
                    .find(|k| k.common.key_id.as_deref() == Some(kid))
            })
        {
            return Ok(jwk.clone());
        }
        let may_refetch = match self.last_refetch.lock() {
            Ok(mut last) => {
                let ok = last
                    .get(issuer)
                    .is_none_or(|t| t.elapsed() >= REFETCH_AFTER)
                    || !fresh;
                if ok {
                    last.insert(issuer.to_owned(), Instant::now());
                }
                ok
            }
            Err(_) => false,
        };
        if !may_refetch {
            return Err(OidcError::UnknownKey);
        }
        let keys = self.fetch_keys(issuer).await?;
        let found = keys
            .iter()
            .find(|k| k.common.key_id.as_deref() == Some(kid))
            .cloned();
        cache.insert(
            issuer.to_owned(),
            CachedKeys {
                keys,
                fetched: Instant::now(),
            },
        );
        found.ok_or(OidcError::UnknownKey)
    }

    /// Verifies signature, algorithm, issuer, audience, `exp` and `nbf` before returning any claim.
    pub async fn verify(&self, token: &str) -> Result<VerifiedClaims, OidcError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(OidcError::TooLarge);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| OidcError::Malformed)?;
        if !ALLOWED.contains(&header.alg) {
            return Err(OidcError::Algorithm);
        }
        let kid = header.kid.ok_or(OidcError::UnknownKey)?;
        let claimed = unverified_issuer(token)?;
        let trusted = self
            .issuers
            .iter()
            .find(|i| i.issuer == claimed)
            .ok_or(OidcError::UnknownIssuer)?;
        let jwk = self.key(&trusted.issuer, &kid).await?;
        // The key decides the algorithm: a token may not pick a different one for a published key.
        if jwk_algorithm(&jwk).is_some_and(|alg| alg != header.alg) {
            return Err(OidcError::Algorithm);
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| OidcError::Invalid(e.to_string()))?;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&trusted.issuer]);
        validation.set_audience(&[&trusted.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .map_err(|e| OidcError::Invalid(e.to_string()))?;
        let claims = data.claims;
        let subject = claims
            .get("sub")
            .and_then(|s| s.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| OidcError::Invalid("missing sub".to_owned()))?
            .to_owned();
        let name = ["preferred_username", "name", "email"]
            .iter()
            .find_map(|c| claims.get(*c).and_then(|v| v.as_str()))
            .unwrap_or(&subject)
            .to_owned();
        let values: Vec<String> = match trusted.roles_claim.as_deref().and_then(|c| claims.get(c)) {
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            Some(serde_json::Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        let roles = trusted
            .role_mappings
            .iter()
            .filter(|m| values.contains(&m.value))
            .map(|m| (m.workspace.clone(), m.role.clone()))
            .collect();
        Ok(VerifiedClaims {
            issuer: trusted.issuer.clone(),
            subject,
            name,
            roles,
        })
    }
}
