//! The tenant registry: tenants, API-key hashes, model aliases and their
//! inference profiles, in Redis, cached in the gateway.

pub mod model;
