//! `server::serve` end to end on 127.0.0.1:0: health, reflection v1 and v1alpha, graceful
//! drain, admin auth through a real server, and client connection errors.
// clippy.toml allows these inside #[test] fns only; helpers and fixtures here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{BLOCK, PROBE_SERVICE, SOON, TestServer};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
use tenantmeter_runtime::RuntimeError;
use tenantmeter_runtime::auth::AdminAuth;
use tenantmeter_runtime::client::{self, ClientOptions};
use tenantmeter_runtime::config::ServerConfig;
use tenantmeter_runtime::server::Services;
use tokio_stream::StreamExt as _;
use tonic::{Code, Request};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn config(drain_timeout: Duration) -> ServerConfig {
    ServerConfig {
        drain_timeout,
        ..ServerConfig::with_listen("127.0.0.1:0".parse().unwrap())
    }
}

async fn check(
    client: &mut HealthClient<client::TracedChannel>,
    service: &str,
) -> Result<ServingStatus, tonic::Status> {
    let response = client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    Ok(response.into_inner().status())
}

#[tokio::test]
async fn health_is_serving_then_not_serving_on_shutdown() {
    let server = TestServer::start(config(Duration::from_secs(30))).await;
    let channel = client::connect(&server.url(), &ClientOptions::default())
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);

    assert_eq!(
        check(&mut health, "").await.unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(
        check(&mut health, PROBE_SERVICE).await.unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(
        check(&mut health, "no.such.Service")
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // A watcher on an open connection sees the switch to NOT_SERVING when shutdown starts.
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    server.shutdown.trigger();
    let next = tokio::time::timeout(SOON, watch.next())
        .await
        .expect("no health update after shutdown")
        .unwrap()
        .unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);

    // Ending our stream lets the drain finish long before the 30s drain timeout.
    drop(watch);
    drop(health);
    let started = Instant::now();
    tokio::time::timeout(SOON, server.task)
        .await
        .expect("server did not finish draining")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(30));

    // The listener is closed once serve returns.
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test]
async fn drain_lets_in_flight_rpcs_finish() {
    let mut server = TestServer::start(config(Duration::from_secs(60))).await;
    let channel = client::connect(&server.url(), &ClientOptions::default())
        .await
        .unwrap();
    let mut probe = TraceServiceClient::new(channel);
    let in_flight = tokio::spawn(async move {
        let mut request = Request::new(ExportTraceServiceRequest::default());
        request.metadata_mut().insert(BLOCK, "1".parse().unwrap());
        probe.export(request).await
    });
    server.entered.recv().await.unwrap();

    server.shutdown.trigger();
    // Wait, in process, until serve has reported NOT_SERVING: it stops accepting right after.
    let mut statuses = health_watch(&server.health).await;
    while statuses.next().await.unwrap().unwrap().status() != ServingStatus::NotServing {}
    assert!(
        !server.task.is_finished(),
        "serve returned with an RPC in flight"
    );

    server.probe.release.notify_waiters();
    let response = tokio::time::timeout(SOON, in_flight)
        .await
        .unwrap()
        .unwrap();
    assert!(response.is_ok(), "in-flight RPC was cut off: {response:?}");
    tokio::time::timeout(SOON, server.task)
        .await
        .expect("serve did not return after the drain")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn drain_timeout_bounds_the_wait_for_stuck_rpcs() {
    let drain = Duration::from_millis(300);
    let mut server = TestServer::start(config(drain)).await;
    let channel = client::connect(&server.url(), &ClientOptions::default())
        .await
        .unwrap();
    let mut probe = TraceServiceClient::new(channel);
    let _stuck = tokio::spawn(async move {
        let mut request = Request::new(ExportTraceServiceRequest::default());
        request.metadata_mut().insert(BLOCK, "1".parse().unwrap());
        probe.export(request).await
    });
    server.entered.recv().await.unwrap();

    let started = Instant::now();
    server.shutdown.trigger();
    tokio::time::timeout(SOON, server.task)
        .await
        .expect("serve ignored its drain timeout")
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() >= drain,
        "returned before the drain timeout"
    );
}

/// A local `Watch` on the handle's statuses (no network), for observing shutdown progress.
async fn health_watch(
    health: &tenantmeter_runtime::server::HealthHandle,
) -> <tonic_health::server::HealthService as tonic_health::pb::health_server::Health>::WatchStream {
    use tonic_health::pb::health_server::Health as _;
    tonic_health::server::HealthService::from_health_reporter(health.reporter().clone())
        .watch(Request::new(HealthCheckRequest {
            service: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
}

mod reflection {
    use super::*;

    const EXPECTED: &[&str] = &[
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        PROBE_SERVICE,
    ];

    #[tokio::test]
    async fn v1_lists_services_and_resolves_symbols() {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

        let server = TestServer::plain().await;
        let channel = client::connect(&server.url(), &ClientOptions::default())
            .await
            .unwrap();
        let mut client = ServerReflectionClient::new(channel);
        let requests = [
            MessageRequest::ListServices(String::new()),
            MessageRequest::FileContainingSymbol("grpc.health.v1.Health".to_owned()),
            MessageRequest::FileContainingSymbol("tenantmeter.v1.PricingService".to_owned()),
        ]
        .map(|message| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(message),
        });
        let mut responses = client
            .server_reflection_info(tokio_stream::iter(requests))
            .await
            .unwrap()
            .into_inner();

        let Some(MessageResponse::ListServicesResponse(list)) =
            responses.next().await.unwrap().unwrap().message_response
        else {
            panic!("expected a service list");
        };
        let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        names.sort();
        assert_eq!(names, EXPECTED);

        for _ in 0..2 {
            let response = responses.next().await.unwrap().unwrap().message_response;
            assert!(
                matches!(&response, Some(MessageResponse::FileDescriptorResponse(f)) if !f.file_descriptor_proto.is_empty()),
                "symbol not resolved: {response:?}"
            );
        }
        drop(responses);
        server.stop().await;
    }

    #[tokio::test]
    async fn v1alpha_lists_services_for_old_grpcurl() {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

        let server = TestServer::plain().await;
        let channel = client::connect(&server.url(), &ClientOptions::default())
            .await
            .unwrap();
        let mut client = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            responses.next().await.unwrap().unwrap().message_response
        else {
            panic!("expected a service list");
        };
        let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        names.sort();
        assert_eq!(names, EXPECTED);
        drop(responses);
        server.stop().await;
    }
}

mod admin_auth {
    use super::*;

    async fn admin_server(token: Option<&str>) -> TestServer {
        let auth = AdminAuth::new(token.map(str::to_owned));
        TestServer::start_with(config(Duration::from_secs(10)), move |probe| {
            Services::new().add_service(TraceServiceServer::with_interceptor(probe, auth))
        })
        .await
    }

    async fn call(server: &TestServer, authorization: Option<&str>) -> Result<(), tonic::Status> {
        let channel = client::connect(&server.url(), &ClientOptions::default())
            .await
            .unwrap();
        let mut request = Request::new(ExportTraceServiceRequest::default());
        if let Some(value) = authorization {
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
        }
        TraceServiceClient::new(channel)
            .export(request)
            .await
            .map(|_| ())
    }

    #[tokio::test]
    async fn guards_a_served_service() {
        let server = admin_server(Some("s3cret-admin")).await;

        let missing = call(&server, None).await.unwrap_err();
        assert_eq!(missing.code(), Code::Unauthenticated);
        assert_eq!(
            missing.message(),
            "missing authorization: Bearer <admin token>"
        );

        let wrong = call(&server, Some("Bearer nope")).await.unwrap_err();
        assert_eq!(wrong.code(), Code::Unauthenticated);
        assert_eq!(wrong.message(), "invalid admin token");

        call(&server, Some("Bearer s3cret-admin")).await.unwrap();
        call(&server, Some("bearer s3cret-admin")).await.unwrap();
        server.stop().await;
    }

    #[tokio::test]
    async fn disabled_without_a_token() {
        let server = admin_server(None).await;
        let denied = call(&server, Some("Bearer anything")).await.unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert_eq!(denied.message(), "admin API disabled: set admin_token");
        server.stop().await;
    }
}

mod clients {
    use super::*;

    #[tokio::test]
    async fn connect_reports_unreachable_endpoints() {
        // Bind then drop: a port that was free a moment ago and has no listener now.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let error = client::connect(&format!("http://{addr}"), &ClientOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(error, RuntimeError::Connect { .. }), "{error}");
    }

    #[tokio::test]
    async fn rejects_malformed_endpoints() {
        let error = client::connect("not a uri", &ClientOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(error, RuntimeError::InvalidEndpoint { .. }),
            "{error}"
        );
    }

    #[tokio::test]
    async fn lazy_channel_connects_on_first_call() {
        // No application service at all: health and reflection alone.
        let server =
            TestServer::start_with(config(Duration::from_secs(10)), |_| Services::new()).await;
        let channel = client::connect_lazy(&server.url(), &ClientOptions::default()).unwrap();
        let mut health = HealthClient::new(channel);
        assert_eq!(
            check(&mut health, "").await.unwrap(),
            ServingStatus::Serving
        );
        drop(health);
        server.stop().await;
    }
}

mod tls {
    use super::*;
    use tenantmeter_runtime::client::ClientTlsFiles;
    use tenantmeter_runtime::config::{TlsConfig, Validate as _};

    #[tokio::test]
    async fn serves_tls_to_a_client_that_trusts_the_cert() {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, signing_key.serialize_pem()).unwrap();

        let config = ServerConfig {
            tls: Some(TlsConfig {
                cert: cert_path.clone(),
                key: key_path,
            }),
            ..config(Duration::from_secs(10))
        };
        config.validate().unwrap();
        let server = TestServer::start(config).await;

        let tls = ClientTlsFiles {
            ca: cert_path,
            domain: Some("localhost".to_owned()),
        }
        .load()
        .unwrap();
        let options = ClientOptions {
            tls: Some(tls),
            ..ClientOptions::default()
        };
        let channel = client::connect(&format!("https://{}", server.addr), &options)
            .await
            .unwrap();
        let mut health = HealthClient::new(channel);
        assert_eq!(
            check(&mut health, "").await.unwrap(),
            ServingStatus::Serving
        );
        drop(health);

        // A plaintext client gets nowhere.
        let plaintext = async {
            let channel = client::connect(&server.url(), &ClientOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            check(&mut HealthClient::new(channel), "")
                .await
                .map_err(|e| e.to_string())
        };
        assert!(plaintext.await.is_err());

        server.stop().await;
    }
}
