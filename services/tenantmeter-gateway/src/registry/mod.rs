//! The tenant registry: tenants, API-key hashes, model aliases and their
//! inference profiles, in Redis, cached in the gateway.
//!
//! # Storage
//!
//! One JSON [`TenantRecord`] per tenant, plus indexes, all under the `{gw}`
//! hash tag (layout in [`store`]). Every change is one Lua script: a
//! compare-and-set on the record's `revision` that also updates the id
//! indexes, the key-id index and the change stream. Nothing is ever read,
//! modified and written back from the client without that check.
//!
//! # The hot path and its cache
//!
//! [`Registry::authenticate`] is called on every tenant call. It is served
//! from an in-process cache (a read lock, a hash lookup, one SHA-256 and a
//! constant-time compare: no Redis round trip):
//!
//! - `by_key`: key id -> the tenant's record (an `Arc`), for every key of every
//!   cached tenant; `tenants`: tenant id -> record.
//! - A miss (a key id this replica has not seen) reads Redis twice (key index,
//!   record) and caches the tenant. A key id Redis does not know is remembered
//!   as unknown for [`RegistryOptions::unknown_key_ttl`], so a client retrying
//!   a bad key does not reach Redis every time.
//! - Every change appends `(seq, tenant)` to the `{gw}:changes` stream. A
//!   background task of each replica reads the stream every
//!   [`RegistryOptions::refresh_interval`] (one pipelined round trip, with an
//!   empty answer when nothing changed)
//!   and evicts and re-reads the changed tenants it caches. So a change made on
//!   any replica (DisableTenant, RotateKey with overlap 0) takes effect on
//!   every other replica within `refresh_interval` plus one Redis round trip
//!   (default: about 1 s). The replica that made the change applies it to its
//!   own cache at once.
//! - A gap in the sequence numbers (the capped stream was trimmed past what a
//!   replica saw) drops the whole cache: it refills from Redis on demand. So
//!   does a change of the registry's epoch (`{gw}:epoch`, a random token set
//!   if absent when a replica connects or polls): it vanishes when Redis
//!   loses its data (a flush, a restart without persistence), and then no
//!   cached tenant, key or expiry can be trusted.
//! - While Redis does not answer, cached tenants keep being served as of the
//!   last successful read (nothing can be changed meanwhile either: admins
//!   write through the same Redis); only uncached keys get
//!   [`AuthError::Unavailable`].
//! - Key expiry is checked against the injected clock on every call, so a
//!   rotated key stops at its `expires_at` to the millisecond, cached or not.

pub mod keys;
pub mod model;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tenantmeter_domain::ids::TenantId;
use tenantmeter_runtime::clock::Clock;
use tenantmeter_runtime::error as status;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use self::keys::IssuedKey;
use self::model::{TenantRecord, TenantState};
use self::store::{PutOutcome, Store};

/// How long a caller should wait before retrying when Redis is unavailable.
const REDIS_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Compare-and-set attempts before a change gives up (ABORTED): only a burst
/// of concurrent admin changes to one tenant gets there.
const MAX_ATTEMPTS: usize = 16;
/// Changes read from the stream per round trip.
const CHANGES_BATCH: usize = 1_000;

/// Everything that can go wrong in the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A request field is malformed.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// Path of the field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The tenant id is taken.
    #[error("tenant {0:?} already exists")]
    AlreadyExists(String),
    /// No such tenant.
    #[error("tenant {0:?} not found")]
    NotFound(String),
    /// Concurrent changes to the tenant kept winning the compare-and-set.
    #[error("tenant {0:?} kept changing concurrently; retry")]
    Contended(String),
    /// Redis failed or did not answer in time.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A stored record or a script reply is not what this code writes.
    #[error("corrupt registry data: {0}")]
    Corrupt(String),
    /// The OS gave no randomness for a new key.
    #[error("no randomness for a new key: {0}")]
    Random(getrandom::Error),
}

impl RegistryError {
    /// An invalid field.
    pub fn invalid(field: impl Into<String>, reason: impl ToString) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.to_string(),
        }
    }
}

impl From<RegistryError> for Status {
    fn from(error: RegistryError) -> Self {
        match error {
            RegistryError::InvalidArgument { field, reason } => {
                status::invalid_argument(&field, reason)
            }
            RegistryError::AlreadyExists(tenant) => Status::with_error_details(
                Code::AlreadyExists,
                format!("tenant {tenant:?} already exists"),
                ErrorDetails::with_resource_info("tenant", tenant, "", "already exists"),
            ),
            RegistryError::NotFound(tenant) => status::not_found("tenant", &tenant),
            RegistryError::Contended(tenant) => Status::aborted(format!(
                "tenant {tenant:?} kept changing concurrently; retry"
            )),
            RegistryError::Redis(error) => {
                tracing::warn!(%error, "registry redis error");
                status::unavailable("redis", REDIS_RETRY_AFTER)
            }
            corrupt @ RegistryError::Corrupt(_) => {
                tracing::error!(error = %corrupt, "registry data");
                Status::internal(corrupt.to_string())
            }
            random @ RegistryError::Random(_) => {
                tracing::error!(error = %random, "key generation");
                Status::internal(random.to_string())
            }
        }
    }
}

/// Why a presented key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Malformed, unknown or expired key (UNAUTHENTICATED).
    #[error("invalid API key")]
    InvalidKey,
    /// The key is valid but its tenant is disabled (PERMISSION_DENIED).
    #[error("tenant {tenant_id} is disabled: {reason}")]
    Disabled {
        /// The tenant.
        tenant_id: String,
        /// Why it was disabled.
        reason: String,
    },
    /// The key is not cached and Redis could not be read (UNAVAILABLE).
    #[error("tenant registry unavailable: {0}")]
    Unavailable(String),
}

/// Tuning of the registry's cache.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// How often the change stream is read: the bound on how stale another
    /// replica's change can be here (plus one Redis round trip). Default 1 s.
    pub refresh_interval: Duration,
    /// How long a key id Redis did not know is refused without asking Redis
    /// again. Default 10 s. Safe: key ids are random, so a new key's id was
    /// never presented before it existed.
    pub unknown_key_ttl: Duration,
    /// Most unknown key ids remembered; when full they are all forgotten (a
    /// flood of random keys then costs Redis reads, never memory).
    pub max_unknown_keys: usize,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            refresh_interval: Duration::from_secs(1),
            unknown_key_ttl: Duration::from_secs(10),
            max_unknown_keys: 100_000,
        }
    }
}

/// What CreateTenant stores, validated.
#[derive(Debug, Clone)]
pub struct NewTenant {
    /// Tenant id.
    pub tenant_id: TenantId,
    /// Human name.
    pub display_name: String,
    /// Applications, at least one; the first is the primary one.
    pub application_ids: Vec<String>,
    /// CostCenter tag.
    pub cost_center: String,
    /// Extra profile tags.
    pub profile_tags: std::collections::BTreeMap<String, String>,
    /// Plan assigned in pricing; empty for the default plan.
    pub plan_id: String,
}

/// A page of tenants.
#[derive(Debug, Clone)]
pub struct TenantPage {
    /// Tenants, by id.
    pub tenants: Vec<Arc<TenantRecord>>,
    /// The last id of this page when more follow.
    pub next_after: Option<String>,
}

/// The in-process copy. Entries are whole records behind `Arc`s, so a reader
/// holds the read lock only for a hash lookup and a pointer copy.
#[derive(Debug, Default)]
struct Cache {
    /// Bumped by every eviction: a Redis read that started before it must not
    /// install what it read (it may predate the change that evicted).
    generation: u64,
    tenants: HashMap<String, Arc<TenantRecord>>,
    by_key: HashMap<String, Arc<TenantRecord>>,
    unknown: HashMap<String, Instant>,
}

impl Cache {
    /// Installs a record unless a newer revision is cached.
    fn install(&mut self, record: &Arc<TenantRecord>) {
        if let Some(old) = self.tenants.get(&record.tenant_id) {
            if old.revision > record.revision {
                return;
            }
            let old = Arc::clone(old);
            for key in &old.keys {
                self.by_key.remove(&key.key_id);
            }
        }
        for key in &record.keys {
            self.by_key.insert(key.key_id.clone(), Arc::clone(record));
            self.unknown.remove(&key.key_id);
        }
        self.tenants
            .insert(record.tenant_id.clone(), Arc::clone(record));
    }

    fn evict(&mut self, tenant: &str) -> bool {
        self.generation += 1;
        let Some(old) = self.tenants.remove(tenant) else {
            return false;
        };
        for key in &old.keys {
            self.by_key.remove(&key.key_id);
        }
        true
    }

    fn clear(&mut self) {
        self.generation += 1;
        self.tenants.clear();
        self.by_key.clear();
        self.unknown.clear();
    }
}

/// Where the change follower is in the stream.
#[derive(Debug, Clone)]
struct Position {
    id: String,
    seq: u64,
    epoch: String,
    failing: bool,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    clock: Arc<dyn Clock>,
    options: RegistryOptions,
    cache: RwLock<Cache>,
}

/// The tenant registry. Cheap to clone: clones share the connection and the
/// cache. Its change follower runs until the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

/// Unix milliseconds of `time` (negative before the epoch).
pub fn unix_ms(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn parse_record(json: &str) -> Result<Arc<TenantRecord>, RegistryError> {
    serde_json::from_str::<TenantRecord>(json)
        .map(Arc::new)
        .map_err(|e| RegistryError::Corrupt(format!("tenant record: {e}")))
}

fn key_ids(record: &TenantRecord) -> HashSet<&str> {
    record.keys.iter().map(|k| k.key_id.as_str()).collect()
}

enum Lookup {
    Hit(Arc<TenantRecord>),
    Unknown,
    Miss(u64),
}

impl Registry {
    /// Connects with default [`RegistryOptions`]: to one server (`urls` has
    /// one entry) or to a Redis Cluster (`cluster`, any seed nodes). Every
    /// Redis call is bounded by `timeout`. Must be called inside a Tokio
    /// runtime: it starts the change follower.
    pub async fn connect(
        urls: &[String],
        cluster: bool,
        timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Registry, RegistryError> {
        Self::connect_with(urls, cluster, timeout, clock, RegistryOptions::default()).await
    }

    /// [`Registry::connect`] with explicit cache options.
    pub async fn connect_with(
        urls: &[String],
        cluster: bool,
        timeout: Duration,
        clock: Arc<dyn Clock>,
        options: RegistryOptions,
    ) -> Result<Registry, RegistryError> {
        let store = Store::connect(urls, cluster, timeout).await?;
        let epoch = store
            .ensure_epoch(&keys::random_token().map_err(RegistryError::Random)?)
            .await?;
        // Follow from the newest change: the cache starts empty, so nothing
        // older can be stale in it.
        let (id, seq) = store
            .latest_change()
            .await?
            .unwrap_or_else(|| ("0-0".to_owned(), 0));
        let position = Position {
            id,
            seq,
            epoch,
            failing: false,
        };
        let inner = Arc::new(Inner {
            store,
            clock,
            options,
            cache: RwLock::new(Cache::default()),
        });
        tokio::spawn(follow(Arc::downgrade(&inner), position));
        Ok(Self { inner })
    }

    fn read(&self) -> RwLockReadGuard<'_, Cache> {
        // A panic while holding the lock leaves whole entries (inserts and
        // removes of Arcs), never a half-written one: the cache stays usable.
        self.inner
            .cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Cache> {
        self.inner
            .cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Now, Unix milliseconds, from the injected clock.
    pub fn now_ms(&self) -> i64 {
        unix_ms(self.inner.clock.now())
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        self.inner.store.ping().await
    }

    /// The tenant a presented API key belongs to: the hot path of every
    /// tenant call, served from the cache (see the module docs).
    pub async fn authenticate(&self, presented_key: &str) -> Result<Arc<TenantRecord>, AuthError> {
        let Some(key_id) = keys::key_id_of(presented_key) else {
            return Err(AuthError::InvalidKey);
        };
        let record = match self.lookup(key_id) {
            Lookup::Hit(record) => record,
            Lookup::Unknown => return Err(AuthError::InvalidKey),
            Lookup::Miss(generation) => self.load_key(key_id, generation).await?,
        };
        self.check(record, key_id, presented_key)
    }

    fn lookup(&self, key_id: &str) -> Lookup {
        let cache = self.read();
        if let Some(record) = cache.by_key.get(key_id) {
            return Lookup::Hit(Arc::clone(record));
        }
        match cache.unknown.get(key_id) {
            Some(until) if Instant::now() < *until => Lookup::Unknown,
            Some(_) | None => Lookup::Miss(cache.generation),
        }
    }

    async fn load_key(
        &self,
        key_id: &str,
        generation: u64,
    ) -> Result<Arc<TenantRecord>, AuthError> {
        let unavailable = |e: RegistryError| AuthError::Unavailable(e.to_string());
        let owner = self
            .inner
            .store
            .key_owner(key_id)
            .await
            .map_err(unavailable)?;
        let Some(owner) = owner else {
            self.remember_unknown(key_id);
            return Err(AuthError::InvalidKey);
        };
        let tenant = TenantId::parse(owner.as_str()).map_err(|e| {
            unavailable(RegistryError::Corrupt(format!(
                "key index names tenant {owner:?}: {e}"
            )))
        })?;
        let Some(json) = self.inner.store.get(&tenant).await.map_err(unavailable)? else {
            // The index and the record are written together; a dangling
            // index entry means the tenant was just deleted.
            return Err(AuthError::InvalidKey);
        };
        let record = parse_record(&json).map_err(unavailable)?;
        self.install_if(generation, &record);
        Ok(record)
    }

    fn remember_unknown(&self, key_id: &str) {
        let mut cache = self.write();
        if cache.unknown.len() >= self.inner.options.max_unknown_keys {
            cache.unknown.clear();
        }
        cache.unknown.insert(
            key_id.to_owned(),
            Instant::now() + self.inner.options.unknown_key_ttl,
        );
    }

    fn check(
        &self,
        record: Arc<TenantRecord>,
        key_id: &str,
        presented_key: &str,
    ) -> Result<Arc<TenantRecord>, AuthError> {
        let Some(key) = record.keys.iter().find(|k| k.key_id == key_id) else {
            return Err(AuthError::InvalidKey);
        };
        if !keys::matches(presented_key, &key.sha256_hex) {
            return Err(AuthError::InvalidKey);
        }
        if let Some(expires_at_ms) = key.expires_at_ms
            && self.now_ms() >= expires_at_ms
        {
            return Err(AuthError::InvalidKey);
        }
        // Checked after the key, so an unauthenticated caller learns nothing
        // about the tenant.
        match record.state {
            TenantState::Active => Ok(record),
            TenantState::Disabled => Err(AuthError::Disabled {
                tenant_id: record.tenant_id.clone(),
                reason: record.disabled_reason.clone(),
            }),
        }
    }

    fn install_if(&self, generation: u64, record: &Arc<TenantRecord>) {
        let mut cache = self.write();
        if cache.generation == generation {
            cache.install(record);
        }
    }

    /// A tenant, from the cache when held there (as fresh as the change
    /// follower keeps it), else from Redis.
    pub async fn tenant(&self, id: &TenantId) -> Result<Option<Arc<TenantRecord>>, RegistryError> {
        let generation = {
            let cache = self.read();
            if let Some(record) = cache.tenants.get(id.as_str()) {
                return Ok(Some(Arc::clone(record)));
            }
            cache.generation
        };
        let record = self.read_record(id).await?;
        if let Some(record) = &record {
            self.install_if(generation, record);
        }
        Ok(record)
    }

    /// A tenant read from Redis now (admin reads: never stale). Refreshes
    /// the cached copy.
    pub async fn fetch_tenant(
        &self,
        id: &TenantId,
    ) -> Result<Option<Arc<TenantRecord>>, RegistryError> {
        let record = self.read_record(id).await?;
        if let Some(record) = &record
            && self.read().tenants.contains_key(id.as_str())
        {
            self.write().install(record);
        }
        Ok(record)
    }

    async fn read_record(&self, id: &TenantId) -> Result<Option<Arc<TenantRecord>>, RegistryError> {
        self.inner
            .store
            .get(id)
            .await?
            .map(|json| parse_record(&json))
            .transpose()
    }

    /// A page of tenants by id, after `after` (exclusive); disabled ones only
    /// with `include_disabled`.
    pub async fn list(
        &self,
        after: Option<&TenantId>,
        limit: usize,
        include_disabled: bool,
    ) -> Result<TenantPage, RegistryError> {
        let limit = limit.max(1);
        let mut ids = self
            .inner
            .store
            .ids_after(
                !include_disabled,
                after.map(TenantId::as_str),
                limit.saturating_add(1),
            )
            .await?;
        let more = ids.len() > limit;
        ids.truncate(limit);
        let ids = ids
            .into_iter()
            .map(|id| {
                TenantId::parse(id.as_str())
                    .map_err(|e| RegistryError::Corrupt(format!("tenant index holds {id:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let records = self.inner.store.get_many(&ids).await?;
        let tenants = records
            .iter()
            .flatten()
            .map(|json| parse_record(json))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TenantPage {
            next_after: more.then(|| ids.last().map(ToString::to_string)).flatten(),
            tenants,
        })
    }

    /// Creates a tenant with its first key. The key is in the returned
    /// [`IssuedKey`], the only place it ever exists in full.
    pub async fn create_tenant(
        &self,
        spec: NewTenant,
    ) -> Result<(Arc<TenantRecord>, IssuedKey), RegistryError> {
        for _ in 0..MAX_ATTEMPTS {
            let now = self.now_ms();
            let issued = keys::issue(now).map_err(RegistryError::Random)?;
            let record = TenantRecord {
                tenant_id: spec.tenant_id.to_string(),
                display_name: spec.display_name.clone(),
                application_ids: spec.application_ids.clone(),
                cost_center: spec.cost_center.clone(),
                profile_tags: spec.profile_tags.clone(),
                state: TenantState::Active,
                disabled_reason: String::new(),
                plan_id: spec.plan_id.clone(),
                keys: vec![issued.record.clone()],
                aliases: std::collections::BTreeMap::new(),
                created_at_ms: now,
                updated_at_ms: now,
                revision: 1,
            };
            let json = serde_json::to_string(&record)
                .map_err(|e| RegistryError::Corrupt(format!("cannot encode record: {e}")))?;
            match self
                .inner
                .store
                .put(
                    &spec.tenant_id,
                    0,
                    1,
                    &json,
                    true,
                    std::slice::from_ref(&issued.record.key_id),
                    &[],
                )
                .await?
            {
                PutOutcome::Written(_) => {
                    let record = Arc::new(record);
                    self.write().install(&record);
                    return Ok((record, issued));
                }
                PutOutcome::Exists => {
                    return Err(RegistryError::AlreadyExists(spec.tenant_id.to_string()));
                }
                // 64 random bits collided: draw another key.
                PutOutcome::KeyTaken(_) => {}
                outcome @ (PutOutcome::Missing | PutOutcome::Stale) => {
                    return Err(RegistryError::Corrupt(format!(
                        "creation answered {outcome:?}"
                    )));
                }
            }
        }
        Err(RegistryError::Contended(spec.tenant_id.to_string()))
    }

    /// Deletes a tenant if it is still at `record`'s revision: undoes a
    /// creation whose follow-up failed. `true` when deleted.
    pub async fn delete_if_unchanged(&self, record: &TenantRecord) -> Result<bool, RegistryError> {
        let tenant = TenantId::parse(record.tenant_id.as_str())
            .map_err(|e| RegistryError::invalid("tenant_id", e))?;
        let keys: Vec<String> = record.keys.iter().map(|k| k.key_id.clone()).collect();
        let outcome = self
            .inner
            .store
            .delete(&tenant, record.revision, &keys)
            .await?;
        self.write().evict(&record.tenant_id);
        Ok(matches!(outcome, PutOutcome::Written(_)))
    }

    /// Applies `change` to the tenant's current record and writes it with a
    /// compare-and-set on its revision, re-reading and re-applying when
    /// another change came first. `change` gets the record and now (Unix
    /// ms) and may run several times; a change that leaves the record equal
    /// writes nothing. Returns the record as stored and `change`'s output.
    pub async fn update<T, E, F>(
        &self,
        tenant: &TenantId,
        mut change: F,
    ) -> Result<(Arc<TenantRecord>, T), E>
    where
        F: FnMut(&mut TenantRecord, i64) -> Result<T, E>,
        E: From<RegistryError>,
    {
        for _ in 0..MAX_ATTEMPTS {
            let Some(current) = self.read_record(tenant).await? else {
                return Err(RegistryError::NotFound(tenant.to_string()).into());
            };
            let now = self.now_ms();
            let mut next = (*current).clone();
            let output = change(&mut next, now)?;
            if next == *current {
                return Ok((current, output));
            }
            next.revision = current.revision + 1;
            next.updated_at_ms = now;
            let before = key_ids(&current);
            let after = key_ids(&next);
            let added: Vec<String> = after.difference(&before).map(|k| (*k).to_owned()).collect();
            let removed: Vec<String> = before.difference(&after).map(|k| (*k).to_owned()).collect();
            let json = serde_json::to_string(&next)
                .map_err(|e| RegistryError::Corrupt(format!("cannot encode record: {e}")))?;
            match self
                .inner
                .store
                .put(
                    tenant,
                    current.revision,
                    next.revision,
                    &json,
                    next.state == TenantState::Active,
                    &added,
                    &removed,
                )
                .await?
            {
                PutOutcome::Written(_) => {
                    let next = Arc::new(next);
                    self.write().install(&next);
                    return Ok((next, output));
                }
                PutOutcome::Missing => {
                    return Err(RegistryError::NotFound(tenant.to_string()).into());
                }
                // Another change came first (or a new key id collided): redo
                // the change on what is stored now.
                PutOutcome::Stale | PutOutcome::KeyTaken(_) => {}
                PutOutcome::Exists => {
                    return Err(RegistryError::Corrupt("update answered Exists".to_owned()).into());
                }
            }
        }
        Err(RegistryError::Contended(tenant.to_string()).into())
    }

    /// Issues a new key; the tenant's previous keys stop working at now +
    /// `overlap` (at once for zero; a key already ending sooner keeps its
    /// end). Keys that have already stopped are dropped from the record.
    /// Returns the record and the new key, shown once.
    pub async fn rotate_key(
        &self,
        tenant: &TenantId,
        overlap: Duration,
    ) -> Result<(Arc<TenantRecord>, String), RegistryError> {
        let overlap_ms = duration_ms(overlap);
        self.update(tenant, |record, now| {
            let issued = keys::issue(now).map_err(RegistryError::Random)?;
            let until = now.saturating_add(overlap_ms);
            record
                .keys
                .retain(|k| k.expires_at_ms.is_none_or(|end| end > now));
            for key in &mut record.keys {
                key.expires_at_ms = Some(key.expires_at_ms.map_or(until, |end| end.min(until)));
            }
            record.keys.insert(0, issued.record);
            Ok::<_, RegistryError>(issued.key)
        })
        .await
    }

    /// Disables a tenant (again: the reason is replaced).
    pub async fn disable(
        &self,
        tenant: &TenantId,
        reason: &str,
    ) -> Result<Arc<TenantRecord>, RegistryError> {
        self.update(tenant, |record, _| {
            record.state = TenantState::Disabled;
            reason.clone_into(&mut record.disabled_reason);
            Ok::<_, RegistryError>(())
        })
        .await
        .map(|(record, ())| record)
    }

    /// Enables a tenant (a no-op when active).
    pub async fn enable(&self, tenant: &TenantId) -> Result<Arc<TenantRecord>, RegistryError> {
        self.update(tenant, |record, _| {
            record.state = TenantState::Active;
            record.disabled_reason.clear();
            Ok::<_, RegistryError>(())
        })
        .await
        .map(|(record, ())| record)
    }

    /// Reads the change stream once and applies it to the cache; the change
    /// follower's step. Returns how many changes were read.
    async fn poll(&self, position: &mut Position) -> Result<usize, RegistryError> {
        let mut read = 0;
        loop {
            let (seq_now, epoch, changes) = self
                .inner
                .store
                .changes_after(&position.id, CHANGES_BATCH)
                .await?;
            if epoch.as_deref() != Some(position.epoch.as_str()) || seq_now < position.seq {
                // Redis lost the registry (or was replaced): nothing cached
                // can be trusted, and the stream restarted.
                tracing::warn!(
                    held_seq = position.seq,
                    seq = seq_now,
                    "registry data in redis was lost or replaced; dropping the cache"
                );
                self.write().clear();
                // A fresh token every time: restoring the old one would hide
                // the loss from replicas that have not polled yet.
                position.epoch = self
                    .inner
                    .store
                    .ensure_epoch(&keys::random_token().map_err(RegistryError::Random)?)
                    .await?;
                let (id, seq) = self
                    .inner
                    .store
                    .latest_change()
                    .await?
                    .unwrap_or_else(|| ("0-0".to_owned(), 0));
                position.id = id;
                position.seq = seq;
                return Ok(read);
            }
            let Some(last) = changes.last().cloned() else {
                return Ok(read);
            };
            read += changes.len();
            let contiguous = changes
                .iter()
                .zip(position.seq + 1..)
                .all(|(change, expected)| change.seq == expected);
            if contiguous {
                let tenants: HashSet<&str> = changes.iter().map(|c| c.tenant.as_str()).collect();
                self.refresh(&tenants).await;
            } else {
                tracing::warn!(
                    after = position.seq,
                    first = changes.first().map_or(0, |c| c.seq),
                    "registry changes were missed; dropping the cache"
                );
                self.write().clear();
            }
            position.id = last.id;
            position.seq = last.seq;
            if changes.len() < CHANGES_BATCH {
                return Ok(read);
            }
        }
    }

    /// Evicts the changed tenants and re-reads those that were cached, so
    /// the hot path keeps hitting.
    async fn refresh(&self, tenants: &HashSet<&str>) {
        let (cached, generation) = {
            let mut cache = self.write();
            cache.unknown.clear();
            let cached: Vec<TenantId> = tenants
                .iter()
                .filter(|tenant| cache.evict(tenant))
                .filter_map(|tenant| TenantId::parse(*tenant).ok())
                .collect();
            (cached, cache.generation)
        };
        if cached.is_empty() {
            return;
        }
        match self.inner.store.get_many(&cached).await {
            Ok(records) => {
                for json in records.iter().flatten() {
                    match parse_record(json) {
                        Ok(record) => self.install_if(generation, &record),
                        Err(error) => tracing::error!(%error, "registry record"),
                    }
                }
            }
            // Left evicted: the next call reads Redis itself.
            Err(error) => tracing::warn!(%error, "cannot re-read changed tenants"),
        }
    }
}

/// The change follower: polls the stream until the registry is dropped.
async fn follow(registry: Weak<Inner>, mut position: Position) {
    loop {
        let Some(interval) = registry.upgrade().map(|i| i.options.refresh_interval) else {
            return;
        };
        tokio::time::sleep(interval).await;
        let Some(inner) = registry.upgrade() else {
            return;
        };
        let registry_now = Registry { inner };
        match registry_now.poll(&mut position).await {
            Ok(_) => {
                if position.failing {
                    tracing::info!("registry change stream readable again");
                    position.failing = false;
                }
            }
            Err(error) => {
                // Logged once per outage, not once per poll.
                if !position.failing {
                    tracing::warn!(%error, "cannot read the registry change stream; serving the cache");
                    position.failing = true;
                }
            }
        }
    }
}
