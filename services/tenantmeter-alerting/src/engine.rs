//! The evaluation pass: every `interval`, each shard this replica holds the
//! lease of is read from the meter page by page (`ListTenantUsage` with the
//! shard), each tenant evaluated ([`crate::step`]), policies applied to the
//! meter, and the page committed to Redis in one fenced script; then the
//! holder of the fleet lease evaluates the fleet from the shards' summaries.
//! Alerts are committed with the state (the shard's outbox) and then handed to
//! the history and the notification queue, so a crash between the two
//! re-hands them (both are idempotent by alert id) instead of losing or
//! re-raising them.
//!
//! The replica keeps its shards' state in memory and writes it through; it
//! loads a shard when it takes the lease and forgets it when it loses it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tenantmeter_domain::ids::TenantId;
use tenantmeter_domain::levels::{Baseline, Level};
use tenantmeter_pricing::follower::PriceBookFollower;
use tenantmeter_proto::v1 as pb;
use tenantmeter_proto::v1::meter_service_client::MeterServiceClient;
use tenantmeter_runtime::client::TracedChannel;
use tenantmeter_runtime::clock::Clock;
use tokio::sync::Mutex;
use tonic::Status;
use tracing::Instrument as _;

use crate::alerts::AlertStore;
use crate::budgets::{BudgetStore, ms_to_timestamp};
use crate::config::AlertingConfig;
use crate::sinks::SinkQueue;
use crate::state::{
    BaselineWrite, ContributorSummary, FleetRecord, IndexMove, ShardSnapshot, ShardSummary,
    StateError, StateStore, TenantCommit, TenantRecord, rank_member,
};
use crate::status::level_to_proto;
use crate::step::{self, PassInputs, TenantStep};

/// One shard's state held in memory by its lease holder.
#[derive(Debug, Default, Clone)]
struct ShardMemory {
    records: HashMap<TenantId, TenantRecord>,
    baselines: HashMap<TenantId, Baseline>,
    /// Tenants whose stored baseline is in the older whole-value form.
    older_form: HashSet<TenantId>,
    policies: HashMap<TenantId, pb::TenantPolicy>,
    levels: HashMap<TenantId, i32>,
    /// Alerts committed but not yet in the history.
    outbox: Vec<pb::Alert>,
    /// Last committed pass.
    last_as_of: Option<i64>,
}

impl From<ShardSnapshot> for ShardMemory {
    fn from(snapshot: ShardSnapshot) -> Self {
        // The last committed instant is each record's last evaluation, so
        // "only forward in time" survives a restart.
        let last_as_of = snapshot
            .records
            .values()
            .filter_map(|record| record.level.evaluated_at_ms)
            .max();
        Self {
            records: snapshot.records,
            baselines: snapshot.baselines,
            older_form: snapshot.older_form,
            policies: snapshot.policies,
            levels: snapshot.levels,
            outbox: snapshot.outbox,
            last_as_of,
        }
    }
}

#[derive(Debug, Default, Clone)]
struct FleetMemory {
    record: FleetRecord,
    baseline: Baseline,
    status: Option<pb::FleetStatus>,
    outbox: Vec<pb::Alert>,
    last_as_of: Option<i64>,
}

/// What a pass found.
#[derive(Debug, Default)]
pub struct PassOutcome {
    /// Instant evaluated.
    pub as_of_ms: i64,
    /// Statuses of the named tenants, or of those whose level changed.
    pub statuses: Vec<pb::TenantStatus>,
    /// The fleet's status, when the fleet was evaluated.
    pub fleet: Option<pb::FleetStatus>,
    /// Transitions, in order.
    pub alerts: Vec<pb::Alert>,
    /// Tenants evaluated.
    pub tenants_evaluated: u64,
    /// Tenants skipped because the meter's figures lacked something.
    pub tenants_skipped: u64,
}

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// The meter did not answer (or refused).
    #[error("meter: {0}")]
    Meter(Status),
    /// Redis.
    #[error(transparent)]
    State(#[from] StateError),
    /// A store of the pass's inputs failed.
    #[error("{0}")]
    Inputs(Status),
    /// A committed evaluation needs shards another replica holds.
    #[error("shard {0} is evaluated by another replica")]
    NotOwner(u32),
    /// as_of is not after the last committed evaluation.
    #[error("as_of must be after the last committed evaluation ({0} ms)")]
    NotForward(i64),
}

impl From<PassError> for Status {
    fn from(error: PassError) -> Self {
        match error {
            PassError::Meter(status) => {
                if status.code() == tonic::Code::OutOfRange {
                    status
                } else {
                    tenantmeter_runtime::error::unavailable("meter", Duration::from_secs(1))
                }
            }
            PassError::State(StateError::Corrupt(why)) => Status::internal(why),
            PassError::State(StateError::Redis(_) | StateError::Timeout(_)) => {
                tenantmeter_runtime::error::unavailable("redis", Duration::from_secs(1))
            }
            PassError::State(lost @ (StateError::LeaseLost(_) | StateError::FleetLeaseLost)) => {
                tracing::warn!(error = %lost, "pass stopped: another replica took the lease");
                tenantmeter_runtime::error::failed_precondition(
                    "tenantmeter.alerting",
                    "SHARD_HELD_ELSEWHERE",
                    lost.to_string(),
                )
            }
            PassError::Inputs(status) => status,
            not_owner @ PassError::NotOwner(_) => tenantmeter_runtime::error::failed_precondition(
                "tenantmeter.alerting",
                "SHARD_HELD_ELSEWHERE",
                not_owner.to_string(),
            ),
            not_forward @ PassError::NotForward(_) => {
                tenantmeter_runtime::error::failed_precondition(
                    "tenantmeter.alerting",
                    "EVALUATION_NOT_FORWARD",
                    not_forward.to_string(),
                )
            }
        }
    }
}

/// How a pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassMode {
    /// Store, notify, apply (scheduled passes, Evaluate with commit).
    Commit,
    /// Compute only (Evaluate without commit).
    WhatIf,
}

/// The evaluation engine of one replica.
#[derive(Debug)]
pub struct Engine {
    config: AlertingConfig,
    clock: Arc<dyn Clock>,
    token: String,
    state: StateStore,
    budgets: BudgetStore,
    alerts: AlertStore,
    queue: SinkQueue,
    meter: MeterServiceClient<TracedChannel>,
    prices: PriceBookFollower,
    shards: Mutex<BTreeMap<u32, ShardMemory>>,
    fleet: Mutex<Option<FleetMemory>>,
    /// Serializes passes (scheduled and on demand).
    pass_lock: Mutex<()>,
}

/// The stores and clients the engine works with.
#[derive(Debug, Clone)]
pub struct EngineParts {
    /// Level state.
    pub state: StateStore,
    /// Budgets.
    pub budgets: BudgetStore,
    /// Alert history, silences, shadow mode.
    pub alerts: AlertStore,
    /// Notification queue.
    pub queue: SinkQueue,
    /// The meter.
    pub meter: MeterServiceClient<TracedChannel>,
    /// Plans and assignments.
    pub prices: PriceBookFollower,
}

fn random_token() -> String {
    let mut bytes = [0u8; 16];
    // A lease token only has to differ between replicas; with no OS
    // randomness the process id and start instant still tell them apart.
    if getrandom::fill(&mut bytes).is_err() {
        let fallback = format!("{}-{:?}", std::process::id(), Instant::now());
        return fallback;
    }
    hex::encode(bytes)
}

impl Engine {
    /// An engine; `clock` is the one every evaluation instant comes from.
    pub fn new(config: AlertingConfig, clock: Arc<dyn Clock>, parts: EngineParts) -> Self {
        Self {
            config,
            clock,
            token: random_token(),
            state: parts.state,
            budgets: parts.budgets,
            alerts: parts.alerts,
            queue: parts.queue,
            meter: parts.meter,
            prices: parts.prices,
            shards: Mutex::new(BTreeMap::new()),
            fleet: Mutex::new(None),
            pass_lock: Mutex::new(()),
        }
    }

    /// The state store.
    pub fn state(&self) -> &StateStore {
        &self.state
    }

    /// The configuration.
    pub fn config(&self) -> &AlertingConfig {
        &self.config
    }

    /// Now, from the injected clock, Unix ms.
    pub fn now_ms(&self) -> i64 {
        tenantmeter_runtime::clock::unix_ms(self.clock.now())
    }

    /// Runs scheduled passes every `interval` until `shutdown`; then gives
    /// the leases up so another replica takes over at once.
    pub async fn run(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let interval = self.config.interval;
        if interval.is_zero() {
            // Passes come only from Evaluate, which takes leases too: give
            // them up at shutdown all the same, so a successor need not wait
            // for them to lapse.
            shutdown.cancelled().await;
            self.release_all().await;
            return;
        }
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let as_of = self.now_ms();
            let started = Instant::now();
            match self.scheduled_pass(as_of).await {
                Ok(outcome) => tracing::debug!(
                    tenants = outcome.tenants_evaluated,
                    alerts = outcome.alerts.len(),
                    elapsed_ms = started.elapsed().as_millis(),
                    "evaluation pass"
                ),
                Err(error) => {
                    tracing::warn!(%error, "evaluation pass failed; retried next interval")
                }
            }
            if started.elapsed() > interval {
                tracing::warn!(
                    elapsed_ms = started.elapsed().as_millis(),
                    interval_ms = interval.as_millis(),
                    "evaluation pass took longer than the interval"
                );
            }
        }
        self.release_all().await;
    }

    async fn release_all(&self) {
        let held: Vec<u32> = self.shards.lock().await.keys().copied().collect();
        for shard in held {
            if let Err(error) = self.state.release(Some(shard), &self.token).await {
                tracing::warn!(%error, shard, "could not give up the shard lease");
            }
        }
        if self.fleet.lock().await.is_some()
            && let Err(error) = self.state.release(None, &self.token).await
        {
            tracing::warn!(%error, "could not give up the fleet lease");
        }
    }

    /// Takes or renews the leases; loads newly taken shards, forgets lost ones.
    async fn renew_leases(&self) -> Result<(), PassError> {
        let ttl = self.config.lease_ttl;
        let mut taken = Vec::new();
        for shard in 0..self.config.shards {
            let held = self.state.lease_shard(shard, &self.token, ttl).await?;
            let mut shards = self.shards.lock().await;
            match (held, shards.contains_key(&shard)) {
                (true, false) => taken.push(shard),
                (false, true) => {
                    tracing::info!(shard, "lost the shard's lease to another replica");
                    shards.remove(&shard);
                }
                (true, true) | (false, false) => {}
            }
        }
        // Shards taken over are loaded together: a replica taking a large
        // fleet over reads every tenant's state and baseline once.
        let loads = futures::future::join_all(
            taken
                .iter()
                .map(|&shard| async move { (shard, self.state.load_shard(shard).await) }),
        )
        .await;
        for (shard, snapshot) in loads {
            let snapshot = snapshot?;
            tracing::info!(
                shard,
                tenants = snapshot.records.len(),
                "took the shard's lease"
            );
            self.shards
                .lock()
                .await
                .insert(shard, ShardMemory::from(snapshot));
        }
        let held = self.state.lease_fleet(&self.token, ttl).await?;
        let mut fleet = self.fleet.lock().await;
        match (held, fleet.is_some()) {
            (true, false) => {
                let snapshot = self.state.load_fleet().await?;
                *fleet = Some(FleetMemory {
                    last_as_of: snapshot.record.level.evaluated_at_ms,
                    record: snapshot.record,
                    baseline: snapshot.baseline,
                    status: snapshot.status,
                    outbox: Vec::new(),
                });
                tracing::info!("took the fleet's lease");
            }
            (false, true) => {
                *fleet = None;
                tracing::info!("lost the fleet's lease to another replica");
            }
            (true, true) | (false, false) => {}
        }
        Ok(())
    }

    async fn inputs(&self, as_of_ms: i64) -> Result<PassInputs, PassError> {
        let budgets = self
            .budgets
            .all()
            .await
            .map_err(|e| PassError::Inputs(e.into()))?;
        let silences = self
            .alerts
            .silences(as_of_ms)
            .await
            .map_err(|e| PassError::Inputs(e.into()))?;
        let shadow = self
            .alerts
            .shadow_config()
            .await
            .map_err(|e| PassError::Inputs(e.into()))?;
        let fleet_caps = match self.fleet.lock().await.as_ref() {
            Some(memory) => memory.record.caps.iter().cloned().collect(),
            None => self
                .state
                .load_fleet()
                .await?
                .record
                .caps
                .into_iter()
                .collect(),
        };
        Ok(PassInputs {
            budgets,
            silences,
            shadow,
            book: self.prices.current(),
            fleet_caps,
        })
    }

    /// A scheduled pass at `as_of_ms` over the shards this replica holds.
    ///
    /// # Errors
    /// The meter or Redis failed; the pass is retried at the next interval.
    pub async fn scheduled_pass(&self, as_of_ms: i64) -> Result<PassOutcome, PassError> {
        let _pass = self.pass_lock.lock().await;
        self.renew_leases().await?;
        let span = tracing::info_span!("alerting.pass", as_of_ms, mode = "scheduled");
        self.pass(as_of_ms, PassMode::Commit, None)
            .instrument(span)
            .await
    }

    /// An on-demand pass (`Evaluate`).
    ///
    /// # Errors
    /// [`PassError::NotOwner`] when committing needs a shard held by another
    /// replica; [`PassError::NotForward`] when committing at or before the
    /// last committed pass; the meter or Redis failed.
    pub async fn evaluate(
        &self,
        as_of_ms: i64,
        mode: PassMode,
        tenants: Option<Vec<TenantId>>,
    ) -> Result<PassOutcome, PassError> {
        let _pass = self.pass_lock.lock().await;
        if mode == PassMode::Commit {
            self.renew_leases().await?;
            let shards = self.shards.lock().await;
            let wanted: Vec<u32> = match &tenants {
                Some(list) => list.iter().map(|t| t.shard(self.config.shards)).collect(),
                None => (0..self.config.shards).collect(),
            };
            for shard in wanted {
                let memory = shards.get(&shard).ok_or(PassError::NotOwner(shard))?;
                if let Some(last) = memory.last_as_of
                    && as_of_ms <= last
                {
                    return Err(PassError::NotForward(last));
                }
            }
        }
        let span = tracing::info_span!("alerting.pass", as_of_ms, mode = ?mode);
        self.pass(as_of_ms, mode, tenants).instrument(span).await
    }

    async fn pass(
        &self,
        as_of_ms: i64,
        mode: PassMode,
        tenants: Option<Vec<TenantId>>,
    ) -> Result<PassOutcome, PassError> {
        let inputs = self.inputs(as_of_ms).await?;
        let mut outcome = PassOutcome {
            as_of_ms,
            ..PassOutcome::default()
        };
        let named: Option<HashMap<u32, Vec<TenantId>>> = tenants.map(|list| {
            let mut by_shard: HashMap<u32, Vec<TenantId>> = HashMap::new();
            for tenant in list {
                by_shard
                    .entry(tenant.shard(self.config.shards))
                    .or_default()
                    .push(tenant);
            }
            by_shard
        });
        let shards: Vec<u32> = match (&named, mode) {
            (Some(by_shard), _) => {
                let mut list: Vec<u32> = by_shard.keys().copied().collect();
                list.sort_unstable();
                list
            }
            // Levels only move forward in time: a scheduled pass at an
            // instant a shard was already evaluated at (a clock that has not
            // moved) leaves the shard alone.
            (None, PassMode::Commit) => self
                .shards
                .lock()
                .await
                .iter()
                .filter(|(_, memory)| memory.last_as_of.is_none_or(|last| as_of_ms > last))
                .map(|(shard, _)| *shard)
                .collect(),
            (None, PassMode::WhatIf) => (0..self.config.shards).collect(),
        };
        // Shards are independent (own keys, own lease, own memory): evaluate
        // them concurrently, so the meter's listing of one overlaps the
        // evaluation and commits of another. Outcomes merge in shard order.
        let parts = futures::future::join_all(shards.iter().map(|&shard| {
            let only = named.as_ref().and_then(|n| n.get(&shard));
            let inputs = &inputs;
            async move {
                let mut part = PassOutcome::default();
                self.shard_pass(shard, as_of_ms, mode, only, inputs, &mut part)
                    .await
                    .map(|()| part)
            }
        }))
        .await;
        for part in parts {
            let part = part?;
            outcome.statuses.extend(part.statuses);
            outcome.alerts.extend(part.alerts);
            outcome.tenants_evaluated += part.tenants_evaluated;
            outcome.tenants_skipped += part.tenants_skipped;
        }
        if named.is_none() {
            outcome.fleet = self
                .fleet_pass(as_of_ms, mode, &inputs, &mut outcome)
                .await?;
        }
        Ok(outcome)
    }

    async fn shard_pass(
        &self,
        shard: u32,
        as_of_ms: i64,
        mode: PassMode,
        only: Option<&Vec<TenantId>>,
        inputs: &PassInputs,
        outcome: &mut PassOutcome,
    ) -> Result<(), PassError> {
        // The shard's state: ours in memory, or (what-if on a shard held
        // elsewhere) as stored.
        // A pass takes the shard's state out of the map and puts it back
        // when done (no copy of every baseline per pass: a what-if over
        // 100,000 tenants copied ~400 MB); passes are serialized, so no other
        // pass looks for it meanwhile. If the pass fails the state stays out,
        // and the next lease renewal reloads it from Redis, which has exactly
        // what was committed. A what-if changes nothing in it.
        let held = self.shards.lock().await.remove(&shard);
        let ours = held.is_some();
        let mut memory = match held {
            Some(memory) => memory,
            None => ShardMemory::from(self.state.load_shard(shard).await?),
        };
        if mode == PassMode::Commit {
            self.flush_outbox(shard, &mut memory).await;
        }
        let mut summary = ShardSummary {
            as_of_ms,
            ..ShardSummary::default()
        };
        let mut page_token = String::new();
        loop {
            let request = pb::ListTenantUsageRequest {
                page_size: i32::try_from(self.config.page_size).unwrap_or(1_000),
                page_token: page_token.clone(),
                include_models: false,
                shard_count: i32::try_from(self.config.shards).unwrap_or(1),
                shard_index: i32::try_from(shard).unwrap_or(0),
                as_of: Some(ms_to_timestamp(as_of_ms)),
                // The rate is the five-minute window's; the others would be
                // read and summed for every tenant for nothing.
                windows: vec![pb::UsageWindow::FiveMinutes.into()],
            };
            let mut meter = self.meter.clone();
            let mut call = tonic::Request::new(request);
            call.set_timeout(self.config.meter_timeout);
            let page = meter
                .list_tenant_usage(call)
                .await
                .map_err(PassError::Meter)?
                .into_inner();
            let mut steps: Vec<(TenantId, TenantStep)> = Vec::with_capacity(page.tenants.len());
            for usage in &page.tenants {
                let Ok(tenant) = TenantId::parse(usage.tenant_id.as_str()) else {
                    continue;
                };
                if only.is_some_and(|list| !list.contains(&tenant)) {
                    continue;
                }
                let record = memory.records.get(&tenant).cloned().unwrap_or_default();
                let empty = Baseline::new();
                let baseline = memory.baselines.get(&tenant).unwrap_or(&empty);
                match step::step_tenant(
                    usage,
                    &tenant,
                    &record,
                    baseline,
                    memory.policies.get(&tenant),
                    inputs,
                    &self.config.levels,
                    &self.config.throttle,
                ) {
                    Ok(step) => steps.push((tenant, step)),
                    Err(error) => {
                        outcome.tenants_skipped += 1;
                        tracing::warn!(tenant = %tenant, %error, "tenant not evaluated");
                    }
                }
            }
            for (_, step) in &steps {
                add_to_summary(&mut summary, step);
            }
            outcome.tenants_evaluated += u64::try_from(steps.len()).unwrap_or(u64::MAX);
            if mode == PassMode::Commit {
                self.commit_page(shard, &mut memory, &mut steps).await?;
            }
            for (tenant, step) in steps {
                if let Some(alert) = &step.alert {
                    tracing::info!(
                        tenant = %tenant,
                        from = step.evaluation.previous_level.as_str(),
                        to = step.evaluation.level.as_str(),
                        reason = step.evaluation.reasons.first().map_or("", |r| r.message.as_str()),
                        shadow = alert.shadow,
                        "level transition"
                    );
                    outcome.alerts.push(alert.clone());
                }
                if only.is_some() || step.evaluation.transition {
                    outcome.statuses.push(step.status);
                }
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        step::sort_top(&mut summary.top);
        if mode == PassMode::Commit {
            memory.last_as_of = Some(as_of_ms);
            if only.is_none() {
                self.state.put_summary(shard, &summary).await?;
            }
            self.flush_outbox(shard, &mut memory).await;
            self.shards.lock().await.insert(shard, memory);
        } else if ours {
            self.shards.lock().await.insert(shard, memory);
        }
        Ok(())
    }

    /// Applies the page's policies, then commits the page (fenced), then
    /// keeps it in memory.
    async fn commit_page(
        &self,
        shard: u32,
        memory: &mut ShardMemory,
        steps: &mut [(TenantId, TenantStep)],
    ) -> Result<(), PassError> {
        let policies: Vec<pb::TenantPolicy> = steps
            .iter()
            .filter_map(|(_, step)| step.policy.clone())
            .collect();
        let applied = self.apply_policies(policies).await;
        let commits: Vec<TenantCommit> = steps
            .iter()
            .map(|(tenant, step)| {
                let level = step.status.level;
                let old = memory.levels.get(tenant).copied();
                TenantCommit {
                    tenant: tenant.clone(),
                    record: step.record.clone(),
                    baseline: step.baseline.clone().map(|learned| {
                        let stored = memory
                            .baselines
                            .get(tenant)
                            .filter(|_| !memory.older_form.contains(tenant));
                        BaselineWrite::new(stored, learned)
                    }),
                    status: step.status.clone(),
                    index_move: (old != Some(level)).then(|| IndexMove {
                        from: old.map(|old| rank_member(old, tenant.as_str())),
                        to: rank_member(level, tenant.as_str()),
                    }),
                    policy: step
                        .policy
                        .clone()
                        .filter(|_| applied.contains(tenant.as_str())),
                    alert: step.alert.clone(),
                }
            })
            .collect();
        // A pass over a large shard can outlast the lease: renew it before
        // each write, so a long pass keeps its shard instead of losing it
        // halfway (the commit script still fences a replica that lost it).
        if !self
            .state
            .lease_shard(shard, &self.token, self.config.lease_ttl)
            .await?
        {
            return Err(StateError::LeaseLost(shard).into());
        }
        for chunk in commits.chunks(500) {
            self.state.commit_shard(shard, &self.token, chunk).await?;
        }
        for commit in commits {
            let tenant = commit.tenant;
            memory.levels.insert(tenant.clone(), commit.status.level);
            if let Some(write) = commit.baseline {
                memory.older_form.remove(&tenant);
                memory.baselines.insert(tenant.clone(), write.baseline);
            }
            if let Some(policy) = commit.policy {
                memory.policies.insert(tenant.clone(), policy);
            }
            if let Some(alert) = commit.alert {
                memory.outbox.push(alert);
            }
            memory.records.insert(tenant, commit.record);
        }
        Ok(())
    }

    /// Sends policies to the meter; returns the tenants whose policy is
    /// stored there now (applied, or already superseded by a later one).
    async fn apply_policies(&self, policies: Vec<pb::TenantPolicy>) -> HashSet<String> {
        let mut stored = HashSet::new();
        for chunk in policies.chunks(1_000) {
            let mut meter = self.meter.clone();
            let mut call = tonic::Request::new(pb::ApplyPoliciesRequest {
                policies: chunk.to_vec(),
            });
            call.set_timeout(self.config.meter_timeout);
            match meter.apply_policies(call).await {
                Ok(response) => {
                    for result in response.into_inner().results {
                        match pb::PolicyResultStatus::try_from(result.status) {
                            Ok(pb::PolicyResultStatus::Applied | pb::PolicyResultStatus::Stale) => {
                                stored.insert(result.tenant_id);
                            }
                            Ok(
                                pb::PolicyResultStatus::Rejected
                                | pb::PolicyResultStatus::Unspecified,
                            )
                            | Err(_) => tracing::error!(
                                tenant = result.tenant_id,
                                message = result.message,
                                "the meter rejected a policy"
                            ),
                        }
                    }
                }
                Err(status) => tracing::warn!(
                    %status,
                    policies = chunk.len(),
                    "could not apply policies; retried next pass"
                ),
            }
        }
        stored
    }

    /// Hands committed alerts to the history and the notification queue,
    /// then clears them from the outbox. On failure they stay for the next
    /// pass; both steps are idempotent by alert id.
    async fn flush_outbox(&self, shard: u32, memory: &mut ShardMemory) {
        if memory.outbox.is_empty() {
            return;
        }
        match self.hand_over(&memory.outbox).await {
            Ok(()) => {
                let ids: Vec<String> = memory.outbox.iter().map(|a| a.alert_id.clone()).collect();
                match self.state.clear_outbox(shard, &ids).await {
                    Ok(()) => memory.outbox.clear(),
                    Err(error) => tracing::warn!(%error, shard, "could not clear the outbox"),
                }
            }
            Err(status) => {
                tracing::warn!(%status, shard, "could not hand alerts over; retried next pass")
            }
        }
    }

    async fn hand_over(&self, alerts: &[pb::Alert]) -> Result<(), Status> {
        self.alerts.insert(alerts).await?;
        // Silenced alerts too: the queue records them SUPPRESSED per
        // matching sink without sending, so the alert says who was spared.
        self.queue.enqueue_all(alerts).await?;
        Ok(())
    }

    async fn fleet_pass(
        &self,
        as_of_ms: i64,
        mode: PassMode,
        inputs: &PassInputs,
        outcome: &mut PassOutcome,
    ) -> Result<Option<pb::FleetStatus>, PassError> {
        let mut memory = match (self.fleet.lock().await.clone(), mode) {
            (Some(memory), PassMode::Commit)
                if memory.last_as_of.is_some_and(|last| as_of_ms <= last) =>
            {
                return Ok(memory.status);
            }
            (Some(memory), _) => memory,
            (None, PassMode::Commit) => return Ok(None),
            (None, PassMode::WhatIf) => {
                let snapshot = self.state.load_fleet().await?;
                FleetMemory {
                    record: snapshot.record,
                    baseline: snapshot.baseline,
                    status: snapshot.status,
                    outbox: Vec::new(),
                    last_as_of: None,
                }
            }
        };
        let summaries = self.state.summaries().await?;
        let total = step::sum_summaries(summaries.values());
        let fleet = step::step_fleet(
            &total,
            as_of_ms,
            &memory.record,
            &memory.baseline,
            inputs,
            &self.config.levels,
            &self.config.throttle,
        )
        .map_err(|e| PassError::Inputs(Status::internal(e.to_string())))?;
        if let Some(alert) = &fleet.alert {
            let name = |level: i32| {
                crate::status::level_from_proto(level).map_or("unspecified", Level::as_str)
            };
            tracing::info!(
                from = name(fleet.status.previous_level),
                to = name(fleet.status.level),
                reason = fleet
                    .status
                    .reasons
                    .first()
                    .map_or("", |r| r.message.as_str()),
                shadow = alert.shadow,
                "fleet level transition"
            );
            outcome.alerts.push(alert.clone());
        }
        if mode == PassMode::Commit {
            if !self
                .state
                .lease_fleet(&self.token, self.config.lease_ttl)
                .await?
            {
                return Err(StateError::FleetLeaseLost.into());
            }
            self.state
                .commit_fleet(
                    &self.token,
                    &fleet.record,
                    fleet.baseline.as_ref(),
                    &fleet.status,
                )
                .await?;
            memory.record = fleet.record;
            if let Some(baseline) = fleet.baseline {
                memory.baseline = baseline;
            }
            memory.status = Some(fleet.status.clone());
            memory.last_as_of = Some(as_of_ms);
            memory.outbox.extend(fleet.alert);
            if !memory.outbox.is_empty() {
                match self.hand_over(&memory.outbox).await {
                    Ok(()) => memory.outbox.clear(),
                    Err(status) => tracing::warn!(%status, "could not hand the fleet alert over"),
                }
            }
            *self.fleet.lock().await = Some(memory);
        }
        Ok(Some(fleet.status))
    }
}

fn add_to_summary(summary: &mut ShardSummary, step: &TenantStep) {
    summary.active += 1;
    if step.evaluation.above_baseline {
        summary.above_baseline += 1;
    }
    let index = match step.evaluation.level {
        Level::Green => 0,
        Level::Yellow => 1,
        Level::Orange => 2,
        Level::Red => 3,
    };
    if let Some(count) = summary.by_level.get_mut(index) {
        *count += 1;
    }
    let [cost_5m, tokens_5m, month_cost, month_charge, day_cost] = step.figures;
    summary.cost_5m_nanos = summary.cost_5m_nanos.saturating_add(cost_5m);
    summary.tokens_5m = summary.tokens_5m.saturating_add(tokens_5m);
    summary.month_cost_nanos = summary.month_cost_nanos.saturating_add(month_cost);
    summary.month_charge_nanos = summary.month_charge_nanos.saturating_add(month_charge);
    summary.day_cost_nanos = summary.day_cost_nanos.saturating_add(day_cost);
    if let Some(rate) = &step.evaluation.rate {
        summary.baseline_sum_nanos_per_hour = summary
            .baseline_sum_nanos_per_hour
            .saturating_add(rate.baseline.mean_nanos_per_hour);
    }
    if step.contribution.rate_nanos_per_hour > 0 {
        summary.top.push(ContributorSummary {
            contribution: step.contribution.clone(),
            level: level_to_proto(step.evaluation.level).into(),
        });
        // Keep the list short while scanning a large shard.
        if summary.top.len() > 200 {
            step::sort_top(&mut summary.top);
        }
    }
}
