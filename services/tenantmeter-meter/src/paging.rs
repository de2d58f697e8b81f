//! Page tokens of ListTenantUsage: `v1/<shard_count>/<shard_index>/<index
//! shard>/<last tenant id>`. Plain text on purpose (ops can read them); a token
//! minted for other shard settings is refused rather than silently skipping
//! tenants.

use crate::error::MeterError;

/// A token resuming after `last` in index shard `index_shard`.
pub fn encode(shard_count: u32, shard_index: u32, index_shard: u32, last: &str) -> String {
    format!("v1/{shard_count}/{shard_index}/{index_shard}/{last}")
}

fn parts(token: &str) -> Option<(u32, u32, u32, &str)> {
    let mut parts = token.splitn(5, '/');
    if parts.next()? != "v1" {
        return None;
    }
    let count = parts.next()?.parse().ok()?;
    let index = parts.next()?.parse().ok()?;
    let shard = parts.next()?.parse().ok()?;
    let last = parts.next()?;
    Some((count, index, shard, last))
}

/// Where a page starts: the index shard, and the last tenant already listed.
pub fn decode(
    token: &str,
    shard_count: u32,
    shard_index: u32,
) -> Result<(u32, Option<String>), MeterError> {
    if token.is_empty() {
        return Ok((0, None));
    }
    match parts(token) {
        Some((count, index, shard, last)) if count == shard_count && index == shard_index => {
            Ok((shard, Some(last.to_owned())))
        }
        Some(_) => Err(MeterError::invalid(
            "page_token",
            "was minted for other shard_count/shard_index values",
        )),
        None => Err(MeterError::invalid("page_token", "is malformed")),
    }
}

/// The index shard a (valid) token resumes in; 0 for none.
pub fn after_shard(token: &str) -> u32 {
    parts(token).map_or(0, |(_, _, shard, _)| shard)
}
