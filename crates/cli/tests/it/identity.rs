//! Who may do what: access tokens, workspaces and roles, refusals, bootstrap and the audit trail.

use reqwest::StatusCode;
use tresor_api_types::tes::{TesState, TesView};
use tresor_client::TesClient;

use crate::support::*;

#[tokio::test]
async fn every_api_but_service_info_needs_a_credential() {
    let server = TestServer::start().await;
    let anonymous = TesClient::new(&server.url).unwrap();
    anonymous.service_info().await.unwrap();
    let err = anonymous.list_tasks(&Default::default()).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
    assert!(err.to_string().contains("Authorization: Bearer"), "{err}");

    let raw = reqwest::Client::new()
        .get(format!("{}/ga4gh/tes/v1/tasks", server.url))
        .header("Authorization", "Bearer trp_not-a-real-token")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::UNAUTHORIZED);
    let challenges: Vec<_> = raw.headers().get_all("www-authenticate").iter().collect();
    assert_eq!(challenges.len(), 2, "Bearer and Basic challenges");

    // An access token works as the Basic password, whatever the username (Snakemake's --tes-user).
    let basic = reqwest::Client::new()
        .get(format!("{}/ga4gh/tes/v1/tasks", server.url))
        .basic_auth("anyone", Some(&server.admin_token))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::OK);
    let url_userinfo = server
        .url
        .replace("http://", &format!("http://x:{}@", server.admin_token));
    let in_url = reqwest::get(format!("{url_userinfo}/ga4gh/tes/v1/tasks"))
        .await
        .unwrap();
    assert_eq!(
        in_url.status(),
        StatusCode::OK,
        "user:password in the URL works too"
    );
}

#[tokio::test]
async fn tokens_are_shown_once_stored_hashed_and_revocable() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let created = alice
        .platform
        .create_token("laptop", Some(30))
        .await
        .unwrap();
    assert!(created.token.starts_with("trp_"));
    assert!(created.expires_at.is_some());
    let laptop = TesClient::with_token(&server.url, &created.token).unwrap();
    laptop.list_tasks(&Default::default()).await.unwrap();

    let listed = alice.platform.list_tokens().await.unwrap();
    assert_eq!(listed.len(), 2);
    let laptop_meta = listed.iter().find(|t| t.id == created.id).unwrap();
    assert!(laptop_meta.last_used_at.is_some(), "last use is recorded");
    let listing = serde_json::to_string(&listed).unwrap();
    assert!(
        !listing.contains(&created.token[4..]),
        "a listing never shows a token"
    );

    // The database holds only a hash.
    let db = std::fs::read(server.data.join("tresor.db")).unwrap();
    let wal = std::fs::read(server.data.join("tresor.db-wal")).unwrap_or_default();
    for file in [&db, &wal] {
        assert!(
            !file
                .windows(created.token.len())
                .any(|w| w == created.token.as_bytes())
        );
    }

    alice.platform.revoke_token(&created.id).await.unwrap();
    let err = laptop.list_tasks(&Default::default()).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
    assert!(err.to_string().contains("revoked"), "{err}");
    // Revoking again, or someone else's token, is a 404.
    assert_eq!(
        alice
            .platform
            .revoke_token(&created.id)
            .await
            .unwrap_err()
            .status(),
        Some(StatusCode::NOT_FOUND)
    );
    let bob = server.user("bob").await;
    let bobs = bob.platform.list_tokens().await.unwrap();
    assert_eq!(
        alice
            .platform
            .revoke_token(&bobs[0].id)
            .await
            .unwrap_err()
            .status(),
        Some(StatusCode::NOT_FOUND)
    );
}

#[tokio::test]
async fn a_platform_admin_revokes_any_users_token_and_others_cannot() {
    let server = TestServer::start().await;
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let bobs = bob.platform.list_tokens().await.unwrap();
    assert_eq!(bobs.len(), 1);
    let bobs_token = &bobs[0].id;
    bob.tes.list_tasks(&Default::default()).await.unwrap();

    // A normal user cannot tell someone else's token from one that does not exist.
    let err = alice.platform.revoke_token(bobs_token).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::NOT_FOUND), "{err}");
    bob.tes.list_tasks(&Default::default()).await.unwrap();

    // The platform administrator shuts bob's token off at once.
    server.admin.revoke_token(bobs_token).await.unwrap();
    let err = bob.tes.list_tasks(&Default::default()).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
    assert!(err.to_string().contains("revoked"), "{err}");
    // Revoking it again, or a token that does not exist, is still a 404.
    for id in [bobs_token.as_str(), "0000000000000000"] {
        let err = server.admin.revoke_token(id).await.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::NOT_FOUND), "{id}: {err}");
    }

    // The revocation is audited under the administrator's name.
    let admin = server.admin.me().await.unwrap();
    let store = server.store().await;
    let events = store.audit_events(1000).await.unwrap();
    let revocations: Vec<serde_json::Value> = events
        .iter()
        .map(|e| serde_json::from_str::<serde_json::Value>(e).unwrap())
        .filter(|e| e["action"] == "token.revoke")
        .collect();
    assert_eq!(revocations.len(), 1, "{revocations:?}");
    assert_eq!(revocations[0]["actor"], admin.id.as_str());
    assert_eq!(revocations[0]["object"], format!("token:{bobs_token}"));
    assert_eq!(revocations[0]["result"], "ok");
}

#[tokio::test]
async fn workspaces_scope_tasks_and_roles_gate_actions() {
    let server = TestServer::start().await;
    let (alice, bob, carol) = (
        server.user("alice").await,
        server.user("bob").await,
        server.user("carol").await,
    );
    let ws = alice.platform.create_workspace("genomics").await.unwrap();
    assert_eq!(
        (ws.role.as_str(), ws.tes_url.as_str()),
        ("owner", "/w/genomics/ga4gh/tes/v1")
    );
    let task = alice
        .tes_in("genomics")
        .create_task(&sh_task("sleep 30"))
        .await
        .unwrap();

    // Not a member: the workspace and everything in it do not exist.
    let err = carol
        .tes_in("genomics")
        .get_task(&task, TesView::Minimal)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
    let err = carol.platform.list_members("genomics").await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
    // Personal workspaces are private too.
    let err = carol
        .tes
        .get_task(&task, TesView::Minimal)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));

    // view reads but cannot submit; the refusal names the role needed.
    alice
        .platform
        .set_member("genomics", &bob.id, "view")
        .await
        .unwrap();
    let tasks = bob
        .tes_in("genomics")
        .list_tasks(&Default::default())
        .await
        .unwrap();
    assert_eq!(tasks.tasks.len(), 1);
    let err = bob
        .tes_in("genomics")
        .create_task(&sh_task("true"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN));
    assert!(err.to_string().contains("needs the launch role"), "{err}");

    // launch submits and cancels its own work, but not others'.
    alice
        .platform
        .set_member("genomics", &bob.id, "launch")
        .await
        .unwrap();
    let own = bob
        .tes_in("genomics")
        .create_task(&sh_task("sleep 30"))
        .await
        .unwrap();
    bob.tes_in("genomics").cancel_task(&own).await.unwrap();
    let err = bob.tes_in("genomics").cancel_task(&task).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN));
    assert!(err.to_string().contains("needs the maintain role"), "{err}");

    // maintain cancels anyone's work but cannot manage members.
    alice
        .platform
        .set_member("genomics", &bob.id, "maintain")
        .await
        .unwrap();
    bob.tes_in("genomics").cancel_task(&task).await.unwrap();
    let done = alice
        .tes_in("genomics")
        .get_task(&task, TesView::Minimal)
        .await
        .unwrap();
    assert_eq!(done.state, Some(TesState::Canceled));
    let err = bob
        .platform
        .set_member("genomics", &carol.id, "view")
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN));
    assert!(err.to_string().contains("needs the admin role"), "{err}");

    // admin manages members, but only an owner makes or unmakes owners; the last owner stays.
    alice
        .platform
        .set_member("genomics", &bob.id, "admin")
        .await
        .unwrap();
    bob.platform
        .set_member("genomics", &carol.id, "view")
        .await
        .unwrap();
    let err = bob
        .platform
        .set_member("genomics", &carol.id, "owner")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("needs the owner role"), "{err}");
    let err = alice
        .platform
        .set_member("genomics", &alice.id, "admin")
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::CONFLICT));
    let err = bob.platform.delete_workspace("genomics").await.unwrap_err();
    assert!(err.to_string().contains("needs the owner role"), "{err}");
    let members = alice.platform.list_members("genomics").await.unwrap();
    assert_eq!(members.len(), 3);
    bob.platform
        .remove_member("genomics", &carol.id)
        .await
        .unwrap();
    assert_eq!(
        carol
            .platform
            .list_members("genomics")
            .await
            .unwrap_err()
            .status(),
        Some(StatusCode::NOT_FOUND)
    );

    // Only platform administrators create users.
    let err = alice.platform.create_user("mallory").await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN));

    alice.platform.delete_workspace("genomics").await.unwrap();
    assert_eq!(
        alice
            .tes_in("genomics")
            .list_tasks(&Default::default())
            .await
            .unwrap_err()
            .status(),
        Some(StatusCode::NOT_FOUND)
    );
}

#[tokio::test]
async fn two_owners_stepping_down_at_once_leave_the_workspace_one_owner() {
    let server = TestServer::start().await;
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    for trial in 0..10 {
        let ws = format!("duo-{trial}");
        alice.platform.create_workspace(&ws).await.unwrap();
        alice
            .platform
            .set_member(&ws, &bob.id, "owner")
            .await
            .unwrap();
        // Both owners step down in the same moment: by demotion in even trials, by leaving in odd ones.
        let (a, b) = if trial % 2 == 0 {
            tokio::join!(
                alice.platform.set_member(&ws, &alice.id, "admin"),
                bob.platform.set_member(&ws, &bob.id, "admin"),
            )
        } else {
            tokio::join!(
                alice.platform.remove_member(&ws, &alice.id),
                bob.platform.remove_member(&ws, &bob.id),
            )
        };
        assert!(
            a.is_ok() != b.is_ok(),
            "trial {trial}: exactly one owner may step down: {a:?} {b:?}"
        );
        let (refused, still_owner) = match (a, b) {
            (Err(e), Ok(())) => (e, &alice),
            (Ok(()), Err(e)) => (e, &bob),
            (a, b) => unreachable!("{a:?} {b:?}"),
        };
        assert_eq!(refused.status(), Some(StatusCode::CONFLICT), "{refused}");
        assert!(
            refused
                .to_string()
                .contains("a workspace must keep at least one owner"),
            "{refused}"
        );
        let owners: Vec<_> = still_owner
            .platform
            .list_members(&ws)
            .await
            .unwrap()
            .into_iter()
            .filter(|m| m.role == "owner")
            .map(|m| m.user)
            .collect();
        assert_eq!(
            owners,
            std::slice::from_ref(&still_owner.id),
            "trial {trial}"
        );
    }
}

#[tokio::test]
async fn the_audit_trail_records_actions_and_refusals_without_secrets() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let ws = alice.platform.create_workspace("audited").await.unwrap();
    let bob = server.user("bob").await;
    alice
        .platform
        .set_member(&ws.id, &bob.id, "view")
        .await
        .unwrap();
    let _ = bob
        .tes_in(&ws.id)
        .create_task(&sh_task("true"))
        .await
        .unwrap_err();
    let token = alice.platform.create_token("ci", None).await.unwrap();

    let data = server.data.display().to_string();
    let said = command_output(TRESOR, &["audit", "verify", "--data-dir", &data]);
    assert!(said.starts_with("audit trail intact"), "{said}");

    let store = server.store().await;
    let events = store.audit_events(1000).await.unwrap().join("\n");
    for expected in [
        "\"action\":\"user.bootstrap\"",
        "\"action\":\"workspace.create\"",
        "\"action\":\"member.set\"",
        "\"action\":\"token.create\"",
        "\"result\":\"denied: needs launch\"",
        "\"source\":\"127.0.0.1\"",
    ] {
        assert!(events.contains(expected), "missing {expected} in\n{events}");
    }
    assert!(
        !events.contains(&token.token[4..]),
        "no token value in the audit trail"
    );
    assert!(!events.contains(&server.admin_token[4..]));
}

/// How someone who holds only the database recomputes the audit chain after tampering with it.
#[derive(Debug, Clone, Copy)]
pub enum Rechain {
    /// Leaves the hashes as they are.
    No,
    /// Plain SHA-256 links, as the chain was before it was keyed.
    PlainSha256,
    /// HMAC-SHA256 links under a key of the forger's own.
    HmacUnder([u8; 32]),
}

/// Recomputes every link and the recorded head of the copy's chain, as a forger would.
async fn forge_chain(pool: &sqlx::SqlitePool, rechain: Rechain) {
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, body FROM audit_events ORDER BY seq ASC")
            .fetch_all(pool)
            .await
            .unwrap();
    let mut prev = vec![0u8; 32];
    for (seq, body) in rows {
        let mut linked = prev.clone();
        linked.extend_from_slice(body.as_bytes());
        let hash = match rechain {
            Rechain::No => return,
            Rechain::PlainSha256 => ring::digest::digest(&ring::digest::SHA256, &linked)
                .as_ref()
                .to_vec(),
            Rechain::HmacUnder(key) => ring::hmac::sign(
                &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
                &linked,
            )
            .as_ref()
            .to_vec(),
        };
        sqlx::query("UPDATE audit_events SET prev_hash = ?, hash = ? WHERE seq = ?")
            .bind(&prev)
            .bind(&hash)
            .bind(seq)
            .execute(pool)
            .await
            .unwrap();
        prev = hash;
    }
    sqlx::query("UPDATE meta SET value = ? WHERE key = 'audit_head'")
        .bind(&prev)
        .execute(pool)
        .await
        .unwrap();
}

/// Runs `tresor audit verify` against a copy of a data directory's database after `tamper` edits
/// it and `rechain` recomputes its chain. The audit key file stays where it is, named with
/// `--audit-key-file`: a copy of the database does not include it.
pub async fn verify_after(
    data: &std::path::Path,
    tamper: &str,
    rechain: Rechain,
) -> (bool, String) {
    let copy = tempfile::tempdir().unwrap();
    for name in ["tresor.db", "tresor.db-wal", "tresor.db-shm"] {
        if data.join(name).exists() {
            std::fs::copy(data.join(name), copy.path().join(name)).unwrap();
        }
    }
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        copy.path().join("tresor.db").display()
    ))
    .await
    .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(tamper.to_owned()))
        .execute(&pool)
        .await
        .unwrap();
    forge_chain(&pool, rechain).await;
    pool.close().await;
    let output = std::process::Command::new(TRESOR)
        .args(["audit", "verify", "--data-dir"])
        .arg(copy.path())
        .arg("--audit-key-file")
        .arg(data.join("audit-key"))
        .env_remove("TRESOR_AUDIT_KEY_FILE")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

const EDIT_THIRD_EVENT: &str = "UPDATE audit_events SET body = replace(body, '\"result\":\"ok\"', '\"result\":\"denied\"') WHERE seq = 3";

#[tokio::test]
async fn audit_verify_catches_edits_deletions_and_reordering() {
    let server = TestServer::start().await;
    for name in ["u1", "u2", "u3", "u4"] {
        server.user(name).await;
    }
    let (ok, why) = verify_after(&server.data, "SELECT 1", Rechain::No).await;
    assert!(ok, "an untouched trail verifies: {why}");

    let (ok, why) = verify_after(&server.data, EDIT_THIRD_EVENT, Rechain::No).await;
    assert!(!ok && why.contains("edited"), "edit: {why}");

    let (ok, why) = verify_after(
        &server.data,
        "DELETE FROM audit_events WHERE seq = 3",
        Rechain::No,
    )
    .await;
    assert!(!ok && why.contains("deleted"), "delete: {why}");

    let (ok, why) = verify_after(
        &server.data,
        "UPDATE audit_events SET seq = -3 WHERE seq = 3; UPDATE audit_events SET seq = 3 WHERE seq = 4; UPDATE audit_events SET seq = 4 WHERE seq = -3;",
        Rechain::No,
    )
    .await;
    assert!(!ok && why.contains("reordered"), "swap: {why}");

    let (ok, why) = verify_after(
        &server.data,
        "DELETE FROM audit_events WHERE seq = (SELECT MAX(seq) FROM audit_events)",
        Rechain::No,
    )
    .await;
    assert!(
        !ok && why.contains("removed from its end"),
        "truncate: {why}"
    );
}

#[tokio::test]
async fn audit_verify_catches_an_edit_even_when_every_hash_is_recomputed_without_the_key() {
    let server = TestServer::start().await;
    for name in ["u1", "u2", "u3", "u4"] {
        server.user(name).await;
    }
    // The forger edits an event and recomputes every link and the head: with plain SHA-256, as
    // the chain was before it was keyed, or with HMAC under a key of their own.
    for rechain in [Rechain::PlainSha256, Rechain::HmacUnder([7; 32])] {
        let (ok, why) = verify_after(&server.data, EDIT_THIRD_EVENT, rechain).await;
        assert!(
            !ok && why.contains("broken at event 1") && why.contains("edited"),
            "{rechain:?}: {why}"
        );
    }
    // Removing the marker that says the trail is keyed, so that it would pass as an old plain
    // chain, makes the store refuse to open it at all.
    let (ok, why) = verify_after(
        &server.data,
        &format!("{EDIT_THIRD_EVENT}; DELETE FROM meta WHERE key = 'audit_key_check'"),
        Rechain::PlainSha256,
    )
    .await;
    assert!(!ok && why.contains("not chained under a key"), "{why}");

    // Without the key file, verification says what is missing instead of passing.
    let copy = tempfile::tempdir().unwrap();
    for name in ["tresor.db", "tresor.db-wal", "tresor.db-shm"] {
        if server.data.join(name).exists() {
            std::fs::copy(server.data.join(name), copy.path().join(name)).unwrap();
        }
    }
    let output = std::process::Command::new(TRESOR)
        .args(["audit", "verify", "--data-dir"])
        .arg(copy.path())
        .env_remove("TRESOR_AUDIT_KEY_FILE")
        .output()
        .unwrap();
    let why = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{why}");
    assert!(why.contains("no audit key file at"), "{why}");
}

#[test]
fn bootstrap_writes_the_admin_token_to_a_private_file_and_prints_only_its_path() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;
    let dir = traversable_tempdir();
    let start = || {
        let mut child = std::process::Command::new(TRESOR)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = Vec::new();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        loop {
            let mut line = String::new();
            assert!(
                reader.read_line(&mut line).unwrap() > 0,
                "server exited early: {lines:?}"
            );
            let done = line.starts_with("tresor listening on");
            lines.push(line);
            if done {
                break;
            }
        }
        child.kill().unwrap();
        let out = child.wait_with_output().unwrap();
        (
            lines.concat(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (stdout, stderr) = start();
    let file = dir.path().join("data/bootstrap-admin-token");
    assert!(stdout.contains(&file.display().to_string()), "{stdout}");
    let token = std::fs::read_to_string(&file).unwrap();
    let token = token.trim();
    assert!(token.starts_with("trp_"));
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        !stdout.contains(token) && !stderr.contains(token),
        "the token is never printed"
    );

    let (stdout, _) = start();
    assert!(
        !stdout.contains("bootstrap"),
        "a second start does not bootstrap again: {stdout}"
    );
}

#[tokio::test]
async fn the_platform_api_serves_an_openapi_document_of_every_route() {
    let server = TestServer::start().await;
    let doc: serde_json::Value = reqwest::get(format!("{}/api/v1/openapi.json", server.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    for spec in tresor_server::route_specs()
        .into_iter()
        .filter(|s| s.path.starts_with("/api/v1"))
    {
        let method = spec.method.as_str().to_ascii_lowercase();
        assert!(
            paths.get(spec.path).and_then(|p| p.get(&method)).is_some(),
            "{method} {} is missing",
            spec.path
        );
    }
    // Errors on the platform API use its own shape, with a stable code.
    let err = server
        .admin
        .raw(reqwest::Method::GET, "workspaces/nope", None)
        .await
        .unwrap();
    assert_eq!(err.status, StatusCode::NOT_FOUND);
    let body: tresor_api_types::platform::PlatformError = serde_json::from_str(&err.body).unwrap();
    assert_eq!(body.code, "not_found");
}
