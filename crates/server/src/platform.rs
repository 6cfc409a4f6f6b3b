//! The platform API under `/api/v1`: users, tokens, workspaces and members.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use tresor_api_types::platform::{
    CreateToken, CreateUser, CreateWorkspace, CreatedToken, Me, Member, SetMember, Token, User,
    Workspace,
};
use tresor_domain::Role;

use crate::extract::{Authenticated, CallerOf, PathParam, StrictJson, TokenParam, UserParam};
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
