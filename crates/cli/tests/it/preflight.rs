//! Preflight (`POST /api/v1/compute-envs/{id}/check` and `tresor check`) runs real probes and
//! names the setting to fix; outbound client credentials work with a secret or a private key.

use std::path::PathBuf;
use std::sync::Arc;

use tresor_api_types::platform::PreflightReport;
use tresor_auth::client_credentials::{ClientAuth, ClientCredentials};

use crate::support::*;

fn check<'a>(
    report: &'a PreflightReport,
    name: &str,
) -> &'a tresor_api_types::platform::PreflightCheck {
    report
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name} in {report:#?}"))
}

/// `tresor check` against the in-process server (off the runtime's thread, which serves it).
async fn tresor_check(server: &TestServer) -> std::process::Output {
    let mut cmd = std::process::Command::new(TRESOR);
    cmd.args(["check", "--compute-env", "local"])
        .env("TRESOR_URL", &server.url)
        .env("TRESOR_TOKEN", &server.admin_token)
        .env("HOME", server.dir.path());
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn preflight_passes_on_a_working_setup_and_says_what_to_fix_on_a_broken_one() {
    let s3 = S3Server::start().await;
    let server = TestServer::start_with(|s| s.services.s3 = Some(Arc::new(s3.settings()))).await;
    let report = server.admin.check("local", None).await.unwrap();
    assert!(report.ok, "{report:#?}");
    for name in [
        "issuer.discovery",
        "issuer.token",
        "storage.location",
        "storage.write",
        "clock",
        "storage.read",
        "storage.isolation",
        "storage.delete",
        "executor.sandbox",
        "executor.runtime_dir",
    ] {
        assert!(check(&report, name).ok, "{name}: {report:#?}");
    }
    assert!(check(&report, "storage.isolation").message.contains("403"));
    // The probe object is gone again.
    let prefix = s3.root.path().join("tresor/workspaces");
    let left: Vec<String> = walk(&prefix);
    assert!(
        left.iter().all(|p| !p.contains("tresor-preflight")),
        "{left:?}"
    );
    let cli = tresor_check(&server).await;
    assert!(cli.status.success(), "{cli:?}");
    let text = String::from_utf8_lossy(&cli.stdout);
    assert!(text.contains("ok   storage.write"), "{text}");

    // Every setting broken at once; each probe names what to fix.
    let data_dir = server.data.clone();
    let broken = TestServer::start_with(|s| {
        s.services.s3 = Some(Arc::new(s3_settings(&s3.endpoint, "the-wrong-secret")));
        s.services.identity.issuer = "http://127.0.0.1:9".to_owned();
        s.services.local.sandbox.bwrap = PathBuf::from("/nonexistent/bwrap");
        s.services.local.runtime_dir = data_dir.clone();
    })
    .await;
    let report = broken.admin.check("local", None).await.unwrap();
    assert!(!report.ok);
    let expect = [
        ("issuer.discovery", "identity.issuer"),
        ("storage.write", "s3.secret_access_key_file"),
        ("executor.sandbox", "local.bwrap"),
        ("executor.runtime_dir", "not a tmpfs"),
    ];
    for (name, says) in expect {
        let c = check(&report, name);
        assert!(!c.ok && c.message.contains(says), "{name}: {c:?}");
    }
    let cli = tresor_check(&broken).await;
    assert_eq!(cli.status.code(), Some(1), "{cli:?}");
    assert!(String::from_utf8_lossy(&cli.stdout).contains("FAIL storage.write"));

    // Only platform administrators run it; unknown environments are a 404.
    let alice = server.user("alice").await;
    let denied = alice.platform.check("local", None).await.unwrap_err();
    assert!(
        denied.to_string().contains("platform administrator"),
        "{denied}"
    );
    let unknown = server.admin.check("mars", None).await.unwrap_err();
    assert!(unknown.to_string().contains("known: local"), "{unknown}");
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

#[tokio::test]
async fn outbound_client_credentials_work_with_a_secret_and_with_private_key_jwt() {
    let provider = tokio::task::spawn_blocking(start_real_provider)
        .await
        .unwrap();
    let token_url = format!("{}/token", provider.issuer);
    let pem = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/it/fixtures/rsa-test-key.pem"
    ))
    .unwrap();
    let with_key = ClientCredentials::new(
        token_url.clone(),
        "tresor-outbound".to_owned(),
        ClientAuth::private_key_pem(&pem, Some("tresor-outbound".to_owned())).unwrap(),
        Some("tes:read".to_owned()),
        None,
    )
    .unwrap();
    let first = with_key.token().await.unwrap();
    assert_eq!(first.split('.').count(), 3, "{first}");
    assert_eq!(
        with_key.token().await.unwrap(),
        first,
        "cached until it nears expiry"
    );

    let with_secret = ClientCredentials::new(
        token_url.clone(),
        "tresor-outbound-secret".to_owned(),
        ClientAuth::Secret("outbound-secret-value".to_owned()),
        Some("tes:read".to_owned()),
        None,
    )
    .unwrap();
    with_secret.token().await.unwrap();

    let wrong = ClientCredentials::new(
        token_url,
        "tresor-outbound-secret".to_owned(),
        ClientAuth::Secret("not-the-secret".to_owned()),
        None,
        None,
    )
    .unwrap();
    let err = wrong.token().await.unwrap_err().to_string();
    assert!(
        err.contains("refused the client") && err.contains("invalid_client"),
        "{err}"
    );
    assert!(!err.contains("not-the-secret"));

    // Preflight reports the outbound credentials it is configured with.
    let server =
        TestServer::start_with(|s| s.services.outbound = Some(Arc::new(with_secret))).await;
    let report = server.admin.check("local", None).await.unwrap();
    let c = check(&report, "outbound.client_credentials");
    assert!(
        c.ok && c.message.contains("tresor-outbound-secret"),
        "{c:?}"
    );
}
