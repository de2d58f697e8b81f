//! The live price book of one pricing replica: an immutable snapshot swapped on
//! every committed change, the commit path, and the fan-out to watchers.
//!
//! Reads (`Quote`, `GetPriceBook`) never wait on Redis: they clone an `Arc` of
//! the current snapshot. Writes are serialized per replica by `commit_lock` and
//! across replicas by the store's compare-and-set on the version; changes made
//! by other replicas arrive through the change-stream tailer ([`PriceBookState::follow`]).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tenantmeter_domain::pricebook::{PriceBook, PriceBookChange};
use tenantmeter_proto::v1 as pb;
use tokio::sync::{Mutex, broadcast};
use tokio_util::sync::CancellationToken;

use crate::convert;
use crate::error::PricingError;
use crate::seed::{PlansFile, PriceFile};
use crate::store::{Commit, PriceBookStore, StoreError, Write};

/// How many times a change is retried when another replica commits first.
const COMMIT_ATTEMPTS: usize = 8;
/// Changes buffered per watcher before it is considered lagging (and resent
/// the whole book).
const WATCH_BUFFER: usize = 256;
/// How long one blocking read of the change stream waits.
const TAIL_BLOCK: Duration = Duration::from_secs(2);

/// The shipped files the book is seeded from, with a digest of their bytes.
#[derive(Debug, Clone)]
pub struct Seed {
    /// List prices.
    pub prices: PriceFile,
    /// Plans.
    pub plans: PlansFile,
    /// SHA-256 of both files' bytes: a seed is re-imported only when it changed.
    pub digest: String,
}

impl Seed {
    /// The book this seed makes on top of `base` (prices and plans upserted,
    /// meta replaced), or alone at version 0; not committed anywhere.
    pub fn apply_to(&self, base: Option<PriceBook>) -> PriceBook {
        let mut book = base.unwrap_or_else(|| PriceBook {
            version: 0,
            updated_at: std::time::UNIX_EPOCH,
            prices_as_of: String::new(),
            prices_source: String::new(),
            default_region: String::new(),
            default_plan: self.plans.default_plan.clone(),
            prices: Default::default(),
            plans: Default::default(),
            assignments: Default::default(),
        });
        book.prices_as_of.clone_from(&self.prices.as_of);
        book.prices_source.clone_from(&self.prices.source);
        book.default_region.clone_from(&self.prices.default_region);
        book.default_plan = self.plans.default_plan.clone();
        for price in &self.prices.prices {
            book.prices.insert(price.key.clone(), price.clone());
        }
        for plan in &self.plans.plans {
            book.plans.insert(plan.id.clone(), plan.clone());
        }
        book
    }
}

/// A committed change, as sent to watchers.
pub type Broadcast = Arc<pb::WatchPriceBookResponse>;

/// The replica's price book.
#[derive(Debug)]
pub struct PriceBookState {
    store: PriceBookStore,
    /// Digest of the seed files this replica started with, kept with a restored book.
    seed_digest: String,
    current: RwLock<Arc<PriceBook>>,
    commit_lock: Mutex<()>,
    changes: broadcast::Sender<Broadcast>,
}

/// The change in the form the stream and watchers carry.
fn change_message(change: &PriceBookChange) -> pb::watch_price_book_response::Update {
    use pb::watch_price_book_response::Update;
    match change {
        PriceBookChange::UpsertPrices(prices) => {
            Update::PricesUpserted(pb::UpsertModelPricesRequest {
                prices: prices.iter().map(convert::model_price_to_proto).collect(),
            })
        }
        PriceBookChange::UpsertPlan(plan) => Update::PlanUpserted(convert::plan_to_proto(plan)),
        PriceBookChange::AssignPlans(assignments) => {
            Update::PlansAssigned(pb::AssignPlansRequest {
                assignments: assignments
                    .iter()
                    .map(|(tenant, plan)| pb::TenantPlanAssignment {
                        tenant_id: tenant.to_string(),
                        plan_id: plan.as_ref().map(ToString::to_string).unwrap_or_default(),
                    })
                    .collect(),
            })
        }
    }
}

/// The domain change a stream entry (or a `WatchPriceBook` message) carries,
/// validated; `None` for a whole book. Shared by the replicas' change-stream
/// tailer and the [`crate::follower`] of other services.
pub(crate) fn change_from_message(
    update: &pb::watch_price_book_response::Update,
) -> Result<Option<PriceBookChange>, PricingError> {
    use pb::watch_price_book_response::Update;
    Ok(match update {
        Update::Snapshot(_) => None,
        Update::PricesUpserted(request) => Some(PriceBookChange::UpsertPrices(
            convert::model_prices_from_proto(&request.prices, "prices")?,
        )),
        Update::PlanUpserted(plan) => Some(PriceBookChange::UpsertPlan(convert::plan_from_proto(
            plan, "plan",
        )?)),
        Update::PlansAssigned(request) => Some(PriceBookChange::AssignPlans(
            convert::assignments_from_proto(&request.assignments, "assignments")?,
        )),
    })
}

fn writes_of(change: &PriceBookChange) -> Vec<Write> {
    match change {
        PriceBookChange::UpsertPrices(prices) => prices.iter().map(Write::price).collect(),
        PriceBookChange::UpsertPlan(plan) => vec![Write::plan(plan)],
        PriceBookChange::AssignPlans(assignments) => assignments
            .iter()
            .map(|(tenant, plan)| Write::assignment(tenant, plan.as_ref()))
            .collect(),
    }
}

/// Every write that stores `book` whole (meta, prices, plans, assignments).
fn whole_book_writes(book: &PriceBook, seed_digest: &str) -> Vec<Write> {
    let mut writes = vec![
        Write::meta("prices_as_of", &book.prices_as_of),
        Write::meta("prices_source", &book.prices_source),
        Write::meta("default_region", &book.default_region),
        Write::meta("default_plan", book.default_plan.as_str()),
        Write::meta("seed_digest", seed_digest),
    ];
    writes.extend(book.prices.values().map(Write::price));
    writes.extend(book.plans.values().map(Write::plan));
    writes.extend(
        book.assignments
            .iter()
            .map(|(tenant, plan)| Write::assignment(tenant, Some(plan))),
    );
    writes
}

/// The stream entry of a whole-book commit: followers reload from the hashes.
fn whole_book_message() -> pb::WatchPriceBookResponse {
    pb::WatchPriceBookResponse {
        version: 0,
        update: Some(pb::watch_price_book_response::Update::Snapshot(
            pb::PriceBook::default(),
        )),
    }
}

impl PriceBookState {
    /// Loads the book from Redis, importing `seed` first when Redis has no book
    /// or holds one seeded from different files. Returns the state and the
    /// change-stream position to follow from.
    pub async fn open(store: PriceBookStore, seed: &Seed) -> Result<(Self, String), PricingError> {
        // Read the stream position first: a change committed between this and
        // the load is then both in the book and replayed, and replay skips it.
        let mut position = store.last_change_id().await?;
        let loaded = store.load().await?;
        let needs_seed = loaded
            .as_ref()
            .is_none_or(|(_, digest)| *digest != seed.digest);
        let book = match loaded {
            Some((book, _)) if !needs_seed => book,
            loaded => {
                let base = loaded.map(|(book, _)| book);
                let book = Self::import(&store, base, seed).await?;
                position = store.last_change_id().await?;
                book
            }
        };
        tracing::info!(
            version = book.version,
            prices = book.prices.len(),
            plans = book.plans.len(),
            assignments = book.assignments.len(),
            "price book loaded"
        );
        let (changes, _) = broadcast::channel(WATCH_BUFFER);
        Ok((
            Self {
                store,
                seed_digest: seed.digest.clone(),
                current: RwLock::new(Arc::new(book)),
                commit_lock: Mutex::new(()),
                changes,
            },
            position,
        ))
    }

    /// Commits the seed on top of `base` (prices and plans upserted, meta set)
    /// as one version, retrying if another replica seeds at the same time.
    async fn import(
        store: &PriceBookStore,
        mut base: Option<PriceBook>,
        seed: &Seed,
    ) -> Result<PriceBook, PricingError> {
        for _ in 0..COMMIT_ATTEMPTS {
            let expected = base.as_ref().map_or(0, |b| b.version);
            let mut book = seed.apply_to(base.clone());
            let writes = whole_book_writes(&book, &seed.digest);
            let message = whole_book_message();
            match store.commit(expected, 0, &message, &writes).await? {
                Commit::Done { version, at } => {
                    book.version = version;
                    book.updated_at = at;
                    tracing::info!(version, digest = %seed.digest, "imported the shipped price files");
                    return Ok(book);
                }
                Commit::Conflict { .. } => match store.load().await? {
                    // Another replica imported the same files meanwhile.
                    Some((loaded, digest)) if digest == seed.digest => return Ok(loaded),
                    loaded => base = loaded.map(|(book, _)| book),
                },
            }
        }
        Err(PricingError::Contended)
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<PriceBook> {
        // A poisoned lock only means a panic elsewhere mid-swap of an Arc, which
        // cannot leave it half-written; keep serving the last snapshot.
        self.current.read().map_or_else(
            |poisoned| poisoned.into_inner().clone(),
            |guard| guard.clone(),
        )
    }

    fn replace(&self, book: PriceBook) {
        let book = Arc::new(book);
        match self.current.write() {
            Ok(mut guard) => *guard = book,
            Err(poisoned) => *poisoned.into_inner() = book,
        }
    }

    /// The current book and a receiver of every change committed after it.
    pub fn subscribe(&self) -> (Arc<PriceBook>, broadcast::Receiver<Broadcast>) {
        // Subscribe before reading: a change landing in between is then both in
        // the snapshot and received, and the watcher skips it by version.
        let receiver = self.changes.subscribe();
        (self.current(), receiver)
    }

    fn publish(&self, version: u64, update: pb::watch_price_book_response::Update) {
        // No receivers is not an error: nobody is watching.
        let _ = self.changes.send(Arc::new(pb::WatchPriceBookResponse {
            version,
            update: Some(update),
        }));
    }

    fn publish_snapshot(&self, book: &PriceBook) {
        self.publish(
            book.version,
            pb::watch_price_book_response::Update::Snapshot(convert::book_to_proto(book)),
        );
    }

    /// Validates and commits `change`; returns the new version.
    pub async fn apply(&self, change: PriceBookChange) -> Result<u64, PricingError> {
        let _serialized = self.commit_lock.lock().await;
        let update = change_message(&change);
        let message = pb::WatchPriceBookResponse {
            version: 0,
            update: Some(update.clone()),
        };
        let writes = writes_of(&change);
        for _ in 0..COMMIT_ATTEMPTS {
            let current = self.current();
            current.check(&change)?;
            match self
                .store
                .commit(current.version, 0, &message, &writes)
                .await?
            {
                Commit::Done { version, at } => {
                    let mut next = (*current).clone();
                    next.apply(change, version, at)?;
                    self.replace(next);
                    self.publish(version, update);
                    return Ok(version);
                }
                Commit::Conflict { current } => {
                    tracing::debug!(current, "another replica committed first; reloading");
                    self.reload().await?;
                }
            }
        }
        Err(PricingError::Contended)
    }

    async fn reload(&self) -> Result<(), StoreError> {
        let book = match self.store.load().await? {
            Some((book, _)) => book,
            None => match self.restore().await? {
                Some(book) => book,
                None => return Ok(()),
            },
        };
        self.publish_snapshot(&book);
        self.replace(book);
        Ok(())
    }

    /// Writes this replica's copy back when the book vanished from Redis (a
    /// flush, or a Redis without persistence restarted), so no committed change
    /// is lost and versions keep increasing for watchers. Returns the book now
    /// in Redis, whoever restored it.
    async fn restore(&self) -> Result<Option<PriceBook>, StoreError> {
        let mut book = (*self.current()).clone();
        tracing::error!(
            version = book.version,
            "the price book is missing from redis; restoring this replica's copy"
        );
        let writes = whole_book_writes(&book, &self.seed_digest);
        match self
            .store
            .commit(0, book.version + 1, &whole_book_message(), &writes)
            .await?
        {
            Commit::Done { version, at } => {
                book.version = version;
                book.updated_at = at;
                Ok(Some(book))
            }
            // Another replica restored it first.
            Commit::Conflict { .. } => Ok(self.store.load().await?.map(|(book, _)| book)),
        }
    }

    /// Follows the change stream from `position` until `shutdown`, applying
    /// changes committed by other replicas. Errors are logged and retried with
    /// a pause: a replica that cannot reach Redis keeps serving its last book.
    pub async fn follow(&self, mut position: String, shutdown: CancellationToken) {
        let mut conn = None;
        while !shutdown.is_cancelled() {
            let result = async {
                if conn.is_none() {
                    conn = Some(self.store.tail_connection(TAIL_BLOCK).await?);
                }
                let Some(active) = conn.as_mut() else {
                    return Ok(());
                };
                let records = PriceBookStore::read_changes(active, &position, TAIL_BLOCK).await?;
                for record in records {
                    position.clone_from(&record.stream_id);
                    self.absorb(record.version, record.at, &record.change)
                        .await?;
                }
                Ok::<(), PricingError>(())
            };
            let outcome = tokio::select! {
                () = shutdown.cancelled() => return,
                outcome = result => outcome,
            };
            if let Err(error) = outcome {
                tracing::warn!(%error, "following price book changes failed; retrying");
                conn = None;
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }

    async fn absorb(
        &self,
        version: u64,
        at: std::time::SystemTime,
        message: &pb::WatchPriceBookResponse,
    ) -> Result<(), PricingError> {
        let _serialized = self.commit_lock.lock().await;
        let current = self.current();
        if version <= current.version {
            return Ok(()); // our own commit, or already loaded
        }
        let change = match &message.update {
            Some(update) if version == current.version + 1 => change_from_message(update)?,
            Some(_) | None => None,
        };
        match (change, &message.update) {
            (Some(change), Some(update)) => {
                let mut next = (*current).clone();
                next.apply(change, version, at)?;
                self.replace(next);
                self.publish(version, update.clone());
            }
            (Some(_) | None, _) => self.reload().await?,
        }
        Ok(())
    }
}
