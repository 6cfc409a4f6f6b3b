//! Identity and access: authenticating credentials, resolving a caller's workspace and role,
//! and managing users, tokens, workspaces and members. Every change is audited in its transaction.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tresor_api_types::platform::{CreatedToken, Member, Token, User, Workspace};
use tresor_auth::oidc::{OidcError, OidcVerifier};
use tresor_auth::pat;
use tresor_domain::{Action, Caller, Principal, Role, UserId, WorkspaceId};
use tresor_store::{AuditEvent, Store, TokenRecord, UserRecord, WorkspaceRecord};

use crate::{Entity, ServiceError};

/// The issuer recorded for users that tresor itself created (as opposed to an OIDC provider).
pub const LOCAL_ISSUER: &str = "tresor";

/// How often a token's `last_used_at` is written at most.
const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// How long a verified access token is trusted from memory.
const VERIFIED_TTL: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
struct VerifiedToken {
    secret_hash: Vec<u8>,
    expires_at: Option<OffsetDateTime>,
    principal: Principal,
    checked: Instant,
}

/// A credential as the request presented it.
pub enum Credential {
    Bearer(String),
    /// HTTP Basic: the password is a personal access token, whatever the username.
    Basic {
        password: String,
    },
}

/// Users, tokens, workspaces and members; cheap to clone.
#[derive(Clone, Debug)]
pub struct PlatformService {
    store: Store,
    oidc: Arc<OidcVerifier>,
    /// Token id -> when its last use was written, to throttle those writes.
    touched: Arc<Mutex<HashMap<String, Instant>>>,
    /// Recently verified access tokens (their hashes, never the tokens).
    verified: Arc<Mutex<HashMap<String, VerifiedToken>>>,
    /// Bumped after every revocation, so a verification that raced one is not cached.
    revocations: Arc<std::sync::atomic::AtomicU64>,
}

pub(crate) fn event(
    actor: &Principal,
    action: &str,
    object: String,
    workspace: Option<&WorkspaceId>,
    result: &str,
) -> AuditEvent {
    AuditEvent {
        actor: actor.user.to_string(),
        action: action.to_owned(),
        object,
        workspace: workspace.map(ToString::to_string),
        source: actor.source.clone(),
        result: result.to_owned(),
        detail: None,
    }
}

/// A successful action of `caller` in their workspace.
pub(crate) fn caller_event(caller: &Caller, action: &str, object: String) -> AuditEvent {
    event(
        &caller.principal,
        action,
        object,
        Some(&caller.workspace),
        "ok",
    )
}

fn new_user_id() -> Result<UserId, ServiceError> {
    UserId::parse(&uuid::Uuid::now_v7().simple().to_string())
        .map_err(|e| ServiceError::Internal(e.into()))
}

/// A time as the platform API spells it.
fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn user_view(u: UserRecord) -> User {
    User {
        id: u.id.to_string(),
        name: u.name,
        issuer: u.issuer,
        subject: u.subject,
        is_admin: u.is_admin,
    }
}

fn token_view(t: TokenRecord) -> Token {
    Token {
        id: t.id,
        name: t.name,
        created_at: rfc3339(t.created_at),
        expires_at: t.expires_at.map(rfc3339),
        revoked_at: t.revoked_at.map(rfc3339),
        last_used_at: t.last_used_at.map(rfc3339),
    }
}

fn workspace_view(w: WorkspaceRecord, role: Role) -> Workspace {
    Workspace {
        tes_url: format!("/w/{}/ga4gh/tes/v1", w.id),
        id: w.id.to_string(),
        personal: w.personal_of.is_some(),
        role: role.to_string(),
    }
}

/// A user's personal workspace id: stable, derived from the user id.
fn personal_workspace_id(user: &UserId) -> Result<WorkspaceId, ServiceError> {
    WorkspaceId::parse(&format!(
        "personal-{}",
        user.as_str().chars().rev().take(20).collect::<String>()
    ))
    .map_err(|e| ServiceError::Internal(e.into()))
}

impl PlatformService {
    pub fn new(store: Store, oidc: OidcVerifier) -> PlatformService {
        PlatformService {
            store,
            oidc: Arc::new(oidc),
            touched: Arc::new(Mutex::new(HashMap::new())),
            verified: Arc::new(Mutex::new(HashMap::new())),
            revocations: Arc::default(),
        }
    }

    /// Records a refusal in the audit trail and returns the error for the caller.
    async fn deny(
        &self,
        caller: &Caller,
        action: &str,
        object: String,
        denied: tresor_domain::Denied,
    ) -> ServiceError {
        let message = format!(
            "this needs the {} role in workspace {}; you have {}",
            denied.needed, caller.workspace, caller.role
        );
        let record = event(
            &caller.principal,
            action,
            object,
            Some(&caller.workspace),
            &format!("denied: needs {}", denied.needed),
        );
        if let Err(e) = self.store.record_audit(&record).await {
            return ServiceError::Unavailable(e.into());
        }
        ServiceError::Forbidden(message)
    }

    /// Checks the permission matrix, auditing a refusal.
    pub(crate) async fn require(
        &self,
        caller: &Caller,
        action: Action,
        audit_action: &str,
        object: String,
    ) -> Result<(), ServiceError> {
        match caller.require(action) {
            Ok(()) => Ok(()),
            Err(denied) => Err(self.deny(caller, audit_action, object, denied).await),
        }
    }

    /// Turns a presented credential into a principal, or says what is wrong with it.
    pub async fn authenticate(
        &self,
        credential: Option<Credential>,
        source: Option<String>,
    ) -> Result<Principal, ServiceError> {
        let token = match credential {
            None => {
                return Err(ServiceError::Unauthenticated(
                    "authentication required: send 'Authorization: Bearer <token>' (an access token or an OIDC token), or an access token as the HTTP Basic password".to_owned(),
                ));
            }
            Some(Credential::Bearer(t)) => t,
            Some(Credential::Basic { password }) => password,
        };
        if pat::looks_like_pat(&token) {
            return self.authenticate_pat(&token, source).await;
        }
        if self.oidc.is_empty() {
            return Err(ServiceError::Unauthenticated(
                "the bearer token is not a tresor access token, and no OIDC issuer is configured"
                    .to_owned(),
            ));
        }
        self.authenticate_jwt(&token, source).await
    }

    async fn authenticate_jwt(
        &self,
        token: &str,
        source: Option<String>,
    ) -> Result<Principal, ServiceError> {
        let claims = match self.oidc.verify(token).await {
            Ok(claims) => claims,
            Err(OidcError::Provider(why)) => {
                return Err(ServiceError::Unavailable(
                    anyhow::anyhow!("identity provider: {why}").context(crate::Outage(
                        "the identity provider that issued the token cannot be reached to check it",
                    )),
                ));
            }
            Err(e) => return Err(ServiceError::Unauthenticated(e.to_string())),
        };
        let user = self
            .user_for_subject(&claims.issuer, &claims.subject, &claims.name)
            .await?;
        let principal = Principal {
            user: user.id,
            name: user.name,
            is_admin: user.is_admin,
            source,
        };
        self.sync_roles(&principal, &claims.roles).await?;
        Ok(principal)
    }

    /// Applies the roles an identity provider asserts (`groups`, `eduperson_entitlement`) to
    /// existing workspaces, writing (and auditing) only what changed.
    async fn sync_roles(
        &self,
        principal: &Principal,
        roles: &[(String, String)],
    ) -> Result<(), ServiceError> {
        for (workspace, role) in roles {
            let (Ok(workspace), Some(role)) = (WorkspaceId::parse(workspace), Role::parse(role))
            else {
                tracing::warn!(%workspace, %role, "ignoring an invalid OIDC role mapping");
                continue;
            };
            if !self.store.workspace_exists(&workspace).await? {
                tracing::warn!(%workspace, "an OIDC role mapping names a workspace that does not exist");
                continue;
            }
            let current = self.store.membership(&workspace, &principal.user).await?;
            // Owners are made and unmade by owners only, never by an identity provider's claim.
            if current == Some(role) || current == Some(Role::Owner) || role == Role::Owner {
                continue;
            }
            let audit = event(
                principal,
                "member.sync",
                format!("member:{}:{role}", principal.user),
                Some(&workspace),
                "ok",
            );
            self.store
                .set_member(&workspace, &principal.user, role, &audit)
                .await?;
        }
        Ok(())
    }

    async fn authenticate_pat(
        &self,
        token: &str,
        source: Option<String>,
    ) -> Result<Principal, ServiceError> {
        let invalid = || {
            ServiceError::Unauthenticated(
                "the access token is invalid, expired or revoked".to_owned(),
            )
        };
        let presented =
            pat::parse(token).map_err(|e| ServiceError::Unauthenticated(e.to_string()))?;
        let now = OffsetDateTime::now_utc();
        // A token checked in the last few seconds is checked again against the cached hash,
        // sparing two reads per request; a revocation in this process evicts it at once.
        let cached = self
            .verified
            .lock()
            .ok()
            .and_then(|c| c.get(&presented.id).cloned());
        if let Some(hit) = cached
            && hit.checked.elapsed() < VERIFIED_TTL
            && hit.expires_at.is_none_or(|t| t > now)
        {
            if !presented.matches(&hit.secret_hash) {
                return Err(invalid());
            }
            self.touch(&presented.id, now).await;
            return Ok(Principal {
                source,
                ..hit.principal
            });
        }
        let revocations = self.revocations.load(std::sync::atomic::Ordering::SeqCst);
        let record = self
            .store
            .get_token(&presented.id)
            .await?
            .ok_or_else(invalid)?;
        if !presented.matches(&record.secret_hash)
            || record.revoked_at.is_some()
            || record.expires_at.is_some_and(|t| t <= now)
        {
            return Err(invalid());
        }
        let user = self
            .store
            .get_user(&record.user)
            .await?
            .ok_or_else(invalid)?;
        self.touch(&record.id, now).await;
        let principal = Principal {
            user: user.id.clone(),
            name: user.name.clone(),
            is_admin: user.is_admin,
            source: None,
        };
        if let Ok(mut cache) = self.verified.lock()
            && self.revocations.load(std::sync::atomic::Ordering::SeqCst) == revocations
        {
            cache.insert(
                record.id.clone(),
                VerifiedToken {
                    secret_hash: record.secret_hash.clone(),
                    expires_at: record.expires_at,
                    principal,
                    checked: Instant::now(),
                },
            );
        }
        Ok(Principal {
            user: user.id,
            name: user.name,
            is_admin: user.is_admin,
            source,
        })
    }

    async fn touch(&self, token_id: &str, now: OffsetDateTime) {
        let due = match self.touched.lock() {
            Ok(mut touched) => {
                let due = touched
                    .get(token_id)
                    .is_none_or(|t| t.elapsed() >= TOUCH_INTERVAL);
                if due {
                    touched.insert(token_id.to_owned(), Instant::now());
                }
                due
            }
            Err(_) => false,
        };
        if due {
            // In the background: a busy or full database must not hold up (or fail) the request
            // that only happened to be a token's use.
            let store = self.store.clone();
            let token_id = token_id.to_owned();
            tokio::spawn(async move {
                if let Err(e) = store.touch_token(&token_id, now).await {
                    tracing::warn!(error = %e, "recording a token's last use");
                }
            });
        }
    }

    /// The caller acting in `workspace`, or in their personal workspace (created on first use).
    /// A workspace they are not a member of is `NotFound`, exactly like one that does not exist.
    pub async fn caller(
        &self,
        principal: Principal,
        workspace: Option<&str>,
    ) -> Result<Caller, ServiceError> {
        let workspace = match workspace {
            Some(raw) => {
                WorkspaceId::parse(raw).map_err(|_| ServiceError::NotFound(Entity::Workspace))?
            }
            None => self.ensure_personal_workspace(&principal).await?,
        };
        let role = self
            .store
            .membership(&workspace, &principal.user)
            .await?
            .ok_or(ServiceError::NotFound(Entity::Workspace))?;
        Ok(Caller {
            principal,
            workspace,
            role,
        })
    }

    /// Whether a workspace exists (for administrators acting on any workspace).
    pub async fn workspace_exists(&self, workspace: &WorkspaceId) -> Result<bool, ServiceError> {
        Ok(self.store.workspace_exists(workspace).await?)
    }

    /// The principal's personal workspace, created on first use.
    pub async fn personal_workspace_of(
        &self,
        principal: &Principal,
    ) -> Result<WorkspaceId, ServiceError> {
        self.ensure_personal_workspace(principal).await
    }

    async fn ensure_personal_workspace(
        &self,
        principal: &Principal,
    ) -> Result<WorkspaceId, ServiceError> {
        if let Some(ws) = self.store.personal_workspace(&principal.user).await? {
            return Ok(ws.id);
        }
        let id = personal_workspace_id(&principal.user)?;
        let record = WorkspaceRecord {
            id: id.clone(),
            personal_of: Some(principal.user.clone()),
        };
        let audit = event(
            principal,
            "workspace.create",
            format!("workspace:{id}"),
            Some(&id),
            "ok",
        );
        match self
            .store
            .create_workspace(&record, &principal.user, &audit)
            .await
        {
            // Two first requests raced; the other one created it.
            Ok(()) | Err(tresor_store::Error::Conflict(_)) => Ok(id),
            Err(e) => Err(e.into()),
        }
    }

    /// On first start with no users: creates the admin and writes its token to `token_file` (0600).
    /// Returns the file's path when it did.
    pub async fn bootstrap(&self, token_file: &Path) -> Result<Option<PathBuf>, ServiceError> {
        if self.store.count_users().await? > 0 {
            return Ok(None);
        }
        let admin = UserRecord {
            id: new_user_id()?,
            issuer: LOCAL_ISSUER.to_owned(),
            subject: "admin".to_owned(),
            name: "admin".to_owned(),
            is_admin: true,
        };
        let principal = Principal {
            user: admin.id.clone(),
            name: admin.name.clone(),
            is_admin: true,
            source: None,
        };
        self.store
            .create_user(
                &admin,
                &event(
                    &principal,
                    "user.bootstrap",
                    format!("user:{}", admin.id),
                    None,
                    "ok",
                ),
            )
            .await?;
        let (_, token) = self
            .issue_token(&principal, &admin.id, "bootstrap", None)
            .await?;
        write_secret_file(token_file, &token).map_err(|e| ServiceError::Unavailable(e.into()))?;
        Ok(Some(token_file.to_owned()))
    }

    async fn issue_token(
        &self,
        actor: &Principal,
        user: &UserId,
        name: &str,
        expires_in_days: Option<u32>,
    ) -> Result<(TokenRecord, String), ServiceError> {
        let minted = pat::mint().map_err(|e| ServiceError::Internal(e.into()))?;
        let now = OffsetDateTime::now_utc();
        let record = TokenRecord {
            id: minted.id.clone(),
            user: user.clone(),
            name: name.to_owned(),
            secret_hash: minted.secret_hash.to_vec(),
            created_at: now,
            expires_at: expires_in_days.map(|d| now + time::Duration::days(i64::from(d))),
            revoked_at: None,
            last_used_at: None,
        };
        self.store
            .create_token(
                &record,
                &event(
                    actor,
                    "token.create",
                    format!("token:{}", record.id),
                    None,
                    "ok",
                ),
            )
            .await?;
        Ok((record, minted.token))
    }

    fn require_admin(principal: &Principal) -> Result<(), ServiceError> {
        if principal.is_admin {
            Ok(())
        } else {
            Err(ServiceError::Forbidden(
                "this needs a platform administrator".to_owned(),
            ))
        }
    }

    /// Creates a local user (administrators only).
    pub async fn create_user(
        &self,
        principal: &Principal,
        name: &str,
    ) -> Result<User, ServiceError> {
        Self::require_admin(principal)?;
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
        {
            return Err(ServiceError::invalid(
                "name",
                "use 1 to 64 letters, digits, '-', '_', '.' or '@'",
            ));
        }
        let user = UserRecord {
            id: new_user_id()?,
            issuer: LOCAL_ISSUER.to_owned(),
            subject: name.to_owned(),
            name: name.to_owned(),
            is_admin: false,
        };
        self.store
            .create_user(
                &user,
                &event(
                    principal,
                    "user.create",
                    format!("user:{}", user.id),
                    None,
                    "ok",
                ),
            )
            .await?;
        Ok(user_view(user))
    }

    /// Finds the user an OIDC token names, creating them on first login.
    pub(crate) async fn user_for_subject(
        &self,
        issuer: &str,
        subject: &str,
        name: &str,
    ) -> Result<UserRecord, ServiceError> {
        if let Some(user) = self.store.find_user(issuer, subject).await? {
            return Ok(user);
        }
        let user = UserRecord {
            id: new_user_id()?,
            issuer: issuer.to_owned(),
            subject: subject.to_owned(),
            name: name.to_owned(),
            is_admin: false,
        };
        let principal = Principal {
            user: user.id.clone(),
            name: user.name.clone(),
            is_admin: false,
            source: None,
        };
        match self
            .store
            .create_user(
                &user,
                &event(
                    &principal,
                    "user.first_login",
                    format!("user:{}", user.id),
                    None,
                    "ok",
                ),
            )
            .await
        {
            Ok(()) => Ok(user),
            Err(tresor_store::Error::Conflict(_)) => self
                .store
                .find_user(issuer, subject)
                .await?
                .ok_or(ServiceError::NotFound(Entity::User)),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn list_users(&self, principal: &Principal) -> Result<Vec<User>, ServiceError> {
        Self::require_admin(principal)?;
        Ok(self
            .store
            .list_users()
            .await?
            .into_iter()
            .map(user_view)
            .collect())
    }

    /// Issues a token for oneself, or (administrators) for another user. The token is returned once.
    pub async fn create_token(
        &self,
        principal: &Principal,
        for_user: Option<&str>,
        name: &str,
        expires_in_days: Option<u32>,
    ) -> Result<CreatedToken, ServiceError> {
        if name.trim().is_empty() || name.len() > 128 {
            return Err(ServiceError::invalid(
                "name",
                "give the token a name of 1 to 128 characters",
            ));
        }
        if expires_in_days.is_some_and(|d| d == 0 || d > 3650) {
            return Err(ServiceError::invalid(
                "expires_in_days",
                "must be 1 to 3650, or left out for no expiry",
            ));
        }
        let user = match for_user {
            None => principal.user.clone(),
            Some(raw) => {
                Self::require_admin(principal)?;
                let id = UserId::parse(raw).map_err(|_| ServiceError::NotFound(Entity::User))?;
                self.store
                    .get_user(&id)
                    .await?
                    .ok_or(ServiceError::NotFound(Entity::User))?
                    .id
            }
        };
        let (record, token) = self
            .issue_token(principal, &user, name, expires_in_days)
            .await?;
        Ok(CreatedToken {
            id: record.id,
            name: record.name,
            token,
            expires_at: record.expires_at.map(rfc3339),
        })
    }

    pub async fn list_tokens(&self, principal: &Principal) -> Result<Vec<Token>, ServiceError> {
        Ok(self
            .store
            .list_tokens(&principal.user)
            .await?
            .into_iter()
            .map(token_view)
            .collect())
    }

    /// Revokes one of the caller's own tokens; a platform administrator may revoke anyone's, to
    /// shut out a lost laptop or a departed user. Anyone else's token is `NotFound`, exactly like
    /// one that does not exist.
    pub async fn revoke_token(&self, principal: &Principal, id: &str) -> Result<(), ServiceError> {
        let audit = event(principal, "token.revoke", format!("token:{id}"), None, "ok");
        let owner = (!principal.is_admin).then_some(&principal.user);
        if self.store.revoke_token(id, owner, &audit).await? {
            // After the commit: requests that read the token before it see the bumped counter and
            // do not cache it; anything cached earlier is evicted here.
            self.revocations
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if let Ok(mut cache) = self.verified.lock() {
                cache.remove(id);
            }
            Ok(())
        } else {
            Err(ServiceError::NotFound(Entity::Token))
        }
    }

    /// Creates a workspace with the caller as owner. An id in use, or one that belonged to a
    /// deleted workspace, is a `Conflict` saying so.
    pub async fn create_workspace(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<Workspace, ServiceError> {
        let id = WorkspaceId::parse(id).map_err(|e| ServiceError::invalid("id", e.to_string()))?;
        if id.as_str().starts_with("personal-") {
            return Err(ServiceError::invalid(
                "id",
                "ids starting with 'personal-' are reserved",
            ));
        }
        let record = WorkspaceRecord {
            id: id.clone(),
            personal_of: None,
        };
        self.store
            .create_workspace(
                &record,
                &principal.user,
                &event(
                    principal,
                    "workspace.create",
                    format!("workspace:{id}"),
                    Some(&id),
                    "ok",
                ),
            )
            .await?;
        Ok(workspace_view(record, Role::Owner))
    }

    /// The caller's workspaces with their role in each.
    pub async fn list_workspaces(
        &self,
        principal: &Principal,
    ) -> Result<Vec<Workspace>, ServiceError> {
        Ok(self
            .store
            .memberships(&principal.user)
            .await?
            .into_iter()
            .map(|(w, role)| workspace_view(w, role))
            .collect())
    }

    pub async fn delete_workspace(&self, caller: &Caller) -> Result<(), ServiceError> {
        let object = format!("workspace:{}", caller.workspace);
        self.require(
            caller,
            Action::DeleteWorkspace,
            "workspace.delete",
            object.clone(),
        )
        .await?;
        // The store refuses a personal workspace (anyone's, not only the caller's own), and
        // retires the id of any other, so that no workspace created later inherits what this
        // one leaves behind.
        let audit = event(
            &caller.principal,
            "workspace.delete",
            object,
            Some(&caller.workspace),
            "ok",
        );
        Ok(self
            .store
            .delete_workspace(&caller.workspace, &audit)
            .await?)
    }

    pub async fn list_members(&self, caller: &Caller) -> Result<Vec<Member>, ServiceError> {
        self.require(
            caller,
            Action::Read,
            "member.list",
            format!("workspace:{}", caller.workspace),
        )
        .await?;
        Ok(self
            .store
            .members(&caller.workspace)
            .await?
            .into_iter()
            .map(|(u, role)| Member {
                user: u.id.to_string(),
                name: u.name,
                role: role.to_string(),
            })
            .collect())
    }

    /// Adds a member or changes their role. Granting or taking away `owner` needs an owner, and
    /// the last owner cannot be demoted.
    pub async fn set_member(
        &self,
        caller: &Caller,
        user: &str,
        role: Role,
    ) -> Result<(), ServiceError> {
        let object = format!("member:{user}");
        self.require(caller, Action::ManageMembers, "member.set", object.clone())
            .await?;
        let user = UserId::parse(user).map_err(|_| ServiceError::NotFound(Entity::User))?;
        self.store
            .get_user(&user)
            .await?
            .ok_or(ServiceError::NotFound(Entity::User))?;
        let current = self.store.membership(&caller.workspace, &user).await?;
        self.guard_owners(caller, current, Some(role), "member.set", &object)
            .await?;
        let audit = event(
            &caller.principal,
            "member.set",
            format!("{object}:{role}"),
            Some(&caller.workspace),
            "ok",
        );
        Ok(self
            .store
            .set_member(&caller.workspace, &user, role, &audit)
            .await?)
    }

    pub async fn remove_member(&self, caller: &Caller, user: &str) -> Result<(), ServiceError> {
        let object = format!("member:{user}");
        self.require(
            caller,
            Action::ManageMembers,
            "member.remove",
            object.clone(),
        )
        .await?;
        let user = UserId::parse(user).map_err(|_| ServiceError::NotFound(Entity::User))?;
        let current = self
            .store
            .membership(&caller.workspace, &user)
            .await?
            .ok_or(ServiceError::NotFound(Entity::User))?;
        self.guard_owners(caller, Some(current), None, "member.remove", &object)
            .await?;
        let audit = event(
            &caller.principal,
            "member.remove",
            object,
            Some(&caller.workspace),
            "ok",
        );
        self.store
            .remove_member(&caller.workspace, &user, &audit)
            .await?;
        Ok(())
    }

    /// Owners are managed by owners only, and a workspace always keeps one. The owner count here
    /// only gives the usual case its message early; the store re-checks inside the change's own
    /// transaction, which is what holds when two owners step down at the same moment.
    async fn guard_owners(
        &self,
        caller: &Caller,
        current: Option<Role>,
        next: Option<Role>,
        action: &str,
        object: &str,
    ) -> Result<(), ServiceError> {
        let touches_owner = current == Some(Role::Owner) || next == Some(Role::Owner);
        if touches_owner && caller.role != Role::Owner {
            let denied = tresor_domain::Denied {
                needed: Role::Owner,
                action: Action::ManageMembers,
            };
            return Err(self.deny(caller, action, object.to_owned(), denied).await);
        }
        if current == Some(Role::Owner) && next != Some(Role::Owner) {
            let owners = self
                .store
                .members(&caller.workspace)
                .await?
                .into_iter()
                .filter(|(_, r)| *r == Role::Owner)
                .count();
            if owners <= 1 {
                return Err(ServiceError::Conflict(
                    "a workspace must keep at least one owner; make another member owner first"
                        .to_owned(),
                ));
            }
        }
        Ok(())
    }
}

/// Writes `contents` to a new file readable by its owner only.
fn write_secret_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}
