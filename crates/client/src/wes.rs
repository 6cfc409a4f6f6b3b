//! Client for tresor's GA4GH WES 1.1 API, in one workspace.

use tresor_api_types::wes::{
    RunId, RunListResponse, RunLog, RunRequest, RunStatus, TaskListResponse, WesServiceInfo,
    WesTaskLog,
};

use crate::{ClientError, RawResponse, base_url, decode, http_client};

/// One file of a run: its name in the run's directory and its bytes.
#[derive(Debug, Clone)]
pub struct WesAttachment {
    pub name: String,
    pub content: Vec<u8>,
}

/// Client for one tresor server's WES API, in one workspace.
#[derive(Debug, Clone)]
pub struct WesClient {
    http: reqwest::Client,
    base: url::Url,
}

impl WesClient {
    /// The caller's personal workspace (`/ga4gh/wes/v1`), authenticated with `token`.
    pub fn with_token(server: &str, token: &str) -> Result<WesClient, ClientError> {
        Ok(WesClient {
            http: http_client(Some(token))?,
            base: base_url(server, "ga4gh/wes/v1/")?,
        })
    }

    /// A WES at `base` itself (another server's, which may serve WES at `/`).
    pub fn at(base: &str, token: &str) -> Result<WesClient, ClientError> {
        Ok(WesClient {
            http: http_client(Some(token))?,
            base: base_url(base, "")?,
        })
    }

    /// A named workspace (`/w/{workspace}/ga4gh/wes/v1`).
    pub fn for_workspace(
        server: &str,
        workspace: &str,
        token: &str,
    ) -> Result<WesClient, ClientError> {
        Ok(WesClient {
            http: http_client(Some(token))?,
            base: base_url(server, &format!("w/{workspace}/ga4gh/wes/v1/"))?,
        })
    }

    fn url(&self, path: &str) -> Result<url::Url, ClientError> {
        self.base
            .join(path)
            .map_err(|e| ClientError::Url(e.to_string()))
    }

    pub async fn service_info(&self) -> Result<WesServiceInfo, ClientError> {
        let response = self
            .http
            .get(self.url("service-info")?)
            .send()
            .await
            .map_err(ClientError::Transport)?;
        decode(response).await
    }

    /// The multipart form WES's RunWorkflow takes.
    pub fn form(request: &RunRequest, attachments: &[WesAttachment]) -> reqwest::multipart::Form {
        let mut form = reqwest::multipart::Form::new()
            .text("workflow_type", request.workflow_type.clone())
            .text(
                "workflow_type_version",
                request.workflow_type_version.clone(),
            )
            .text("workflow_url", request.workflow_url.clone());
        if let Some(params) = &request.workflow_params {
            form = form.text(
                "workflow_params",
                serde_json::Value::Object(params.clone()).to_string(),
            );
        }
        if !request.tags.is_empty() {
            form = form.text(
                "tags",
                serde_json::to_string(&request.tags).unwrap_or_default(),
            );
        }
        if !request.workflow_engine_parameters.is_empty() {
            form = form.text(
                "workflow_engine_parameters",
                serde_json::to_string(&request.workflow_engine_parameters).unwrap_or_default(),
            );
        }
        if let Some(engine) = &request.workflow_engine {
            form = form.text("workflow_engine", engine.clone());
        }
        if let Some(version) = &request.workflow_engine_version {
            form = form.text("workflow_engine_version", version.clone());
        }
        for attachment in attachments {
            form = form.part(
                "workflow_attachment",
                reqwest::multipart::Part::bytes(attachment.content.clone())
                    .file_name(attachment.name.clone()),
            );
        }
        form
    }

    /// RunWorkflow; returns the run's id.
    pub async fn run_workflow(
        &self,
        request: &RunRequest,
        attachments: &[WesAttachment],
    ) -> Result<String, ClientError> {
        let response = self
            .http
            .post(self.url("runs")?)
            .multipart(Self::form(request, attachments))
            .send()
            .await
            .map_err(ClientError::Transport)?;
        Ok(decode::<RunId>(response).await?.run_id)
    }

    /// POSTs any form to RunWorkflow and returns the raw answer (for malformed requests).
    pub async fn post_runs_raw(
        &self,
        form: reqwest::multipart::Form,
    ) -> Result<RawResponse, ClientError> {
        let response = self
            .http
            .post(self.url("runs")?)
            .multipart(form)
            .send()
            .await
            .map_err(ClientError::Transport)?;
        Ok(RawResponse {
            status: response.status(),
            body: response.text().await.map_err(ClientError::Transport)?,
        })
    }

    pub async fn run_log(&self, id: &str) -> Result<RunLog, ClientError> {
        self.get(&format!("runs/{id}")).await
    }

    pub async fn status(&self, id: &str) -> Result<RunStatus, ClientError> {
        self.get(&format!("runs/{id}/status")).await
    }

    pub async fn list_runs(
        &self,
        page_size: Option<i64>,
        page_token: Option<&str>,
    ) -> Result<RunListResponse, ClientError> {
        let mut url = self.url("runs")?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(size) = page_size {
                query.append_pair("page_size", &size.to_string());
            }
            if let Some(token) = page_token {
                query.append_pair("page_token", token);
            }
        }
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(ClientError::Transport)?;
        decode(response).await
    }

    pub async fn run_tasks(&self, id: &str) -> Result<TaskListResponse, ClientError> {
        self.get(&format!("runs/{id}/tasks")).await
    }

    pub async fn run_task(&self, id: &str, task: &str) -> Result<WesTaskLog, ClientError> {
        self.get(&format!("runs/{id}/tasks/{task}")).await
    }

    pub async fn cancel(&self, id: &str) -> Result<String, ClientError> {
        let response = self
            .http
            .post(self.url(&format!("runs/{id}/cancel"))?)
            .send()
            .await
            .map_err(ClientError::Transport)?;
        Ok(decode::<RunId>(response).await?.run_id)
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let response = self
            .http
            .get(self.url(path)?)
            .send()
            .await
            .map_err(ClientError::Transport)?;
        decode(response).await
    }
}
