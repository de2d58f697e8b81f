//! Pure domain logic of tenantmeter: no I/O, no clock reads, no async.
//!
//! Start with [`money`] (the exact units every amount is kept in and the one
//! rounding rule), then [`ratecard`] (how tiers turn a period's rated value into
//! a charge) and [`quote`] (how a quote is computed as the difference of two
//! rounded cumulative figures, which is what makes charges independent of how a
//! period's usage was split into events).

pub mod decimal;
pub mod ids;
pub mod levels;
pub mod money;
pub mod pricebook;
pub mod quote;
pub mod ratecard;
pub mod usage;
pub mod window;
