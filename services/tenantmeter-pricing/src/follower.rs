//! The client side of `WatchPriceBook`: a live in-memory copy of the price book
//! for other services (the meter first), so they can price each request from
//! memory instead of calling pricing for it.
//!
//! [`PriceBookFollower::start`] returns the handle that readers clone and a
//! future that the caller runs as a tracked background task. The future keeps
//! one `WatchPriceBook` stream open: a whole book (`snapshot`) replaces the
//! copy, each change is applied in version order, and a change that skips a
//! version makes it ask for the whole book again. When the stream ends or fails
//! (pricing restarted, the network broke) it reconnects with backoff, and
//! readers keep the last book meanwhile. It ends when the shutdown token is
//! cancelled.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//!
//! use tenantmeter_pricing::follower::PriceBookFollower;
//! use tenantmeter_proto::v1::pricing_service_client::PricingServiceClient;
//! use tenantmeter_runtime::client::{self, ClientOptions};
//! use tenantmeter_runtime::shutdown::Shutdown;
//!
//! let shutdown = Shutdown::new();
//! let channel = client::connect_lazy("http://127.0.0.1:50053", &ClientOptions::default())?;
//! let (prices, task) =
//!     PriceBookFollower::start(PricingServiceClient::new(channel), shutdown.token().clone());
//! shutdown.spawn(task);
//! let book = prices.ready(Duration::from_secs(10)).await?; // start-up readiness
//! // Per request: `prices.current()`, never an RPC.
//! # let _ = book; Ok(()) }
//! ```
//!
//! The copy's `updated_at` is exact as of the last whole book received: the
//! stream's change messages carry no commit time, so a change applied
//! incrementally keeps the previous `updated_at` (only `version` moves).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tenantmeter_domain::pricebook::PriceBook;
use tenantmeter_proto::v1 as pb;
use tenantmeter_proto::v1::pricing_service_client::PricingServiceClient;
use tenantmeter_runtime::client::TracedChannel;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::book::change_from_message;
use crate::convert;
use crate::error::PricingError;

/// Pause before the first reconnect, and again after any message was applied.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between reconnects.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What the follower holds: nothing until the first whole book arrives.
type Held = Option<Arc<PriceBook>>;

/// A live copy of the price book held by another service.
///
/// Cheap to clone; every clone sees the same copy. Reads never wait on the
/// network: they clone an `Arc` of the current book.
#[derive(Debug, Clone)]
pub struct PriceBookFollower {
    book: watch::Receiver<Held>,
}

/// Why [`PriceBookFollower::ready`] returned without a book.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FollowerError {
    /// Pricing did not send a whole book in time (not reachable, or slow).
    #[error("no price book received from pricing within {0:?}")]
    Timeout(Duration),
    /// The background future ended (shutdown) before any book arrived.
    #[error("the price book follower stopped before receiving a price book")]
    Stopped,
}

impl PriceBookFollower {
    /// Starts following: returns the follower and the future to run as a
    /// tracked background task (spawn it with `Shutdown::spawn`). Nothing
    /// happens until the future runs.
    ///
    /// The future never gives up on errors: it reconnects with a backoff of
    /// 100 ms doubling to 5 s (back to 100 ms once a message is applied). It
    /// ends promptly once `shutdown` is cancelled, or once every follower and
    /// every [`Self::changes`] receiver is dropped (no one is left to read).
    #[must_use = "the follower only follows while its future runs"]
    pub fn start(
        client: PricingServiceClient<TracedChannel>,
        shutdown: CancellationToken,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (sender, book) = watch::channel(None);
        (Self { book }, follow(client, sender, shutdown))
    }

    /// The current book, if one has been received.
    #[must_use]
    pub fn current(&self) -> Option<Arc<PriceBook>> {
        self.book.borrow().clone()
    }

    /// Waits until a book is held (or `timeout` passes): for start-up readiness.
    pub async fn ready(&self, timeout: Duration) -> Result<Arc<PriceBook>, FollowerError> {
        let mut book = self.book.clone();
        let held = tokio::time::timeout(timeout, book.wait_for(Option::is_some))
            .await
            .map_err(|_| FollowerError::Timeout(timeout))?
            .map_err(|_| FollowerError::Stopped)?
            .clone();
        held.ok_or(FollowerError::Stopped)
    }

    /// Version held, 0 if none.
    #[must_use]
    pub fn version(&self) -> u64 {
        version_of(&self.book.borrow())
    }

    /// Subscribe to changes (for tests and health): a clone of the watch
    /// receiver, which sees every book the follower installs. The version may
    /// move backwards when pricing itself went back (a reseeded Redis): a whole
    /// book from pricing always replaces the copy.
    #[must_use]
    pub fn changes(&self) -> watch::Receiver<Held> {
        self.book.clone()
    }
}

fn version_of(held: &Held) -> u64 {
    held.as_ref().map_or(0, |book| book.version)
}

/// Why one `WatchPriceBook` stream was left.
#[derive(Debug)]
enum Ended {
    /// Pricing closed the stream (it is shutting down).
    Closed,
    /// The call or the stream failed.
    Failed(tonic::Status),
    /// A message could not be applied to the copy; the whole book is needed.
    Desync(Desync),
}

/// A message that does not fit the copy held.
#[derive(Debug, thiserror::Error)]
enum Desync {
    #[error("version {got} does not follow the version held ({held})")]
    Gap { held: u64, got: u64 },
    #[error("a change (version {got}) arrived before any whole book")]
    NoBook { got: u64 },
    #[error("cannot apply version {version}: {source}")]
    Invalid { version: u64, source: PricingError },
}

/// What applying one message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Absorbed {
    /// A whole book was installed.
    Whole(u64),
    /// A change was applied.
    Change(u64),
    /// A change already held was skipped.
    Stale,
}

/// The background future: one stream at a time, reconnecting until shutdown.
async fn follow(
    mut client: PricingServiceClient<TracedChannel>,
    book: watch::Sender<Held>,
    shutdown: CancellationToken,
) {
    let mut backoff = FIRST_BACKOFF;
    // Ask for the whole book (known_version 0) instead of the changes after
    // the version held: at first, and after a gap or a message that did not apply.
    let mut whole = true;
    loop {
        let ended = tokio::select! {
            () = shutdown.cancelled() => return,
            () = book.closed() => return,
            ended = stream_once(&mut client, &book, &mut whole, &mut backoff) => ended,
        };
        let version = version_of(&book.borrow());
        match &ended {
            Ended::Closed => tracing::warn!(
                version,
                retry_in = ?backoff,
                "pricing closed the price book stream; reconnecting"
            ),
            Ended::Failed(status) => tracing::warn!(
                version,
                retry_in = ?backoff,
                code = ?status.code(),
                message = status.message(),
                "price book stream failed; reconnecting"
            ),
            Ended::Desync(desync) => tracing::warn!(
                version,
                retry_in = ?backoff,
                error = %desync,
                "price book stream out of step; reconnecting for the whole book"
            ),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = book.closed() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Opens one stream and applies its messages until it ends.
async fn stream_once(
    client: &mut PricingServiceClient<TracedChannel>,
    book: &watch::Sender<Held>,
    whole: &mut bool,
    backoff: &mut Duration,
) -> Ended {
    let known_version = if *whole {
        0
    } else {
        version_of(&book.borrow())
    };
    let mut stream = match client
        .watch_price_book(pb::WatchPriceBookRequest { known_version })
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => return Ended::Failed(status),
    };
    tracing::debug!(known_version, "following the price book");
    loop {
        let message = match stream.message().await {
            Ok(Some(message)) => message,
            Ok(None) => return Ended::Closed,
            Err(status) => return Ended::Failed(status),
        };
        match absorb(book, &message) {
            Ok(absorbed) => {
                *backoff = FIRST_BACKOFF;
                match absorbed {
                    Absorbed::Whole(version) => {
                        *whole = false;
                        tracing::info!(version, "price book received");
                    }
                    Absorbed::Change(version) => {
                        tracing::debug!(version, "price book change applied");
                    }
                    Absorbed::Stale => {}
                }
            }
            Err(desync) => {
                *whole = true;
                return Ended::Desync(desync);
            }
        }
    }
}

/// Applies one stream message to the copy in `book`.
fn absorb(
    book: &watch::Sender<Held>,
    message: &pb::WatchPriceBookResponse,
) -> Result<Absorbed, Desync> {
    use pb::watch_price_book_response::Update;
    let invalid = |source| Desync::Invalid {
        version: message.version,
        source,
    };
    let Some(update) = &message.update else {
        return Err(invalid(PricingError::InvalidArgument {
            field: "update".into(),
            reason: "is empty".into(),
        }));
    };
    if let Update::Snapshot(snapshot) = update {
        // Pricing is the authority: its whole book replaces the copy even at a
        // lower version (its Redis was reseeded), or the copy would stay stale.
        let next = convert::book_from_proto(snapshot).map_err(invalid)?;
        let version = next.version;
        book.send_replace(Some(Arc::new(next)));
        return Ok(Absorbed::Whole(version));
    }
    let held = book.borrow().clone();
    let Some(current) = held else {
        return Err(Desync::NoBook {
            got: message.version,
        });
    };
    if message.version <= current.version {
        return Ok(Absorbed::Stale);
    }
    if message.version != current.version + 1 {
        return Err(Desync::Gap {
            held: current.version,
            got: message.version,
        });
    }
    let Some(change) = change_from_message(update).map_err(invalid)? else {
        // Unreachable: whole books were handled above.
        return Err(invalid(PricingError::InvalidArgument {
            field: "update".into(),
            reason: "is not a change".into(),
        }));
    };
    let mut next = (*current).clone();
    next.apply(change, message.version, current.updated_at)
        .map_err(|e| invalid(e.into()))?;
    book.send_replace(Some(Arc::new(next)));
    Ok(Absorbed::Change(message.version))
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use tenantmeter_domain::ids::TenantId;

    use super::*;

    fn seeded() -> PriceBook {
        let seed = crate::load_seed(&crate::PricingConfig::default()).unwrap();
        {
            let mut book = seed.apply_to(None);
            book.version = 3;
            book.updated_at = UNIX_EPOCH + Duration::from_secs(1_790_000_000);
            book
        }
    }

    fn whole(book: &PriceBook) -> pb::WatchPriceBookResponse {
        pb::WatchPriceBookResponse {
            version: book.version,
            update: Some(pb::watch_price_book_response::Update::Snapshot(
                convert::book_to_proto(book),
            )),
        }
    }

    fn assign(version: u64, tenant: &str, plan: &str) -> pb::WatchPriceBookResponse {
        pb::WatchPriceBookResponse {
            version,
            update: Some(pb::watch_price_book_response::Update::PlansAssigned(
                pb::AssignPlansRequest {
                    assignments: vec![pb::TenantPlanAssignment {
                        tenant_id: tenant.into(),
                        plan_id: plan.into(),
                    }],
                },
            )),
        }
    }

    fn held(book: &watch::Sender<Held>) -> Arc<PriceBook> {
        book.borrow().clone().unwrap()
    }

    #[test]
    fn changes_apply_in_order_and_keep_the_books_time() {
        let seeded = seeded();
        let plan = seeded.plans.keys().next().unwrap().to_string();
        let (book, _reader) = watch::channel(None);

        assert!(matches!(
            absorb(&book, &assign(4, "acme", &plan)),
            Err(Desync::NoBook { got: 4 })
        ));
        assert_eq!(absorb(&book, &whole(&seeded)).unwrap(), Absorbed::Whole(3));
        assert_eq!(
            absorb(&book, &assign(4, "acme", &plan)).unwrap(),
            Absorbed::Change(4)
        );
        let after = held(&book);
        assert_eq!(after.version, 4);
        assert_eq!(after.updated_at, seeded.updated_at);
        assert_eq!(
            after.assignments[&TenantId::parse("acme").unwrap()].as_str(),
            plan
        );

        // Already held: skipped, the copy untouched.
        assert_eq!(
            absorb(&book, &assign(4, "globex", &plan)).unwrap(),
            Absorbed::Stale
        );
        assert_eq!(held(&book).assignments.len(), 1);

        // A skipped version or a change that does not apply: ask for the whole book.
        assert!(matches!(
            absorb(&book, &assign(6, "globex", &plan)),
            Err(Desync::Gap { held: 4, got: 6 })
        ));
        assert!(matches!(
            absorb(&book, &assign(5, "globex", "no-such-plan")),
            Err(Desync::Invalid { version: 5, .. })
        ));
        assert_eq!(held(&book).version, 4);

        // A whole book replaces the copy, even an older one.
        assert_eq!(absorb(&book, &whole(&seeded)).unwrap(), Absorbed::Whole(3));
        assert!(held(&book).assignments.is_empty());
    }

    #[tokio::test]
    async fn its_futures_can_be_spawned() {
        fn send<T: Send + 'static>(_: &T) {}
        let channel = tenantmeter_runtime::client::connect_lazy(
            "http://127.0.0.1:1",
            &tenantmeter_runtime::client::ClientOptions::default(),
        )
        .unwrap();
        let shutdown = CancellationToken::new();
        let (follower, task) =
            PriceBookFollower::start(PricingServiceClient::new(channel), shutdown.clone());
        send(&task);
        let ready = async move { follower.ready(Duration::ZERO).await };
        send(&ready);
        shutdown.cancel();
        task.await;
        assert_eq!(ready.await.unwrap_err(), FollowerError::Stopped);
    }
}
