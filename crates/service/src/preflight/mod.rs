//! Preflight: proves a compute environment works before anyone relies on it, with real probes.
//! Each check says what it found and, when it fails, which setting to fix.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tresor_auth::client_credentials::ClientCredentials;
use tresor_domain::WorkspaceId;
use tresor_executors::LocalSettings;

use crate::identity::{IdentityService, TaskSubject};
use crate::storage::{Location, Method, StorageService, parse_s3};

/// Largest clock difference to the storage server that tokens and signatures tolerate well.
const MAX_SKEW: Duration = Duration::from_secs(60);

/// One probe's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub message: String,
}

/// Every probe's result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub compute_env: String,
    pub workspace: String,
    pub ok: bool,
    pub checks: Vec<Check>,
}

/// The preflight runner; cheap to clone.
#[derive(Clone, Debug)]
pub struct Preflight {
    identity: IdentityService,
    storage: StorageService,
    local: Arc<LocalSettings>,
    outbound: Option<Arc<ClientCredentials>>,
    http: reqwest::Client,
}

struct Checks(Vec<Check>);

impl Checks {
    fn add(&mut self, name: &str, result: Result<String, String>) {
        let (ok, message) = match result {
            Ok(m) => (true, m),
            Err(m) => (false, m),
        };
        self.0.push(Check {
            name: name.to_owned(),
            ok,
            message: tresor_crypto::redact::mask_credentials_str(&message),
        });
    }
}

impl Preflight {
    pub fn new(
        identity: IdentityService,
        storage: StorageService,
        local: LocalSettings,
        outbound: Option<Arc<ClientCredentials>>,
    ) -> Preflight {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Preflight {
            identity,
            storage,
            local: Arc::new(local),
            outbound,
            http,
        }
    }

    pub async fn run(&self, env: &str, workspace: &WorkspaceId) -> Report {
        let mut checks = Checks(Vec::new());
        let discovery = self.check_discovery().await;
        let jwks_uri = discovery.as_ref().ok().map(|(_, uri)| uri.clone());
        checks.add("issuer.discovery", discovery.map(|(m, _)| m));
        checks.add("issuer.token", self.check_token(workspace, jwks_uri).await);
        self.check_storage(workspace, &mut checks).await;
        checks.add("executor.sandbox", self.check_sandbox().await);
        checks.add("executor.runtime_dir", self.check_runtime_dir());
        if let Some(outbound) = &self.outbound {
            checks.add(
                "outbound.client_credentials",
                outbound
                    .token()
                    .await
                    .map(|_| {
                        format!(
                            "{} issued a token to client {}",
                            outbound.token_url, outbound.client_id
                        )
                    })
                    .map_err(|e| format!("{e}; check [outbound] client_id and its secret or key")),
            );
        }
        Report {
            compute_env: env.to_owned(),
            workspace: workspace.to_string(),
            ok: checks.0.iter().all(|c| c.ok),
            checks: checks.0,
        }
    }

    async fn get_json(&self, url: &str) -> Result<serde_json::Value, String> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("cannot fetch {url}: {}", e.without_url()))?;
        if !response.status().is_success() {
            return Err(format!("{url} answered {}", response.status()));
        }
        response
            .json()
            .await
            .map_err(|e| format!("{url} is not JSON: {}", e.without_url()))
    }

    /// The discovery document as a relying party reads it.
    async fn check_discovery(&self) -> Result<(String, String), String> {
        let iss = self.identity.issuer();
        let fix = "set identity.issuer to the URL at which relying parties reach this server";
        let url = format!("{iss}/.well-known/openid-configuration");
        let doc = self
            .get_json(&url)
            .await
            .map_err(|e| format!("{e}; {fix}"))?;
        let field = |name: &str| doc.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        if field("issuer").as_deref() != Some(iss) {
            return Err(format!(
                "the discovery document at {url} names issuer {:?}, not {iss:?}; {fix}",
                field("issuer").unwrap_or_default()
            ));
        }
        for required in [
            "authorization_endpoint",
            "jwks_uri",
            "response_types_supported",
            "subject_types_supported",
            "id_token_signing_alg_values_supported",
        ] {
            if doc.get(required).is_none() {
                return Err(format!("the discovery document lacks {required}"));
            }
        }
        let jwks_uri = field("jwks_uri").unwrap_or_default();
        Ok((
            format!("{url} is complete and names issuer {iss}"),
            jwks_uri,
        ))
    }

    /// Issues a token and verifies it against the published JWKS, as a relying party would.
    async fn check_token(
        &self,
        workspace: &WorkspaceId,
        jwks_uri: Option<String>,
    ) -> Result<String, String> {
        let nonce = uuid::Uuid::now_v7().simple().to_string();
        let subject = TaskSubject {
            workspace: workspace.to_string(),
            user: "preflight".to_owned(),
            task: format!("preflight-{nonce}"),
            run: format!("preflight-{nonce}"),
        };
        let issued = self
            .identity
            .mint(&subject, None)
            .await
            .map_err(|e| format!("issuing a token failed: {e}"))?;
        let jwks_uri = jwks_uri.ok_or("skipped: the discovery document is unusable")?;
        let jwks = self.get_json(&jwks_uri).await?;
        let header = jsonwebtoken::decode_header(&issued.token).map_err(|e| e.to_string())?;
        let kid = header.kid.unwrap_or_default();
        let key = jwks
            .get("keys")
            .and_then(|k| k.as_array())
            .into_iter()
            .flatten()
            .find(|k| k.get("kid").and_then(|v| v.as_str()) == Some(kid.as_str()))
            .ok_or_else(|| format!("{jwks_uri} does not publish the signing key {kid}"))?;
        let component = |name: &str| key.get(name).and_then(|v| v.as_str()).unwrap_or_default();
        let decoding =
            jsonwebtoken::DecodingKey::from_rsa_components(component("n"), component("e"))
                .map_err(|e| format!("the published key {kid} is unusable: {e}"))?;
        let audience = self.identity.audience(None).map_err(|e| e.to_string())?;
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_issuer(&[self.identity.issuer()]);
        validation.set_audience(&[audience]);
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<serde_json::Value>(&issued.token, &decoding, &validation)
            .map_err(|e| format!("a relying party would reject tresor's token: {e}"))?;
        let iat = data
            .claims
            .get("iat")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0);
        let skew = (time::OffsetDateTime::now_utc().unix_timestamp() - iat).abs();
        Ok(format!(
            "a token for audience {audience} (key {kid}, sub {}) verified against {jwks_uri}; issued {skew} s ago",
            subject.sub()
        ))
    }

    async fn check_storage(&self, workspace: &WorkspaceId, checks: &mut Checks) {
        let Some(s3) = self.storage.s3() else {
            checks.add(
                "storage",
                Ok(
                    "no [s3] storage is configured; tasks may use file:// and http(s):// URLs only"
                        .to_owned(),
                ),
            );
            return;
        };
        let endpoint = s3.endpoint.clone().unwrap_or_else(|| "AWS S3".to_owned());
        let location = match self.storage.location(workspace).await {
            Ok(Some(l)) => l,
            Ok(None) => {
                checks.add(
                    "storage.location",
                    Err(format!(
                        "workspace {workspace} has no storage location; set s3.default_bucket or PUT /api/v1/workspaces/{workspace}/storage"
                    )),
                );
                return;
            }
            Err(e) => {
                checks.add("storage.location", Err(e.to_string()));
                return;
            }
        };
        checks.add(
            "storage.location",
            Ok(format!("{} at {endpoint}", location.url())),
        );
        let ttl = Duration::from_secs(60);
        let key = format!(
            "{}.tresor-preflight/{}",
            location.prefix,
            uuid::Uuid::now_v7().simple()
        );
        let body = format!("tresor preflight {key}");
        let fix = "check s3.endpoint, s3.region, s3.access_key_id and s3.secret_access_key_file";
        let describe = |what: &str,
                        r: Result<reqwest::Response, reqwest::Error>|
         -> Result<reqwest::Response, String> {
            match r {
                Err(e) => Err(format!(
                    "{what}: cannot reach {endpoint}: {}; {fix}",
                    e.without_url()
                )),
                Ok(r) if r.status() == reqwest::StatusCode::FORBIDDEN => Err(format!(
                    "{what}: the storage server refused the signature (403); {fix}"
                )),
                Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => Err(format!(
                    "{what}: not found (404): does bucket {} exist?",
                    location.bucket
                )),
                Ok(r) if !r.status().is_success() => Err(format!(
                    "{what}: the storage server answered {}",
                    r.status()
                )),
                Ok(r) => Ok(r),
            }
        };
        // Write.
        let written = match self
            .storage
            .presign(Method::PUT, &location.bucket, &key, ttl)
            .await
        {
            Err(e) => Err(format!("presigning failed: {e}; {fix}")),
            Ok(url) => describe(
                "a presigned PUT",
                self.http
                    .put(&url)
                    .header(reqwest::header::CONTENT_LENGTH, body.len())
                    .body(body.clone())
                    .send()
                    .await,
            ),
        };
        let date = written
            .as_ref()
            .ok()
            .and_then(|r| r.headers().get(reqwest::header::DATE))
            .and_then(|d| d.to_str().ok())
            .map(str::to_owned);
        let write_ok = written.is_ok();
        checks.add(
            "storage.write",
            written.map(|_| format!("wrote s3://{}/{key} with a presigned PUT", location.bucket)),
        );
        if !write_ok {
            return;
        }
        checks.add("clock", clock_skew(date.as_deref()));
        // Read back.
        let read = match self
            .storage
            .presign(Method::GET, &location.bucket, &key, ttl)
            .await
        {
            Err(e) => Err(format!("presigning failed: {e}")),
            Ok(url) => match describe("a presigned GET", self.http.get(&url).send().await) {
                Err(e) => Err(e),
                Ok(r) => match r.text().await {
                    Ok(text) if text == body => Ok(format!(
                        "read it back with a presigned GET ({} bytes)",
                        body.len()
                    )),
                    Ok(_) => {
                        Err("a presigned GET returned other content than was written".to_owned())
                    }
                    Err(e) => Err(format!("reading the object: {}", e.without_url())),
                },
            },
        };
        checks.add("storage.read", read);
        self.check_isolation(workspace, &location, &key, checks)
            .await;
        // Delete.
        let deleted = match self
            .storage
            .presign(Method::DELETE, &location.bucket, &key, ttl)
            .await
        {
            Err(e) => Err(format!("presigning failed: {e}")),
            Ok(url) => describe("a presigned DELETE", self.http.delete(&url).send().await)
                .map(|_| "deleted it with a presigned DELETE".to_owned()),
        };
        checks.add("storage.delete", deleted);
    }

    /// Another workspace's prefix is refused twice: tresor will not sign for it, and a URL
    /// signed for this workspace's object does not open another object.
    async fn check_isolation(
        &self,
        workspace: &WorkspaceId,
        location: &Location,
        key: &str,
        checks: &mut Checks,
    ) {
        if location.prefix.is_empty() {
            checks.add(
                "storage.isolation",
                Err(format!(
                    "workspace {workspace} owns the whole bucket {}; give each workspace its own prefix",
                    location.bucket
                )),
            );
            return;
        }
        let outside = format!(
            "s3://{}/tresor-preflight-elsewhere/{}",
            location.bucket,
            key.rsplit('/').next().unwrap_or("x")
        );
        let mut probe = tresor_domain::TaskSpec::new(
            Vec::new(),
            tresor_domain::ComputeEnv {
                id: tresor_executors::LOCAL_ENV.to_owned(),
                kind: tresor_domain::ComputeEnvKind::Local,
            },
        );
        probe.inputs.push(tresor_domain::task::Input {
            url: Some(outside.clone()),
            path: "/in".to_owned(),
            ..Default::default()
        });
        let refused_by_tresor = self.storage.check_task(workspace, &probe).await.is_err();
        let signature_bound = match self
            .storage
            .presign(Method::GET, &location.bucket, key, Duration::from_secs(60))
            .await
        {
            Err(e) => Err(format!("presigning failed: {e}")),
            Ok(url) => {
                let (_, outside_key) = parse_s3(&outside).unwrap_or_default();
                let tampered = url.replacen(key, outside_key, 1);
                match self.http.get(&tampered).send().await {
                    Ok(r) if r.status() == reqwest::StatusCode::FORBIDDEN => Ok(()),
                    Ok(r) => Err(format!(
                        "a URL signed for this workspace's object, pointed at another object, got {} instead of 403: the storage server does not check signatures",
                        r.status()
                    )),
                    Err(e) => Err(format!(
                        "cannot reach the storage server: {}",
                        e.without_url()
                    )),
                }
            }
        };
        let result = match (refused_by_tresor, signature_bound) {
            (true, Ok(())) => Ok(format!(
                "{outside} is refused: tresor will not sign it, and the storage server rejects a signature moved to it (403)"
            )),
            (false, _) => Err(format!(
                "tresor would sign {outside}, outside workspace {workspace}'s prefix {}",
                location.url()
            )),
            (true, Err(e)) => Err(e),
        };
        checks.add("storage.isolation", result);
    }

    /// Runs `true` in a real sandbox with the configured bubblewrap.
    async fn check_sandbox(&self) -> Result<String, String> {
        let settings = &self.local;
        if !settings.worker_program.is_file() {
            return Err(format!(
                "the worker program {} does not exist; check local.worker_program",
                settings.worker_program.display()
            ));
        }
        let root = std::env::temp_dir();
        let env = std::collections::BTreeMap::new();
        let command = ["true".to_owned()];
        let spec = tresor_executors::sandbox::SandboxSpec {
            settings: &settings.sandbox,
            root: &root,
            mounts: &[],
            network: false,
            workdir: "/",
            env: &env,
            command: &command,
            secret_fds: &[],
            ro_binds: &[],
            image_root: None,
            shared_dirs: &[],
            group: None,
            hold: None,
        };
        let output = tresor_executors::sandbox::command(&spec, false)
            .output()
            .await
            .map_err(|e| {
                format!(
                    "cannot start {}: {e}; check local.bwrap",
                    settings.sandbox.bwrap.display()
                )
            })?;
        if output.status.success() {
            Ok(format!(
                "{} ran `true` in a sandbox{}{}",
                settings.sandbox.bwrap.display(),
                settings
                    .sandbox
                    .run_as
                    .map(|(u, g)| format!(" as uid {u}, gid {g}"))
                    .unwrap_or_else(|| " as this server's own user: tresor is not root, so \
                        tasks are not kept apart from each other by host users (that needs root)"
                        .to_owned()),
                settings
                    .task_ids
                    .as_ref()
                    .map(|ids| format!(
                        "; local tasks run as uids of their own, {}-{}",
                        ids.start(),
                        ids.end()
                    ))
                    .unwrap_or_default()
            ))
        } else {
            Err(format!(
                "the sandbox failed ({}): {}; check that bubblewrap can create namespaces here",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    /// Identity tokens live on a tmpfs: never on a disk.
    fn check_runtime_dir(&self) -> Result<String, String> {
        const TMPFS_MAGIC: u64 = 0x0102_1994;
        let dir = &self.local.runtime_dir;
        let stat = rustix::fs::statfs(dir.as_path())
            .map_err(|e| format!("{}: {e}; check local.runtime_dir", dir.display()))?;
        #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
        let kind = stat.f_type as u64;
        if kind == TMPFS_MAGIC {
            Ok(format!("{} is a tmpfs", dir.display()))
        } else {
            Err(format!(
                "{} is not a tmpfs, so identity tokens would touch a disk; point local.runtime_dir at one (such as /dev/shm)",
                dir.display()
            ))
        }
    }
}

/// The storage server's clock against ours, from its `Date` header.
fn clock_skew(date: Option<&str>) -> Result<String, String> {
    let date = date.ok_or("the storage server sent no Date header")?;
    let theirs = time::OffsetDateTime::parse(date, &time::format_description::well_known::Rfc2822)
        .map_err(|_| format!("cannot read the storage server's Date header {date:?}"))?;
    let skew = (time::OffsetDateTime::now_utc() - theirs)
        .whole_seconds()
        .abs();
    if skew.unsigned_abs() <= MAX_SKEW.as_secs() {
        Ok(format!("the storage server's clock is {skew} s from ours"))
    } else {
        Err(format!(
            "the storage server's clock is {skew} s from ours; signatures and tokens fail beyond a few minutes: synchronise the clocks (NTP)"
        ))
    }
}
