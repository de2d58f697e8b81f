//! Fixtures of the registry and admin tests: a registry on a throwaway
//! redis-server (or cluster), the Bedrock emulator with the real
//! aws-sdk-bedrock pointed at it, pricing on its own redis-server with a price
//! book follower, and `GatewayAdminService` served over gRPC behind the admin
//! interceptor, as a deployment serves it.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)] // test support shared by several test files

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_sdk_bedrock::config::Credentials;
use tenantmeter_gateway::admin::{AdminOptions, GatewayAdmin, PricingAdmin};
use tenantmeter_gateway::provision::{ProvisionConfig, Provisioner};
use tenantmeter_gateway::registry::{Registry, RegistryOptions};
use tenantmeter_pricing::follower::PriceBookFollower;
use tenantmeter_proto::v1::gateway_admin_service_client::GatewayAdminServiceClient;
use tenantmeter_proto::v1::gateway_admin_service_server::GatewayAdminServiceServer;
use tenantmeter_proto::v1::pricing_admin_service_client::PricingAdminServiceClient;
use tenantmeter_proto::v1::pricing_service_client::PricingServiceClient;
use tenantmeter_runtime::auth::AdminAuth;
use tenantmeter_runtime::client::{self, ClientOptions};
use tenantmeter_runtime::clock::ManualClock;
use tenantmeter_runtime::shutdown::Shutdown;
use tenantmeter_testkit::{RedisServer, poll_until_ok};
use tokio::net::TcpListener;
use tonic::Request;
use tonic::transport::Channel;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// Start of every test's manual clock: 2026-09-21T...Z, a whole second.
pub const START_SECS: u64 = 1_790_000_000;
pub const START_MS: i64 = 1_790_000_000_000;
pub const HAIKU: &str = "anthropic.claude-3-haiku-20240307-v1:0";
pub const SONNET: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";
pub const SONNET_45: &str = "anthropic.claude-sonnet-4-5-20250929-v1:0";
pub const SONNET_4: &str = "anthropic.claude-sonnet-4-20250514-v1:0";
pub const ACCOUNT: &str = tenantmeter_emulator::DEFAULT_ACCOUNT_ID;
/// Regions the test provisioner has clients for; the price book prices only
/// the first two.
pub const REGIONS: [&str; 3] = ["us-east-1", "us-west-2", "eu-west-1"];
/// Redis deadline of the registries under test: short, so outage tests are quick.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

pub fn clock() -> ManualClock {
    ManualClock::at_unix_secs(START_SECS)
}

pub fn now_ms(clock: &ManualClock) -> i64 {
    use tenantmeter_runtime::clock::Clock as _;
    i64::try_from(
        clock
            .now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// A registry on one redis-server, following changes every `refresh`.
pub async fn registry(redis: &RedisServer, clock: &ManualClock, refresh: Duration) -> Registry {
    Registry::connect_with(
        &[redis.url()],
        false,
        REDIS_TIMEOUT,
        Arc::new(clock.clone()),
        RegistryOptions {
            refresh_interval: refresh,
            ..RegistryOptions::default()
        },
    )
    .await
    .unwrap()
}

/// A raw connection, to read what the registry stored.
pub async fn raw(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis
        .client()
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The Bedrock emulator on a free port.
pub struct Bedrock {
    pub addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Bedrock {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(tenantmeter_emulator::serve(
            listener,
            tenantmeter_emulator::EmulatorConfig::default(),
            async move {
                let _ = stopped.await;
            },
        ));
        Self { addr, _stop: stop }
    }

    /// The real SDK client for `region`, with no way to reach AWS: static
    /// credentials, the emulator as endpoint, no retries (faults surface at once).
    pub async fn client(&self, region: &str) -> aws_sdk_bedrock::Client {
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_owned()))
            .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
            .endpoint_url(format!("http://{}", self.addr))
            .retry_config(RetryConfig::disabled())
            .load()
            .await;
        aws_sdk_bedrock::Client::new(&sdk)
    }

    pub async fn provisioner(&self, config: ProvisionConfig) -> Provisioner {
        let mut clients = BTreeMap::new();
        for region in REGIONS {
            clients.insert(region.to_owned(), self.client(region).await);
        }
        Provisioner::new(clients, config).unwrap()
    }

    /// Application profiles in a region, as (name, ARN).
    pub async fn profiles(&self, region: &str) -> Vec<(String, String)> {
        self.client(region)
            .await
            .list_inference_profiles()
            .type_equals(aws_sdk_bedrock::types::InferenceProfileType::Application)
            .send()
            .await
            .unwrap()
            .inference_profile_summaries()
            .iter()
            .map(|p| {
                (
                    p.inference_profile_name().to_owned(),
                    p.inference_profile_arn().to_owned(),
                )
            })
            .collect()
    }

    /// A profile's tags, by key.
    pub async fn tags(&self, region: &str, arn: &str) -> BTreeMap<String, String> {
        self.client(region)
            .await
            .list_tags_for_resource()
            .resource_arn(arn)
            .send()
            .await
            .unwrap()
            .tags()
            .iter()
            .map(|t| (t.key().to_owned(), t.value().to_owned()))
            .collect()
    }
}

pub fn provision_config() -> ProvisionConfig {
    ProvisionConfig {
        account_id: ACCOUNT.to_owned(),
        regions: vec!["us-east-1".to_owned()],
        environment: "test".to_owned(),
        ..ProvisionConfig::default()
    }
}

/// Everything the admin service needs, and the service itself on gRPC.
pub struct AdminStack {
    pub redis: RedisServer,
    pricing_redis: RedisServer,
    pub pricing_addr: SocketAddr,
    pub bedrock: Bedrock,
    pub clock: ManualClock,
    pub registry: Registry,
    pub prices: PriceBookFollower,
    pub admin_addr: SocketAddr,
    shutdown: Shutdown,
}

async fn channel(addr: SocketAddr) -> Channel {
    poll_until_ok(Duration::from_secs(20), || async {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await
    })
    .await
    .unwrap()
}

impl AdminStack {
    pub async fn start() -> Self {
        let shutdown = Shutdown::new();
        let pricing_redis = RedisServer::start().await.unwrap();
        let pricing_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pricing_addr = pricing_listener.local_addr().unwrap();
        {
            let deps = tenantmeter_pricing::PricingDeps {
                redis_url: pricing_redis.url(),
                admin_token: Some(ADMIN_TOKEN.to_owned()),
            };
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                tenantmeter_pricing::run(
                    tenantmeter_pricing::PricingConfig::default(),
                    deps,
                    pricing_listener,
                    shutdown,
                )
                .await
                .unwrap();
            });
        }
        let pricing_url = format!("http://{pricing_addr}");
        let (prices, follow) = PriceBookFollower::start(
            PricingServiceClient::new(
                client::connect_lazy(&pricing_url, &ClientOptions::default()).unwrap(),
            ),
            shutdown.token().clone(),
        );
        shutdown.spawn(follow);
        prices.ready(Duration::from_secs(30)).await.unwrap();

        let redis = RedisServer::start().await.unwrap();
        let clock = clock();
        // A long refresh: the admin tests read through the replica that writes.
        let registry = registry(&redis, &clock, Duration::from_secs(1)).await;
        let bedrock = Bedrock::start().await;
        let mut stack = Self {
            redis,
            pricing_redis,
            pricing_addr,
            bedrock,
            clock,
            registry,
            prices,
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            shutdown,
        };
        stack.admin_addr = stack.serve(provision_config()).await;
        stack
    }

    /// The pricing admin client the gateway is given (it carries the token).
    pub fn pricing_admin(&self) -> PricingAdmin {
        PricingAdmin::new(
            PricingAdminServiceClient::new(
                client::connect_lazy(
                    &format!("http://{}", self.pricing_addr),
                    &ClientOptions::default(),
                )
                .unwrap(),
            ),
            Some(ADMIN_TOKEN.to_owned()),
        )
    }

    /// A `GatewayAdmin` over this stack's registry, with its own provisioner
    /// settings.
    pub async fn admin(&self, config: ProvisionConfig) -> GatewayAdmin {
        GatewayAdmin::new(
            self.registry.clone(),
            self.bedrock.provisioner(config).await,
            self.pricing_admin(),
            self.prices.clone(),
            AdminOptions::default(),
        )
    }

    /// Serves a `GatewayAdmin` with these provisioner settings behind the
    /// admin interceptor; its address.
    pub async fn serve(&self, config: ProvisionConfig) -> SocketAddr {
        let admin = self.admin(config).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = self.shutdown.token().clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(GatewayAdminServiceServer::with_interceptor(
                    admin,
                    AdminAuth::new(Some(ADMIN_TOKEN.to_owned())),
                ))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    token.cancelled_owned(),
                )
                .await
                .unwrap();
        });
        addr
    }

    pub async fn client(&self) -> GatewayAdminServiceClient<Channel> {
        GatewayAdminServiceClient::new(channel(self.admin_addr).await)
    }

    pub async fn client_at(&self, addr: SocketAddr) -> GatewayAdminServiceClient<Channel> {
        GatewayAdminServiceClient::new(channel(addr).await)
    }

    pub async fn pricing(&self) -> PricingServiceClient<Channel> {
        PricingServiceClient::new(channel(self.pricing_addr).await)
    }

    pub fn stop(&self) {
        self.shutdown.trigger();
    }
}

impl Drop for AdminStack {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// `message` with the admin token, as an admin client sends it.
pub fn admin<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
    );
    request
}

/// The field of the one BadRequest violation a status carries.
pub fn bad_field(status: &tonic::Status) -> String {
    use tonic_types::StatusExt as _;
    let violations = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest in {status:?}"))
        .field_violations;
    assert_eq!(violations.len(), 1, "{violations:?}");
    violations[0].field.clone()
}
