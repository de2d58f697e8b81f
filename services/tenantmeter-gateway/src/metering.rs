//! The money path's meter side: reserve before Bedrock is called, settle the
//! actual usage after, release what Bedrock never consumed, and spool what
//! the meter could not take so that nothing accepted is lost.

use std::sync::Arc;
use std::time::Duration;

use tenantmeter_proto::v1::meter_service_client::MeterServiceClient;
use tenantmeter_proto::v1::reserve_response::Outcome;
use tenantmeter_proto::v1::{
    DenyReason, Level, ReleaseRequest, ReserveRequest, SettleOutcome, SettleRequest,
    SettleResponse, UsageEvent,
};
use tenantmeter_runtime::client::TracedChannel;
use tonic::Code;

use crate::config::MeterFailMode;
use crate::error::CallError;
use crate::spool::{DeliverError, Spool};

/// An admitted call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The meter's reservation; empty when admitted by fail-open.
    pub reservation_id: String,
    /// The model admitted: the one asked for, or the policy's downgrade.
    pub model_id: String,
    /// Whether `model_id` is a downgrade.
    pub downgraded: bool,
    /// The tenant's level as the meter reported it.
    pub level: Level,
    /// Admitted without a check (meter or its Redis unreachable).
    pub fail_open: bool,
}

/// What happened to a call's usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// The meter recorded it (or had already: a duplicate).
    Settled(SettleResponse),
    /// The meter could not take it; it is in the spool.
    Spooled,
    /// Neither the meter nor the spool took it. Logged at error level with the
    /// whole event, so an operator can replay it by hand.
    Lost(String),
}

/// The gateway's client of the meter.
#[derive(Debug, Clone)]
pub struct Metering {
    meter: MeterServiceClient<TracedChannel>,
    spool: Arc<Spool>,
    reserve_timeout: Duration,
    settle_timeout: Duration,
    fail_mode: MeterFailMode,
}

/// Meter answers that mean "try again later": the settlement is kept.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::Internal
    )
}

impl Metering {
    /// A client of `meter` spooling to `spool`.
    pub fn new(
        meter: MeterServiceClient<TracedChannel>,
        spool: Arc<Spool>,
        reserve_timeout: Duration,
        settle_timeout: Duration,
        fail_mode: MeterFailMode,
    ) -> Self {
        Self {
            meter,
            spool,
            reserve_timeout,
            settle_timeout,
            fail_mode,
        }
    }

    /// The spool settlements go to when the meter cannot take them.
    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    /// Reserves a call's tokens. A denial is [`CallError::Throttled`]; a meter
    /// that does not answer in time admits (fail open) or refuses
    /// ([`CallError::MeterUnavailable`]) by the configured mode.
    pub async fn reserve(&self, request: ReserveRequest) -> Result<Reservation, CallError> {
        let requested_model = request.model_id.clone();
        let mut meter = self.meter.clone();
        let answer = tokio::time::timeout(self.reserve_timeout, meter.reserve(request)).await;
        let response = match answer {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) if !retryable(status.code()) => {
                // The meter refused the request itself: a gateway bug or a
                // model the meter cannot price. Not the tenant's fault, and not
                // a reason to call Bedrock unmetered.
                tracing::error!(code = ?status.code(), message = status.message(), "meter refused a reservation");
                return Err(CallError::MeterUnavailable);
            }
            Ok(Err(status)) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "meter unavailable for a reservation");
                return self.unreachable(requested_model);
            }
            Err(_elapsed) => {
                tracing::warn!(timeout = ?self.reserve_timeout, "meter did not answer a reservation in time");
                return self.unreachable(requested_model);
            }
        };
        let level = Level::try_from(response.level).unwrap_or(Level::Unspecified);
        match response.outcome {
            Some(Outcome::Admission(admission)) => Ok(Reservation {
                reservation_id: admission.reservation_id,
                model_id: if admission.model_id.is_empty() {
                    requested_model
                } else {
                    admission.model_id
                },
                downgraded: admission.downgraded,
                level,
                fail_open: admission.fail_open,
            }),
            Some(Outcome::Denial(denial)) => Err(CallError::Throttled {
                reason: DenyReason::try_from(denial.reason).unwrap_or(DenyReason::Unspecified),
                message: denial.message,
                retry_after: denial.retry_after.and_then(|d| Duration::try_from(d).ok()),
                level,
            }),
            None => {
                tracing::error!("meter answered a reservation with neither admission nor denial");
                Err(CallError::MeterUnavailable)
            }
        }
    }

    fn unreachable(&self, model_id: String) -> Result<Reservation, CallError> {
        match self.fail_mode {
            MeterFailMode::Open => Ok(Reservation {
                reservation_id: String::new(),
                model_id,
                downgraded: false,
                level: Level::Unspecified,
                fail_open: true,
            }),
            MeterFailMode::Closed => Err(CallError::MeterUnavailable),
        }
    }

    /// Settles a call's usage: at the meter, or in the spool when the meter
    /// cannot take it now.
    pub async fn settle(&self, reservation_id: &str, event: UsageEvent) -> Settlement {
        let request = SettleRequest {
            reservation_id: reservation_id.to_owned(),
            event: Some(event),
        };
        match self.deliver(request.clone()).await {
            Ok(response) => Settlement::Settled(response),
            Err(error) => {
                if let DeliverError::Rejected(reason) = &error {
                    // Kept all the same: the spool's replay dead-letters it with
                    // the reason, where an operator finds it.
                    tracing::error!(%reason, "meter rejected a settlement; spooling it for the record");
                }
                match self.spool.append(&request).await {
                    Ok(()) => Settlement::Spooled,
                    Err(spool_error) => {
                        tracing::error!(
                            error = %spool_error,
                            settlement = ?request,
                            "settlement LOST: neither the meter nor the spool took it"
                        );
                        Settlement::Lost(spool_error.to_string())
                    }
                }
            }
        }
    }

    /// One delivery attempt of a settlement, classified for the spool.
    pub async fn deliver(&self, request: SettleRequest) -> Result<SettleResponse, DeliverError> {
        let mut meter = self.meter.clone();
        match tokio::time::timeout(self.settle_timeout, meter.settle(request)).await {
            Ok(Ok(response)) => {
                let response = response.into_inner();
                if response.outcome == SettleOutcome::Duplicate as i32 {
                    tracing::debug!("settlement was already counted");
                }
                Ok(response)
            }
            Ok(Err(status)) if retryable(status.code()) => {
                Err(DeliverError::Retryable(status.message().to_owned()))
            }
            Ok(Err(status)) => Err(DeliverError::Rejected(format!(
                "{:?}: {}",
                status.code(),
                status.message()
            ))),
            Err(_elapsed) => Err(DeliverError::Retryable(format!(
                "the meter did not answer within {:?}",
                self.settle_timeout
            ))),
        }
    }

    /// Releases a reservation Bedrock consumed nothing of. Best effort: a
    /// reservation not released expires with its lease.
    pub async fn release(&self, tenant_id: &str, reservation: &Reservation) {
        if reservation.reservation_id.is_empty() {
            return;
        }
        let mut meter = self.meter.clone();
        let request = ReleaseRequest {
            tenant_id: tenant_id.to_owned(),
            reservation_id: reservation.reservation_id.clone(),
        };
        match tokio::time::timeout(self.settle_timeout, meter.release(request)).await {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => tracing::warn!(
                code = ?status.code(),
                message = status.message(),
                "release failed; the reservation expires with its lease"
            ),
            Err(_elapsed) => {
                tracing::warn!("release timed out; the reservation expires with its lease");
            }
        }
    }
}
