//! The pricing service.
