//! Client for the platform API under `/api/v1`.

use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tresor_api_types::platform::{
    CreateToken, CreateUser, CreateWorkspace, CreatedToken, Me, Member, PutSecret, Secret,
    SecretVersion, SetMember, Token, User, Workspace,
};
use tresor_api_types::platform::{PreflightReport, StorageLocation};

use crate::{ClientError, RawResponse, base_url, decode, http_client};

/// Client for one server's platform API, authenticated with a token.
#[derive(Debug, Clone)]
pub struct PlatformClient {
    http: reqwest::Client,
    base: url::Url,
}

impl PlatformClient {
    pub fn new(server: &str, token: Option<&str>) -> Result<PlatformClient, ClientError> {
        Ok(PlatformClient {
            http: http_client(token)?,
            base: base_url(server, "api/v1/")?,
        })
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let url = self
            .base
            .join(path)
            .map_err(|e| ClientError::Url(e.to_string()))?;
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(body);
        }
        decode(request.send().await.map_err(ClientError::Transport)?).await
    }

    /// Any method and path under `/api/v1`, for probing refusals.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<RawResponse, ClientError> {
        let url = self
            .base
            .join(path)
            .map_err(|e| ClientError::Url(e.to_string()))?;
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(ClientError::Transport)?;
        let status = response.status();
        let body = response.text().await.map_err(ClientError::Transport)?;
        Ok(RawResponse { status, body })
    }

    pub async fn me(&self) -> Result<Me, ClientError> {
        self.call::<(), _>(Method::GET, "me", None).await
    }

    pub async fn create_user(&self, name: &str) -> Result<User, ClientError> {
        self.call(
            Method::POST,
            "users",
            Some(&CreateUser {
                name: name.to_owned(),
            }),
        )
        .await
    }

    pub async fn list_users(&self) -> Result<Vec<User>, ClientError> {
        self.call::<(), _>(Method::GET, "users", None).await
    }

    pub async fn create_token_for(
        &self,
        user: &str,
        name: &str,
    ) -> Result<CreatedToken, ClientError> {
        let body = CreateToken {
            name: name.to_owned(),
            expires_in_days: None,
        };
        self.call(Method::POST, &format!("users/{user}/tokens"), Some(&body))
            .await
    }

    pub async fn create_token(
        &self,
        name: &str,
        expires_in_days: Option<u32>,
    ) -> Result<CreatedToken, ClientError> {
        let body = CreateToken {
            name: name.to_owned(),
            expires_in_days,
        };
        self.call(Method::POST, "tokens", Some(&body)).await
    }

    pub async fn list_tokens(&self) -> Result<Vec<Token>, ClientError> {
        self.call::<(), _>(Method::GET, "tokens", None).await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<(), ClientError> {
        self.call::<(), serde_json::Value>(Method::DELETE, &format!("tokens/{id}"), None)
            .await
            .map(|_| ())
    }

    pub async fn create_workspace(&self, id: &str) -> Result<Workspace, ClientError> {
        self.call(
            Method::POST,
            "workspaces",
            Some(&CreateWorkspace { id: id.to_owned() }),
        )
        .await
    }

    pub async fn list_workspaces(&self) -> Result<Vec<Workspace>, ClientError> {
        self.call::<(), _>(Method::GET, "workspaces", None).await
    }

    pub async fn delete_workspace(&self, id: &str) -> Result<(), ClientError> {
        self.call::<(), serde_json::Value>(Method::DELETE, &format!("workspaces/{id}"), None)
            .await
            .map(|_| ())
    }

    pub async fn list_members(&self, workspace: &str) -> Result<Vec<Member>, ClientError> {
        self.call::<(), _>(
            Method::GET,
            &format!("workspaces/{workspace}/members"),
            None,
        )
        .await
    }

    pub async fn set_member(
        &self,
        workspace: &str,
        user: &str,
        role: &str,
    ) -> Result<(), ClientError> {
        let body = SetMember {
            role: role.to_owned(),
        };
        self.call::<_, serde_json::Value>(
            Method::PUT,
            &format!("workspaces/{workspace}/members/{user}"),
            Some(&body),
        )
        .await
        .map(|_| ())
    }

    pub async fn remove_member(&self, workspace: &str, user: &str) -> Result<(), ClientError> {
        self.call::<(), serde_json::Value>(
            Method::DELETE,
            &format!("workspaces/{workspace}/members/{user}"),
            None,
        )
        .await
        .map(|_| ())
    }

    fn secrets_path(workspace: &str, user: bool) -> String {
        format!(
            "workspaces/{workspace}/{}",
            if user { "user-secrets" } else { "secrets" }
        )
    }

    /// Creates a secret or replaces its live value; with `if_match`, only while that version is
    /// live (a 409 otherwise). The value goes only in the request body.
    pub async fn put_secret(
        &self,
        workspace: &str,
        user: bool,
        name: &str,
        value: &[u8],
        if_match: Option<i64>,
    ) -> Result<SecretVersion, ClientError> {
        use base64::Engine;
        let body = PutSecret {
            value: None,
            value_base64: Some(base64::engine::general_purpose::STANDARD.encode(value)),
        };
        let url = self
            .base
            .join(&format!("{}/{name}", Self::secrets_path(workspace, user)))
            .map_err(|e| ClientError::Url(e.to_string()))?;
        let mut request = self.http.put(url).json(&body);
        if let Some(v) = if_match {
            request = request.header(reqwest::header::IF_MATCH, format!("\"{v}\""));
        }
        decode(request.send().await.map_err(ClientError::Transport)?).await
    }

    pub async fn list_secrets(
        &self,
        workspace: &str,
        user: bool,
    ) -> Result<Vec<Secret>, ClientError> {
        self.call::<(), _>(Method::GET, &Self::secrets_path(workspace, user), None)
            .await
    }

    pub async fn delete_secret(
        &self,
        workspace: &str,
        user: bool,
        name: &str,
    ) -> Result<(), ClientError> {
        self.call::<(), serde_json::Value>(
            Method::DELETE,
            &format!("{}/{name}", Self::secrets_path(workspace, user)),
            None,
        )
        .await
        .map(|_| ())
    }

    /// Sets a workspace's bucket and prefix (platform administrators).
    pub async fn set_storage(
        &self,
        workspace: &str,
        bucket: &str,
        prefix: &str,
    ) -> Result<(), ClientError> {
        self.call::<_, serde_json::Value>(
            Method::PUT,
            &format!("workspaces/{workspace}/storage"),
            Some(&StorageLocation {
                bucket: bucket.to_owned(),
                prefix: prefix.to_owned(),
                url: None,
            }),
        )
        .await
        .map(|_| ())
    }

    pub async fn storage(&self, workspace: &str) -> Result<StorageLocation, ClientError> {
        self.call::<(), _>(
            Method::GET,
            &format!("workspaces/{workspace}/storage"),
            None,
        )
        .await
    }

    /// Gives a workspace a host directory for `file://` storage (platform administrators);
    /// `None` returns it to the default.
    pub async fn set_file_storage(
        &self,
        workspace: &str,
        dir: Option<&str>,
    ) -> Result<(), ClientError> {
        let path = format!("workspaces/{workspace}/file-storage");
        match dir {
            Some(dir) => {
                self.call::<_, serde_json::Value>(
                    Method::PUT,
                    &path,
                    Some(&serde_json::json!({ "dir": dir })),
                )
                .await
            }
            None => {
                self.call::<(), serde_json::Value>(Method::DELETE, &path, None)
                    .await
            }
        }
        .map(|_| ())
    }

    /// A workspace's host directory for `file://` storage.
    pub async fn file_storage(
        &self,
        workspace: &str,
    ) -> Result<tresor_api_types::platform::FileStorageLocation, ClientError> {
        self.call::<(), _>(
            Method::GET,
            &format!("workspaces/{workspace}/file-storage"),
            None,
        )
        .await
    }

    /// The server's compute environments.
    pub async fn compute_envs(
        &self,
    ) -> Result<Vec<tresor_api_types::platform::ComputeEnv>, ClientError> {
        self.call::<(), tresor_api_types::platform::ComputeEnvList>(
            Method::GET,
            "compute-envs",
            None,
        )
        .await
        .map(|l| l.compute_envs)
    }

    /// The compute environment a workspace's new tasks run in.
    pub async fn compute_env(&self, workspace: &str) -> Result<String, ClientError> {
        self.call::<(), tresor_api_types::platform::ComputeEnvChoice>(
            Method::GET,
            &format!("workspaces/{workspace}/compute-env"),
            None,
        )
        .await
        .map(|c| c.compute_env)
    }

    /// Chooses the compute environment a workspace's new tasks run in (workspace admins).
    pub async fn set_compute_env(&self, workspace: &str, env: &str) -> Result<(), ClientError> {
        self.call::<_, serde_json::Value>(
            Method::PUT,
            &format!("workspaces/{workspace}/compute-env"),
            Some(&tresor_api_types::platform::ComputeEnvChoice {
                compute_env: env.to_owned(),
            }),
        )
        .await
        .map(|_| ())
    }

    /// A workspace's image policy: allowed images, digest pinning, registry logins by secret name.
    pub async fn image_policy(&self, workspace: &str) -> Result<serde_json::Value, ClientError> {
        self.call::<(), serde_json::Value>(
            Method::GET,
            &format!("workspaces/{workspace}/image-policy"),
            None,
        )
        .await
    }

    /// Replaces a workspace's image policy (workspace admins).
    pub async fn set_image_policy(
        &self,
        workspace: &str,
        policy: &serde_json::Value,
    ) -> Result<(), ClientError> {
        self.call::<_, serde_json::Value>(
            Method::PUT,
            &format!("workspaces/{workspace}/image-policy"),
            Some(policy),
        )
        .await
        .map(|_| ())
    }

    /// Registers (as an admin) or proposes (as a maintainer) a workflow version.
    pub async fn register_workflow(
        &self,
        workspace: &str,
        name: &str,
        version: &str,
        request: &tresor_api_types::wes::RunRequest,
        files: &[crate::WesAttachment],
    ) -> Result<tresor_api_types::wes::RegisteredWorkflow, ClientError> {
        let url = self
            .base
            .join(&format!("workspaces/{workspace}/workflows"))
            .map_err(|e| ClientError::Url(e.to_string()))?;
        let form = crate::WesClient::form(request, files)
            .text("name", name.to_owned())
            .text("version", version.to_owned());
        decode(
            self.http
                .post(url)
                .multipart(form)
                .send()
                .await
                .map_err(ClientError::Transport)?,
        )
        .await
    }

    pub async fn list_workflows(
        &self,
        workspace: &str,
    ) -> Result<Vec<tresor_api_types::wes::RegisteredWorkflow>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Listing {
            workflows: Vec<tresor_api_types::wes::RegisteredWorkflow>,
        }
        self.call::<(), Listing>(
            Method::GET,
            &format!("workspaces/{workspace}/workflows"),
            None,
        )
        .await
        .map(|l| l.workflows)
    }

    pub async fn approve_workflow(
        &self,
        workspace: &str,
        name: &str,
        version: &str,
    ) -> Result<tresor_api_types::wes::RegisteredWorkflow, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!("workspaces/{workspace}/workflows/{name}/{version}/approve"),
            None,
        )
        .await
    }

    /// The workspace's egress allowlist.
    pub async fn egress(
        &self,
        workspace: &str,
    ) -> Result<tresor_api_types::platform::EgressPolicy, ClientError> {
        self.call::<(), _>(Method::GET, &format!("workspaces/{workspace}/egress"), None)
            .await
    }

    /// Replaces the workspace's egress allowlist; answers with the rules as stored.
    pub async fn set_egress(
        &self,
        workspace: &str,
        allow: &[&str],
    ) -> Result<tresor_api_types::platform::EgressPolicy, ClientError> {
        let policy = tresor_api_types::platform::EgressPolicy {
            allow: allow.iter().map(|r| (*r).to_owned()).collect(),
        };
        self.call(
            Method::PUT,
            &format!("workspaces/{workspace}/egress"),
            Some(&policy),
        )
        .await
    }

    /// Requires registered workflows of everyone in the workspace, or not.
    pub async fn set_workflow_policy(
        &self,
        workspace: &str,
        registered_only: bool,
    ) -> Result<(), ClientError> {
        self.call::<_, serde_json::Value>(
            Method::PUT,
            &format!("workspaces/{workspace}/workflow-policy"),
            Some(&tresor_api_types::wes::WorkflowPolicy { registered_only }),
        )
        .await
        .map(|_| ())
    }

    /// Runs the preflight probes of a compute environment, using `workspace`'s storage.
    pub async fn check(
        &self,
        compute_env: &str,
        workspace: Option<&str>,
    ) -> Result<PreflightReport, ClientError> {
        self.call(
            Method::POST,
            &format!("compute-envs/{compute_env}/check"),
            Some(&serde_json::json!({ "workspace": workspace })),
        )
        .await
    }
}
