//! tenantmeter's alerting service (issue 5; contract
//! `proto/tenantmeter/v1/alerting.proto`), built piece by piece.
//!
//! What exists:
//! - [`budgets`]: the `Budget` domain type with the contract's validation
//!   (errors name the request field), conversions to and from the proto
//!   messages, and `BudgetStore`, the budgets' Redis store (one server or a
//!   cluster, every change one Lua script, every call bounded by a timeout).
//!   `BudgetError` converts into the `tonic::Status` a handler returns.
//! - [`observe`]: pure functions forming a tenant's `levels::Observation`
//!   (rate, budget figures and forecasts, plan budget, margin, baseline) from
//!   the meter's `TenantUsage`, its budgets and its plan.
//!
//! What is to come: the gRPC services (`AlertingService`,
//! `AlertingAdminService`) and `run()`, the evaluation loop feeding the pure
//! level engine (`tenantmeter_domain::levels`) from the meter's bulk figures,
//! persisted level state, policies sent to the meter, notification sinks,
//! alert history, shadow mode and the backtest.

pub mod budgets;
pub mod observe;
