//! Tenant API keys: `tmk_<key_id>_<secret>`.
//!
//! - `key_id`: 16 lower-case hex digits (64 random bits). Public and loggable:
//!   it names the key in GetTenant, in logs, and in the registry's key index,
//!   so a presented key is found without comparing it to every stored hash.
//! - `secret`: 48 lower-case hex digits (192 random bits from the OS through
//!   `getrandom`), well above the 128 bits a guess would have to cover.
//!
//! Only the lower-case hex SHA-256 of the *whole* key is stored. A fast hash is
//! enough here (unlike passwords): the secret is random and long, so there is
//! nothing to brute-force from a leaked digest. Digests are compared in constant
//! time, so timing does not reveal how much of a guess was right.

use std::fmt;

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::model::KeyRecord;

/// Every key starts with this (it makes leaked keys easy to scan for).
pub const KEY_PREFIX: &str = "tmk_";
/// Random bytes of a key id (hex: twice as many characters).
const KEY_ID_BYTES: usize = 8;
/// Random bytes of a secret.
const SECRET_BYTES: usize = 24;
/// Length of a well-formed key.
pub const KEY_LEN: usize = KEY_PREFIX.len() + 2 * KEY_ID_BYTES + 1 + 2 * SECRET_BYTES;

/// A freshly issued key: the whole key (shown once) and what is stored of it.
pub struct IssuedKey {
    /// The key to hand to the tenant. Never stored, never logged.
    pub key: String,
    /// What the registry keeps: id and digest.
    pub record: KeyRecord,
}

impl fmt::Debug for IssuedKey {
    // The key itself is a credential: keep it out of every debug print.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedKey")
            .field("key", &"<redacted>")
            .field("record", &self.record)
            .finish()
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

fn random_hex<const N: usize>() -> Result<String, getrandom::Error> {
    let mut bytes = [0_u8; N];
    getrandom::fill(&mut bytes)?;
    Ok(hex(&bytes))
}

/// A random 128-bit token, hex (the registry's epoch candidate).
pub(crate) fn random_token() -> Result<String, getrandom::Error> {
    random_hex::<16>()
}

/// Issues a new key at `now_ms` (current: no expiry).
pub fn issue(now_ms: i64) -> Result<IssuedKey, getrandom::Error> {
    let key_id = random_hex::<KEY_ID_BYTES>()?;
    let secret = random_hex::<SECRET_BYTES>()?;
    let key = format!("{KEY_PREFIX}{key_id}_{secret}");
    let sha256_hex = digest_hex(&key);
    Ok(IssuedKey {
        key,
        record: KeyRecord {
            key_id,
            sha256_hex,
            created_at_ms: now_ms,
            expires_at_ms: None,
        },
    })
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The key id of a well-formed key; `None` for anything else (which then
/// never reaches Redis).
pub fn key_id_of(presented: &str) -> Option<&str> {
    if presented.len() != KEY_LEN {
        return None;
    }
    let rest = presented.strip_prefix(KEY_PREFIX)?;
    let (key_id, secret) = rest.split_once('_')?;
    (key_id.len() == 2 * KEY_ID_BYTES
        && secret.len() == 2 * SECRET_BYTES
        && is_lower_hex(key_id)
        && is_lower_hex(secret))
    .then_some(key_id)
}

/// Lower-case hex SHA-256 of a whole key.
pub fn digest_hex(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

/// Whether `presented` hashes to `stored_hex`, compared in constant time.
pub fn matches(presented: &str, stored_hex: &str) -> bool {
    // Both sides are 64 hex characters; `ct_eq` on unequal lengths is false.
    bool::from(
        digest_hex(presented)
            .as_bytes()
            .ct_eq(stored_hex.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_keys_parse_and_match_only_themselves() {
        let issued = issue(1_000).unwrap();
        assert_eq!(issued.key.len(), KEY_LEN);
        assert_eq!(key_id_of(&issued.key), Some(issued.record.key_id.as_str()));
        assert!(matches(&issued.key, &issued.record.sha256_hex));
        assert_eq!(issued.record.sha256_hex.len(), 64);
        assert!(!issued.record.sha256_hex.contains(&issued.key[20..]));
        let other = issue(1_000).unwrap();
        assert_ne!(issued.record.key_id, other.record.key_id);
        assert!(!matches(&other.key, &issued.record.sha256_hex));
        assert!(!format!("{issued:?}").contains(&issued.key));
    }

    #[test]
    fn malformed_keys_have_no_id() {
        let issued = issue(0).unwrap();
        let key = issued.key.as_str();
        for bad in [
            "",
            "tmk_",
            &key[..key.len() - 1],
            &key.replace("tmk_", "tmx_"),
            &key.to_uppercase(),
            &format!("{key}0"),
            &key.replacen('_', "-", 2),
        ] {
            assert_eq!(key_id_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn digest_is_sha256_hex() {
        assert_eq!(
            digest_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
