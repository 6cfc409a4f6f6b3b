//! A workspace's egress allowlist: its tasks reach the listed destinations through a proxy on
//! their sandbox's loopback, and nothing else; other workspaces neither see nor get it.

use reqwest::StatusCode;
use tresor_api_types::tes::TesTask;

use crate::support::*;

/// An HTTP server on the host's loopback answering `body` at every path.
async fn http_fixture(body: &'static str) -> u16 {
    let app = axum::Router::new().fallback(axum::routing::get(move || async move { body }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// A task that tries every way out it can think of and prints what happened.
fn probe_task(allowed: u16, other: u16) -> TesTask {
    let script = format!(
        r#"
import os, socket, http.client, urllib.request, urllib.error
print("proxy", os.environ.get("HTTPS_PROXY"), "except", os.environ.get("NO_PROXY"))
# The fixtures are on the host's loopback, which a task's own 127.0.0.1 is not: ask the proxy.
os.environ.pop("NO_PROXY", None); os.environ.pop("no_proxy", None)
print("interfaces", sorted(name for _, name in socket.if_nameindex()))
def get(url):
    try:
        return urllib.request.urlopen(url, timeout=10).read().decode()
    except urllib.error.HTTPError as e:
        return "http %d %s" % (e.code, e.read().decode().strip())
    except OSError as e:
        return "unreachable"
print("plain", get("http://127.0.0.1:{allowed}/plain"))
try:
    tunnel = http.client.HTTPConnection("127.0.0.1", 3128, timeout=10)
    tunnel.set_tunnel("127.0.0.1", {allowed})
    tunnel.request("GET", "/tunnel")
    print("tunnel", tunnel.getresponse().read().decode())
except OSError as e:
    print("tunnel unreachable", e)
print("other", get("http://127.0.0.1:{other}/other"))
print("by name", get("http://localhost:{allowed}/name"))
try:
    socket.create_connection(("127.0.0.1", {allowed}), timeout=5)
    print("direct reached")
except OSError:
    print("direct blocked")
"#
    );
    TesTask {
        name: Some("egress-probe".to_owned()),
        executors: vec![executor(&["python3", "-c", &script])],
        ..TesTask::default()
    }
}

/// A server whose operator allows egress, to private addresses too or not.
async fn egress_server(private: bool) -> TestServer {
    TestServer::start_with(|s| {
        s.services.local.allow_egress = true;
        s.services.local.allow_private_egress = private;
    })
    .await
}

#[tokio::test]
async fn tasks_reach_the_workspaces_allowed_destinations_through_the_proxy_and_nothing_else() {
    let server = egress_server(true).await;
    let allowed = http_fixture("allowed-body").await;
    let other = http_fixture("other-body").await;
    let alice = server.user("alice").await;
    alice.platform.create_workspace("lab").await.unwrap();
    let rules = [
        format!("127.0.0.1:{allowed}"),
        format!("LocalHost:{allowed}"),
    ];
    let rules: Vec<&str> = rules.iter().map(String::as_str).collect();
    let stored = alice.platform.set_egress("lab", &rules).await.unwrap();
    assert_eq!(
        stored.allow,
        [
            format!("127.0.0.1:{allowed}"),
            format!("localhost:{allowed}")
        ]
    );

    let done = server
        .run_in(&alice.tes_in("lab"), &probe_task(allowed, other))
        .await;
    assert_complete(&done);
    let out = stdout(&done, 0);
    for line in [
        "proxy http://127.0.0.1:3128 except localhost,127.0.0.1,::1".to_owned(),
        // The sandbox's namespace holds its loopback and nothing else.
        "interfaces ['lo']".to_owned(),
        "plain allowed-body".to_owned(),
        "tunnel allowed-body".to_owned(),
        format!("other http 403 tresor egress: 127.0.0.1:{other} refused"),
        // This operator allows private destinations: a name for one works as well.
        "by name allowed-body".to_owned(),
        "direct blocked".to_owned(),
    ] {
        assert!(out.contains(&line), "missing {line:?} in:\n{out}");
    }
    let logs = system_logs(&done);
    assert!(
        logs.contains(&format!("127.0.0.1:{other}")) && logs.contains("egress proxy refused"),
        "{logs}"
    );

    // A workspace without an allowlist has no proxy and no way out.
    let done = server.run_in(&alice.tes, &probe_task(allowed, other)).await;
    assert_complete(&done);
    let out = stdout(&done, 0);
    for line in [
        "proxy None except None",
        "plain unreachable",
        "tunnel unreachable",
        "direct blocked",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
}

#[tokio::test]
async fn the_operator_decides_whether_there_is_egress_and_whether_it_reaches_private_addresses() {
    // Off by default: any user can make a workspace and be its admin.
    let server = TestServer::start().await;
    let err = server
        .admin
        .set_egress(
            &server.admin.me().await.unwrap().personal_workspace,
            &["pypi.org:443"],
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST), "{err}");
    assert!(err.to_string().contains("local.allow_egress"), "{err}");
    drop(server);

    let server = egress_server(false).await;
    let allowed = http_fixture("allowed-body").await;
    let other = http_fixture("other-body").await;
    let alice = server.user("alice").await;
    alice.platform.create_workspace("lab").await.unwrap();
    for address in [
        "127.0.0.1:80",
        "169.254.169.254:80",
        "10.0.0.5:9000",
        "[fd00:ec2::254]:80",
    ] {
        let err = alice
            .platform
            .set_egress("lab", &[address])
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST), "{err}");
        assert!(
            err.to_string().contains("local.allow_private_egress"),
            "{err}"
        );
    }
    // A name is accepted, but one that resolves to this host's loopback leads nowhere.
    let rule = format!("localhost:{allowed}");
    alice.platform.set_egress("lab", &[&rule]).await.unwrap();
    let done = server
        .run_in(&alice.tes_in("lab"), &probe_task(allowed, other))
        .await;
    assert_complete(&done);
    let out = stdout(&done, 0);
    let refused = format!(
        "by name http 403 tresor egress: localhost:{allowed} refused: it resolves only to loopback, private or link-local addresses"
    );
    assert!(out.contains(&refused), "missing {refused:?} in:\n{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_jobs_sandbox_gets_the_same_proxy_from_the_worker_on_its_node() {
    let server = TestServer::start_with(|s| {
        crate::slurm::add_cluster(s);
        s.services.local.allow_egress = true;
        s.services.local.allow_private_egress = true;
    })
    .await;
    let tes = crate::slurm::cluster_workspace(&server, "hpclab").await;
    let allowed = http_fixture("allowed-body").await;
    let other = http_fixture("other-body").await;
    let rule = format!("127.0.0.1:{allowed}");
    server.admin.set_egress("hpclab", &[&rule]).await.unwrap();
    let done = server.run_in(&tes, &probe_task(allowed, other)).await;
    assert_complete(&done);
    let ran_as_job = done.logs.as_ref().unwrap()[0]
        .metadata
        .as_ref()
        .is_some_and(|m| m.contains_key("slurm_job_id"));
    assert!(ran_as_job, "not a batch job: {done:?}");
    let out = stdout(&done, 0);
    for line in [
        "plain allowed-body".to_owned(),
        "tunnel allowed-body".to_owned(),
        format!("other http 403 tresor egress: 127.0.0.1:{other} refused"),
        "direct blocked".to_owned(),
    ] {
        assert!(out.contains(&line), "missing {line:?} in:\n{out}");
    }
}

#[tokio::test]
async fn only_admins_set_the_allowlist_and_other_workspaces_never_see_it() {
    let server = egress_server(false).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let mallory = server.user("mallory").await;
    alice.platform.create_workspace("lab").await.unwrap();
    alice
        .platform
        .set_member("lab", &bob.id, "maintain")
        .await
        .unwrap();
    alice
        .platform
        .set_egress("lab", &["pypi.org:443", "*.pythonhosted.org:443"])
        .await
        .unwrap();

    // A member may read it; only an admin may change it.
    assert_eq!(
        bob.platform.egress("lab").await.unwrap().allow,
        ["pypi.org:443", "*.pythonhosted.org:443"]
    );
    let err = bob
        .platform
        .set_egress("lab", &["evil.example:443"])
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN), "{err}");

    // Another workspace's allowlist does not exist for an outsider, to read or to overwrite.
    for result in [
        mallory.platform.egress("lab").await.map(|_| ()),
        mallory
            .platform
            .set_egress("lab", &["evil.example:443"])
            .await
            .map(|_| ()),
    ] {
        let err = result.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::NOT_FOUND), "{err}");
    }
    assert_eq!(
        alice.platform.egress("lab").await.unwrap().allow,
        ["pypi.org:443", "*.pythonhosted.org:443"]
    );

    // Bad rules are refused whole, naming the rule and what to write.
    for (rules, says) in [
        (vec!["pypi.org"], "has no port"),
        (vec!["pypi.org:99999"], "1 to 65535"),
        (vec!["http://pypi.org:443"], "not a DNS label"),
        (vec!["*.com:443"], "registered domain"),
        (vec!["a.org:1", "A.org:1"], "twice"),
    ] {
        let err = alice.platform.set_egress("lab", &rules).await.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST), "{err}");
        assert!(err.to_string().contains(says), "{err}");
    }
    let unknown = reqwest::Client::new()
        .put(format!("{}/api/v1/workspaces/lab/egress", server.url))
        .bearer_auth(&alice.token)
        .json(&serde_json::json!({ "allow": [], "deny": [] }))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    assert!(unknown.text().await.unwrap().contains("deny"));
    assert_eq!(
        alice.platform.egress("lab").await.unwrap().allow.len(),
        2,
        "a refused change keeps the allowlist"
    );

    // Emptying it takes the proxy away again.
    alice.platform.set_egress("lab", &[]).await.unwrap();
    assert!(alice.platform.egress("lab").await.unwrap().allow.is_empty());
}
