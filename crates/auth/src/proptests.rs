//! Property tests of what a caller can put in `Authorization`: any string, and JWT-shaped ones
//! with any header, claims and signature, are refused with an error, never a panic or a pass.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;

use crate::oidc::{OidcVerifier, TrustedIssuer};

/// The trusted issuer: a loopback port nothing listens on, so a token that gets as far as
/// fetching keys fails at once.
const ISSUER: &str = "http://127.0.0.1:9";

fn segment(json: serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(json.to_string())
}

fn jwt_like() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![
            "RS256", "ES256", "HS256", "none", "EdDSA", "PS512", "",
        ]),
        proptest::option::of("[a-z0-9]{0,8}"),
        prop::sample::select(vec![ISSUER, "https://evil.example", ""]),
        any::<i64>(),
        "[A-Za-z0-9_-]{0,90}",
        prop::sample::select(vec![3usize, 2, 4, 5]),
    )
        .prop_map(|(alg, kid, iss, exp, sig, parts)| {
            let header = segment(serde_json::json!({ "alg": alg, "kid": kid, "typ": "JWT" }));
            let claims = segment(serde_json::json!({
                "iss": iss, "aud": "tresor", "sub": "mallory", "exp": exp
            }));
            let mut pieces = vec![header, claims, sig];
            pieces.resize(parts, "AAAA".to_owned());
            pieces.join(".")
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn no_bearer_string_passes_or_panics(token in prop_oneof![".{0,300}", jwt_like()]) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let verifier = OidcVerifier::new(vec![TrustedIssuer {
            issuer: ISSUER.to_owned(),
            audience: "tresor".to_owned(),
            roles_claim: None,
            role_mappings: Vec::new(),
        }])
        .unwrap();
        let verdict = runtime.block_on(verifier.verify(&token));
        prop_assert!(verdict.is_err(), "{token:?} passed");
    }

    #[test]
    fn an_access_token_changed_anywhere_is_refused(
        at in any::<prop::sample::Index>(),
        with in "[A-Za-z0-9_-]",
        junk in ".{0,120}",
    ) {
        let minted = crate::pat::mint().unwrap();
        let presented = crate::pat::parse(&minted.token).unwrap();
        prop_assert!(presented.matches(&minted.secret_hash));
        let mut changed: Vec<char> = minted.token.chars().collect();
        let i = at.index(changed.len());
        let new = with.chars().next().unwrap();
        prop_assume!(changed[i] != new);
        changed[i] = new;
        let changed: String = changed.into_iter().collect();
        // Either the checksum catches it, or the hash no longer matches.
        if let Ok(p) = crate::pat::parse(&changed) {
            prop_assert!(!p.matches(&minted.secret_hash) || p.id != presented.id);
        }
        if let Ok(p) = crate::pat::parse(&junk) {
            prop_assert!(!p.matches(&minted.secret_hash));
        }
    }
}
