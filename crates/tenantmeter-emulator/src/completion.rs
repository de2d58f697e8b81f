//! The token rule and the deterministic reply: what any request, whatever its wire shape, is
//! answered with and how many tokens that counts.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use sha2::{Digest, Sha256};

/// `ceil(bytes / 4)`: the emulator's token count for `bytes` UTF-8 bytes.
#[must_use]
pub fn tokens_for_bytes(bytes: usize) -> u64 {
    u64::try_from(bytes.div_ceil(4)).unwrap_or(u64::MAX)
}

/// What the token rule needs from a request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Prompt {
    /// All input text, in order.
    pub(crate) text: String,
    /// Byte length of the text before the last cache point, if there was one.
    pub(crate) cache_prefix_len: Option<usize>,
    /// The concatenated text of the last user message.
    pub(crate) last_user_text: String,
    pub(crate) max_tokens: Option<u64>,
}

/// The reply to a prompt and its token counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Completion {
    pub(crate) reply: String,
    /// Anthropic's and Converse's spelling alike: `end_turn` or `max_tokens`.
    pub(crate) stop_reason: &'static str,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) cache_read: u64,
    pub(crate) cache_write: u64,
}

impl Completion {
    pub(crate) fn total(&self) -> u64 {
        self.input_tokens + self.output_tokens + self.cache_read + self.cache_write
    }
}

/// The cache prefixes seen so far, per model: the first sighting is a cache write, later ones
/// are reads.
#[derive(Debug)]
pub(crate) struct PromptCache {
    capacity: usize,
    seen: Mutex<HashSet<[u8; 32]>>,
}

impl PromptCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// Records the prefix; true when it had been seen before (a cache read).
    fn seen_before(&self, model_id: &str, prefix: &str) -> bool {
        let mut hasher = Sha256::new();
        hasher.update(model_id.as_bytes());
        hasher.update([0]);
        hasher.update(prefix.as_bytes());
        let key: [u8; 32] = hasher.finalize().into();
        // A set of hashes cannot be left half-updated by a panic, so a poisoned lock is usable.
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.contains(&key) {
            return true;
        }
        if seen.len() >= self.capacity {
            seen.clear();
        }
        seen.insert(key);
        false
    }
}

/// Answers `prompt` for `model_id` (the resolved model: a profile and its source model share
/// one cache, as they share one model on Bedrock).
pub(crate) fn complete(
    prompt: &Prompt,
    reply_prefix: &str,
    cache: &PromptCache,
    model_id: &str,
) -> Completion {
    let (cache_read, cache_write, uncached_bytes) = match prompt.cache_prefix_len {
        Some(len) if len > 0 => {
            let prefix = prompt.text.get(..len).unwrap_or_default();
            let cached = tokens_for_bytes(len);
            let rest = prompt.text.len().saturating_sub(len);
            if cache.seen_before(model_id, prefix) {
                (cached, 0, rest)
            } else {
                (0, cached, rest)
            }
        }
        Some(_) | None => (0, 0, prompt.text.len()),
    };
    let mut reply = format!("{reply_prefix}{}", prompt.last_user_text);
    let mut stop_reason = "end_turn";
    let mut output_tokens = tokens_for_bytes(reply.len());
    if let Some(max) = prompt.max_tokens {
        let limit = usize::try_from(max.saturating_mul(4)).unwrap_or(usize::MAX);
        if reply.len() > limit {
            let mut cut = limit;
            while !reply.is_char_boundary(cut) {
                cut -= 1;
            }
            reply.truncate(cut);
            stop_reason = "max_tokens";
        }
        output_tokens = output_tokens.min(max);
    }
    Completion {
        reply,
        stop_reason,
        input_tokens: tokens_for_bytes(uncached_bytes),
        output_tokens,
        cache_read,
        cache_write,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_rule_is_ceil_bytes_over_four() {
        assert_eq!(tokens_for_bytes(0), 0);
        assert_eq!(tokens_for_bytes(1), 1);
        assert_eq!(tokens_for_bytes(4), 1);
        assert_eq!(tokens_for_bytes(5), 2);
    }

    #[test]
    fn reply_is_cut_on_a_char_boundary() {
        let prompt = Prompt {
            text: "ééééé".to_owned(),
            cache_prefix_len: None,
            last_user_text: "ééééé".to_owned(),
            max_tokens: Some(1),
        };
        let done = complete(&prompt, "", &PromptCache::new(10), "m");
        assert_eq!(done.reply, "éé");
        assert_eq!(done.stop_reason, "max_tokens");
        assert_eq!(done.output_tokens, 1);
        assert_eq!(done.input_tokens, 3);
    }

    #[test]
    fn a_prefix_is_written_once_then_read_per_model() {
        let prompt = Prompt {
            text: "12345678abcd".to_owned(),
            cache_prefix_len: Some(8),
            last_user_text: "abcd".to_owned(),
            max_tokens: None,
        };
        let cache = PromptCache::new(10);
        let first = complete(&prompt, "", &cache, "m");
        assert_eq!(
            (first.cache_write, first.cache_read, first.input_tokens),
            (2, 0, 1)
        );
        let second = complete(&prompt, "", &cache, "m");
        assert_eq!((second.cache_write, second.cache_read), (0, 2));
        let other_model = complete(&prompt, "", &cache, "other");
        assert_eq!((other_model.cache_write, other_model.cache_read), (2, 0));
    }
}
