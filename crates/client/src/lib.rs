#![doc = include_str!("../README.md")]

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use tresor_api_types::ErrorResponse;
use tresor_api_types::platform::PlatformError;
use tresor_api_types::tes::{
    TesCreateTaskResponse, TesListTasksResponse, TesServiceInfo, TesState, TesTask, TesView,
};

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the server: {0}")]
    Transport(#[source] reqwest::Error),
    #[error("{status}: {msg}")]
    Api { status: StatusCode, msg: String },
    #[error("the server's answer does not parse: {0}")]
    Decode(String),
    #[error("invalid server URL: {0}")]
    Url(String),
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

async fn decode<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, ClientError> {
    let status = response.status();
    let body = response.bytes().await.map_err(ClientError::Transport)?;
    if !status.is_success() {
        let msg = serde_json::from_slice::<ErrorResponse>(&body)
            .map(|e| e.msg)
            .or_else(|_| serde_json::from_slice::<PlatformError>(&body).map(|e| e.message))
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        return Err(ClientError::Api { status, msg });
    }
    if body.is_empty() {
        return serde_json::from_slice(b"null").map_err(|e| ClientError::Decode(e.to_string()));
    }
    serde_json::from_slice(&body).map_err(|e| ClientError::Decode(e.to_string()))
}

/// ListTasks parameters.
#[derive(Debug, Clone, Default)]
pub struct ListTasks {
    pub name_prefix: Option<String>,
    pub state: Option<TesState>,
    pub tags: Vec<(String, String)>,
    pub page_size: Option<i64>,
    pub page_token: Option<String>,
    pub view: Option<TesView>,
}

fn view_str(view: TesView) -> &'static str {
    match view {
        TesView::Minimal => "MINIMAL",
        TesView::Basic => "BASIC",
        TesView::Full => "FULL",
    }
}

/// A raw response, for callers that check status and body themselves.
#[derive(Debug)]
pub struct RawResponse {
    pub status: StatusCode,
    pub body: String,
}

/// Builds the HTTP client, sending `token` (if any) as a bearer token on every request.
fn http_client(token: Option<&str>) -> Result<reqwest::Client, ClientError> {
    // reqwest is built without a default TLS provider; installing ring twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| ClientError::Url("the token is not valid in an HTTP header".to_owned()))?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        // The server closes a connection idle for its header timeout (10 s by default). A pooled
        // connection reused just as the server closes it fails the request, so idle ones are
        // dropped well before.
        .pool_idle_timeout(IDLE_CONNECTION)
        .build()
        .map_err(ClientError::Transport)
}

/// How long an idle connection is kept for reuse: below the server's idle timeout.
pub const IDLE_CONNECTION: std::time::Duration = std::time::Duration::from_secs(4);

fn base_url(server: &str, path: &str) -> Result<url::Url, ClientError> {
    url::Url::parse(&format!("{}/{path}", server.trim_end_matches('/')))
        .map_err(|e| ClientError::Url(e.to_string()))
}

/// Client for one tresor server's TES API, in one workspace.
#[derive(Debug, Clone)]
pub struct TesClient {
    http: reqwest::Client,
    base: url::Url,
}

impl TesClient {
    /// `server` is the server's root URL, such as `http://127.0.0.1:8000`; no credential.
    pub fn new(server: &str) -> Result<TesClient, ClientError> {
        Ok(TesClient {
            http: http_client(None)?,
            base: base_url(server, "ga4gh/tes/v1/")?,
        })
    }

    /// The caller's personal workspace (`/ga4gh/tes/v1`), authenticated with `token`.
    pub fn with_token(server: &str, token: &str) -> Result<TesClient, ClientError> {
        Ok(TesClient {
            http: http_client(Some(token))?,
            base: base_url(server, "ga4gh/tes/v1/")?,
        })
    }

    /// A named workspace (`/w/{workspace}/ga4gh/tes/v1`), authenticated with `token`.
    pub fn for_workspace(
        server: &str,
        workspace: &str,
        token: &str,
    ) -> Result<TesClient, ClientError> {
        Ok(TesClient {
            http: http_client(Some(token))?,
            base: base_url(server, &format!("w/{workspace}/ga4gh/tes/v1/"))?,
        })
    }

    fn url(&self, path: &str) -> Result<url::Url, ClientError> {
        self.base
            .join(path)
            .map_err(|e| ClientError::Url(e.to_string()))
    }

    async fn decode<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, ClientError> {
        decode(response).await
    }

    pub async fn service_info(&self) -> Result<TesServiceInfo, ClientError> {
        let response = self
            .http
            .get(self.url("service-info")?)
            .send()
            .await
            .map_err(ClientError::Transport)?;
        Self::decode(response).await
    }

    /// CreateTask; returns the new task's id.
    pub async fn create_task(&self, task: &TesTask) -> Result<String, ClientError> {
        let response = self
            .http
            .post(self.url("tasks")?)
            .json(task)
            .send()
            .await
            .map_err(ClientError::Transport)?;
        Ok(Self::decode::<TesCreateTaskResponse>(response).await?.id)
    }

    pub async fn get_task(&self, id: &str, view: TesView) -> Result<TesTask, ClientError> {
        let mut url = self.url(&format!("tasks/{id}"))?;
        url.query_pairs_mut().append_pair("view", view_str(view));
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(ClientError::Transport)?;
        Self::decode(response).await
    }

    pub async fn list_tasks(
        &self,
        params: &ListTasks,
    ) -> Result<TesListTasksResponse, ClientError> {
        let mut url = self.url("tasks")?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(p) = &params.name_prefix {
                q.append_pair("name_prefix", p);
            }
            if let Some(s) = params.state {
                q.append_pair("state", s.as_str());
            }
            for (k, v) in &params.tags {
                q.append_pair("tag_key", k);
                q.append_pair("tag_value", v);
            }
            if let Some(n) = params.page_size {
                q.append_pair("page_size", &n.to_string());
            }
            if let Some(t) = &params.page_token {
                q.append_pair("page_token", t);
            }
            if let Some(v) = params.view {
                q.append_pair("view", view_str(v));
            }
        }
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(ClientError::Transport)?;
        Self::decode(response).await
    }

    pub async fn cancel_task(&self, id: &str) -> Result<(), ClientError> {
        let response = self
            .http
            .post(self.url(&format!("tasks/{id}:cancel"))?)
            .send()
            .await
            .map_err(ClientError::Transport)?;
        Self::decode::<serde_json::Value>(response)
            .await
            .map(|_| ())
    }

    /// Sends raw bytes to a path under the TES base, for probing how bad input is refused.
    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> Result<RawResponse, ClientError> {
        let response = self
            .http
            .post(self.url(path)?)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(ClientError::Transport)?;
        Self::raw(response).await
    }

    /// GETs a path (with query) under the TES base.
    pub async fn get_raw(&self, path_and_query: &str) -> Result<RawResponse, ClientError> {
        let response = self
            .http
            .get(self.url(path_and_query)?)
            .send()
            .await
            .map_err(ClientError::Transport)?;
        Self::raw(response).await
    }

    async fn raw(response: reqwest::Response) -> Result<RawResponse, ClientError> {
        let status = response.status();
        let body = response.text().await.map_err(ClientError::Transport)?;
        Ok(RawResponse { status, body })
    }
}

mod platform;
pub use platform::PlatformClient;

mod wes;
pub use wes::{WesAttachment, WesClient};
