//! Pipeline secrets: write-only values, encrypted at rest, scoped to a workspace or to one member.

use std::sync::Arc;

use tresor_api_types::platform::Secret;
use tresor_crypto::fingerprint::fingerprint;
use tresor_crypto::redact::{IndexedValue, MIN_SECRET_LEN};
use tresor_crypto::{KeyProvider, KeyRing, Sealed, SecretValue, envelope};
use tresor_domain::{Action, Caller, Principal};
use tresor_store::{AuditEvent, SealedRow, SecretKey, SecretMeta, Store, StoredVersion};

use crate::platform::{caller_event, event};
use crate::{Entity, PlatformService, ServiceError};

/// Largest secret value.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// Which of a caller's secrets an operation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Workspace,
    /// The caller's own user secrets in the workspace.
    User,
}

/// What a put expects of the secret's live version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutCondition {
    /// No condition: create the secret, or replace whatever version is live (a plain `PUT`,
    /// which `tresor secret set` sends).
    Any,
    /// Only while this version is live (`If-Match: "3"`), so concurrent writers cannot lose an
    /// update.
    Version(i64),
    /// Only if no version is live (`If-None-Match: *`): create, never replace.
    Absent,
}

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutOutcome {
    pub version: i64,
    /// No version was live before: the secret was created rather than updated.
    pub created: bool,
}

/// How often a plain put re-reads the live version after losing a race with another write.
const PUT_ATTEMPTS: u32 = 5;

/// (workspace, owner or "", name) -> value, shared with the redactors built from it.
type LiveValues = std::collections::HashMap<(String, String, String), Arc<IndexedValue>>;

/// Cached launch guards: (workspace, user) -> matcher (`None`: no values). A change of secrets
/// in a workspace drops that workspace's entries and bumps its generation.
#[derive(Default)]
struct GuardCache {
    guards: std::collections::HashMap<(String, String), Option<tresor_crypto::redact::Redactor>>,
    /// How many times each workspace's secrets have changed. A guard is cached only if its
    /// workspace's generation is still the one read before its values were: otherwise a guard
    /// built from the values before a put could be cached after the put cleared the cache, and
    /// stay stale until the next change. Entries are never removed (a removed one would read as
    /// 0 again and could match a generation read before); one per workspace ever changed.
    generations: std::collections::HashMap<String, u64>,
}

impl GuardCache {
    fn generation(&self, workspace: &str) -> u64 {
        self.generations.get(workspace).copied().unwrap_or(0)
    }

    /// Drops a workspace's guards after its values changed, and bumps its generation.
    fn invalidate(&mut self, workspace: &str) {
        *self.generations.entry(workspace.to_owned()).or_default() += 1;
        self.guards.retain(|(ws, _), _| ws != workspace);
    }

    /// Caches a guard built from values read after `generation` was, if nothing changed since.
    fn insert_if_current(
        &mut self,
        key: (String, String),
        generation: u64,
        guard: Option<tresor_crypto::redact::Redactor>,
    ) {
        if self.generation(&key.0) == generation {
            self.guards.insert(key, guard);
        }
    }
}

/// How much secret material one workspace, one user and the whole server may keep. Every live
/// value is held in memory (for redaction), and workspaces are self-service, so `total_bytes`
/// is what bounds the server's memory: at most `total_bytes`, plus about 1 KiB of index per
/// secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretLimits {
    /// Live secrets in one workspace, workspace and user secrets together.
    pub workspace_count: usize,
    /// Their values' bytes.
    pub workspace_bytes: usize,
    /// One user's own (user-scoped) secrets, across all workspaces.
    pub user_count: usize,
    /// Their values' bytes.
    pub user_bytes: usize,
    /// The values' bytes of every live secret on the server, all workspaces together.
    pub total_bytes: usize,
}

impl Default for SecretLimits {
    fn default() -> Self {
        SecretLimits {
            workspace_count: 200,
            workspace_bytes: 4 * 1024 * 1024,
            user_count: 100,
            user_bytes: 1024 * 1024,
            total_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Secrets; cheap to clone.
#[derive(Clone)]
pub struct SecretService {
    store: Store,
    platform: PlatformService,
    keys: Arc<KeyRing>,
    fingerprint_key: Arc<Vec<u8>>,
    /// Redacts every secret from the server's own log lines, one part per workspace.
    log_redactor: tresor_crypto::redact::SharedRedactor,
    /// Launch-guard matchers per (workspace, user).
    guards: Arc<std::sync::Mutex<GuardCache>>,
    /// Every live secret's value, decrypted once at start and kept current by put and delete:
    /// the source of the log redactor and the launch guards, so neither decrypts per request.
    live: Arc<std::sync::Mutex<LiveValues>>,
    limits: SecretLimits,
    /// Puts one at a time, so two cannot both pass a limit that only one fits.
    put_lock: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for SecretService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretService")
    }
}

fn live_key(key: &SecretKey) -> (String, String, String) {
    (
        key.workspace.to_string(),
        key.owner
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        key.name.clone(),
    )
}

/// Names follow Nextflow's and Seqera's convention, so pipelines can reference them unchanged.
pub fn check_name(name: &str) -> Result<(), ServiceError> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ServiceError::invalid(
            "name",
            "must match [A-Za-z_][A-Za-z0-9_]{0,127}",
        ))
    }
}

/// The associated data that binds a ciphertext to exactly one row.
pub(crate) fn aad(key: &SecretKey, version: i64) -> Vec<u8> {
    format!(
        "tresor-secret/v1\0{}\0{}\0{}\0{}\0{version}",
        key.workspace,
        key.scope(),
        key.owner.as_ref().map(|u| u.as_str()).unwrap_or(""),
        key.name
    )
    .into_bytes()
}

/// A secret's metadata as the platform API shows it.
fn secret_view(m: SecretMeta) -> Secret {
    Secret {
        name: m.name,
        scope: m.scope.to_owned(),
        version: m.version,
        created_by: m.created_by,
        created_at: m.created_at,
        updated_by: m.updated_by,
        updated_at: m.updated_at,
        last_used_at: m.last_used_at,
    }
}

fn to_row(sealed: Sealed) -> SealedRow {
    SealedRow {
        kek_id: sealed.kek_id,
        wrapped_key: sealed.wrapped_key,
        ciphertext: sealed.ciphertext,
    }
}

fn from_row(row: &SealedRow) -> Sealed {
    Sealed {
        kek_id: row.kek_id.clone(),
        wrapped_key: row.wrapped_key.clone(),
        ciphertext: row.ciphertext.clone(),
    }
}

impl SecretService {
    pub async fn new(
        store: Store,
        platform: PlatformService,
        keys: KeyRing,
    ) -> Result<SecretService, ServiceError> {
        Self::with_log_redactor(
            store,
            platform,
            keys,
            Default::default(),
            SecretLimits::default(),
        )
        .await
    }

    /// Like `new`, keeping `log_redactor` loaded with every live secret, within `limits`.
    pub async fn with_log_redactor(
        store: Store,
        platform: PlatformService,
        keys: KeyRing,
        log_redactor: tresor_crypto::redact::SharedRedactor,
        limits: SecretLimits,
    ) -> Result<SecretService, ServiceError> {
        let fingerprint_key = store.server_secret("secret_fingerprint_key").await?;
        let service = SecretService {
            store,
            platform,
            keys: Arc::new(keys),
            fingerprint_key: Arc::new(fingerprint_key),
            log_redactor,
            guards: Default::default(),
            live: Default::default(),
            limits,
            put_lock: Default::default(),
        };
        service.refresh_log_redactor().await?;
        Ok(service)
    }

    /// Reloads every live secret and rebuilds the log redactor's part of each workspace.
    async fn refresh_log_redactor(&self) -> Result<(), ServiceError> {
        let mut loaded = LiveValues::new();
        for key in self.store.live_secret_keys().await? {
            match self.open(&key).await {
                Ok(Some((_, value))) => {
                    loaded.insert(live_key(&key), Arc::new(IndexedValue::new(Arc::new(value))));
                }
                Ok(None) => {}
                // One unreadable secret must not stop the others from being redacted.
                Err(e) => {
                    tracing::error!(secret = %key.name, workspace = %key.workspace, error = %e, "a secret does not decrypt")
                }
            }
        }
        let workspaces: std::collections::BTreeSet<String> =
            loaded.keys().map(|(ws, _, _)| ws.clone()).collect();
        if let Ok(mut live) = self.live.lock() {
            *live = loaded;
        }
        for workspace in workspaces {
            self.rebuild(&workspace);
        }
        Ok(())
    }

    /// Drops a deleted workspace's values from memory (the store already soft-deleted them).
    pub async fn forget_workspace(&self, workspace: &tresor_domain::WorkspaceId) {
        if let Ok(mut live) = self.live.lock() {
            live.retain(|(ws, _, _), _| ws != workspace.as_str());
        }
        self.rebuild(workspace.as_str());
    }

    /// Rebuilds one workspace's part of the log redactor from its live values, and drops its
    /// cached launch guards. Other workspaces' parts are untouched, so the cost of a change is
    /// bounded by the workspace's limits, not by every secret of the server.
    fn rebuild(&self, workspace: &str) {
        let values: Vec<Arc<IndexedValue>> = match self.live.lock() {
            Ok(live) => live
                .iter()
                .filter(|((ws, _, _), _)| ws == workspace)
                .map(|(_, v)| v.clone())
                .collect(),
            Err(_) => return,
        };
        self.log_redactor.set_part(
            workspace,
            (!values.is_empty()).then(|| tresor_crypto::redact::Redactor::indexed(values)),
        );
        // After `live` changed (callers change it first), so a guard whose values were read
        // before that change sees a new generation, or is dropped here if it was cached already.
        if let Ok(mut cache) = self.guards.lock() {
            cache.invalidate(workspace);
        }
    }

    /// Refuses a put that would take the workspace, the user or the server past a limit (the
    /// value it replaces, if any, no longer counts).
    fn check_limits(&self, key: &SecretKey, size: usize) -> Result<(), ServiceError> {
        let live = self.live.lock().map_err(|_| {
            ServiceError::Internal(anyhow::anyhow!("the secret cache lock is poisoned"))
        })?;
        let this = live_key(key);
        let (mut ws_count, mut ws_bytes, mut user_count, mut user_bytes) = (1, size, 1, size);
        let mut total_bytes = size;
        for (k, v) in live.iter().filter(|(k, _)| **k != this) {
            total_bytes += v.len();
            if k.0 == this.0 {
                ws_count += 1;
                ws_bytes += v.len();
            }
            if !this.1.is_empty() && k.1 == this.1 {
                user_count += 1;
                user_bytes += v.len();
            }
        }
        let limits = self.limits;
        let over = |what: &str, limit: usize, key_name: &str| {
            ServiceError::invalid(
                "value",
                format!(
                    "{what} would exceed the limit of {limit} (secrets.{key_name}); delete secrets you no longer need, or ask a platform administrator to raise it"
                ),
            )
        };
        if ws_count > limits.workspace_count {
            return Err(over(
                &format!("workspace {}'s secrets ({ws_count})", key.workspace),
                limits.workspace_count,
                "max_per_workspace",
            ));
        }
        if ws_bytes > limits.workspace_bytes {
            return Err(over(
                &format!("workspace {}'s secret bytes ({ws_bytes})", key.workspace),
                limits.workspace_bytes,
                "max_bytes_per_workspace",
            ));
        }
        if key.owner.is_some() {
            if user_count > limits.user_count {
                return Err(over(
                    &format!("your user secrets ({user_count})"),
                    limits.user_count,
                    "max_per_user",
                ));
            }
            if user_bytes > limits.user_bytes {
                return Err(over(
                    &format!("your user secrets' bytes ({user_bytes})"),
                    limits.user_bytes,
                    "max_bytes_per_user",
                ));
            }
        }
        if total_bytes > limits.total_bytes {
            // Not the server's total: that would tell one workspace about the others.
            return Err(over(
                "the secret bytes of all workspaces on this server",
                limits.total_bytes,
                "max_bytes_total",
            ));
        }
        Ok(())
    }

    fn key(caller: &Caller, scope: Scope, name: &str) -> SecretKey {
        SecretKey {
            workspace: caller.workspace.clone(),
            owner: match scope {
                Scope::Workspace => None,
                Scope::User => Some(caller.principal.user.clone()),
            },
            name: name.to_owned(),
        }
    }

    async fn require(
        &self,
        caller: &Caller,
        scope: Scope,
        verb: &str,
        name: &str,
    ) -> Result<(), ServiceError> {
        let action = match scope {
            Scope::Workspace => Action::ManageWorkspaceSecrets,
            Scope::User => Action::ManageOwnSecrets,
        };
        let object = format!(
            "secret:{}:{name}",
            if scope == Scope::User {
                "user"
            } else {
                "workspace"
            }
        );
        self.platform
            .require(caller, action, &format!("secret.{verb}"), object)
            .await
    }

    /// Creates or updates a secret as `condition` allows, and says which version it wrote. A failed
    /// condition (a stale `If-Match` version, or `If-None-Match: *` on a live secret) is a conflict.
    pub async fn put(
        &self,
        caller: &Caller,
        scope: Scope,
        name: &str,
        value: SecretValue,
        condition: PutCondition,
    ) -> Result<PutOutcome, ServiceError> {
        check_name(name)?;
        self.require(caller, scope, "put", name).await?;
        if value.len() < MIN_SECRET_LEN || value.len() > MAX_SECRET_BYTES {
            // The message states the rule and the size, never the value.
            return Err(ServiceError::invalid(
                "value",
                format!(
                    "must be {MIN_SECRET_LEN} to {MAX_SECRET_BYTES} bytes (got {}); a shorter value would mask ordinary words in logs and task documents",
                    value.len()
                ),
            ));
        }
        let key = Self::key(caller, scope, name);
        let _one_at_a_time = self.put_lock.lock().await;
        self.check_limits(&key, value.len())?;
        // Every write is a compare-and-set on the live version, checked in the write's own
        // transaction. A plain put compares with the version it just read, and reads again if
        // another write came in between: last writer wins, and the audit trail still says
        // truthfully whether this write created or updated.
        let mut attempt = 1;
        let outcome = loop {
            let expected = match condition {
                PutCondition::Any => self.store.current_secret(&key).await?.map(|(v, _)| v),
                PutCondition::Version(v) => Some(v),
                PutCondition::Absent => None,
            };
            match self.write_version(caller, &key, &value, expected).await {
                Err(ServiceError::Conflict(_))
                    if condition == PutCondition::Any && attempt < PUT_ATTEMPTS =>
                {
                    attempt += 1;
                }
                Err(ServiceError::Conflict(_)) if condition == PutCondition::Absent => {
                    return Err(ServiceError::Conflict(
                        "the secret already exists; send If-Match with its version to update it"
                            .to_owned(),
                    ));
                }
                other => break other?,
            }
        };
        // Index the value's forms before taking the lock: it takes milliseconds for a large one.
        let indexed = Arc::new(IndexedValue::new(Arc::new(value)));
        if let Ok(mut live) = self.live.lock() {
            live.insert(live_key(&key), indexed);
        }
        self.rebuild(key.workspace.as_str());
        Ok(outcome)
    }

    /// Seals `value` as the secret's next version and stores it if `expected` is still the live
    /// version (None: no live secret); a conflict otherwise.
    async fn write_version(
        &self,
        caller: &Caller,
        key: &SecretKey,
        value: &SecretValue,
        expected: Option<i64>,
    ) -> Result<PutOutcome, ServiceError> {
        let version = self.store.last_secret_version(key).await? + 1;
        let sealed = envelope::seal(self.keys.as_ref(), value, &aad(key, version))
            .map_err(|e| ServiceError::Internal(e.into()))?;
        let action = if expected.is_some() {
            "secret.update"
        } else {
            "secret.create"
        };
        let event = AuditEvent {
            detail: Some(format!(
                "version {version}, fingerprint {}",
                fingerprint(&self.fingerprint_key, value)
            )),
            ..caller_event(
                caller,
                action,
                format!("secret:{}:{}", key.scope(), key.name),
            )
        };
        self.store
            .put_secret_version(
                key,
                expected,
                version,
                &to_row(sealed),
                &caller.principal.user,
                &event,
            )
            .await?;
        Ok(PutOutcome {
            version,
            created: expected.is_none(),
        })
    }

    /// The metadata of the caller's secrets in `scope`; never a value.
    pub async fn list(&self, caller: &Caller, scope: Scope) -> Result<Vec<Secret>, ServiceError> {
        match scope {
            Scope::Workspace => {
                self.platform
                    .require(caller, Action::Read, "secret.list", "secrets".to_owned())
                    .await?
            }
            Scope::User => self.require(caller, scope, "list", "*").await?,
        }
        let owner = (scope == Scope::User).then_some(&caller.principal.user);
        Ok(self
            .store
            .list_secrets(&caller.workspace, owner)
            .await?
            .into_iter()
            .map(secret_view)
            .collect())
    }

    pub async fn delete(
        &self,
        caller: &Caller,
        scope: Scope,
        name: &str,
    ) -> Result<(), ServiceError> {
        check_name(name)?;
        self.require(caller, scope, "delete", name).await?;
        let key = Self::key(caller, scope, name);
        let event = caller_event(
            caller,
            "secret.delete",
            format!("secret:{}:{name}", key.scope()),
        );
        if self.store.delete_secret(&key, &event).await? {
            if let Ok(mut live) = self.live.lock() {
                live.remove(&live_key(&key));
            }
            self.rebuild(key.workspace.as_str());
            Ok(())
        } else {
            Err(ServiceError::NotFound(Entity::Secret))
        }
    }

    /// Re-wraps every data key under a new KEK: the ring gains a new current key, every row is
    /// re-wrapped in one transaction (values are never decrypted), then old keys are retired.
    pub async fn rotate_kek(&self, actor: &Principal) -> Result<usize, ServiceError> {
        let new_id = self
            .keys
            .add_current()
            .map_err(|e| ServiceError::Internal(e.into()))?;
        let all = self.store.all_secret_versions().await?;
        let mut rewrapped = Vec::with_capacity(all.len());
        for v in all {
            let sealed = envelope::rewrap(
                self.keys.as_ref(),
                &from_row(&v.sealed),
                &aad(&v.key, v.version),
            )
            .map_err(|e| {
                ServiceError::Internal(anyhow::anyhow!(
                    "secret {} in {} (version {}): {e}",
                    v.key.name,
                    v.key.workspace,
                    v.version
                ))
            })?;
            rewrapped.push(StoredVersion {
                sealed: to_row(sealed),
                ..v
            });
        }
        let event = AuditEvent {
            detail: Some(format!("{} data keys re-wrapped", rewrapped.len())),
            ..event(actor, "kek.rotate", format!("kek:{new_id}"), None, "ok")
        };
        self.store.replace_wrapped_keys(&rewrapped, &event).await?;
        crate::identity::rewrap_signing_keys(&self.store, self.keys.as_ref()).await?;
        self.keys
            .retire_old()
            .map_err(|e| ServiceError::Internal(e.into()))?;
        Ok(rewrapped.len())
    }

    /// Decrypts the live value of a secret (for delivery to a task).
    pub async fn open(&self, key: &SecretKey) -> Result<Option<(i64, SecretValue)>, ServiceError> {
        let Some((version, row)) = self.store.current_secret(key).await? else {
            return Ok(None);
        };
        let value = envelope::open(self.keys.as_ref(), &from_row(&row), &aad(key, version))
            .map_err(|e| {
                ServiceError::Internal(anyhow::anyhow!(
                    "secret {} in {}: {e}",
                    key.name,
                    key.workspace
                ))
            })?;
        Ok(Some((version, value)))
    }

    /// The live secret `name` as a task submitted by `user` in `workspace` sees it: the user's own
    /// secret of that name if there is one, else the workspace's.
    pub async fn resolve(
        &self,
        workspace: &tresor_domain::WorkspaceId,
        user: &tresor_domain::UserId,
        name: &str,
    ) -> Result<Option<(SecretKey, i64, SecretValue)>, ServiceError> {
        for owner in [Some(user.clone()), None] {
            let key = SecretKey {
                workspace: workspace.clone(),
                owner,
                name: name.to_owned(),
            };
            if let Some((version, value)) = self.open(&key).await? {
                return Ok(Some((key, version, value)));
            }
        }
        Ok(None)
    }

    /// Whether a task by `user` could use secret `name` (without decrypting it).
    pub async fn is_available(
        &self,
        workspace: &tresor_domain::WorkspaceId,
        user: &tresor_domain::UserId,
        name: &str,
    ) -> Result<bool, ServiceError> {
        for owner in [Some(user.clone()), None] {
            let key = SecretKey {
                workspace: workspace.clone(),
                owner,
                name: name.to_owned(),
            };
            if self.store.current_secret(&key).await?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A matcher for every value a task by `user` in `workspace` could use; `None` when there
    /// are none. Used to refuse task documents that carry a value in plain sight.
    pub async fn guard(
        &self,
        workspace: &tresor_domain::WorkspaceId,
        user: &tresor_domain::UserId,
    ) -> Result<Option<tresor_crypto::redact::Redactor>, ServiceError> {
        let cache_key = (workspace.to_string(), user.to_string());
        let generation = {
            let cache = self.guards.lock().map_err(|_| {
                ServiceError::Internal(anyhow::anyhow!("the launch guard lock is poisoned"))
            })?;
            if let Some(guard) = cache.guards.get(&cache_key) {
                return Ok(guard.clone());
            }
            cache.generation(workspace.as_str())
        };
        // Read after the generation: a change to `live` from here on bumps it before or after
        // the insert below, and either way the stale guard is not kept.
        let values: Vec<Arc<IndexedValue>> = {
            let live = self.live.lock().map_err(|_| {
                ServiceError::Internal(anyhow::anyhow!("the secret cache lock is poisoned"))
            })?;
            live.iter()
                .filter(|((ws, owner, _), _)| {
                    ws == workspace.as_str() && (owner.is_empty() || owner == user.as_str())
                })
                .map(|(_, v)| v.clone())
                .collect()
        };
        let guard = (!values.is_empty()).then(|| tresor_crypto::redact::Redactor::indexed(values));
        if let Ok(mut cache) = self.guards.lock() {
            cache.insert_if_current(cache_key, generation, guard.clone());
        }
        Ok(guard)
    }

    /// Audits the delivery of secret versions to a task and marks them used, in one transaction.
    pub async fn record_deliveries(
        &self,
        delivered: &[(SecretKey, i64, &SecretValue)],
        task: &str,
        actor: &str,
        delivery: Option<&str>,
        repeat: bool,
    ) -> Result<(), ServiceError> {
        let uses: Vec<(SecretKey, i64, AuditEvent)> = delivered
            .iter()
            .map(|(key, version, value)| {
                let event = AuditEvent {
                    actor: actor.to_owned(),
                    action: "secret.deliver".to_owned(),
                    object: format!("secret:{}:{}", key.scope(), key.name),
                    workspace: Some(key.workspace.to_string()),
                    source: None,
                    result: "ok".to_owned(),
                    // The worker's delivery id tells a task's starts apart: a repeat (its first
                    // answer lost) names the same delivery.
                    detail: Some(format!(
                        "version {version} to task {task}, delivery {}{}, fingerprint {}",
                        delivery.unwrap_or("-"),
                        if repeat { " (repeated)" } else { "" },
                        fingerprint(&self.fingerprint_key, value)
                    )),
                };
                (key.clone(), *version, event)
            })
            .collect();
        Ok(self.store.record_secret_uses(&uses).await?)
    }

    /// The key provider, for checks that need it.
    pub fn key_provider(&self) -> &dyn KeyProvider {
        self.keys.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::GuardCache;

    fn key(ws: &str) -> (String, String) {
        (ws.to_owned(), "alice".to_owned())
    }

    #[test]
    fn a_guard_built_before_a_change_is_not_cached_after_it() {
        let mut cache = GuardCache::default();
        // Built from the values before a put, which invalidates before the guard is inserted.
        let before = cache.generation("lab");
        cache.invalidate("lab");
        cache.insert_if_current(key("lab"), before, None);
        assert!(cache.guards.is_empty());
        // Built after it: cached. A change in another workspace leaves it alone.
        let after = cache.generation("lab");
        let other = cache.generation("other");
        cache.invalidate("other");
        cache.insert_if_current(key("lab"), after, None);
        cache.insert_if_current(key("other"), other, None);
        assert_eq!(cache.guards.keys().collect::<Vec<_>>(), [&key("lab")]);
        // A change after the insert drops it.
        cache.invalidate("lab");
        assert!(cache.guards.is_empty());
    }
}
