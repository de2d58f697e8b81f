//! The meter service (in progress).

pub mod scripts;
pub mod store;
