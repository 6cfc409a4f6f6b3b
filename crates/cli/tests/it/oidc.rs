//! OIDC login: testkit's own issuer (discovery and JWKS over HTTP, per-test keys) for the JWT
//! attack set and role mapping, and a real certified provider (npm `oidc-provider`) end to end.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};
use tresor_auth::oidc::{RoleMapping, TrustedIssuer};
use tresor_client::{PlatformClient, TesClient};

use crate::support::*;

const RSA_PEM: &str = include_str!("fixtures/rsa-test-key.pem");
const RSA_PUBLIC_PEM: &str = include_str!("fixtures/rsa-test-key.pub.pem");
const RSA_JWK: &str = include_str!("fixtures/rsa-test-key.jwk.json");

/// An ES256 signing key made fresh for one test.
struct EcKey {
    kid: String,
    pkcs8: Vec<u8>,
    jwk: Value,
}

fn ec_key(kid: &str) -> EcKey {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref(); // 0x04 || X || Y
    EcKey {
        kid: kid.to_owned(),
        pkcs8: pkcs8.as_ref().to_vec(),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }),
    }
}

/// testkit's issuer: serves discovery and a JWKS that a test can change (to rotate keys).
struct Issuer {
    url: String,
    jwks: Arc<Mutex<Vec<Value>>>,
}

async fn start_issuer(keys: Vec<Value>) -> Issuer {
    use axum::routing::get;
    let jwks = Arc::new(Mutex::new(keys));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (served, base) = (jwks.clone(), url.clone());
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || {
                let base = base.clone();
                async move {
                    axum::Json(json!({
                        "issuer": base, "jwks_uri": format!("{base}/jwks"),
                        "authorization_endpoint": format!("{base}/auth"), "token_endpoint": format!("{base}/token"),
                        "id_token_signing_alg_values_supported": ["ES256", "RS256"],
                    }))
                }
            }),
        )
        .route(
            "/jwks",
            get(move || {
                let keys = served.lock().unwrap().clone();
                async move { axum::Json(json!({ "keys": keys })) }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Issuer { url, jwks }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(iss: &str, sub: &str) -> Value {
    json!({ "iss": iss, "sub": sub, "aud": "tresor", "iat": now(), "exp": now() + 300, "preferred_username": sub })
}

fn sign_ec(key: &EcKey, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(&key.pkcs8)).unwrap()
}

fn sign_rsa(kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn rsa_jwk(kid: &str) -> Value {
    let mut jwk: Value = serde_json::from_str(RSA_JWK).unwrap();
    jwk["kid"] = json!(kid);
    jwk["alg"] = json!("RS256");
    jwk["use"] = json!("sig");
    jwk
}

fn trusted(issuer: &Issuer) -> TrustedIssuer {
    TrustedIssuer {
        issuer: issuer.url.clone(),
        audience: "tresor".to_owned(),
        roles_claim: Some("groups".to_owned()),
        role_mappings: vec![RoleMapping {
            value: "genomics-analysts".to_owned(),
            workspace: "genomics".to_owned(),
            role: "launch".to_owned(),
        }],
    }
}

async fn status_with(server: &TestServer, token: &str) -> StatusCode {
    reqwest::Client::new()
        .get(format!("{}/api/v1/me", server.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn an_oidc_login_creates_the_user_and_maps_roles() {
    let key = ec_key("ec-1");
    let issuer = start_issuer(vec![key.jwk.clone()]).await;
    let trust = trusted(&issuer);
    let server = TestServer::start_with(|s| s.services.oidc_issuers = vec![trust]).await;
    server.admin.create_workspace("genomics").await.unwrap();

    let mut alice = claims(&issuer.url, "alice-sub");
    alice["groups"] = json!(["genomics-analysts", "other"]);
    let token = sign_ec(&key, &alice);
    let me = PlatformClient::new(&server.url, Some(&token))
        .unwrap()
        .me()
        .await
        .unwrap();
    assert_eq!(me.name, "alice-sub");
    assert!(me.personal_workspace.starts_with("personal-"));
    // The groups claim made her a launch member of genomics: she can submit there.
    let tes = TesClient::for_workspace(&server.url, "genomics", &token).unwrap();
    tes.create_task(&sh_task("true")).await.unwrap();
    let members = server.admin.list_members("genomics").await.unwrap();
    assert!(
        members
            .iter()
            .any(|m| m.name == "alice-sub" && m.role == "launch"),
        "{members:?}"
    );
    // The same subject is the same user next time.
    let again = PlatformClient::new(&server.url, Some(&sign_ec(&key, &alice)))
        .unwrap()
        .me()
        .await
        .unwrap();
    assert_eq!(again.id, me.id);
}

#[tokio::test]
async fn the_jwt_attack_set_is_refused_with_401_never_500() {
    let key = ec_key("ec-1");
    let issuer = start_issuer(vec![key.jwk.clone(), rsa_jwk("rsa-1")]).await;
    let other_key = ec_key("other-1");
    let other = start_issuer(vec![other_key.jwk.clone()]).await;
    let trust = vec![trusted(&issuer), trusted(&other)];
    let server = TestServer::start_with(|s| s.services.oidc_issuers = trust).await;

    let good = claims(&issuer.url, "bob");
    assert_eq!(
        status_with(&server, &sign_ec(&key, &good)).await,
        StatusCode::OK,
        "control: ES256"
    );
    assert_eq!(
        status_with(&server, &sign_rsa("rsa-1", &good)).await,
        StatusCode::OK,
        "control: RS256"
    );

    let body = URL_SAFE_NO_PAD.encode(good.to_string());
    let mut attacks: Vec<(&str, String)> = Vec::new();
    attacks.push((
        "alg none",
        format!(
            "{}.{body}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"ec-1"}"#)
        ),
    ));
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("rsa-1".to_owned());
    attacks.push((
        "HS256 signed with the RSA public key",
        jsonwebtoken::encode(
            &hs,
            &good,
            &EncodingKey::from_secret(RSA_PUBLIC_PEM.as_bytes()),
        )
        .unwrap(),
    ));
    let mut expired = good.clone();
    expired["exp"] = json!(now() - 600);
    attacks.push(("expired", sign_ec(&key, &expired)));
    let mut early = good.clone();
    early["nbf"] = json!(now() + 600);
    attacks.push(("not yet valid", sign_ec(&key, &early)));
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("https://evil.example");
    attacks.push(("wrong iss", sign_ec(&key, &wrong_iss)));
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("someone-else");
    attacks.push(("wrong aud", sign_ec(&key, &wrong_aud)));
    let mut unknown = ec_key("nobody-publishes-this");
    unknown.kid = "nobody-publishes-this".to_owned();
    attacks.push(("unknown kid", sign_ec(&unknown, &good)));
    attacks.push(("kid of another issuer's key", sign_ec(&other_key, &good)));
    let token = sign_ec(&key, &good);
    let parts: Vec<&str> = token.split('.').collect();
    let mut tampered = good.clone();
    tampered["sub"] = json!("admin");
    attacks.push((
        "tampered payload",
        format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(tampered.to_string()),
            parts[2]
        ),
    ));
    let mut huge = good.clone();
    huge["padding"] = json!("x".repeat(20_000));
    attacks.push(("oversized", sign_ec(&key, &huge)));
    attacks.push(("garbage", "not.a.jwt".to_owned()));

    for (name, token) in &attacks {
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/me", server.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let challenge = response.headers().contains_key("www-authenticate");
        let body = response.text().await.unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
        assert!(challenge, "{name}: a 401 carries WWW-Authenticate");
    }
    eprintln!("JWT attack set: {} attacks refused", attacks.len());
}

#[tokio::test]
async fn a_rotated_signing_key_is_picked_up_without_a_restart() {
    let first = ec_key("2026-11-a");
    let issuer = start_issuer(vec![first.jwk.clone()]).await;
    let trust = trusted(&issuer);
    let server = TestServer::start_with(|s| s.services.oidc_issuers = vec![trust]).await;
    assert_eq!(
        status_with(&server, &sign_ec(&first, &claims(&issuer.url, "carol"))).await,
        StatusCode::OK
    );

    let second = ec_key("2026-11-b");
    issuer.jwks.lock().unwrap().push(second.jwk.clone());
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        status_with(&server, &sign_ec(&second, &claims(&issuer.url, "carol"))).await,
        StatusCode::OK
    );
    assert_eq!(
        status_with(&server, &sign_ec(&first, &claims(&issuer.url, "carol"))).await,
        StatusCode::OK
    );
}

/// The npm `oidc-provider` server from `tests/oidc-provider`, on a free port.
#[tokio::test]
async fn a_token_from_a_real_openid_provider_reaches_the_api() {
    let provider = tokio::task::spawn_blocking(start_real_provider)
        .await
        .unwrap();
    let trust = TrustedIssuer {
        issuer: provider.issuer.clone(),
        audience: "tes-api".to_owned(),
        roles_claim: None,
        role_mappings: Vec::new(),
    };
    let server = TestServer::start_with(|s| s.services.oidc_issuers = vec![trust]).await;

    // The OAuth2 client-credentials grant, as a pipeline service account would log in.
    let token = client_credentials_token(&provider.issuer).await;
    assert_eq!(token.split('.').count(), 3, "a JWT access token");

    let me = PlatformClient::new(&server.url, Some(&token))
        .unwrap()
        .me()
        .await
        .unwrap();
    assert_eq!(me.name, "tes-service");
    let tes = TesClient::with_token(&server.url, &token).unwrap();
    let id = tes.create_task(&sh_task("echo from-oidc")).await.unwrap();
    let done = wait_terminal(&tes, &id).await;
    assert_eq!(stdout(&done, 0), "from-oidc\n");

    // A token from the same provider for another audience is refused.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    payload["aud"] = json!("another-api");
    parts[1] = URL_SAFE_NO_PAD.encode(payload.to_string());
    assert_eq!(
        status_with(&server, &parts.join(".")).await,
        StatusCode::UNAUTHORIZED
    );
}
