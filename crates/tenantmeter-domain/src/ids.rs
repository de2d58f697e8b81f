//! Validated identifiers. An id that reaches a Redis key or a log line has been
//! through one of these constructors, so a key can never be built from arbitrary
//! caller input.

use std::fmt;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id was empty.
    #[error("must not be empty")]
    Empty,
    /// The id was longer than allowed.
    #[error("is {len} characters long; at most {max} are allowed")]
    TooLong {
        /// Length received.
        len: usize,
        /// Largest length allowed.
        max: usize,
    },
    /// The id had a character outside its alphabet.
    #[error("has {found:?} at position {position}; allowed: {allowed}")]
    BadCharacter {
        /// The offending character.
        found: char,
        /// Its index, in characters.
        position: usize,
        /// The alphabet, for the message.
        allowed: &'static str,
    },
}

const SLUG_ALLOWED: &str = "letters, digits, '.', '_' and '-'";

fn validate_slug(value: &str, max: usize) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty);
    }
    if value.len() > max {
        return Err(IdError::TooLong {
            len: value.chars().count(),
            max,
        });
    }
    match value
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some((position, found)) => Err(IdError::BadCharacter {
            found,
            position,
            allowed: SLUG_ALLOWED,
        }),
        None => Ok(()),
    }
}

macro_rules! slug_id {
    ($(#[$doc:meta])* $name:ident, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Longest id accepted.
            pub const MAX_LEN: usize = $max;

            /// Validates `value`: `[A-Za-z0-9._-]{1,MAX_LEN}`.
            pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                validate_slug(&value, Self::MAX_LEN)?;
                Ok(Self(value))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

slug_id!(
    /// A tenant id, `[A-Za-z0-9._-]{1,64}`; part of every tenant's Redis hash tag.
    TenantId,
    64
);
impl TenantId {
    /// The tenant's shard among `shards` (FNV-1a of its id, stable across
    /// versions): the meter's active-tenant index and ListTenantUsage's
    /// `shard_index`, and alerting's evaluation shards, all use it, so a
    /// tenant is in the same shard everywhere.
    pub fn shard(&self, shards: u32) -> u32 {
        let mut hash: u32 = 0x811c_9dc5;
        for byte in self.0.bytes() {
            hash ^= u32::from(byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        hash % shards.max(1)
    }
}

slug_id!(
    /// A plan (rate card) id, `[A-Za-z0-9._-]{1,64}`.
    PlanId,
    64
);

/// A Bedrock model id such as `anthropic.claude-3-5-sonnet-20240620-v1:0`.
///
/// Bedrock ids use `:` for versions, so the alphabet is the slug alphabet plus
/// `:`; 128 characters is longer than any id Bedrock publishes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModelId(String);

impl ModelId {
    /// Longest model id accepted.
    pub const MAX_LEN: usize = 128;

    /// Validates `value`: `[A-Za-z0-9._:-]{1,128}`.
    pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into();
        if value.is_empty() {
            return Err(IdError::Empty);
        }
        if value.len() > Self::MAX_LEN {
            return Err(IdError::TooLong {
                len: value.chars().count(),
                max: Self::MAX_LEN,
            });
        }
        if let Some((position, found)) = value
            .chars()
            .enumerate()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')))
        {
            return Err(IdError::BadCharacter {
                found,
                position,
                allowed: "letters, digits, '.', '_', '-' and ':'",
            });
        }
        Ok(Self(value))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_follow_the_key_alphabet() {
        assert!(TenantId::parse("acme-corp_1.eu").is_ok());
        assert_eq!(TenantId::parse(""), Err(IdError::Empty));
        assert!(matches!(
            TenantId::parse("a{b}"),
            Err(IdError::BadCharacter {
                found: '{',
                position: 1,
                ..
            })
        ));
        assert!(matches!(
            TenantId::parse("x".repeat(65)),
            Err(IdError::TooLong { len: 65, max: 64 })
        ));
        assert!(TenantId::parse("x".repeat(64)).is_ok());
    }

    #[test]
    fn model_ids_allow_version_colons() {
        assert!(ModelId::parse("anthropic.claude-3-5-sonnet-20240620-v1:0").is_ok());
        assert!(ModelId::parse("bad model").is_err());
    }
}
