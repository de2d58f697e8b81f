//! Token usage: the four token kinds Bedrock reports, each priced separately.

/// One of the four priced token kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TokenKind {
    /// Prompt tokens neither read from nor written to the cache.
    Input,
    /// Generated tokens.
    Output,
    /// Prompt tokens read from the cache.
    CacheRead,
    /// Prompt tokens written to the cache.
    CacheWrite,
}

impl TokenKind {
    /// All kinds, in contract order.
    pub const ALL: [Self; 4] = [Self::Input, Self::Output, Self::CacheRead, Self::CacheWrite];

    /// The contract's field name for this kind (`TokenUsage.<name>`).
    pub fn field_name(self) -> &'static str {
        match self {
            Self::Input => "input_tokens",
            Self::Output => "output_tokens",
            Self::CacheRead => "cache_read_input_tokens",
            Self::CacheWrite => "cache_write_input_tokens",
        }
    }
}

/// Token counts of one call or of a period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TokenUsage {
    /// Plain input tokens.
    pub input: u64,
    /// Output tokens.
    pub output: u64,
    /// Cache-read input tokens.
    pub cache_read: u64,
    /// Cache-write input tokens.
    pub cache_write: u64,
}

impl TokenUsage {
    /// The count of one kind.
    pub fn get(&self, kind: TokenKind) -> u64 {
        match kind {
            TokenKind::Input => self.input,
            TokenKind::Output => self.output,
            TokenKind::CacheRead => self.cache_read,
            TokenKind::CacheWrite => self.cache_write,
        }
    }

    /// Sets the count of one kind.
    pub fn set(&mut self, kind: TokenKind, value: u64) {
        match kind {
            TokenKind::Input => self.input = value,
            TokenKind::Output => self.output = value,
            TokenKind::CacheRead => self.cache_read = value,
            TokenKind::CacheWrite => self.cache_write = value,
        }
    }

    /// Adds kind by kind; `None` when a count overflows.
    pub fn checked_add(&self, other: &Self) -> Option<Self> {
        Some(Self {
            input: self.input.checked_add(other.input)?,
            output: self.output.checked_add(other.output)?,
            cache_read: self.cache_read.checked_add(other.cache_read)?,
            cache_write: self.cache_write.checked_add(other.cache_write)?,
        })
    }

    /// All tokens of every kind; `None` on overflow.
    pub fn total(&self) -> Option<u64> {
        self.input
            .checked_add(self.output)?
            .checked_add(self.cache_read)?
            .checked_add(self.cache_write)
    }
}
