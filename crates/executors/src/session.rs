//! The worker's side of a task session: calls to the server's internal endpoints with the task
//! credential (secrets, identity tokens, presigned URLs), the identity token directory with its
//! refresher and socket, and transfers through presigned URLs. Messages name the `s3://` URL,
//! never the presigned one, and never a token.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;

use crate::protocol::{
    IDENTITY_DIR, IdentityDelivery, IssuedToken, TOKEN_FILE, TOKEN_SOCKET, TokenRequest,
    WorkerSession,
};

/// A failed call: the HTTP status when the server answered, and what went wrong.
#[derive(Debug)]
pub(crate) struct CallError {
    pub status: Option<u16>,
    pub message: String,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The task's line to the server.
#[derive(Clone)]
pub(crate) struct Session {
    base_url: String,
    credential: Arc<str>,
    http: reqwest::Client,
    /// For presigned URLs (often https), built only by tasks that use storage.
    storage_http: Arc<std::sync::OnceLock<reqwest::Client>>,
}

impl Session {
    pub fn new(session: &WorkerSession) -> Result<Session, String> {
        let builder = reqwest::Client::builder().timeout(Duration::from_secs(60));
        // The server listens on loopback, in plain HTTP. Loading the system's trust roots costs
        // 4 to 12 ms per worker, a third of a short task's overhead; a client whose TLS trusts
        // nothing skips it, and could not be talked into TLS to anyone anyway.
        let builder = if session.base_url.starts_with("http://") {
            builder.tls_backend_preconfigured(
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )
        } else {
            builder
        };
        Ok(Session {
            base_url: session.base_url.trim_end_matches('/').to_owned(),
            credential: Arc::from(session.credential.as_str()),
            http: builder.build().map_err(|e| e.to_string())?,
            storage_http: Arc::new(std::sync::OnceLock::new()),
        })
    }

    /// The client for presigned storage URLs.
    pub fn storage_http(&self) -> Result<&reqwest::Client, String> {
        if let Some(client) = self.storage_http.get() {
            return Ok(client);
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("preparing the storage client: {e}"))?;
        Ok(self.storage_http.get_or_init(|| client))
    }

    /// Calls `{base_url}/{path}`; GET without a body, POST with one.
    pub async fn call<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&impl serde::Serialize>,
    ) -> Result<T, CallError> {
        let url = format!("{}/{path}", self.base_url);
        let request = match body {
            Some(body) => self.http.post(&url).json(body),
            None => self.http.get(&url),
        };
        let response = request
            .bearer_auth(&*self.credential)
            .send()
            .await
            .map_err(|e| CallError {
                status: None,
                message: format!("the server is unreachable: {}", e.without_url()),
            })?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
                .unwrap_or(text);
            return Err(CallError {
                status: Some(status.as_u16()),
                message: format!("the server answered {status}: {message}"),
            });
        }
        response.json().await.map_err(|e| CallError {
            status: None,
            message: format!("the server's answer does not parse: {}", e.without_url()),
        })
    }

    /// Sends a request to `{base_url}/{path}` (GET, or POST with `body` as JSON) and hands back
    /// the server's answer as it is: status, content type and body.
    pub async fn forward(
        &self,
        post: bool,
        path: &str,
        body: axum::body::Bytes,
    ) -> Result<(u16, String, axum::body::Bytes), String> {
        let url = format!("{}/{path}", self.base_url);
        let request = if post {
            self.http
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
        } else {
            self.http.get(&url)
        };
        let response = request
            .bearer_auth(&*self.credential)
            .send()
            .await
            .map_err(|e| format!("the server is unreachable: {}", e.without_url()))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_owned();
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("reading the server's answer: {}", e.without_url()))?;
        Ok((status, content_type, body))
    }

    pub async fn token(&self, audience: Option<String>) -> Result<IssuedToken, CallError> {
        self.call("token", Some(&TokenRequest { audience })).await
    }

    /// `call` for a call that is safe to repeat (a new identity token; the secrets, under the
    /// worker's delivery id), retried while no answer comes, for up to two minutes: a task
    /// starting while its server restarts (a batch job launched meanwhile) waits for it, and one
    /// whose server was killed while it answered asks the next one.
    pub async fn call_repeatable<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&impl serde::Serialize>,
    ) -> Result<T, CallError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            match self.call(path, body).await {
                Err(e) if e.status.is_none() && tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, path, "the server is not reachable; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                other => return other,
            }
        }
    }
}

/// Downloads a presigned URL to `dest`; `label` (the `s3://` URL) names it in errors.
pub(crate) async fn download_presigned(
    http: &reqwest::Client,
    presigned: &str,
    dest: &Path,
    label: &str,
) -> Result<(), String> {
    let mut response = http.get(presigned).send().await.map_err(|e| {
        let why = if e.is_connect() {
            "the storage server cannot be reached"
        } else {
            "the download broke off"
        };
        format!("input {label}: {why}: {}", e.without_url())
    })?;
    if !response.status().is_success() {
        return Err(format!(
            "input {label}: the storage server answered {}",
            response.status()
        ));
    }
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("input {label}: {e}"))?;
    }
    let mut file = tokio::fs::File::create(dest)
        .await
        .map_err(|e| format!("input {label}: {e}"))?;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("input {label}: {}", e.without_url()))?
    {
        file.write_all(&chunk)
            .await
            .map_err(|e| format!("input {label}: {e}"))?;
    }
    file.flush()
        .await
        .map_err(|e| format!("input {label}: {e}"))
}

/// Uploads `source` (opened without following links) to a presigned PUT URL.
pub(crate) async fn upload_presigned(
    http: &reqwest::Client,
    presigned: &str,
    source: &Path,
    label: &str,
) -> Result<u64, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(source)
        .map_err(|e| format!("output {label}: {e}"))?;
    let size = file
        .metadata()
        .map_err(|e| format!("output {label}: {e}"))?
        .len();
    let response = http
        .put(presigned)
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(reqwest::Body::from(tokio::fs::File::from_std(file)))
        .send()
        .await
        .map_err(|e| format!("output {label}: {}", e.without_url()))?;
    if !response.status().is_success() {
        return Err(format!(
            "output {label}: the storage server answered {}",
            response.status()
        ));
    }
    Ok(size)
}

/// The prefix of a task's identity directory name in the runtime dir; the rest is random, so
/// nobody can create it first.
pub fn identity_dir_prefix(task_id: &str) -> String {
    format!("tresor-{task_id}.")
}

pub(crate) fn random_hex() -> Result<String, String> {
    let mut bytes = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Replaces the token file atomically, 0400 and owned by the task's user.
fn write_token(dir: &Path, token: &str, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{TOKEN_FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&tmp)?;
    std::io::Write::write_all(&mut file, token.as_bytes())?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
    }
    drop(file);
    std::fs::rename(&tmp, dir.join(TOKEN_FILE))
}

/// A running task's identity: its private token directory (on a tmpfs), the refresher that keeps
/// the token current, and the socket that hands out tokens for other audiences. Dropping it
/// stops both and removes the directory, so no token outlives the task's executors.
pub(crate) struct Identity {
    dir: PathBuf,
    jobs: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Identity {
    fn drop(&mut self) {
        for job in &self.jobs {
            job.abort();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Identity {
    /// Creates the directory, fetches the first token and starts the refresher and the socket.
    pub async fn start(
        task_id: &str,
        delivery: &IdentityDelivery,
        session: &Session,
        owner: Option<(u32, u32)>,
        engine: bool,
    ) -> Result<Identity, String> {
        let dir =
            delivery
                .runtime_dir
                .join(format!("{}{}", identity_dir_prefix(task_id), random_hex()?));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| {
                format!(
                    "creating the identity directory in {}: {e}",
                    delivery.runtime_dir.display()
                )
            })?;
        let mut identity = Identity {
            dir: dir.clone(),
            jobs: Vec::new(),
        };
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| format!("handing the identity directory to the task's user: {e}"))?;
        }
        let first = session
            .call_repeatable::<IssuedToken>("token", Some(&TokenRequest { audience: None }))
            .await
            .map_err(|e| format!("could not get the task's identity token: {e}"))?;
        write_token(&dir, &first.token, owner)
            .map_err(|e| format!("writing the identity token: {e}"))?;
        identity.jobs.push(tokio::spawn(refresh(
            dir.clone(),
            session.clone(),
            first.expires_at,
            owner,
        )));
        let socket = dir.join(TOKEN_SOCKET);
        let listener = tokio::net::UnixListener::bind(&socket)
            .map_err(|e| format!("creating the token socket: {e}"))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&socket, Some(uid), Some(gid))
                .map_err(|e| format!("handing the token socket to the task's user: {e}"))?;
        }
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("restricting the token socket: {e}"))?;
        let mut router = axum::Router::new().route("/token", axum::routing::get(socket_token));
        if engine {
            router = router
                .route(
                    "/ga4gh/tes/v1/tasks",
                    axum::routing::get(run_tes).post(run_tes),
                )
                .route(
                    "/ga4gh/tes/v1/tasks/{task}",
                    axum::routing::get(run_tes).post(run_tes),
                );
        }
        let router = router.with_state(SocketState {
            session: session.clone(),
            rate: std::sync::Arc::new(governor::RateLimiter::direct(SOCKET_RATE)),
            tes_rate: std::sync::Arc::new(governor::RateLimiter::direct(TES_RATE)),
        });
        identity.jobs.push(tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        }));
        // Read-only for the task's user from now on: it may read the token and use the socket,
        // not replace them (root renews the token regardless of the mode). A server that is not
        // root runs its tasks as itself and must write the renewed token here with its own
        // rights, so the directory stays 0700, its alone.
        if owner.is_some() {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o500))
                .map_err(|e| format!("restricting the identity directory: {e}"))?;
        }
        Ok(identity)
    }

    /// The host directory, shown read-only in the sandbox.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The variables every executor gets.
    pub fn env(delivery: &IdentityDelivery) -> Vec<(String, String)> {
        let file = format!("{IDENTITY_DIR}/{TOKEN_FILE}");
        let mut env = vec![
            ("TRESOR_IDENTITY_TOKEN_FILE".to_owned(), file.clone()),
            (
                "TRESOR_IDENTITY_SOCKET".to_owned(),
                format!("{IDENTITY_DIR}/{TOKEN_SOCKET}"),
            ),
        ];
        env.extend(
            delivery
                .sdk_env
                .iter()
                .map(|name| (name.clone(), file.clone())),
        );
        env
    }
}

/// Renews the token file at two thirds of each token's life, for as long as the task runs.
/// The server refuses once the task has ended: that refusal is the revocation.
async fn refresh(dir: PathBuf, session: Session, mut expires_at: i64, owner: Option<(u32, u32)>) {
    loop {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let wait = u64::try_from((expires_at - now) * 2 / 3)
            .unwrap_or(0)
            .max(1);
        tokio::time::sleep(Duration::from_secs(wait)).await;
        loop {
            match session.token(None).await {
                Ok(token) => {
                    if write_token(&dir, &token.token, owner).is_ok() {
                        expires_at = token.expires_at;
                    }
                    break;
                }
                // Refused: the task is over, or the server no longer knows this session.
                Err(CallError {
                    status: Some(401 | 403 | 404 | 409),
                    ..
                }) => return,
                Err(_) if time::OffsetDateTime::now_utc().unix_timestamp() >= expires_at => return,
                Err(_) => tokio::time::sleep(Duration::from_secs(2)).await,
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct AudienceQuery {
    audience: Option<String>,
}

/// Tokens a task may ask its socket for: each is signed by the server, so a task looping on
/// the socket would otherwise spend the server's CPU (the server's own per-credential rate
/// limit is the second line).
const SOCKET_RATE: governor::Quota =
    governor::Quota::per_second(nonzero(5)).allow_burst(nonzero(20));

const fn nonzero(n: u32) -> std::num::NonZeroU32 {
    match std::num::NonZeroU32::new(n) {
        Some(n) => n,
        None => std::num::NonZeroU32::MIN,
    }
}

#[derive(Clone)]
struct SocketState {
    session: Session,
    rate: std::sync::Arc<governor::DefaultDirectRateLimiter>,
    /// An engine's calls to its run's TES: enough to poll hundreds of jobs, not to flood the
    /// server (which also limits each credential).
    tes_rate: std::sync::Arc<governor::DefaultDirectRateLimiter>,
}

const TES_RATE: governor::Quota =
    governor::Quota::per_second(nonzero(100)).allow_burst(nonzero(200));

/// Whether a request to the task's socket carries `Tresor-Metadata: true`, which keeps a request
/// that a task was tricked into forwarding (SSRF) from getting a token or reaching the run's TES.
fn marked(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get("tresor-metadata")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The run's TES on an engine's socket: `POST /ga4gh/tes/v1/tasks` (create a job),
/// `GET …/tasks` (the run's jobs), `GET …/tasks/{id}` and `POST …/tasks/{id}:cancel`, forwarded
/// to the server's `…/internal/v1/tasks/{engine}/run/…` with the engine task's session, which
/// never enters the sandbox. The server decides what the engine may do: only its run's jobs,
/// in its run's workspace, as the user who started the run.
async fn run_tes(
    axum::extract::State(SocketState {
        session, tes_rate, ..
    }): axum::extract::State<SocketState>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if !marked(&headers) {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            "send the header Tresor-Metadata: true\n",
        )
            .into_response();
    }
    if tes_rate.check().is_err() {
        return (
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            [(axum::http::header::RETRY_AFTER, "1")],
            "too many requests from this engine; retry after 1 s\n",
        )
            .into_response();
    }
    let tail = uri
        .path()
        .strip_prefix("/ga4gh/tes/v1/tasks")
        .unwrap_or_default();
    // Only `""` or `/{id}` with an id of letters, digits, `-` and an optional `:cancel`: the
    // tail becomes part of the server URL, so nothing in it may walk to another endpoint.
    let id_ok = |id: &str| {
        let id = id.strip_suffix(":cancel").unwrap_or(id);
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !(tail.is_empty() || tail.strip_prefix('/').is_some_and(id_ok)) {
        return (axum::http::StatusCode::NOT_FOUND, "no such task\n").into_response();
    }
    let mut path = format!("run/tasks{tail}");
    if let Some(query) = uri.query() {
        path.push('?');
        path.push_str(query);
    }
    let post = method == axum::http::Method::POST;
    match session.forward(post, &path, body).await {
        Ok((status, content_type, body)) => {
            let status = axum::http::StatusCode::from_u16(status)
                .unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
            (
                status,
                [(axum::http::header::CONTENT_TYPE, content_type)],
                body,
            )
                .into_response()
        }
        Err(e) => (axum::http::StatusCode::BAD_GATEWAY, format!("{e}\n")).into_response(),
    }
}

/// `GET /token?audience=…` on the task's socket. The `Tresor-Metadata: true` header keeps a
/// request that a task was tricked into forwarding (SSRF) from getting a token.
async fn socket_token(
    axum::extract::State(SocketState { session, rate, .. }): axum::extract::State<SocketState>,
    axum::extract::Query(query): axum::extract::Query<AudienceQuery>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use governor::clock::{Clock, DefaultClock};
    if let Err(not_until) = rate.check() {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let seconds = wait.as_secs().max(1);
        return (
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            [(axum::http::header::RETRY_AFTER, seconds.to_string())],
            format!("too many token requests from this task; retry after {seconds} s\n"),
        )
            .into_response();
    }
    if !marked(&headers) {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            "send the header Tresor-Metadata: true\n",
        )
            .into_response();
    }
    match session.token(query.audience).await {
        Ok(token) => axum::Json(token).into_response(),
        Err(e) => {
            let status = e
                .status
                .and_then(|s| axum::http::StatusCode::from_u16(s).ok())
                .unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
            (status, format!("{}\n", e.message)).into_response()
        }
    }
}
