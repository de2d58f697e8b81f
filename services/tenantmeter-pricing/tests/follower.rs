//! The price book follower against the real pricing service (and a real
//! redis-server), plus a scripted fake for the stream's rarer messages.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failed unwrap is a failed test

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use tenantmeter_domain::ids::{ModelId, PlanId, TenantId};
use tenantmeter_domain::pricebook::{Offering, PriceBook, PriceKey, PriceScope};
use tenantmeter_pricing::follower::{FollowerError, PriceBookFollower};
use tenantmeter_pricing::{PricingConfig, PricingDeps, RunError};
use tenantmeter_proto::v1 as pb;
use tenantmeter_proto::v1::pricing_admin_service_client::PricingAdminServiceClient;
use tenantmeter_proto::v1::pricing_service_client::PricingServiceClient;
use tenantmeter_proto::v1::pricing_service_server::{PricingService, PricingServiceServer};
use tenantmeter_runtime::client::{self, ClientOptions, TracedChannel};
use tenantmeter_runtime::config::ServerConfig;
use tenantmeter_runtime::server::{HealthHandle, ServeOptions, Services};
use tenantmeter_runtime::shutdown::Shutdown;
use tenantmeter_testkit::{RedisServer, poll_until_ok};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
const SONNET: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";
const TINY: &str = "example.tiny-v1:0";
/// Generous bound on every wait: a loaded CI machine is slow, not broken.
const WAIT: Duration = Duration::from_secs(20);

/// The pricing service on a port of its own.
struct Pricing {
    addr: SocketAddr,
    redis_url: String,
    shutdown: Shutdown,
    task: JoinHandle<Result<(), RunError>>,
}

impl Pricing {
    async fn start(redis_url: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(redis_url, listener)
    }

    fn start_on(redis_url: &str, listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let deps = PricingDeps {
            redis_url: redis_url.to_owned(),
            admin_token: Some(ADMIN_TOKEN.to_owned()),
        };
        let task = tokio::spawn(tenantmeter_pricing::run(
            PricingConfig::default(),
            deps,
            listener,
            shutdown.clone(),
        ));
        Self {
            addr,
            redis_url: redis_url.to_owned(),
            shutdown,
            task,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A follower of this service, its future tracked by `shutdown`.
    fn follower(&self, shutdown: &Shutdown) -> (PriceBookFollower, JoinHandle<()>) {
        follower_of(&self.endpoint(), shutdown)
    }

    /// An admin client, once the service answers.
    async fn admin(&self) -> PricingAdminServiceClient<TracedChannel> {
        let endpoint = self.endpoint();
        let options = ClientOptions::default();
        let channel = poll_until_ok(WAIT, || client::connect(&endpoint, &options))
            .await
            .expect("pricing accepts connections");
        PricingAdminServiceClient::new(channel)
    }

    async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("drained within the timeout")
            .unwrap()
            .unwrap();
    }

    /// Stops the service and starts it again on the same port, against the same Redis.
    async fn restart(self) -> Self {
        let (addr, redis_url) = (self.addr, self.redis_url.clone());
        self.stop().await;
        // The port is normally free at once; retry briefly in case it is not.
        let listener = poll_until_ok(WAIT, || TcpListener::bind(addr))
            .await
            .expect("the old port can be bound again");
        Self::start_on(&redis_url, listener)
    }
}

fn follower_of(endpoint: &str, shutdown: &Shutdown) -> (PriceBookFollower, JoinHandle<()>) {
    let channel = client::connect_lazy(endpoint, &ClientOptions::default()).unwrap();
    let (follower, task) =
        PriceBookFollower::start(PricingServiceClient::new(channel), shutdown.token().clone());
    (follower, shutdown.spawn(task))
}

fn admin<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
    );
    request
}

fn assign(tenant: &str, plan: &str) -> Request<pb::AssignPlansRequest> {
    admin(pb::AssignPlansRequest {
        assignments: vec![pb::TenantPlanAssignment {
            tenant_id: tenant.into(),
            plan_id: plan.into(),
        }],
    })
}

fn tiny_price() -> pb::ModelPrice {
    pb::ModelPrice {
        model_id: TINY.into(),
        display_name: "Tiny".into(),
        region: "us-east-1".into(),
        offering: pb::Offering::OnDemand.into(),
        scope: pb::PriceScope::Regional.into(),
        prices: Some(pb::TokenPrices {
            input_usd_per_million_tokens: "0.10".into(),
            output_usd_per_million_tokens: "0.40".into(),
            ..Default::default()
        }),
    }
}

fn on_demand(model: &str) -> PriceKey {
    PriceKey {
        model_id: ModelId::parse(model).unwrap(),
        region: "us-east-1".into(),
        offering: Offering::OnDemand,
        scope: PriceScope::Regional,
    }
}

fn plan_of(book: &PriceBook, tenant: &str) -> Option<String> {
    book.assignments
        .get(&TenantId::parse(tenant).unwrap())
        .map(|plan| plan.to_string())
}

/// Waits (on the follower's watch receiver) until it holds `version` or later.
async fn reaches(follower: &PriceBookFollower, version: u64) -> Arc<PriceBook> {
    let mut changes = follower.changes();
    let waited = tokio::time::timeout(
        WAIT,
        changes.wait_for(|held| held.as_ref().is_some_and(|b| b.version >= version)),
    )
    .await;
    assert!(
        waited.is_ok(),
        "follower at version {} did not reach {version}",
        follower.version()
    );
    let held = waited
        .unwrap()
        .expect("the follower is still running")
        .clone();
    held.unwrap()
}

/// Cancels `shutdown` and checks the follower future ends within a couple of seconds.
async fn ends_promptly(shutdown: &Shutdown, task: JoinHandle<()>) {
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("the follower ends within 2s of shutdown")
        .unwrap();
}

#[tokio::test]
async fn the_follower_becomes_ready_with_the_seeded_book() {
    let redis = RedisServer::start().await.unwrap();
    let pricing = Pricing::start(&redis.url()).await;
    let shutdown = Shutdown::new();
    let (follower, task) = pricing.follower(&shutdown);

    let book = follower.ready(WAIT).await.unwrap();
    assert!(book.version >= 1, "version {}", book.version);
    assert_eq!(follower.version(), book.version);
    let sonnet = &book.prices[&on_demand(SONNET)];
    assert_eq!(sonnet.prices.input.unwrap().to_per_million_string(), "3.00");
    assert_eq!(
        follower.current().unwrap().plans.len(),
        book.plans.len(),
        "current() is the book ready() returned"
    );

    ends_promptly(&shutdown, task).await;
    // The last book stays readable after the follower stopped.
    assert_eq!(follower.version(), book.version);
    pricing.stop().await;
}

#[tokio::test]
async fn admin_changes_reach_the_follower() {
    let redis = RedisServer::start().await.unwrap();
    let pricing = Pricing::start(&redis.url()).await;
    let shutdown = Shutdown::new();
    let (follower, task) = pricing.follower(&shutdown);
    let start = follower.ready(WAIT).await.unwrap();
    let mut admin_client = pricing.admin().await;

    let v1 = admin_client
        .upsert_model_prices(admin(pb::UpsertModelPricesRequest {
            prices: vec![tiny_price()],
        }))
        .await
        .unwrap()
        .into_inner()
        .version;
    let book = reaches(&follower, v1).await;
    assert_eq!(book.version, v1);
    assert_eq!(book.prices[&on_demand(TINY)].display_name, "Tiny");
    assert_eq!(
        book.updated_at, start.updated_at,
        "a change keeps the book's time"
    );

    let gold = pb::Plan {
        plan_id: "gold".into(),
        display_name: "Gold".into(),
        tier_mode: pb::TierMode::Graduated.into(),
        tiers: vec![pb::Tier {
            up_to_usd: String::new(),
            rate: Some(pb::tier::Rate::Multiplier("2".into())),
        }],
        ..Default::default()
    };
    let v2 = admin_client
        .upsert_plan(admin(pb::UpsertPlanRequest { plan: Some(gold) }))
        .await
        .unwrap()
        .into_inner()
        .version;
    let v3 = admin_client
        .assign_plans(assign("acme", "gold"))
        .await
        .unwrap()
        .into_inner()
        .version;
    assert_eq!((v2, v3), (v1 + 1, v1 + 2));
    let book = reaches(&follower, v3).await;
    assert_eq!(book.version, v3);
    assert!(book.plans.contains_key(&PlanId::parse("gold").unwrap()));
    assert_eq!(plan_of(&book, "acme").as_deref(), Some("gold"));
    // Applied one by one, the copy is exactly the service's book.
    let served = PricingServiceClient::new(
        client::connect(&pricing.endpoint(), &ClientOptions::default())
            .await
            .unwrap(),
    )
    .get_price_book(pb::GetPriceBookRequest {})
    .await
    .unwrap()
    .into_inner()
    .price_book
    .unwrap();
    let mut served = tenantmeter_pricing::convert::book_from_proto(&served).unwrap();
    served.updated_at = book.updated_at;
    assert_eq!(*book, served);

    ends_promptly(&shutdown, task).await;
    pricing.stop().await;
}

#[tokio::test]
async fn the_follower_reconnects_after_pricing_restarts() {
    let redis = RedisServer::start().await.unwrap();
    let pricing = Pricing::start(&redis.url()).await;
    let shutdown = Shutdown::new();
    let (follower, task) = pricing.follower(&shutdown);
    let before = follower.ready(WAIT).await.unwrap();

    let pricing = pricing.restart().await;
    // Meanwhile the last book was kept.
    assert_eq!(follower.version(), before.version);

    let version = pricing
        .admin()
        .await
        .assign_plans(assign("acme", "pro"))
        .await
        .unwrap()
        .into_inner()
        .version;
    assert_eq!(version, before.version + 1, "same Redis, same book");
    let book = reaches(&follower, version).await;
    assert_eq!(plan_of(&book, "acme").as_deref(), Some("pro"));

    ends_promptly(&shutdown, task).await;
    pricing.stop().await;
}

#[tokio::test]
async fn shutdown_ends_the_follower_promptly() {
    let redis = RedisServer::start().await.unwrap();
    let pricing = Pricing::start(&redis.url()).await;
    let shutdown = Shutdown::new();
    // A follower waiting on its open stream.
    let (streaming, streaming_task) = pricing.follower(&shutdown);
    streaming.ready(WAIT).await.unwrap();
    // A follower retrying, with backoff, a port that drops every connection.
    let refusing = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refusing_addr = refusing.local_addr().unwrap();
    let (accepted, mut accepted_rx) = watch::channel(0_u32);
    let refuser = tokio::spawn(async move {
        while let Ok((socket, _)) = refusing.accept().await {
            drop(socket);
            accepted.send_modify(|n| *n += 1);
        }
    });
    let (retrying, retrying_task) = follower_of(&format!("http://{refusing_addr}"), &shutdown);
    tokio::time::timeout(WAIT, accepted_rx.wait_for(|n| *n >= 2))
        .await
        .expect("the follower retries")
        .unwrap();
    assert_eq!(
        retrying
            .ready(Duration::from_millis(200))
            .await
            .unwrap_err(),
        FollowerError::Timeout(Duration::from_millis(200))
    );
    // A follower stuck in its call: the port accepts TCP but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stuck, stuck_task) = follower_of(
        &format!("http://{}", silent.local_addr().unwrap()),
        &shutdown,
    );

    shutdown.trigger();
    assert!(
        shutdown.wait_for_tasks(Duration::from_secs(2)).await,
        "every follower ended within 2s"
    );
    assert!(streaming_task.is_finished() && retrying_task.is_finished());
    assert!(stuck_task.is_finished());
    for follower in [&retrying, &stuck] {
        assert_eq!(
            follower.ready(WAIT).await.unwrap_err(),
            FollowerError::Stopped
        );
    }
    assert!(streaming.current().is_some(), "the last book is kept");
    refuser.abort();
    drop(silent);
    pricing.stop().await;
}

/// A `PricingService` that answers each `WatchPriceBook` with the next scripted
/// messages (the last script then stays open until shutdown), recording the
/// versions asked for.
#[derive(Clone)]
struct Scripted {
    scripts: Arc<Mutex<VecDeque<Vec<pb::WatchPriceBookResponse>>>>,
    asked: watch::Sender<Vec<u64>>,
    shutdown: Shutdown,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchPriceBookResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PricingService for Scripted {
    async fn quote(
        &self,
        _: Request<pb::QuoteRequest>,
    ) -> Result<Response<pb::QuoteResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn get_price_book(
        &self,
        _: Request<pb::GetPriceBookRequest>,
    ) -> Result<Response<pb::GetPriceBookResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    type WatchPriceBookStream = WatchStream;

    async fn watch_price_book(
        &self,
        request: Request<pb::WatchPriceBookRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        self.asked
            .send_modify(|asked| asked.push(request.get_ref().known_version));
        let mut scripts = self.scripts.lock().unwrap();
        let last = scripts.len() <= 1;
        let messages = scripts.pop_front().unwrap_or_default();
        let sent = futures::stream::iter(messages.into_iter().map(Ok));
        if !last {
            return Ok(Response::new(Box::pin(sent)));
        }
        // Then open until shutdown, as the real service is.
        let until_shutdown = futures::stream::once(self.shutdown.triggered())
            .filter_map(|()| futures::future::ready(None));
        Ok(Response::new(Box::pin(sent.chain(until_shutdown))))
    }

    async fn get_tenant_plan(
        &self,
        _: Request<pb::GetTenantPlanRequest>,
    ) -> Result<Response<pb::GetTenantPlanResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }
}

#[tokio::test]
async fn a_skipped_version_makes_the_follower_fetch_the_whole_book_again() {
    // A real book to script with: the shipped seed.
    let seed = tenantmeter_pricing::load_seed(&PricingConfig::default()).unwrap();
    let seeded = tenantmeter_pricing::convert::book_to_proto(&seed.apply_to(None));
    let whole = |version: u64| pb::WatchPriceBookResponse {
        version,
        update: Some(pb::watch_price_book_response::Update::Snapshot(
            pb::PriceBook {
                version,
                ..seeded.clone()
            },
        )),
    };
    let upsert = |version: u64| pb::WatchPriceBookResponse {
        version,
        update: Some(pb::watch_price_book_response::Update::PricesUpserted(
            pb::UpsertModelPricesRequest {
                prices: vec![tiny_price()],
            },
        )),
    };
    let (asked, mut asked_rx) = watch::channel(Vec::new());
    let server_shutdown = Shutdown::new();
    let fake = Scripted {
        scripts: Arc::new(Mutex::new(VecDeque::from([
            // The whole book, one change, then the stream ends (a restart).
            vec![whole(5), upsert(6)],
            // Resumed from 6, pricing sends 8: version 7 was skipped.
            vec![upsert(8)],
            // Asked for the whole book again.
            vec![whole(9)],
        ]))),
        asked,
        shutdown: server_shutdown.clone(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = {
        let server_shutdown = server_shutdown.clone();
        tokio::spawn(async move {
            tenantmeter_runtime::server::serve(
                ServeOptions::new(listener, ServerConfig::with_listen(addr)),
                Services::new().add_service(PricingServiceServer::new(fake)),
                &HealthHandle::new(),
                server_shutdown,
            )
            .await
        })
    };

    let shutdown = Shutdown::new();
    let (follower, task) = follower_of(&format!("http://{addr}"), &shutdown);
    let book = reaches(&follower, 9).await;
    assert!(
        !book.prices.contains_key(&on_demand(TINY)),
        "the whole book replaced the copy"
    );
    tokio::time::timeout(WAIT, asked_rx.wait_for(|asked| asked.len() >= 3))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*asked_rx.borrow(), [0, 6, 0]);

    ends_promptly(&shutdown, task).await;
    server_shutdown.trigger();
    tokio::time::timeout(WAIT, server)
        .await
        .expect("the fake drains")
        .unwrap()
        .unwrap();
}
