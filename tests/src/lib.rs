//! Black-box tests across tenantmeter services live in `tests/`; this library is
//! empty on purpose (a package needs a target).
