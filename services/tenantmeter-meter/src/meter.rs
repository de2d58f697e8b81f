//! The meter's behaviour, independent of gRPC plumbing: each method takes a
//! contract request and returns a contract response or a [`MeterError`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use tenantmeter_domain::ids::{ModelId, TenantId};
use tenantmeter_domain::money::{ATTOS_PER_NANO, AttoUsd, round_half_even};
use tenantmeter_domain::pricebook::PriceBook;
use tenantmeter_domain::ratecard::Plan;
use tenantmeter_domain::window::{CalendarPeriod, DAY_MS, HOUR_MS, Window};
use tenantmeter_pricing::follower::PriceBookFollower;
use tenantmeter_proto::v1 as pb;
use tenantmeter_runtime::clock::Clock;
use tenantmeter_runtime::shutdown::TaskTracker;

use crate::active_index::{IndexSnapshots, resume_at};
use crate::config::{FailMode, MeterConfig};
use crate::error::MeterError;
use crate::events::{self, ATTOS_PER_PICO, Acceptance, PricedEvent, ms_timestamp, timestamp_ms};
use crate::store::{
    Figures, HistoryPeriod, MeterStore, ReserveArgs, Rollup, StoreError, UsageSnapshot,
};

/// Most events per RecordUsage and policies per ApplyPolicies.
pub const MAX_BATCH: usize = 1_000;
/// Most events of one tenant counted by one script call (see `record_usage`).
const RECORD_CHUNK: usize = 32;
/// Most buckets one history request may return.
pub const MAX_HISTORY_BUCKETS: i64 = 10_000;

/// Counters an SRE reads to see Reserve falling back.
#[derive(Debug, Default)]
pub struct MeterStats {
    /// Reserve calls admitted without checking because Redis was slow or down.
    pub reserve_fail_open: AtomicU64,
    /// Reserve calls denied because Redis was slow or down.
    pub reserve_fail_closed: AtomicU64,
}

/// The meter.
#[derive(Debug)]
pub struct Meter {
    store: MeterStore,
    /// Background clean-ups, waited for at shutdown.
    tasks: TaskTracker,
    prices: PriceBookFollower,
    clock: Arc<dyn Clock>,
    config: MeterConfig,
    /// Fallback counters.
    pub stats: MeterStats,
    /// The active index as listings' first pages read it.
    index: IndexSnapshots,
}

fn now_ms(clock: &dyn Clock) -> i64 {
    clock
        .now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn pb_duration(ms: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// Nano-USD of an amount in pico-USD, half to even.
fn pico_to_nanos(pico: i128) -> i64 {
    i64::try_from(round_half_even(pico, 1_000)).unwrap_or(i64::MAX)
}

fn level(number: i32) -> pb::Level {
    pb::Level::try_from(number).unwrap_or(pb::Level::Unspecified)
}

fn tenant(id: &str, field: &str) -> Result<TenantId, MeterError> {
    TenantId::parse(id).map_err(|e| MeterError::invalid(field, e))
}

fn model(id: &str, field: &str) -> Result<ModelId, MeterError> {
    ModelId::parse(id).map_err(|e| MeterError::invalid(field, e))
}

fn figures(f: &Figures) -> pb::UsageFigures {
    let count = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    pb::UsageFigures {
        requests: count(f.requests),
        tokens: Some(pb::TokenUsage {
            input_tokens: count(f.tokens.input),
            output_tokens: count(f.tokens.output),
            cache_read_input_tokens: count(f.tokens.cache_read),
            cache_write_input_tokens: count(f.tokens.cache_write),
        }),
        provider_cost_nanos_usd: pico_to_nanos(f.cost_pico),
    }
}

/// The windows a ListTenantUsage asks for; none named means all.
fn requested_windows(values: &[i32]) -> Result<Vec<Window>, MeterError> {
    if values.is_empty() {
        return Ok(Window::ALL.to_vec());
    }
    values
        .iter()
        .enumerate()
        .map(|(i, value)| match pb::UsageWindow::try_from(*value) {
            Ok(pb::UsageWindow::OneMinute) => Ok(Window::OneMinute),
            Ok(pb::UsageWindow::FiveMinutes) => Ok(Window::FiveMinutes),
            Ok(pb::UsageWindow::OneHour) => Ok(Window::OneHour),
            Ok(pb::UsageWindow::OneDay) => Ok(Window::OneDay),
            Ok(pb::UsageWindow::Unspecified) | Err(_) => Err(MeterError::invalid(
                format!("windows[{i}]"),
                format!("{value} is not a window"),
            )),
        })
        .collect()
}

fn window_usage(all: &[Figures]) -> Vec<pb::WindowUsage> {
    Window::ALL
        .iter()
        .zip(all)
        .map(|(window, f)| pb::WindowUsage {
            window: match window {
                Window::OneMinute => pb::UsageWindow::OneMinute,
                Window::FiveMinutes => pb::UsageWindow::FiveMinutes,
                Window::OneHour => pb::UsageWindow::OneHour,
                Window::OneDay => pb::UsageWindow::OneDay,
            }
            .into(),
            figures: Some(figures(f)),
        })
        .collect()
}

/// The charge (nano-USD) a plan puts on a period's rated value held in pico-USD.
fn charge_of(plan: &Plan, rated_pico: i128) -> Option<i64> {
    let value = AttoUsd(rated_pico.checked_mul(ATTOS_PER_PICO)?);
    plan.period_charge_nanos(value)
        .and_then(|n| i64::try_from(n).ok())
}

fn period_usage(
    period: CalendarPeriod,
    now_ms: i64,
    figures_of: &Figures,
    charge: Option<i64>,
) -> pb::PeriodUsage {
    let (start, end) = period.bounds(now_ms);
    pb::PeriodUsage {
        period: match period {
            CalendarPeriod::Day => pb::CalendarPeriod::Day,
            CalendarPeriod::Month => pb::CalendarPeriod::Month,
        }
        .into(),
        period_start: Some(ms_timestamp(start)),
        period_end: Some(ms_timestamp(end)),
        figures: Some(figures(figures_of)),
        tenant_charge_nanos_usd: charge,
    }
}

impl Meter {
    /// A meter over `store`, pricing with `prices`, on `clock`.
    pub fn new(
        tasks: TaskTracker,
        store: MeterStore,
        prices: PriceBookFollower,
        clock: Arc<dyn Clock>,
        config: MeterConfig,
    ) -> Self {
        Self {
            tasks,
            store,
            prices,
            clock,
            config,
            stats: MeterStats::default(),
            index: IndexSnapshots::default(),
        }
    }

    /// Runs one Redis call under `redis_timeout`: past it the caller gets
    /// UNAVAILABLE (the call may still take effect; every write is idempotent).
    async fn within<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.config.redis_timeout, call)
            .await
            .map_err(|_| StoreError::Timeout(self.config.redis_timeout))?
    }

    fn book(&self) -> Result<Arc<PriceBook>, MeterError> {
        self.prices.current().ok_or(MeterError::NoPriceBook)
    }

    fn acceptance(&self) -> Acceptance {
        Acceptance {
            now_ms: now_ms(self.clock.as_ref()),
            lateness_ms: duration_ms(self.config.allowed_lateness),
            skew_ms: duration_ms(self.config.allowed_skew),
        }
    }

    /// Records a batch: script calls per tenant (at most 32 events each), all at once.
    pub async fn record_usage(
        &self,
        request: pb::RecordUsageRequest,
    ) -> Result<pb::RecordUsageResponse, MeterError> {
        if request.events.len() > MAX_BATCH {
            return Err(MeterError::invalid(
                "events",
                format!(
                    "has {} events; at most {MAX_BATCH} per batch",
                    request.events.len()
                ),
            ));
        }
        let book = self.book()?;
        let acceptance = self.acceptance();
        let mut results: Vec<pb::UsageEventResult> = request
            .events
            .iter()
            .map(|e| pb::UsageEventResult {
                event_id: e.event_id.clone(),
                ..Default::default()
            })
            .collect();
        // Group by tenant, keeping each event's position; a repeated id within
        // the batch is counted once like any replay.
        let mut by_tenant: BTreeMap<TenantId, Vec<(usize, PricedEvent)>> = BTreeMap::new();
        for (index, event) in request.events.iter().enumerate() {
            match events::price_event(event, &book, acceptance) {
                Ok(priced) => by_tenant
                    .entry(priced.tenant.clone())
                    .or_default()
                    .push((index, priced)),
                Err(rejection) => {
                    let result = &mut results[index];
                    result.status = pb::UsageEventStatus::Rejected.into();
                    result.reject_reason = rejection.reason.into();
                    result.field = rejection.field;
                    result.message = rejection.message;
                }
            }
        }
        // A tenant's events go in script calls of at most RECORD_CHUNK: one
        // call of hundreds of events would hold Redis for a few hundred ms,
        // and every Reserve queued behind it would time out and fail open.
        // The calls share the multiplexed connection, so they still travel
        // together.
        let now = now_ms(self.clock.as_ref());
        let calls = by_tenant.iter().flat_map(|(tenant, events)| {
            events.chunks(RECORD_CHUNK).map(move |chunk| async move {
                let stored: Vec<_> = chunk.iter().map(|(_, e)| e.stored.clone()).collect();
                (chunk, self.store.record(tenant, &stored, now).await)
            })
        });
        let active: Vec<(&TenantId, i64)> = by_tenant
            .iter()
            .filter_map(|(tenant, events)| {
                events
                    .iter()
                    .map(|(_, e)| e.stored.time_ms)
                    .max()
                    .map(|t| (tenant, t))
            })
            .collect();
        // Both under redis_timeout, like every other write: without it a
        // Redis that accepts connections but never answers held the call for
        // the connection's connect timeout, retry and reply timeout on top.
        let deadline = self.config.redis_timeout;
        let (outcomes, touched) = tokio::join!(
            tokio::time::timeout(deadline, futures::future::join_all(calls)),
            tokio::time::timeout(deadline, async {
                if active.is_empty() {
                    Ok(())
                } else {
                    self.store.touch_active(&active).await
                }
            })
        );
        let outcomes = outcomes.map_err(|_| StoreError::Timeout(deadline))?;
        let touched = touched.unwrap_or_else(|_| Err(StoreError::Timeout(deadline)));
        if let Err(error) = touched {
            tracing::warn!(%error, "could not update the active-tenant index");
        }
        let mut failure = None;
        for (chunk, outcome) in outcomes {
            match outcome {
                Ok(counted) => {
                    for ((index, priced), counted) in chunk.iter().zip(counted) {
                        let result = &mut results[*index];
                        if counted {
                            result.status = pb::UsageEventStatus::Accepted.into();
                            result.provider_cost_nanos_usd = pico_to_nanos(priced.stored.cost_pico);
                        } else {
                            result.status = pb::UsageEventStatus::Duplicate.into();
                        }
                    }
                }
                Err(error) => failure = Some(error),
            }
        }
        // Some tenants' events may be counted: the caller retries the whole
        // batch, and those come back as duplicates.
        if let Some(error) = failure {
            return Err(error.into());
        }
        let count = |status: pb::UsageEventStatus| {
            i32::try_from(
                results
                    .iter()
                    .filter(|r| r.status == i32::from(status))
                    .count(),
            )
            .unwrap_or(i32::MAX)
        };
        Ok(pb::RecordUsageResponse {
            accepted: count(pb::UsageEventStatus::Accepted),
            duplicates: count(pb::UsageEventStatus::Duplicate),
            rejected: count(pb::UsageEventStatus::Rejected),
            results,
        })
    }

    /// Admits or denies one request.
    pub async fn reserve(
        &self,
        request: pb::ReserveRequest,
    ) -> Result<pb::ReserveResponse, MeterError> {
        let tenant = tenant(&request.tenant_id, "tenant_id")?;
        let model = model(&request.model_id, "model_id")?;
        for (field, value) in [
            ("estimated_input_tokens", request.estimated_input_tokens),
            ("max_output_tokens", request.max_output_tokens),
        ] {
            if value < 0 {
                return Err(MeterError::invalid(
                    field,
                    format!("must not be negative (got {value})"),
                ));
            }
        }
        let tokens = u64::try_from(
            request
                .estimated_input_tokens
                .saturating_add(request.max_output_tokens),
        )
        .unwrap_or(0);
        let lease = match &request.lease {
            None => self.config.default_lease,
            Some(lease) if lease.seconds < 0 || lease.nanos < 0 => {
                return Err(MeterError::invalid("lease", "must not be negative"));
            }
            Some(lease) => Duration::new(
                u64::try_from(lease.seconds).unwrap_or(0),
                u32::try_from(lease.nanos).unwrap_or(0),
            )
            .min(self.config.max_lease)
            .max(Duration::from_millis(1)),
        };
        for (index, target) in request.downgrade_targets.iter().enumerate() {
            model_check(target, &format!("downgrade_targets[{index}]"))?;
        }
        let (plan_rpm, plan_tpm, cap) = match self.prices.current() {
            Some(book) => match book.plan_of(&tenant) {
                Some((plan, _)) => (
                    plan.limits.requests_per_minute,
                    plan.limits.tokens_per_minute,
                    month_cap_pico(plan),
                ),
                None => (0, 0, 0),
            },
            None => (0, 0, 0),
        };
        let args = ReserveArgs {
            reservation_id: reservation_id(),
            model: model.to_string(),
            tokens,
            lease,
            plan_rpm,
            plan_tpm,
            plan_month_rated_cap_pico: cap,
            downgrade_targets: request.downgrade_targets.clone(),
            now_override_ms: Some(now_ms(self.clock.as_ref())),
        };
        let reply = match tokio::time::timeout(
            self.config.reserve_timeout,
            self.store.reserve(&tenant, &args),
        )
        .await
        {
            Ok(Ok(reply)) => reply,
            Ok(Err(error)) => return Ok(self.fail(&model, &error.to_string())),
            Err(_) => {
                self.release_in_background(tenant, args.reservation_id);
                return Ok(self.fail(
                    &model,
                    &StoreError::Timeout(self.config.reserve_timeout).to_string(),
                ));
            }
        };
        let denial_of =
            |reason: i32, limit: i128, current: i128, by_policy: bool, retry_ms: i64| {
                let reason =
                    pb::DenyReason::try_from(reason).unwrap_or(pb::DenyReason::Unspecified);
                let (limit, current) = match reason {
                    // Budget figures come back in pico-USD; the contract speaks nano-USD.
                    pb::DenyReason::BudgetExhausted => (
                        i128::from(pico_to_nanos(limit)),
                        i128::from(pico_to_nanos(current)),
                    ),
                    pb::DenyReason::Unspecified
                    | pb::DenyReason::RequestRateLimit
                    | pb::DenyReason::TokenRateLimit
                    | pb::DenyReason::RequestTooLarge
                    | pb::DenyReason::ModelDenied
                    | pb::DenyReason::MeterUnavailable => (limit, current),
                };
                pb::Denial {
                    reason: reason.into(),
                    retry_after: (retry_ms > 0).then(|| pb_duration(retry_ms)),
                    message: denial_message(
                        reason,
                        limit,
                        current,
                        &model,
                        by_policy.then_some(reply.policy_reason.as_str()),
                    ),
                    limit: i64::try_from(limit).unwrap_or(i64::MAX),
                    current: i64::try_from(current).unwrap_or(i64::MAX),
                    by_policy,
                }
            };
        let outcome = if reply.admitted {
            pb::reserve_response::Outcome::Admission(pb::Admission {
                reservation_id: args.reservation_id.clone(),
                lease_expires_at: Some(ms_timestamp(reply.lease_expires_ms)),
                model_id: reply.model.clone(),
                downgraded: reply.downgraded,
                fail_open: false,
                shadow_denial: (reply.shadow_reason != 0).then(|| {
                    denial_of(
                        reply.shadow_reason,
                        reply.shadow_limit,
                        reply.shadow_current,
                        true,
                        reply.shadow_retry_ms,
                    )
                }),
            })
        } else {
            pb::reserve_response::Outcome::Denial(denial_of(
                reply.reason,
                reply.limit,
                reply.current,
                reply.by_policy,
                reply.retry_ms,
            ))
        };
        Ok(pb::ReserveResponse {
            outcome: Some(outcome),
            level: level(reply.level).into(),
        })
    }

    /// A Reserve that timed out may still run in Redis and hold tokens nobody
    /// will settle until its lease ends. The id was chosen here, so release it:
    /// sent after the reserve on the same connection, it runs after it, and a
    /// release of a reservation that never happened changes nothing.
    fn release_in_background(&self, tenant: TenantId, reservation_id: String) {
        let store = self.store.clone();
        let deadline = self.config.redis_timeout;
        let now = now_ms(self.clock.as_ref());
        self.tasks.spawn(async move {
            match tokio::time::timeout(deadline, store.release(&tenant, &reservation_id, Some(now))).await {
                Ok(Ok(true)) => tracing::info!(%tenant, "released a reservation whose Reserve timed out"),
                Ok(Ok(false)) => {}
                Ok(Err(error)) => tracing::warn!(%tenant, %error, "could not release a timed-out reservation; its lease will"),
                Err(_) => tracing::warn!(%tenant, "could not release a timed-out reservation in time; its lease will"),
            }
        });
    }

    /// The configured answer when Redis failed or was too slow.
    fn fail(&self, model: &ModelId, why: &str) -> pb::ReserveResponse {
        let outcome = match self.config.reserve_fail_mode {
            FailMode::Open => {
                self.stats.reserve_fail_open.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(why, "reserve failing open");
                pb::reserve_response::Outcome::Admission(pb::Admission {
                    model_id: model.to_string(),
                    fail_open: true,
                    ..Default::default()
                })
            }
            FailMode::Closed => {
                self.stats
                    .reserve_fail_closed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(why, "reserve failing closed");
                pb::reserve_response::Outcome::Denial(pb::Denial {
                    reason: pb::DenyReason::MeterUnavailable.into(),
                    retry_after: Some(pb_duration(1_000)),
                    message: format!("the meter cannot check limits right now ({why})"),
                    ..Default::default()
                })
            }
        };
        pb::ReserveResponse {
            outcome: Some(outcome),
            level: pb::Level::Unspecified.into(),
        }
    }

    /// Records an admitted request's usage and releases its reservation.
    pub async fn settle(
        &self,
        request: pb::SettleRequest,
    ) -> Result<pb::SettleResponse, MeterError> {
        let Some(event) = request.event.as_ref() else {
            return Err(MeterError::invalid("event", "is required"));
        };
        if !request.reservation_id.is_empty() {
            events::validate_event_id(&request.reservation_id)
                .map_err(|e| MeterError::invalid("reservation_id", e))?;
        }
        let book = self.book()?;
        let priced = events::price_event(event, &book, self.acceptance()).map_err(|rejection| {
            match rejection.reason {
                pb::UsageRejectReason::InvalidField | pb::UsageRejectReason::Unspecified => {
                    MeterError::invalid(
                        format!("event.{}", rejection.field),
                        rejection
                            .message
                            .split_once(": ")
                            .map_or(rejection.message.clone(), |(_, m)| m.to_owned()),
                    )
                }
                reason @ (pb::UsageRejectReason::TooLate
                | pb::UsageRejectReason::InFuture
                | pb::UsageRejectReason::ModelNotPriced) => MeterError::Rejected {
                    reason: reason.as_str_name(),
                    message: rejection.message,
                },
            }
        })?;
        let active = [(&priced.tenant, priced.stored.time_ms)];
        // Both under the deadline: join! waits for both.
        let (reply, touched) = tokio::join!(
            self.within(self.store.settle(
                &priced.tenant,
                &request.reservation_id,
                &priced.stored,
                Some(now_ms(self.clock.as_ref()))
            )),
            self.within(self.store.touch_active(&active))
        );
        if let Err(error) = touched {
            tracing::warn!(%error, "could not update the active-tenant index");
        }
        let reply = reply?;
        let outcome = match (reply.counted, reply.released) {
            (false, _) => pb::SettleOutcome::Duplicate,
            (true, true) => pb::SettleOutcome::Settled,
            (true, false) => pb::SettleOutcome::ReservationExpired,
        };
        let (cost, charge) = if reply.counted {
            let charge = book.plan_of(&priced.tenant).and_then(|(plan, _)| {
                let after = charge_of(plan, reply.month_rated_pico)?;
                let before = charge_of(plan, reply.month_rated_pico - priced.stored.rated_pico)?;
                Some(after - before)
            });
            (
                i64::try_from(round_half_even(priced.cost.0, ATTOS_PER_NANO)).unwrap_or(i64::MAX),
                charge.unwrap_or(0),
            )
        } else {
            (0, 0)
        };
        Ok(pb::SettleResponse {
            outcome: outcome.into(),
            provider_cost_nanos_usd: cost,
            tenant_charge_nanos_usd: charge,
            level: level(reply.level).into(),
        })
    }

    /// Releases a reservation.
    pub async fn release(
        &self,
        request: pb::ReleaseRequest,
    ) -> Result<pb::ReleaseResponse, MeterError> {
        let tenant = tenant(&request.tenant_id, "tenant_id")?;
        events::validate_event_id(&request.reservation_id)
            .map_err(|e| MeterError::invalid("reservation_id", e))?;
        let released = self
            .within(self.store.release(
                &tenant,
                &request.reservation_id,
                Some(now_ms(self.clock.as_ref())),
            ))
            .await?;
        Ok(pb::ReleaseResponse { released })
    }

    fn as_of(&self, requested: Option<&prost_types::Timestamp>) -> Result<i64, MeterError> {
        let now = now_ms(self.clock.as_ref());
        let Some(at) = requested else { return Ok(now) };
        let at = timestamp_ms(at);
        if at < now - DAY_MS || at > now + duration_ms(self.config.allowed_skew) {
            return Err(MeterError::OutOfRange(format!(
                "as_of must be within the last 24 hours (the longest window) and not in the future; it is {} ms from now",
                at - now
            )));
        }
        Ok(at)
    }

    /// One tenant's current figures.
    pub async fn usage(
        &self,
        tenant: &TenantId,
        as_of: i64,
        include_models: bool,
        wanted: &[Window],
    ) -> Result<pb::TenantUsage, MeterError> {
        let snapshot: UsageSnapshot = self
            .within(self.store.usage(tenant, as_of, include_models, wanted))
            .await?;
        Ok(self.usage_proto(tenant, as_of, wanted, &snapshot))
    }

    /// A snapshot as the contract's `TenantUsage`, charges from the plan.
    fn usage_proto(
        &self,
        tenant: &TenantId,
        as_of: i64,
        wanted: &[Window],
        snapshot: &UsageSnapshot,
    ) -> pb::TenantUsage {
        let book = self.prices.current();
        // Borrowed, not cloned: a listing prices every tenant of the fleet.
        let plan = book
            .as_deref()
            .and_then(|b| b.plan_of(tenant).map(|(plan, _)| plan));
        let charge =
            |rollup: &Rollup| plan.and_then(|plan| charge_of(plan, rollup.total.rated_pico));
        let models = snapshot
            .model_windows
            .iter()
            .map(|(model, windows)| pb::ModelUsage {
                model_id: model.clone(),
                windows: window_usage(windows),
                periods: vec![
                    period_usage(
                        CalendarPeriod::Day,
                        as_of,
                        &snapshot.day.models.get(model).copied().unwrap_or_default(),
                        None,
                    ),
                    period_usage(
                        CalendarPeriod::Month,
                        as_of,
                        &snapshot
                            .month
                            .models
                            .get(model)
                            .copied()
                            .unwrap_or_default(),
                        None,
                    ),
                ],
            })
            .collect();
        pb::TenantUsage {
            tenant_id: tenant.to_string(),
            as_of: Some(ms_timestamp(as_of)),
            windows: window_usage(&snapshot.windows)
                .into_iter()
                .zip(Window::ALL)
                .filter(|(_, window)| wanted.contains(window))
                .map(|(usage, _)| usage)
                .collect(),
            periods: vec![
                period_usage(
                    CalendarPeriod::Day,
                    as_of,
                    &snapshot.day.total,
                    charge(&snapshot.day),
                ),
                period_usage(
                    CalendarPeriod::Month,
                    as_of,
                    &snapshot.month.total,
                    charge(&snapshot.month),
                ),
            ],
            in_flight: Some(pb::InFlightUsage {
                reservations: i64::try_from(snapshot.in_flight.0).unwrap_or(i64::MAX),
                reserved_tokens: i64::try_from(snapshot.in_flight.1).unwrap_or(i64::MAX),
            }),
            models,
            last_event_time: snapshot.last_event_ms.map(ms_timestamp),
            price_book_version: book.map_or(0, |b| b.version),
        }
    }

    /// GetUsage.
    pub async fn get_usage(
        &self,
        request: pb::GetUsageRequest,
    ) -> Result<pb::GetUsageResponse, MeterError> {
        let tenant = tenant(&request.tenant_id, "tenant_id")?;
        let as_of = self.as_of(request.as_of.as_ref())?;
        Ok(pb::GetUsageResponse {
            usage: Some(
                self.usage(&tenant, as_of, request.include_models, &Window::ALL)
                    .await?,
            ),
        })
    }

    /// ListTenantUsage: pages through the sharded active-tenant index.
    pub async fn list_tenant_usage(
        &self,
        request: pb::ListTenantUsageRequest,
    ) -> Result<pb::ListTenantUsageResponse, MeterError> {
        let page_size = match request.page_size {
            0 => 500,
            n @ 1..=1000 => usize::try_from(n).unwrap_or(500),
            n => {
                return Err(MeterError::invalid(
                    "page_size",
                    format!("must be 1..1000 (got {n})"),
                ));
            }
        };
        let shard_count = u32::try_from(request.shard_count.max(1))
            .map_err(|_| MeterError::invalid("shard_count", "must not be negative"))?;
        let shard_index = u32::try_from(request.shard_index)
            .map_err(|_| MeterError::invalid("shard_index", "must not be negative"))?;
        if shard_index >= shard_count {
            return Err(MeterError::invalid(
                "shard_index",
                format!("must be below shard_count ({shard_count})"),
            ));
        }
        let (mut index_shard, after) =
            crate::paging::decode(&request.page_token, shard_count, shard_index)?;
        let as_of = self.as_of(request.as_of.as_ref())?;
        let wanted = requested_windows(&request.windows)?;
        let since = as_of - crate::store::ACTIVE_FOR_MS;
        let mut page: Vec<TenantId> = Vec::new();
        let mut next = None;
        'shards: while index_shard < crate::store::ACTIVE_SHARDS {
            // A tenant of listing shard s has hash % shard_count == s and sits
            // in index shard hash % ACTIVE_SHARDS; when shard_count divides
            // ACTIVE_SHARDS only the index shards congruent to s can hold it.
            if crate::store::ACTIVE_SHARDS.is_multiple_of(shard_count)
                && index_shard % shard_count != shard_index
            {
                index_shard += 1;
                continue;
            }
            let members = match self.index.recent(index_shard, since) {
                Some(members) if !request.page_token.is_empty() => members,
                _ => {
                    let members = Arc::new(
                        self.within(self.store.active_tenants(index_shard, since))
                            .await?,
                    );
                    self.index.keep(index_shard, since, Arc::clone(&members));
                    members
                }
            };
            let resumes_here = index_shard == crate::paging::after_shard(&request.page_token);
            let start = resume_at(&members, after.as_deref().filter(|_| resumes_here));
            for member in members.iter().skip(start) {
                let Ok(tenant) = TenantId::parse(member) else {
                    continue;
                };
                if crate::store::active_shard(&tenant, shard_count) != shard_index {
                    continue;
                }
                if page.len() == page_size {
                    next = page.last().map(|last| {
                        crate::paging::encode(shard_count, shard_index, index_shard, last.as_str())
                    });
                    break 'shards;
                }
                page.push(tenant);
            }
            index_shard += 1;
        }
        let tenants = if request.include_models {
            futures::future::join_all(page.iter().map(|t| self.usage(t, as_of, true, &wanted)))
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?
        } else {
            let snapshots = self
                .within(self.store.usage_page(&page, as_of, &wanted))
                .await?;
            page.iter()
                .zip(&snapshots)
                .map(|(tenant, snapshot)| self.usage_proto(tenant, as_of, &wanted, snapshot))
                .collect()
        };
        Ok(pb::ListTenantUsageResponse {
            tenants,
            next_page_token: next.unwrap_or_default(),
        })
    }

    /// GetFleetUsage: the sum of every active tenant's figures. It reads each
    /// active tenant (no hot key, no SCAN); its cost grows with the fleet.
    pub async fn fleet_usage(
        &self,
        request: pb::GetFleetUsageRequest,
    ) -> Result<pb::GetFleetUsageResponse, MeterError> {
        let as_of = self.as_of(request.as_of.as_ref())?;
        let since = as_of - crate::store::ACTIVE_FOR_MS;
        let mut windows = vec![Figures::default(); Window::ALL.len()];
        let (mut day, mut month) = (Figures::default(), Figures::default());
        let (mut reservations, mut reserved) = (0u64, 0u64);
        let mut models: BTreeMap<String, (Vec<Figures>, Figures, Figures)> = BTreeMap::new();
        let mut active = 0i64;
        for shard in 0..crate::store::ACTIVE_SHARDS {
            for member in self.within(self.store.active_tenants(shard, since)).await? {
                let Ok(tenant) = TenantId::parse(member) else {
                    continue;
                };
                let snapshot = self
                    .within(
                        self.store
                            .usage(&tenant, as_of, request.include_models, &Window::ALL),
                    )
                    .await?;
                active += 1;
                for (sum, f) in windows.iter_mut().zip(&snapshot.windows) {
                    sum.merge(f);
                }
                day.merge(&snapshot.day.total);
                month.merge(&snapshot.month.total);
                reservations += snapshot.in_flight.0;
                reserved += snapshot.in_flight.1;
                for (model, model_windows) in &snapshot.model_windows {
                    let entry = models.entry(model.clone()).or_insert_with(|| {
                        (
                            vec![Figures::default(); Window::ALL.len()],
                            Figures::default(),
                            Figures::default(),
                        )
                    });
                    for (sum, f) in entry.0.iter_mut().zip(model_windows) {
                        sum.merge(f);
                    }
                    entry
                        .1
                        .merge(&snapshot.day.models.get(model).copied().unwrap_or_default());
                    entry.2.merge(
                        &snapshot
                            .month
                            .models
                            .get(model)
                            .copied()
                            .unwrap_or_default(),
                    );
                }
            }
        }
        Ok(pb::GetFleetUsageResponse {
            usage: Some(pb::FleetUsage {
                as_of: Some(ms_timestamp(as_of)),
                windows: window_usage(&windows),
                periods: vec![
                    period_usage(CalendarPeriod::Day, as_of, &day, None),
                    period_usage(CalendarPeriod::Month, as_of, &month, None),
                ],
                in_flight: Some(pb::InFlightUsage {
                    reservations: i64::try_from(reservations).unwrap_or(i64::MAX),
                    reserved_tokens: i64::try_from(reserved).unwrap_or(i64::MAX),
                }),
                models: models
                    .into_iter()
                    .map(|(model_id, (w, d, m))| pb::ModelUsage {
                        model_id,
                        windows: window_usage(&w),
                        periods: vec![
                            period_usage(CalendarPeriod::Day, as_of, &d, None),
                            period_usage(CalendarPeriod::Month, as_of, &m, None),
                        ],
                    })
                    .collect(),
                active_tenants: active,
                price_book_version: self.prices.version(),
            }),
        })
    }

    /// GetUsageHistory of one tenant.
    pub async fn history(
        &self,
        request: pb::GetUsageHistoryRequest,
    ) -> Result<pb::GetUsageHistoryResponse, MeterError> {
        if request.tenant_id.is_empty() {
            return Err(MeterError::invalid(
                "tenant_id",
                "is required: fleet history is not served yet (use GetFleetUsage for current fleet figures)",
            ));
        }
        let tenant = tenant(&request.tenant_id, "tenant_id")?;
        let (period, step, retention) = match pb::HistoryGranularity::try_from(request.granularity)
        {
            Ok(pb::HistoryGranularity::Hour) => {
                (HistoryPeriod::Hour, HOUR_MS, self.config.hourly_retention)
            }
            Ok(pb::HistoryGranularity::Day) => {
                (HistoryPeriod::Day, DAY_MS, self.config.daily_retention)
            }
            Ok(pb::HistoryGranularity::Unspecified) | Err(_) => {
                return Err(MeterError::invalid(
                    "granularity",
                    "must be HISTORY_GRANULARITY_HOUR or HISTORY_GRANULARITY_DAY",
                ));
            }
        };
        let bound = |t: Option<&prost_types::Timestamp>, field: &str| -> Result<i64, MeterError> {
            let t = t.ok_or_else(|| MeterError::invalid(field, "is required"))?;
            let ms = timestamp_ms(t);
            if ms.rem_euclid(step) != 0 {
                return Err(MeterError::invalid(
                    field,
                    "must be aligned to the granularity (a whole hour or UTC day)",
                ));
            }
            Ok(ms)
        };
        let start = bound(request.start_time.as_ref(), "start_time")?;
        let end = bound(request.end_time.as_ref(), "end_time")?;
        if end <= start {
            return Err(MeterError::invalid("end_time", "must be after start_time"));
        }
        if (end - start) / step > MAX_HISTORY_BUCKETS {
            return Err(MeterError::invalid(
                "end_time",
                format!("the range holds more than {MAX_HISTORY_BUCKETS} buckets"),
            ));
        }
        let only = (!request.model_id.is_empty())
            .then(|| model(&request.model_id, "model_id").map(|m| m.to_string()))
            .transpose()?;
        let now = now_ms(self.clock.as_ref());
        let retained_since = (now - duration_ms(retention)).div_euclid(step) * step;
        let rollups = self
            .within(
                self.store
                    .history(&tenant, period, start.max(retained_since), end),
            )
            .await?;
        let mut buckets = Vec::new();
        for (bucket_start, rollup) in rollups {
            let bucket = |model_id: String, f: &Figures| pb::UsageBucket {
                bucket_start: Some(ms_timestamp(bucket_start)),
                model_id,
                figures: Some(figures(f)),
            };
            match (&only, request.group_by_model) {
                (Some(model), _) => {
                    if let Some(f) = rollup.models.get(model) {
                        buckets.push(bucket(
                            if request.group_by_model {
                                model.clone()
                            } else {
                                String::new()
                            },
                            f,
                        ));
                    }
                }
                (None, true) => {
                    buckets.extend(rollup.models.iter().map(|(m, f)| bucket(m.clone(), f)))
                }
                (None, false) => buckets.push(bucket(String::new(), &rollup.total)),
            }
        }
        Ok(pb::GetUsageHistoryResponse {
            buckets,
            retained_since: Some(ms_timestamp(retained_since)),
        })
    }

    /// ApplyPolicies.
    pub async fn apply_policies(
        &self,
        request: pb::ApplyPoliciesRequest,
    ) -> Result<pb::ApplyPoliciesResponse, MeterError> {
        if request.policies.len() > MAX_BATCH {
            return Err(MeterError::invalid(
                "policies",
                format!("at most {MAX_BATCH} per call"),
            ));
        }
        let book = self.prices.current();
        let now = now_ms(self.clock.as_ref());
        let calls = request.policies.iter().enumerate().map(|(index, policy)| {
            let book = book.clone();
            async move {
                let rejected = |message: String| pb::PolicyResult {
                    tenant_id: policy.tenant_id.clone(),
                    status: pb::PolicyResultStatus::Rejected.into(),
                    message,
                };
                let stored = match crate::policy::fields(policy, book.as_deref(), now) {
                    Ok(stored) => stored,
                    Err(message) => return Ok(rejected(format!("policies[{index}].{message}"))),
                };
                let applied = self
                    .within(self.store.apply_policy(
                        &stored.tenant,
                        stored.decided_ms,
                        stored.expires_ms,
                        now,
                        &stored.fields,
                    ))
                    .await?;
                Ok::<_, MeterError>(pb::PolicyResult {
                    tenant_id: policy.tenant_id.clone(),
                    status: if applied {
                        pb::PolicyResultStatus::Applied
                    } else {
                        pb::PolicyResultStatus::Stale
                    }
                    .into(),
                    message: String::new(),
                })
            }
        });
        let results = futures::future::join_all(calls)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        Ok(pb::ApplyPoliciesResponse { results })
    }

    /// GetPolicy.
    pub async fn get_policy(
        &self,
        request: pb::GetPolicyRequest,
    ) -> Result<pb::GetPolicyResponse, MeterError> {
        let tenant = tenant(&request.tenant_id, "tenant_id")?;
        let stored = self.within(self.store.policy(&tenant)).await?;
        let policy = stored
            .and_then(|bytes| <pb::TenantPolicy as prost::Message>::decode(bytes.as_slice()).ok());
        let now = now_ms(self.clock.as_ref());
        let policy =
            policy.filter(|p| p.expires_at.as_ref().is_some_and(|t| timestamp_ms(t) > now));
        let plan = self
            .prices
            .current()
            .and_then(|book| book.plan_of(&tenant).map(|(plan, _)| plan.clone()));
        Ok(pb::GetPolicyResponse {
            effective: Some(crate::policy::effective(plan.as_ref(), policy.as_ref())),
            policy,
        })
    }
}

fn model_check(id: &str, field: &str) -> Result<(), MeterError> {
    model(id, field).map(|_| ())
}

/// The plan's period budget as a cap on the month's rated value, pico-USD
/// (0 = none).
pub fn month_cap_pico(plan: &Plan) -> i128 {
    if plan.limits.period_budget_nanos <= 0 {
        return 0;
    }
    plan.rated_value_reaching(i128::from(plan.limits.period_budget_nanos))
        .map_or(0, |v| (v.0 + ATTOS_PER_PICO - 1) / ATTOS_PER_PICO)
}

/// A fresh reservation id: 128 random bits in hex.
fn reservation_id() -> String {
    static FALLBACK: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; 16];
    // getrandom fails only without an OS entropy source; then the process id
    // and a counter still keep this replica's ids distinct.
    if getrandom::fill(&mut bytes).is_err() {
        bytes[..4].copy_from_slice(&std::process::id().to_le_bytes());
        bytes[8..].copy_from_slice(&FALLBACK.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    }
    let mut id = String::with_capacity(34);
    id.push_str("r-");
    for byte in bytes {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

fn denial_message(
    reason: pb::DenyReason,
    limit: i128,
    current: i128,
    model: &ModelId,
    policy: Option<&str>,
) -> String {
    let what = match reason {
        pb::DenyReason::RequestRateLimit => format!(
            "request rate limit of {limit} requests/min reached ({current} in the last minute and in flight)"
        ),
        pb::DenyReason::TokenRateLimit => format!(
            "token rate limit of {limit} tokens/min reached ({current} in the last minute and reserved)"
        ),
        pb::DenyReason::RequestTooLarge => format!(
            "the request asks for {current} tokens, more than the limit of {limit} tokens/min"
        ),
        pb::DenyReason::BudgetExhausted => {
            format!("budget cap of {limit} nano-USD reached ({current} spent)")
        }
        pb::DenyReason::ModelDenied => format!("model {model} is not allowed for this tenant"),
        pb::DenyReason::MeterUnavailable => "the meter is unavailable".to_owned(),
        pb::DenyReason::Unspecified => "denied".to_owned(),
    };
    match policy {
        Some(reason) if !reason.is_empty() => format!("{what} (throttled: {reason})"),
        Some(_) | None => what,
    }
}
