//! What every tenantmeter service must expose, checked on each service that
//! exists: its gRPC services listed through reflection v1alpha (what grpcurl
//! 1.8.6 speaks) and v1, health SERVING for each, and NOT_SERVING once shutdown
//! begins. Each service runs in-process on port 0 against its own redis-server
//! (the meter and alerting with the pricing service they follow).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test support: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::Duration;

use tenantmeter_pricing::{PricingConfig, PricingDeps};
use tenantmeter_runtime::client::{self, ClientOptions, TracedChannel};
use tenantmeter_runtime::shutdown::Shutdown;
use tenantmeter_testkit::{RedisServer, poll_until_ok};
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

async fn channel(addr: SocketAddr) -> TracedChannel {
    client::connect(&format!("http://{addr}"), &ClientOptions::default())
        .await
        .unwrap()
}

async fn status(addr: SocketAddr, service: &str) -> Result<i32, tonic::Status> {
    HealthClient::new(channel(addr).await)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map(|reply| reply.into_inner().status)
}

async fn list_v1alpha(addr: SocketAddr) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel(addr).await)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    match responses.next().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            names
        }
        other => panic!("expected a service list, got {other:?}"),
    }
}

async fn describe_v1(addr: SocketAddr, symbol: &str) -> usize {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(symbol.to_owned())),
    };
    let mut responses = ServerReflectionClient::new(channel(addr).await)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    match responses.next().await.unwrap().unwrap().message_response {
        Some(MessageResponse::FileDescriptorResponse(files)) => files.file_descriptor_proto.len(),
        other => panic!("{symbol} not resolved: {other:?}"),
    }
}

/// Pricing on port 0, for the services that follow its price book.
async fn start_pricing(
    redis: &RedisServer,
    shutdown: &Shutdown,
) -> (
    SocketAddr,
    tokio::task::JoinHandle<Result<(), tenantmeter_pricing::RunError>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pricing = tokio::spawn(tenantmeter_pricing::run(
        PricingConfig::default(),
        PricingDeps {
            redis_url: redis.url(),
            admin_token: None,
        },
        listener,
        shutdown.clone(),
    ));
    (addr, pricing)
}

#[tokio::test]
async fn pricing_serves_health_and_reflection_and_reports_draining() {
    let redis = RedisServer::start().await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let deps = PricingDeps {
        redis_url: redis.url(),
        admin_token: None,
    };
    let server = tokio::spawn(tenantmeter_pricing::run(
        PricingConfig::default(),
        deps,
        listener,
        shutdown.clone(),
    ));

    let serving = ServingStatus::Serving as i32;
    poll_until_ok(Duration::from_secs(20), || async {
        match status(addr, "").await {
            Ok(code) if code == serving => Ok(()),
            Ok(code) => Err(format!("status {code}")),
            Err(error) => Err(error.to_string()),
        }
    })
    .await
    .unwrap();

    let services = list_v1alpha(addr).await;
    assert_eq!(
        services,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "tenantmeter.v1.PricingAdminService",
            "tenantmeter.v1.PricingService",
        ]
    );
    for service in [
        "tenantmeter.v1.PricingService",
        "tenantmeter.v1.PricingAdminService",
    ] {
        assert_eq!(status(addr, service).await.unwrap(), serving, "{service}");
        assert!(describe_v1(addr, service).await > 0);
    }
    // Message types used by the RPCs resolve too, imports included.
    assert!(describe_v1(addr, "tenantmeter.v1.QuoteResponse").await > 0);

    // A watch on health sees NOT_SERVING as soon as shutdown begins, before
    // the server stops accepting.
    let mut watch = HealthClient::new(channel(addr).await)
        .watch(HealthCheckRequest {
            service: "tenantmeter.v1.PricingService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status, serving);
    shutdown.trigger();
    let not_serving = ServingStatus::NotServing as i32;
    let next = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("a health update after shutdown");
    assert!(
        matches!(&next, Some(Ok(reply)) if reply.status == not_serving),
        "{next:?}"
    );
    drop(watch);
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("drained in time")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn meter_serves_health_and_reflection() {
    let redis = RedisServer::start().await.unwrap();
    let shutdown = Shutdown::new();
    let (pricing_addr, pricing) = start_pricing(&redis, &shutdown).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let meter = tokio::spawn(tenantmeter_meter::run(
        tenantmeter_meter::MeterConfig {
            pricing_url: format!("http://{pricing_addr}"),
            ..Default::default()
        },
        tenantmeter_meter::MeterDeps {
            redis_url: redis.url(),
            clock: std::sync::Arc::new(tenantmeter_runtime::clock::SystemClock),
        },
        listener,
        shutdown.clone(),
    ));
    let serving = ServingStatus::Serving as i32;
    poll_until_ok(Duration::from_secs(30), || async {
        match status(addr, "tenantmeter.v1.MeterService").await {
            Ok(code) if code == serving => Ok(()),
            Ok(code) => Err(format!("status {code}")),
            Err(error) => Err(error.to_string()),
        }
    })
    .await
    .unwrap();
    assert_eq!(
        list_v1alpha(addr).await,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "tenantmeter.v1.MeterService",
        ]
    );
    assert!(describe_v1(addr, "tenantmeter.v1.MeterService").await > 0);
    shutdown.trigger();
    let drained = Duration::from_secs(20);
    tokio::time::timeout(drained, meter)
        .await
        .expect("drained in time")
        .unwrap()
        .unwrap();
    tokio::time::timeout(drained, pricing)
        .await
        .expect("drained in time")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn gateway_serves_health_and_reflection_with_error_details() {
    // The gateway starts without reaching the meter or Bedrock (both are
    // called per request); it needs its registry's Redis and pricing.
    let redis = RedisServer::start().await.unwrap();
    let shutdown = Shutdown::new();
    let (pricing_addr, pricing) = start_pricing(&redis, &shutdown).await;
    let spool = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gateway = tokio::spawn(tenantmeter_gateway::run(
        tenantmeter_gateway::GatewayConfig {
            pricing_url: format!("http://{pricing_addr}"),
            spool_dir: spool.path().join("spool"),
            ..Default::default()
        },
        tenantmeter_gateway::GatewayDeps {
            redis_url: redis.url(),
            admin_token: None,
            clock: std::sync::Arc::new(tenantmeter_runtime::clock::SystemClock),
        },
        listener,
        shutdown.clone(),
    ));
    let serving = ServingStatus::Serving as i32;
    poll_until_ok(Duration::from_secs(30), || async {
        match status(addr, "tenantmeter.v1.GatewayService").await {
            Ok(code) if code == serving => Ok(()),
            Ok(code) => Err(format!("status {code}")),
            Err(error) => Err(error.to_string()),
        }
    })
    .await
    .unwrap();
    assert_eq!(
        list_v1alpha(addr).await,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "tenantmeter.v1.GatewayAdminService",
            "tenantmeter.v1.GatewayService",
        ]
    );
    assert_eq!(
        status(addr, tenantmeter_gateway::SETTLEMENTS_HEALTH)
            .await
            .unwrap(),
        serving
    );
    for symbol in [
        "tenantmeter.v1.GatewayService",
        "tenantmeter.v1.GatewayAdminService",
        // What error details are made of, so grpcurl can print them.
        "google.rpc.ErrorInfo",
        "google.rpc.BadRequest",
        "google.rpc.RetryInfo",
    ] {
        assert!(describe_v1(addr, symbol).await > 0, "{symbol}");
    }
    shutdown.trigger();
    let drained = Duration::from_secs(40);
    tokio::time::timeout(drained, gateway)
        .await
        .expect("drained in time")
        .unwrap()
        .unwrap();
    tokio::time::timeout(drained, pricing)
        .await
        .expect("drained in time")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn alerting_serves_health_and_reflection_and_reports_draining() {
    // Alerting follows pricing's price book; the meter is called per pass,
    // and with `interval` 0 no pass runs, so it need not be up.
    let redis = RedisServer::start().await.unwrap();
    let shutdown = Shutdown::new();
    let (pricing_addr, pricing) = start_pricing(&redis, &shutdown).await;
    let alerting_shutdown = Shutdown::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let alerting = tokio::spawn(Box::pin(tenantmeter_alerting::run(
        tenantmeter_alerting::AlertingConfig {
            pricing_url: format!("http://{pricing_addr}"),
            interval: Duration::ZERO,
            ..Default::default()
        },
        tenantmeter_alerting::AlertingDeps {
            redis_url: redis.url(),
            admin_token: None,
            clock: std::sync::Arc::new(tenantmeter_runtime::clock::SystemClock),
        },
        listener,
        alerting_shutdown.clone(),
    )));
    let serving = ServingStatus::Serving as i32;
    poll_until_ok(Duration::from_secs(30), || async {
        match status(addr, "").await {
            Ok(code) if code == serving => Ok(()),
            Ok(code) => Err(format!("status {code}")),
            Err(error) => Err(error.to_string()),
        }
    })
    .await
    .unwrap();
    assert_eq!(
        list_v1alpha(addr).await,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "tenantmeter.v1.AlertingAdminService",
            "tenantmeter.v1.AlertingService",
        ]
    );
    for service in [
        "tenantmeter.v1.AlertingService",
        "tenantmeter.v1.AlertingAdminService",
    ] {
        assert_eq!(status(addr, service).await.unwrap(), serving, "{service}");
        assert!(describe_v1(addr, service).await > 0, "{service}");
    }
    for symbol in [
        // Messages of the RPCs resolve, imports included.
        "tenantmeter.v1.TenantStatus",
        "tenantmeter.v1.WebhookNotification",
        "tenantmeter.v1.TenantPolicy",
        // What error details are made of, so grpcurl can print them.
        "google.rpc.BadRequest",
        "google.rpc.ErrorInfo",
    ] {
        assert!(describe_v1(addr, symbol).await > 0, "{symbol}");
    }

    // Health turns NOT_SERVING as soon as shutdown begins.
    let mut watch = HealthClient::new(channel(addr).await)
        .watch(HealthCheckRequest {
            service: "tenantmeter.v1.AlertingService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status, serving);
    alerting_shutdown.trigger();
    let not_serving = ServingStatus::NotServing as i32;
    let next = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("a health update after shutdown");
    assert!(
        matches!(&next, Some(Ok(reply)) if reply.status == not_serving),
        "{next:?}"
    );
    drop(watch);
    let drained = Duration::from_secs(20);
    tokio::time::timeout(drained, alerting)
        .await
        .expect("drained in time")
        .unwrap()
        .unwrap();
    shutdown.trigger();
    tokio::time::timeout(drained, pricing)
        .await
        .expect("drained in time")
        .unwrap()
        .unwrap();
}
