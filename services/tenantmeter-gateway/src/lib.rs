//! The gateway: what tenants call instead of Amazon Bedrock. It authenticates
//! the tenant by its API key, calls Bedrock with the tenant's application
//! inference profile, and reserves and settles every call with the meter.

pub mod registry;
