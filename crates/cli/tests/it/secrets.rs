//! Pipeline secrets: write-only, versioned, role-gated, encrypted at rest, never leaked.

use reqwest::StatusCode;
use tresor_crypto::SecretValue;
use tresor_crypto::redact::Redactor;

use crate::support::*;

/// A value with every awkward byte: quotes, backticks, `$`, newlines, UTF-8.
pub const CANARY: &[u8] = b"tr3s0r-CANARY-7f3a `whoami` $HOME \"q\" 'x'\nline-two-\xc3\xa9";

pub fn canary_finder() -> Redactor {
    Redactor::new([&SecretValue::new(CANARY.to_vec())])
}

/// Every file below `dir` (recursively) that holds the canary in any encoding.
pub fn files_with_canary(dir: &std::path::Path) -> Vec<String> {
    let finder = canary_finder();
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file()
                && let Ok(bytes) = std::fs::read(&path)
                && finder.finds_in(&bytes)
            {
                hits.push(path.display().to_string());
            }
        }
    }
    hits
}

#[tokio::test]
async fn secrets_are_write_only_versioned_and_guarded_by_if_match() {
    let server = TestServer::start().await;
    server.admin.create_workspace("genomics").await.unwrap();
    let v1 = server
        .admin
        .put_secret("genomics", false, "DB_PASSWORD", CANARY, None)
        .await
        .unwrap();
    assert_eq!((v1.version, v1.scope.as_str()), (1, "workspace"));

    let listed = server.admin.list_secrets("genomics", false).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].name.as_str(), listed[0].version),
        ("DB_PASSWORD", 1)
    );
    let raw = server
        .admin
        .raw(reqwest::Method::GET, "workspaces/genomics/secrets", None)
        .await
        .unwrap();
    assert!(
        !canary_finder().finds_in(raw.body.as_bytes()),
        "a listing never holds the value"
    );

    // Creating again, or updating from a stale version, is a 409; no update is lost.
    let err = server
        .admin
        .put_secret("genomics", false, "DB_PASSWORD", b"other-value", None)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::CONFLICT));
    let v2 = server
        .admin
        .put_secret("genomics", false, "DB_PASSWORD", b"second-value", Some(1))
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    let err = server
        .admin
        .put_secret("genomics", false, "DB_PASSWORD", b"third-value", Some(1))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::CONFLICT));
    assert!(
        err.to_string().contains("changed since you read it"),
        "{err}"
    );

    // Deleted secrets disappear; a new one continues the version numbers.
    server
        .admin
        .delete_secret("genomics", false, "DB_PASSWORD")
        .await
        .unwrap();
    assert!(
        server
            .admin
            .list_secrets("genomics", false)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        server
            .admin
            .delete_secret("genomics", false, "DB_PASSWORD")
            .await
            .unwrap_err()
            .status(),
        Some(StatusCode::NOT_FOUND)
    );
    let v3 = server
        .admin
        .put_secret("genomics", false, "DB_PASSWORD", CANARY, None)
        .await
        .unwrap();
    assert_eq!(v3.version, 3);

    // Bad names and sizes are refused without echoing the value.
    for (name, value) in [
        ("1BAD", &b"long-enough"[..]),
        ("OK_NAME", b"abc"),
        ("has-dash", b"long-enough"),
    ] {
        let err = server
            .admin
            .put_secret("genomics", false, name, value, None)
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST), "{name}");
        assert!(
            !err.to_string().contains("long-enough") && !err.to_string().contains("abc"),
            "{err}"
        );
    }
    let too_big = vec![b'x'; 64 * 1024 + 1];
    let err = server
        .admin
        .put_secret("genomics", false, "BIG", &too_big, None)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("4 to 65536 bytes (got 65537)"),
        "{err}"
    );
    let garbage = server
        .admin
        .raw(
            reqwest::Method::PUT,
            "workspaces/genomics/secrets/X_Y",
            Some(serde_json::json!({ "value": 12345678, "note": "tr3s0r-CANARY" })),
        )
        .await
        .unwrap();
    assert_eq!(garbage.status, StatusCode::BAD_REQUEST);
    assert!(
        !garbage.body.contains("12345678") && !garbage.body.contains("tr3s0r"),
        "{}",
        garbage.body
    );

    // At rest: the database, its WAL and every other file of the data dir hold no trace of it.
    assert_eq!(files_with_canary(&server.data), Vec::<String>::new());
}

#[tokio::test]
async fn only_admins_manage_workspace_secrets_and_user_secrets_stay_private() {
    let server = TestServer::start().await;
    server.admin.create_workspace("genomics").await.unwrap();
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    for role in ["view", "launch", "maintain"] {
        server
            .admin
            .set_member("genomics", &alice.id, role)
            .await
            .unwrap();
        let err = alice
            .platform
            .put_secret("genomics", false, "TOKEN", b"value-1234", None)
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::FORBIDDEN), "{role}");
        assert!(err.to_string().contains("needs the admin role"), "{err}");
        server
            .admin
            .put_secret(
                "genomics",
                false,
                &format!("BY_ADMIN_{role}"),
                b"value-1234",
                None,
            )
            .await
            .unwrap();
        let err = alice
            .platform
            .delete_secret("genomics", false, &format!("BY_ADMIN_{role}"))
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::FORBIDDEN), "{role}");
    }
    server
        .admin
        .set_member("genomics", &alice.id, "admin")
        .await
        .unwrap();
    alice
        .platform
        .put_secret("genomics", false, "TOKEN", b"value-1234", None)
        .await
        .unwrap();

    // Every member keeps their own user secrets; nobody else sees them.
    server
        .admin
        .set_member("genomics", &bob.id, "view")
        .await
        .unwrap();
    bob.platform
        .put_secret("genomics", true, "TOKEN", b"bobs-value", None)
        .await
        .unwrap();
    alice
        .platform
        .put_secret("genomics", true, "MINE", b"alices-value", None)
        .await
        .unwrap();
    let bobs: Vec<String> = bob
        .platform
        .list_secrets("genomics", true)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    let alices: Vec<String> = alice
        .platform
        .list_secrets("genomics", true)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(
        (bobs, alices),
        (vec!["TOKEN".to_owned()], vec!["MINE".to_owned()])
    );
    assert_eq!(
        alice
            .platform
            .delete_secret("genomics", true, "TOKEN")
            .await
            .unwrap_err()
            .status(),
        Some(StatusCode::NOT_FOUND)
    );
    // Strangers do not even see the workspace.
    let carol = server.user("carol").await;
    assert_eq!(
        carol
            .platform
            .list_secrets("genomics", false)
            .await
            .unwrap_err()
            .status(),
        Some(StatusCode::NOT_FOUND)
    );
}

#[tokio::test]
async fn kek_rotation_keeps_every_value_and_a_tampered_ciphertext_is_an_error() {
    let server = TestServer::start().await;
    server.admin.create_workspace("genomics").await.unwrap();
    server
        .admin
        .put_secret("genomics", false, "A_SECRET", CANARY, None)
        .await
        .unwrap();
    let before = std::fs::read_to_string(server.data.join("kek")).unwrap();

    let out = std::process::Command::new(TRESOR)
        .args(["admin", "rotate-kek", "--data-dir"])
        .arg(&server.data)
        .env_remove("TRESOR_KEK_FILE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 data keys re-wrapped"));
    let after = std::fs::read_to_string(server.data.join("kek")).unwrap();
    assert_ne!(
        before.lines().next(),
        after.lines().next(),
        "a new current key"
    );
    assert_eq!(after.lines().count(), 1, "the old key is retired");

    // The running server keeps working: it writes under the new key and old values still open.
    server
        .admin
        .put_secret("genomics", false, "A_SECRET", b"after-rotation", Some(1))
        .await
        .unwrap();
    let store = tresor_store::Store::connect(&tresor_store::StoreSettings {
        path: server.data.join("tresor.db"),
        durability: tresor_store::Durability::Normal,
    })
    .await
    .unwrap();
    let keys = tresor_crypto::KeyRing::open_or_create(&server.data.join("kek")).unwrap();
    let platform = tresor_service::PlatformService::new(
        store.clone(),
        tresor_auth::oidc::OidcVerifier::new(Vec::new()).unwrap(),
    );
    let secrets = tresor_service::SecretService::new(store.clone(), platform, keys)
        .await
        .unwrap();
    let key = tresor_store::SecretKey {
        workspace: tresor_domain::WorkspaceId::parse("genomics").unwrap(),
        owner: None,
        name: "A_SECRET".to_owned(),
    };
    let (version, value) = secrets.open(&key).await.unwrap().unwrap();
    assert_eq!(
        (version, value.expose_secret()),
        (2, &b"after-rotation"[..])
    );

    // Flip one byte of the stored ciphertext: opening fails loudly instead of returning garbage.
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        server.data.join("tresor.db").display()
    ))
    .await
    .unwrap();
    sqlx::query("UPDATE secrets SET ciphertext = ? || substr(ciphertext, 2) WHERE name = 'A_SECRET' AND version = 2")
        .bind(vec![0x42u8])
        .execute(&pool)
        .await
        .unwrap();
    let err = secrets.open(&key).await.unwrap_err();
    assert!(
        err.to_string().contains("internal") || format!("{err:?}").contains("does not decrypt"),
        "{err:?}"
    );
}
