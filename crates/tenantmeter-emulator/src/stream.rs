//! AWS event-stream responses: frames built with aws-smithy-eventstream, each sent at the time
//! the pacing knobs give it.

use std::convert::Infallible;
use std::time::Duration;

use aws_smithy_types::event_stream::{Header, HeaderValue as EventHeaderValue, Message};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::completion::tokens_for_bytes;

/// Bytes of reply text per delta event (cut on character boundaries).
pub const STREAM_CHUNK_BYTES: usize = 16;

/// When a stream's events go out, from the moment the request was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pacing {
    pub(crate) time_to_first_token: Duration,
    /// 0: every event at `time_to_first_token`.
    pub(crate) tokens_per_second: u32,
}

impl Pacing {
    /// When the text that follows `tokens_before` output tokens goes out: the first token at
    /// `time_to_first_token`, each later one `1 / tokens_per_second` after the one before.
    pub(crate) fn at(&self, tokens_before: u64) -> Duration {
        let generation = match self.tokens_per_second {
            0 => Duration::ZERO,
            rate => {
                Duration::from_nanos(tokens_before.saturating_mul(1_000_000_000) / u64::from(rate))
            }
        };
        self.time_to_first_token.saturating_add(generation)
    }
}

/// The reply cut into delta texts, each with the time it goes out.
pub(crate) fn paced_chunks<'a>(
    reply: &'a str,
    pacing: &Pacing,
) -> (Vec<(Duration, &'a str)>, Duration) {
    let mut tokens_before = 0;
    let mut timed = Vec::new();
    for piece in chunks(reply, STREAM_CHUNK_BYTES) {
        timed.push((pacing.at(tokens_before), piece));
        tokens_before += tokens_for_bytes(piece.len());
    }
    (timed, pacing.at(tokens_before))
}

/// Splits `text` into pieces of at most `max` bytes (at least one character each).
pub(crate) fn chunks(text: &str, max: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = max.min(rest.len());
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        let (piece, tail) = rest.split_at(end);
        pieces.push(piece);
        rest = tail;
    }
    pieces
}

pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// An event stream being built: encoded frames with their send times.
#[derive(Debug, Default)]
pub(crate) struct EventStream {
    frames: Vec<(Duration, Bytes)>,
}

fn string(value: &'static str) -> EventHeaderValue {
    EventHeaderValue::String(value.into())
}

impl EventStream {
    /// An `event` frame whose JSON payload is `payload`.
    pub(crate) fn event(&mut self, at: Duration, event_type: &'static str, payload: &Value) {
        let message = Message::new(payload.to_string().into_bytes())
            .add_header(Header::new(":event-type", string(event_type)))
            .add_header(Header::new(":content-type", string("application/json")))
            .add_header(Header::new(":message-type", string("event")));
        self.push(at, &message);
    }

    /// An InvokeModelWithResponseStream `chunk` event: `{"bytes": base64(JSON of event)}`.
    pub(crate) fn chunk(&mut self, at: Duration, event: &Value) {
        let bytes = aws_smithy_types::base64::encode(event.to_string());
        self.event(at, "chunk", &json!({ "bytes": bytes }));
    }

    /// An `exception` frame, which ends the stream with a typed error in the SDK
    /// (`exception_type` is the event-stream name, e.g. `throttlingException`).
    pub(crate) fn exception(&mut self, at: Duration, exception_type: &'static str, message: &str) {
        let message = Message::new(json!({ "message": message }).to_string().into_bytes())
            .add_header(Header::new(":exception-type", string(exception_type)))
            .add_header(Header::new(":content-type", string("application/json")))
            .add_header(Header::new(":message-type", string("exception")));
        self.push(at, &message);
    }

    fn push(&mut self, at: Duration, message: &Message) {
        let mut frame = Vec::new();
        match aws_smithy_eventstream::frame::write_message_to(message, &mut frame) {
            Ok(()) => self.frames.push((at, Bytes::from(frame))),
            Err(error) => tracing::error!(%error, "cannot encode an event-stream frame"),
        }
    }

    /// A 200 response that sends each frame at `start` + its time; a client that goes away
    /// drops the body and with it the rest of the stream.
    pub(crate) fn into_response(self, start: Instant, mut headers: HeaderMap) -> Response {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/vnd.amazon.eventstream"),
        );
        let frames =
            futures::stream::unfold(self.frames.into_iter(), move |mut frames| async move {
                let (at, frame) = frames.next()?;
                tokio::time::sleep_until(start + at).await;
                Some((Ok::<_, Infallible>(frame), frames))
            });
        (StatusCode::OK, headers, Body::from_stream(frames)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_respect_char_boundaries_and_cover_the_text() {
        let text = "abcé€xyz";
        let pieces = chunks(text, 4);
        assert_eq!(pieces, ["abcé", "€x", "yz"]);
        assert_eq!(pieces.concat(), text);
        assert!(chunks("", 4).is_empty());
    }

    #[test]
    fn pacing_puts_the_first_token_at_ttft_then_spaces_by_rate() {
        let pacing = Pacing {
            time_to_first_token: Duration::from_millis(100),
            tokens_per_second: 4,
        };
        assert_eq!(pacing.at(0), Duration::from_millis(100));
        assert_eq!(pacing.at(2), Duration::from_millis(600));
        let unpaced = Pacing {
            time_to_first_token: Duration::ZERO,
            tokens_per_second: 0,
        };
        assert_eq!(unpaced.at(1_000), Duration::ZERO);

        // 20 bytes: a 16-byte delta (4 tokens) and a 4-byte one (1 token).
        let (timed, end) = paced_chunks("abcdefghijklmnopqrst", &pacing);
        assert_eq!(
            timed,
            [
                (Duration::from_millis(100), "abcdefghijklmnop"),
                (Duration::from_millis(1_100), "qrst"),
            ]
        );
        assert_eq!(end, Duration::from_millis(1_350));
    }
}
