//! Extractors: the authenticated principal, the caller in a workspace, strict JSON bodies and raw
//! query pairs.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine;
use serde::de::DeserializeOwned;
use tresor_domain::{Caller, Principal};
use tresor_service::Credential;

use crate::{ApiError, AppState};

/// Largest credential accepted; longer ones are refused before any parsing.
const MAX_CREDENTIAL: usize = 16 * 1024;

fn credential(parts: &Parts) -> Result<Option<Credential>, ApiError> {
    let Some(value) = parts.headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let unauthenticated = |why: &str| {
        ApiError::Service(tresor_service::ServiceError::Unauthenticated(
            why.to_owned(),
        ))
    };
    if value.len() > MAX_CREDENTIAL {
        return Err(unauthenticated("the Authorization header is too large"));
    }
    let value = value
        .to_str()
        .map_err(|_| unauthenticated("the Authorization header is not valid text"))?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Some(Credential::Bearer(rest.to_owned())));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or_else(|| {
                unauthenticated("the Basic credential is not valid base64 of user:password")
            })?;
        let (_, password) = decoded
            .split_once(':')
            .ok_or_else(|| unauthenticated("the Basic credential is not user:password"))?;
        return Ok(Some(Credential::Basic {
            password: password.to_owned(),
        }));
    }
    Err(unauthenticated(
        "use the Bearer or Basic authorization scheme",
    ))
}

/// The authenticated user behind the request.
pub(crate) struct Authenticated(pub Principal);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let source = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_string());
        let credential = credential(parts)?;
        Ok(Authenticated(
            state.platform.authenticate(credential, source).await?,
        ))
    }
}

/// The caller acting in the workspace named by the `{workspace}` path segment, or in their
/// personal workspace on routes without one.
pub(crate) struct CallerOf(pub Caller);

impl FromRequestParts<AppState> for CallerOf {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Authenticated(principal) = Authenticated::from_request_parts(parts, state).await?;
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let workspace = params
            .iter()
            .find(|(name, _)| *name == "workspace")
            .map(|(_, value)| value.to_owned());
        Ok(CallerOf(
            state
                .platform
                .caller(principal, workspace.as_deref())
                .await?,
        ))
    }
}

/// Names a path parameter for `PathParam`.
pub(crate) trait ParamName {
    const NAME: &'static str;
}

/// `{id}`: a task id.
pub(crate) struct Id;
impl ParamName for Id {
    const NAME: &'static str = "id";
}

/// `{task}`: a task of a workflow run.
pub(crate) struct TaskParam;
impl ParamName for TaskParam {
    const NAME: &'static str = "task";
}

/// `{version}`: a registered workflow's version.
pub(crate) struct VersionParam;
impl ParamName for VersionParam {
    const NAME: &'static str = "version";
}

/// `{user}`: a user id.
pub(crate) struct UserParam;
impl ParamName for UserParam {
    const NAME: &'static str = "user";
}

/// `{token}`: an access token id.
pub(crate) struct TokenParam;
impl ParamName for TokenParam {
    const NAME: &'static str = "token";
}

/// `{workspace}`: a workspace id.
pub(crate) struct WorkspaceParam;
impl ParamName for WorkspaceParam {
    const NAME: &'static str = "workspace";
}

/// `{name}`: a secret's name.
pub(crate) struct NameParam;
impl ParamName for NameParam {
    const NAME: &'static str = "name";
}

/// One named path parameter, whatever other parameters the route has.
pub(crate) struct PathParam<N>(pub String, pub std::marker::PhantomData<N>);

impl<N: ParamName, S: Send + Sync> FromRequestParts<S> for PathParam<N> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        params
            .iter()
            .find(|(name, _)| *name == N::NAME)
            .map(|(_, value)| PathParam(value.to_owned(), std::marker::PhantomData))
            .ok_or_else(|| ApiError::NotFound(format!("missing path parameter {}", N::NAME)))
    }
}

/// A JSON body parsed strictly; errors name the offending field by its path.
pub(crate) struct StrictJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for StrictJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(
                    "the request body is larger than this server accepts; pass large inputs by url"
                        .to_owned(),
                )
            } else {
                ApiError::BadRequest(format!(
                    "cannot read the request body: {}",
                    rejection.body_text()
                ))
            }
        })?;
        if bytes.is_empty() {
            return Err(ApiError::BadRequest(
                "the request body is empty; send a JSON document".to_owned(),
            ));
        }
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(de)
            .map(StrictJson)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                if path == "." || path.is_empty() {
                    ApiError::BadRequest(format!("invalid JSON: {inner}"))
                } else {
                    ApiError::BadRequest(format!("invalid JSON at {path}: {inner}"))
                }
            })
    }
}

/// The query string as ordered `(key, value)` pairs, decoded.
pub(crate) struct QueryPairs(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        Ok(QueryPairs(
            url::form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        ))
    }
}
