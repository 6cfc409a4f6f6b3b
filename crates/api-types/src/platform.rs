//! Wire types of the platform API under `/api/v1`.

use serde::{Deserialize, Serialize};

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Me {
    pub id: String,
    pub name: String,
    pub is_admin: bool,
    /// The caller's personal workspace, which plain `/ga4gh/tes/v1` uses.
    pub personal_workspace: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub id: String,
    pub name: String,
    /// `tresor` for local users, otherwise the OIDC issuer.
    pub issuer: String,
    pub subject: String,
    pub is_admin: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub name: String,
}

/// A token's metadata; the token itself is shown only once, in `CreatedToken`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub last_used_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    /// Days until the token expires; no expiry when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_days: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatedToken {
    pub id: String,
    pub name: String,
    /// The token. It is not stored and cannot be shown again.
    pub token: String,
    pub expires_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workspace {
    pub id: String,
    pub personal: bool,
    /// The caller's role in it.
    pub role: String,
    /// Its TES base path.
    pub tes_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspace {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub user: String,
    pub name: String,
    pub role: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetMember {
    pub role: String,
}

/// The platform API's error body; `code` is stable and may be matched on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformError {
    pub code: String,
    pub message: String,
}

/// A secret's metadata. There is no value field: values are write-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    pub name: String,
    /// `workspace` or `user`.
    pub scope: String,
    pub version: i64,
    pub created_by: String,
    pub created_at: String,
    pub updated_by: String,
    pub updated_at: String,
    pub last_used_at: Option<String>,
}

/// The body of `PUT …/secrets/{name}`: exactly one of `value` (text) or `value_base64` (any bytes).
/// `Debug` never shows either.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PutSecret {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
}

impl std::fmt::Debug for PutSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PutSecret(***)")
    }
}

/// What a successful put returns (also as the `ETag` header).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretVersion {
    pub name: String,
    pub scope: String,
    pub version: i64,
}

/// A workspace's object storage location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageLocation {
    pub bucket: String,
    pub prefix: String,
    /// `s3://bucket/prefix` (answers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A workspace's host directory for `file://` inputs and outputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStorageLocation {
    pub dir: String,
    /// `file://dir/` (answers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Whether an administrator gave it, rather than the default (answers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned: Option<bool>,
}

/// One preflight probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreflightCheck {
    pub name: String,
    pub ok: bool,
    /// What the probe found, or what to fix.
    pub message: String,
}

/// The answer of `POST /api/v1/compute-envs/{id}/check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreflightReport {
    pub compute_env: String,
    pub workspace: String,
    pub ok: bool,
    pub checks: Vec<PreflightCheck>,
}

/// A compute environment of the server (`GET /api/v1/compute-envs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeEnv {
    pub id: String,
    /// `local` or `slurm`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Whether workspaces that chose nothing use it.
    pub default: bool,
}

/// `GET /api/v1/compute-envs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComputeEnvList {
    pub compute_envs: Vec<ComputeEnv>,
}

/// A workspace's choice of compute environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeEnvChoice {
    pub compute_env: String,
}

/// A workspace's egress allowlist: the destinations (`host:port`, `*.domain:port`,
/// `1.2.3.4:port`, `[::1]:port`) its tasks may reach through their sandbox's proxy. Empty: none.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressPolicy {
    pub allow: Vec<String>,
}
