//! Executors in their OCI images, against real registries on loopback (Debian's
//! `docker-registry`, started by scripts/lib/registry-up.sh with images built there from Debian
//! packages): pulls, the cache, mirrors, logins, policies, crafted layers and broken registries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::StatusCode;
use serde_json::json;
use tresor_api_types::tes::{TesExecutor, TesState, TesTask};
use tresor_client::TesClient;

use crate::support::*;

const REGISTRY: &str = "127.0.0.1:5000";
const AUTH_REGISTRY: &str = "127.0.0.1:5001";
const AUTH_USER: &str = "tresor-test";
const AUTH_PASSWORD: &str = "registry-pass-8e1f";
const DEAD_REGISTRY: &str = "127.0.0.1:9";
const REGISTRY_LOG: &str = "/var/tmp/tresor-registry/open.log";
const REGISTRY_DATA: &str = "/var/tmp/tresor-registry/open";
const BUSYBOX_LAYOUT: &str = "/var/tmp/tresor-registry/build/busybox";
const BUSYBOX_ARCHIVE: &str = "/var/tmp/tresor-registry/build/busybox-layout.tar";

/// Starts the registries and builds their images once per test run (quick when already done).
fn ensure_registry() {
    static UP: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    UP.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/lib/registry-up.sh");
        let output = Command::new("bash").arg(script).output().unwrap();
        assert!(
            output.status.success(),
            "the registries did not start (scripts/lib/registry-up.sh): {}",
            String::from_utf8_lossy(&output.stderr)
        );
    });
}

fn image_settings() -> tresor_service::ImageSettings {
    ensure_registry();
    tresor_service::ImageSettings {
        runtime: tresor_service::ImageRuntime::Oci,
        plain_http: vec![REGISTRY.to_owned(), AUTH_REGISTRY.to_owned()],
        // Nothing listens there: the "registry that is down".
        private_registries: vec![DEAD_REGISTRY.to_owned()],
        mirrors: BTreeMap::from([("docker.io".to_owned(), format!("{REGISTRY}/mirror"))]),
        ..Default::default()
    }
}

async fn image_server() -> TestServer {
    TestServer::start_with(|s| s.services.images = image_settings()).await
}

fn image_task(image: &str, script: &str) -> TesTask {
    TesTask {
        executors: vec![TesExecutor {
            image: image.to_owned(),
            ..executor(&["sh", "-c", script])
        }],
        ..TesTask::default()
    }
}

fn cache_dir(server: &TestServer) -> PathBuf {
    server.data.join("work/.images")
}

fn metadata(task: &TesTask, key: &str) -> Option<String> {
    task.logs.as_ref()?[0].metadata.as_ref()?.get(key).cloned()
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A tar entry of a crafted layer; names and link targets are written raw, so they may hold
/// what no honest tool writes.
enum Entry<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    CharDevice(&'a str),
}

fn layer(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_old();
        let (name, kind, mode, link, data): (&str, tar::EntryType, u32, Option<&str>, &[u8]) =
            match entry {
                Entry::File(n, d, m) => (n, tar::EntryType::Regular, *m, None, d),
                Entry::Dir(n) => (n, tar::EntryType::Directory, 0o755, None, b""),
                Entry::Symlink(n, t) => (n, tar::EntryType::Symlink, 0o777, Some(t), b""),
                Entry::HardLink(n, t) => (n, tar::EntryType::Link, 0o644, Some(t), b""),
                Entry::CharDevice(n) => (n, tar::EntryType::Char, 0o644, None, b""),
            };
        let old = header.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// A layer with a static BusyBox as /bin/sh and a file that makes the layer unique.
fn busybox_layer(unique: &str) -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").unwrap();
    layer(&[
        Entry::Dir("bin"),
        Entry::File("bin/busybox", &busybox, 0o755),
        Entry::Symlink("bin/sh", "busybox"),
        Entry::Dir("tmp"),
        Entry::File("unique", unique.as_bytes(), 0o644),
    ])
}

/// Pushes an image of uncompressed `layers` to the open registry as `repo:tag` (an OCI layout
/// assembled here, copied by skopeo). Returns the layers' digests.
fn push_image(repo_tag: &str, layers: &[Vec<u8>], env: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let hex = sha256_hex(bytes);
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let layer_digests: Vec<(String, usize)> = layers.iter().map(|l| put(l)).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": env},
        "rootfs": {"type": "layers", "diff_ids": layer_digests.iter().map(|(d, _)| d).collect::<Vec<_>>()},
    }))
    .unwrap();
    let (config_digest, config_size) = put(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": layer_digests.iter().map(|(d, s)| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s
        })).collect::<Vec<_>>(),
    }))
    .unwrap();
    let (manifest_digest, manifest_size) = put(&manifest);
    std::fs::write(
        dir.path().join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": "1"},
        }]}))
        .unwrap(),
    )
    .unwrap();
    let output = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            &format!("oci:{}:1", dir.path().display()),
            &format!("docker://{REGISTRY}/{repo_tag}"),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // skopeo compresses the layers on the way: the registry's manifest has the digests.
    let manifest = command_output(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{REGISTRY}/{repo_tag}"),
        ],
    );
    let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect()
}

/// A repository name no other test run uses.
fn unique_repo(what: &str) -> String {
    format!("test/{what}-{}", uuid_like())
}

fn uuid_like() -> String {
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How often the open registry has served `digest` of `repo`.
fn downloads(repo: &str, digest: &str) -> usize {
    let log = std::fs::read_to_string(REGISTRY_LOG).unwrap_or_default();
    let needle = format!("\"GET /v2/{repo}/blobs/{digest} ");
    log.lines().filter(|l| l.contains(&needle)).count()
}

async fn run_in(client: &TesClient, task: &TesTask) -> TesTask {
    let id = client.create_task(task).await.unwrap();
    wait_terminal(client, &id).await
}

#[tokio::test]
async fn an_executor_runs_in_its_image_with_the_images_env_and_workdir() {
    let server = image_server().await;
    let image = format!("{REGISTRY}/lab/busybox:1");
    let done = server
        .run(&image_task(
            &image,
            "pwd; echo \"$GREETING\"; echo \"$PATH\"; echo \"$HOME\"; \
             test -e /usr/bin/cargo && echo host-usr || echo image-root; \
             touch /etc/x 2>/dev/null && echo writable || echo read-only; \
             touch \"$HOME/ok\" && echo home-writable; id -u",
        ))
        .await;
    assert_complete(&done);
    let out = stdout(&done, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..7],
        [
            "/work",
            "from-image",
            "/bin:/usr/bin",
            "/tmp",
            "image-root",
            "read-only",
            "home-writable"
        ],
        "{out}"
    );
    assert_ne!(lines[7], "0", "the executor must not run as root");
    let digest = metadata(&done, "executor.0.image_digest").unwrap();
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert_eq!(
        metadata(&done, "executor.0.image").as_deref(),
        Some(image.as_str())
    );
    assert_eq!(metadata(&done, "runtime").as_deref(), Some("oci"));
    assert!(system_logs(&done).contains("runtime: oci"));

    // The executor's env and workdir win over the image's.
    let task = TesTask {
        executors: vec![TesExecutor {
            image: image.clone(),
            env: Some(BTreeMap::from([("GREETING".into(), "from-task".into())])),
            workdir: Some("/tmp".into()),
            ..executor(&["sh", "-c", "pwd; echo $GREETING"])
        }],
        ..TesTask::default()
    };
    let done = server.run(&task).await;
    assert_eq!(
        stdout(&done, 0),
        "/tmp\nfrom-task\n",
        "{}",
        system_logs(&done)
    );
}

#[tokio::test]
async fn plain_alpine_and_ubuntu_run_through_the_configured_mirror() {
    let server = image_server().await;
    let done = server
        .run(&image_task("alpine", "busybox | head -1 | cut -c1-7"))
        .await;
    assert_eq!(stdout(&done, 0), "BusyBox\n", "{}", system_logs(&done));
    assert_eq!(
        metadata(&done, "executor.0.image").as_deref(),
        Some("docker.io/library/alpine:latest")
    );
    let done = server
        .run(&image_task(
            "ubuntu",
            "cut -d. -f1 /etc/debian_version; echo $PATH",
        ))
        .await;
    assert_eq!(
        stdout(&done, 0),
        "12\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n",
        "{}",
        system_logs(&done)
    );
}

#[tokio::test]
async fn twenty_tasks_on_one_uncached_image_download_it_once() {
    let server = image_server().await;
    let repo = unique_repo("twenty");
    let layers = push_image(&format!("{repo}:1"), &[busybox_layer(&repo)], &[]);
    let image = format!("{REGISTRY}/{repo}:1");
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(
            server
                .client
                .create_task(&image_task(&image, "cat /unique"))
                .await
                .unwrap(),
        );
    }
    for id in ids {
        let done = wait_terminal(&server.client, &id).await;
        assert_eq!(stdout(&done, 0), repo, "{}", system_logs(&done));
    }
    assert_eq!(
        downloads(&repo, &layers[0]),
        1,
        "one download for twenty tasks"
    );
    // One root for the image, shared by all.
    assert_eq!(entries(&cache_dir(&server).join("images")).len(), 1);
}

#[tokio::test]
async fn crafted_layers_cannot_write_outside_their_root() {
    let server = image_server().await;
    let outside = traversable_tempdir();
    let target = outside.path().join("owned");

    // `..` in a path: the image is refused, with the entry named.
    let repo = unique_repo("dotdot");
    let escape = format!("../../../../../../../..{}", target.display());
    push_image(
        &format!("{repo}:1"),
        &[
            busybox_layer(&repo),
            layer(&[Entry::File(&escape, b"x", 0o644)]),
        ],
        &[],
    );
    let done = server
        .run(&image_task(&format!("{REGISTRY}/{repo}:1"), "true"))
        .await;
    assert_system_error(&done, "escapes the image root");
    assert!(!target.exists());
    // Nothing half-unpacked is kept.
    assert!(entries(&cache_dir(&server).join("images")).is_empty());

    // A symlink to the host and a write through it, a device, a setuid binary: unpacked
    // inside the root, skipped or defused, and the image runs.
    let repo = unique_repo("links");
    let host_file = outside.path().join("host-file");
    std::fs::write(&host_file, b"host").unwrap();
    let outside_dir = outside.path().display().to_string();
    let through = "evil/owned".to_owned();
    let hard_target = host_file.display().to_string();
    push_image(
        &format!("{repo}:1"),
        &[
            busybox_layer(&repo),
            layer(&[
                Entry::Symlink("evil", &outside_dir),
                Entry::File(&through, b"inside", 0o644),
                Entry::CharDevice("dev-null"),
                Entry::File("suid", b"#!/bin/sh\n", 0o4755),
            ]),
        ],
        &[],
    );
    let done = server
        .run(&image_task(
            &format!("{REGISTRY}/{repo}:1"),
            "test -e /dev-null || echo no-device; busybox stat -c %a /suid",
        ))
        .await;
    let logs = system_logs(&done);
    assert!(
        !target.exists(),
        "a layer wrote through a symlink to the host"
    );
    assert_eq!(done.state, Some(TesState::Complete), "{logs}");
    assert_eq!(stdout(&done, 0), "no-device\n755\n", "{logs}");
    // The write through the link landed inside the image's root.
    let digest = metadata(&done, "executor.0.image_digest").unwrap();
    let inside = cache_dir(&server)
        .join("images")
        .join(digest.trim_start_matches("sha256:"))
        .join("rootfs")
        .join(&outside_dir[1..])
        .join("owned");
    assert_eq!(std::fs::read(&inside).unwrap(), b"inside");
    assert!(logs.contains("device"), "{logs}");
    assert!(logs.contains("setuid"), "{logs}");

    // A hard link to a host file resolves inside the root, where there is no such file.
    let repo = unique_repo("hardlink");
    push_image(
        &format!("{repo}:1"),
        &[
            busybox_layer(&repo),
            layer(&[Entry::HardLink("hard", &hard_target[1..])]),
        ],
        &[],
    );
    let done = server
        .run(&image_task(&format!("{REGISTRY}/{repo}:1"), "true"))
        .await;
    assert_system_error(&done, "hard");
    assert_eq!(std::fs::read(&host_file).unwrap(), b"host");
    assert_eq!(
        std::os::unix::fs::MetadataExt::nlink(&std::fs::metadata(&host_file).unwrap()),
        1,
        "a layer hard-linked a host file"
    );
}

#[tokio::test]
async fn a_corrupt_blob_a_missing_tag_and_a_dead_registry_are_clear_errors() {
    let server = image_server().await;
    let repo = unique_repo("corrupt");
    let layers = push_image(&format!("{repo}:1"), &[busybox_layer(&repo)], &[]);
    // The registry serves its storage as it is: corrupt the layer there.
    let hex = layers[0].trim_start_matches("sha256:");
    let data = Path::new(REGISTRY_DATA)
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();
    let done = server
        .run(&image_task(&format!("{REGISTRY}/{repo}:1"), "true"))
        .await;
    assert_system_error(&done, "digest");
    assert!(entries(&cache_dir(&server).join("images")).is_empty());
    assert!(
        !entries(&cache_dir(&server).join("blobs/sha256")).contains(&hex.to_owned()),
        "a blob that failed its digest is not kept"
    );

    let done = server
        .run(&image_task(
            &format!("{REGISTRY}/lab/busybox:no-such-tag"),
            "true",
        ))
        .await;
    assert_system_error(&done, "no such image or tag");

    let done = server
        .run(&image_task(
            &format!("{DEAD_REGISTRY}/lab/busybox:1"),
            "true",
        ))
        .await;
    assert_system_error(&done, "cannot be reached");
}

#[tokio::test]
async fn registry_logins_come_from_workspace_secrets_and_never_reach_the_task() {
    let server = image_server().await;
    let private = format!("{AUTH_REGISTRY}/private/busybox:1");
    let alice = server.user("alice").await;
    alice.platform.create_workspace("lab").await.unwrap();
    let lab = alice.tes_in("lab");

    // No login: the registry refuses, and says what to do.
    let script = "env; cat /proc/self/environ; ls -laR /run /tmp 2>&1; true";
    let done = run_in(&lab, &image_task(&private, script)).await;
    assert_system_error(&done, "image policy");

    // A policy naming a secret that does not exist is refused.
    let policy = json!({"credentials": {AUTH_REGISTRY: "REGISTRY_LOGIN"}});
    let refused = alice.platform.set_image_policy("lab", &policy).await;
    assert_eq!(refused.unwrap_err().status(), Some(StatusCode::BAD_REQUEST));
    let login = format!("{AUTH_USER}:{AUTH_PASSWORD}");
    alice
        .platform
        .put_secret("lab", false, "REGISTRY_LOGIN", login.as_bytes(), None)
        .await
        .unwrap();
    alice
        .platform
        .set_image_policy("lab", &policy)
        .await
        .unwrap();
    assert_eq!(
        alice.platform.image_policy("lab").await.unwrap(),
        json!({
            "allowed": [], "require_digest": false, "credentials": {AUTH_REGISTRY: "REGISTRY_LOGIN"}
        })
    );

    let done = run_in(&lab, &image_task(&private, script)).await;
    assert_complete(&done);
    let everything = serde_json::to_string(&done).unwrap();
    assert!(
        !everything.contains(AUTH_PASSWORD),
        "the password reached the task: {everything}"
    );
    assert!(files_containing(&server.data, AUTH_PASSWORD.as_bytes()).is_empty());
    // Not even hidden: the redactor would turn a leaked password into ***.
    assert!(!stdout(&done, 0).contains("***"), "{}", stdout(&done, 0));
    assert!(
        !stdout(&done, 0).contains(AUTH_USER),
        "{}",
        stdout(&done, 0)
    );

    // Bob's workspace names the same image without a login: the cached copy is not his.
    let bob = server.user("bob").await;
    let done = run_in(&bob.tes, &image_task(&private, "true")).await;
    assert_system_error(&done, "refused access");

    // Bob cannot read or set the lab's policy: another workspace's is a 404.
    let resp = bob
        .platform
        .raw(reqwest::Method::GET, "workspaces/lab/image-policy", None)
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    let resp = bob
        .platform
        .raw(
            reqwest::Method::PUT,
            "workspaces/lab/image-policy",
            Some(json!({"credentials": {AUTH_REGISTRY: "REGISTRY_LOGIN"}})),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_workspace_policy_refuses_images_at_creation_naming_executor_and_rule() {
    let server = image_server().await;
    let alice = server.user("alice").await;
    alice.platform.create_workspace("strict").await.unwrap();
    let strict = alice.tes_in("strict");
    alice
        .platform
        .set_image_policy(
            "strict",
            &json!({"allowed": [format!("{REGISTRY}/lab/*")], "require_digest": false}),
        )
        .await
        .unwrap();
    let task = TesTask {
        executors: vec![
            TesExecutor {
                image: format!("{REGISTRY}/lab/busybox:1"),
                ..executor(&["true"])
            },
            TesExecutor {
                image: "ubuntu".into(),
                ..executor(&["true"])
            },
        ],
        ..TesTask::default()
    };
    let resp = strict
        .post_raw("tasks", serde_json::to_vec(&task).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.body);
    assert!(resp.body.contains("executors[1].image"), "{}", resp.body);
    assert!(
        resp.body
            .contains("not among the workspace's allowed images"),
        "{}",
        resp.body
    );

    // Pinning required: a tag is refused, the digest the tag names runs.
    alice
        .platform
        .set_image_policy("strict", &json!({"require_digest": true}))
        .await
        .unwrap();
    let tagged = image_task(&format!("{REGISTRY}/lab/busybox:1"), "true");
    let resp = strict
        .post_raw("tasks", serde_json::to_vec(&tagged).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    assert!(resp.body.contains("pinned by digest"), "{}", resp.body);
    let done = server.run(&tagged).await;
    let digest = metadata(&done, "executor.0.image_digest").unwrap();
    let pinned = image_task(&format!("{REGISTRY}/lab/busybox@{digest}"), "echo pinned");
    let done = run_in(&strict, &pinned).await;
    assert_eq!(stdout(&done, 0), "pinned\n", "{}", system_logs(&done));

    // A registry on a private address the site did not list is refused at creation: the
    // worker would reach it on the host's network.
    let sneaky = image_task("10.11.12.13:5000/x/y:1", "true");
    let resp = server
        .client
        .post_raw("tasks", serde_json::to_vec(&sneaky).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.body);
    assert!(
        resp.body.contains("images.private_registries"),
        "{}",
        resp.body
    );

    // A bad policy is a 400 that says what to fix; a launcher may not set one.
    let bad = alice
        .platform
        .set_image_policy("strict", &json!({"allowed": ["alpine"]}))
        .await;
    assert_eq!(bad.unwrap_err().status(), Some(StatusCode::BAD_REQUEST));
    let carol = server.user("carol").await;
    alice
        .platform
        .set_member("strict", &carol.id, "launch")
        .await
        .unwrap();
    let refused = carol.platform.set_image_policy("strict", &json!({})).await;
    assert_eq!(refused.unwrap_err().status(), Some(StatusCode::FORBIDDEN));
}

#[tokio::test]
async fn an_imported_layout_runs_without_any_registry() {
    let server = image_server().await;
    for (source, name) in [
        (BUSYBOX_LAYOUT, "site.local/tools/busybox:1"),
        (BUSYBOX_ARCHIVE, "site.local/tools/busybox-archive:1"),
    ] {
        let data = server.data.display().to_string();
        let said = command_output(
            TRESOR,
            &[
                "admin",
                "import-image",
                source,
                "--name",
                name,
                "--data-dir",
                &data,
            ],
        );
        assert!(said.contains("sha256:"), "{said}");
        // site.local resolves nowhere: only the import can answer.
        let done = server.run(&image_task(name, "echo $GREETING")).await;
        assert_eq!(stdout(&done, 0), "from-image\n", "{}", system_logs(&done));
    }
}

#[tokio::test]
async fn the_cache_evicts_the_least_recently_used_image_to_stay_under_its_limit() {
    let server = TestServer::start_with(|s| {
        s.services.images = tresor_service::ImageSettings {
            // Room for about two of these images (a 1 MiB layer and its 2 MiB root each).
            max_cache_bytes: 7 << 20,
            ..image_settings()
        };
    })
    .await;
    let mut images = Vec::new();
    for i in 0..3 {
        let repo = unique_repo(&format!("lru{i}"));
        push_image(&format!("{repo}:1"), &[busybox_layer(&repo)], &[]);
        images.push(format!("{REGISTRY}/{repo}:1"));
    }
    let mut digests = Vec::new();
    for image in &images {
        let done = server.run(&image_task(image, "true")).await;
        assert_complete(&done);
        digests.push(metadata(&done, "executor.0.image_digest").unwrap());
    }
    let kept = entries(&cache_dir(&server).join("images"));
    let hex = |d: &String| d.trim_start_matches("sha256:").to_owned();
    assert!(
        !kept.contains(&hex(&digests[0])),
        "the oldest stays: {kept:?}"
    );
    assert!(kept.contains(&hex(&digests[2])), "{kept:?}");
}

#[tokio::test]
async fn slurm_tasks_run_in_images_from_the_shared_cache() {
    let server = TestServer::start_with(|s| {
        s.services.images = image_settings();
        s.services.slurm = vec![slurm_settings(&crate::slurm::dir_of(s))];
    })
    .await;
    server.admin.create_workspace("cluster").await.unwrap();
    server
        .admin
        .set_compute_env("cluster", "hpc")
        .await
        .unwrap();
    let cluster = TesClient::for_workspace(&server.url, "cluster", &server.admin_token).unwrap();
    let done = run_in(&cluster, &image_task("alpine:3.20", "echo $GREETING; pwd")).await;
    assert_eq!(
        stdout(&done, 0),
        "from-image\n/work\n",
        "{}",
        system_logs(&done)
    );
    assert!(metadata(&done, "slurm_job_id").is_some());
    let shared = server.dir.path().join("slurm-work/.images/images");
    assert_eq!(
        entries(&shared).len(),
        1,
        "the image is in the shared work dir's cache"
    );
}

#[tokio::test]
async fn an_image_larger_than_the_hosts_limits_is_refused_before_it_fills_the_disk() {
    // The Debian image has ~50 MB of layers; a 1 MB compressed layer that unpacks beyond the
    // limit is stopped while unpacking, from the tar headers.
    let server = TestServer::start_with(|s| {
        s.services.images = tresor_service::ImageSettings {
            max_image_bytes: 10 << 20,
            ..image_settings()
        };
    })
    .await;
    let done = server.run(&image_task("ubuntu", "true")).await;
    assert_system_error(&done, "more than this host's image limit");
    let repo = unique_repo("bomb");
    let zeros = vec![0u8; 11 << 20];
    push_image(
        &format!("{repo}:1"),
        &[
            busybox_layer(&repo),
            layer(&[Entry::File("zeros", &zeros, 0o644)]),
        ],
        &[],
    );
    let done = server
        .run(&image_task(&format!("{REGISTRY}/{repo}:1"), "true"))
        .await;
    assert_system_error(&done, "limit");
    assert!(entries(&cache_dir(&server).join("images")).is_empty());
}

#[tokio::test]
async fn secrets_and_the_identity_token_reach_an_executor_in_its_image() {
    let server = image_server().await;
    let info = server.client.service_info().await.unwrap();
    assert!(
        info.description
            .unwrap_or_default()
            .contains("Runtime: oci"),
        "service-info names the runtime"
    );
    let value = b"image-secret-5c1e0d9a-value";
    server
        .admin
        .put_secret(
            &server.admin.me().await.unwrap().personal_workspace,
            false,
            "API_KEY",
            value,
            None,
        )
        .await
        .unwrap();
    // The image has its own /run: the secrets tmpfs and the identity directory are made inside
    // it. The output is compared through a hash so the log's redactor does not hide it.
    let mut task = image_task(
        &format!("{REGISTRY}/lab/busybox:1"),
        "busybox sha256sum \"$TRESOR_SECRETS_DIR/API_KEY\" | cut -c1-64; \
         test \"$API_KEY\" = \"$(cat $TRESOR_SECRETS_DIR/API_KEY)\" && echo env-matches; \
         test -s \"$TRESOR_IDENTITY_TOKEN_FILE\" && echo token",
    );
    task.tags = Some(BTreeMap::from([
        ("tresor.secrets".to_owned(), "API_KEY".to_owned()),
        ("tresor.secrets.env".to_owned(), "API_KEY".to_owned()),
    ]));
    let done = server.run(&task).await;
    assert_complete(&done);
    assert_eq!(
        stdout(&done, 0),
        format!("{}\nenv-matches\ntoken\n", sha256_hex(value))
    );
}
