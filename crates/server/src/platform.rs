//! The platform API under `/api/v1`: users, tokens, workspaces and members.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use tresor_api_types::platform::{
    CreateToken, CreateUser, CreateWorkspace, CreatedToken, Me, Member, SetMember, Token, User,
    Workspace,
};
use tresor_domain::Role;

use crate::extract::{Authenticated, CallerOf, PathParam, StrictJson, TokenParam, UserParam};
use crate::routes::{Access, route_specs};
use crate::{ApiError, AppState};

fn parse_role(raw: &str) -> Result<Role, ApiError> {
    Role::parse(raw).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "role: {raw:?} is not a role; use one of {}",
            Role::ALL.map(Role::as_str).join(", ")
        ))
    })
}

pub(crate) async fn me(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<Json<Me>, ApiError> {
    let caller = state.platform.caller(principal, None).await?;
    Ok(Json(Me {
        id: caller.principal.user.to_string(),
        name: caller.principal.name,
        is_admin: caller.principal.is_admin,
        personal_workspace: caller.workspace.to_string(),
    }))
}

pub(crate) async fn list_users(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<Json<Vec<User>>, ApiError> {
    Ok(Json(state.platform.list_users(&principal).await?))
}

pub(crate) async fn create_user(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    StrictJson(body): StrictJson<CreateUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let created = state.platform.create_user(&principal, &body.name).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

pub(crate) async fn create_user_token(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    PathParam(user, _): PathParam<UserParam>,
    StrictJson(body): StrictJson<CreateToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let created = state
        .platform
        .create_token(&principal, Some(&user), &body.name, body.expires_in_days)
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

pub(crate) async fn list_tokens(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<Json<Vec<Token>>, ApiError> {
    Ok(Json(state.platform.list_tokens(&principal).await?))
}

pub(crate) async fn create_token(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    StrictJson(body): StrictJson<CreateToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let created = state
        .platform
        .create_token(&principal, None, &body.name, body.expires_in_days)
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

pub(crate) async fn revoke_token(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    PathParam(id, _): PathParam<TokenParam>,
) -> Result<StatusCode, ApiError> {
    state.platform.revoke_token(&principal, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn list_workspaces(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<Json<Vec<Workspace>>, ApiError> {
    // Make sure the personal workspace exists before listing.
    let caller = state.platform.caller(principal, None).await?;
    Ok(Json(
        state.platform.list_workspaces(&caller.principal).await?,
    ))
}

pub(crate) async fn create_workspace(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    StrictJson(body): StrictJson<CreateWorkspace>,
) -> Result<(StatusCode, Json<Workspace>), ApiError> {
    let created = state
        .platform
        .create_workspace(&principal, &body.id)
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

pub(crate) async fn get_workspace(CallerOf(caller): CallerOf) -> Result<Json<Workspace>, ApiError> {
    Ok(Json(Workspace {
        tes_url: format!("/w/{}/ga4gh/tes/v1", caller.workspace),
        id: caller.workspace.to_string(),
        personal: caller.workspace.as_str().starts_with("personal-"),
        role: caller.role.to_string(),
    }))
}

pub(crate) async fn delete_workspace(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
) -> Result<StatusCode, ApiError> {
    state.platform.delete_workspace(&caller).await?;
    state.secrets.forget_workspace(&caller.workspace).await;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn list_members(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
) -> Result<Json<Vec<Member>>, ApiError> {
    Ok(Json(state.platform.list_members(&caller).await?))
}

pub(crate) async fn set_member(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
    PathParam(user, _): PathParam<UserParam>,
    StrictJson(body): StrictJson<SetMember>,
) -> Result<StatusCode, ApiError> {
    let role = parse_role(&body.role)?;
    state.platform.set_member(&caller, &user, role).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn remove_member(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
    PathParam(user, _): PathParam<UserParam>,
) -> Result<StatusCode, ApiError> {
    state.platform.remove_member(&caller, &user).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The OpenAPI 3.0 document of the platform API, generated from the route table.
pub(crate) async fn openapi() -> Json<Value> {
    let mut paths = serde_json::Map::new();
    for spec in route_specs()
        .into_iter()
        .filter(|s| s.path.starts_with("/api/v1"))
    {
        let security = match spec.access {
            Access::Open => json!([]),
            _ => json!([{ "bearer": [] }, { "basic": [] }]),
        };
        let access = match spec.access {
            Access::Open => "open".to_owned(),
            Access::Authenticated => "any authenticated user".to_owned(),
            Access::Admin => "platform administrators".to_owned(),
            Access::TaskCredential => "a task's worker, with its credential".to_owned(),
            Access::Workspace(action) => format!(
                "workspace members with role {} or above",
                tresor_domain::permissions::required_role(action)
            ),
        };
        let parameters: Vec<Value> = spec
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        let operation = json!({
            "summary": spec.summary,
            "description": format!("Access: {access}."),
            "parameters": parameters,
            "security": security,
            "responses": {
                "200": { "description": "success" },
                "400": { "$ref": "#/components/responses/Error" },
                "401": { "$ref": "#/components/responses/Error" },
                "403": { "$ref": "#/components/responses/Error" },
                "404": { "$ref": "#/components/responses/Error" },
            },
        });
        let entry = paths
            .entry(spec.path.to_owned())
            .or_insert_with(|| json!({}));
        if let Some(map) = entry.as_object_mut() {
            map.insert(spec.method.as_str().to_ascii_lowercase(), operation);
        }
    }
    Json(json!({
        "openapi": "3.0.3",
        "info": { "title": "tresor platform API", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "description": "a tresor access token or an OIDC access token" },
                "basic": { "type": "http", "scheme": "basic", "description": "any username, an access token as the password" },
            },
            "responses": {
                "Error": {
                    "description": "an error; `code` is stable",
                    "content": { "application/json": { "schema": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": { "code": { "type": "string" }, "message": { "type": "string" } },
                    } } },
                },
            },
        },
    }))
}
