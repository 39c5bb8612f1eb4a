//! gRPC calls to apps through Wharf's port: all four call kinds pass through with metadata
//! and trailers, routed by a registered service name or by `wharf-app` metadata.

use std::time::Duration;

use serde_json::json;
use tonic::transport::Channel;
use tonic::{Code, Request};
use wharf_proto::testing::v1::EchoRequest;
use wharf_proto::testing::v1::echo_client::EchoClient;
use wharf_test::TestServer;
use wharf_test::fake_grpc::{GrpcEchoApp, GrpcMode};
use wharf_test::reqwest::StatusCode;

const TIMEOUT: Duration = Duration::from_secs(30);

async fn client(server: &TestServer) -> EchoClient<Channel> {
    let channel = Channel::from_shared(server.base.clone())
        .expect("endpoint")
        .timeout(TIMEOUT)
        .connect()
        .await
        .expect("connect");
    EchoClient::new(channel)
}

fn req(payload: &str, count: u32) -> EchoRequest {
    EchoRequest {
        payload: payload.as_bytes().to_vec(),
        count,
    }
}

async fn register(server: &TestServer, app: &str, services: &[&str], instance: &GrpcEchoApp) {
    let (status, body) = server
        .put(
            &format!("/v1/apps/{app}"),
            json!({ "grpc_services": services }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .put(
            &format!("/v1/apps/{app}/instances/g1"),
            json!({ "address": instance.address() }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn all_four_call_kinds_pass_through_with_metadata_and_trailers() {
    let server = TestServer::start().await;
    let app = GrpcEchoApp::start("g1").await;
    register(&server, "echo", &["wharf.testing.v1.Echo"], &app).await;
    let mut c = client(&server).await;

    // Unary, with request metadata in and response metadata out.
    let mut r = Request::new(req("hi", 0));
    r.metadata_mut()
        .insert("x-custom", "yes".parse().expect("ascii"));
    r.set_timeout(Duration::from_secs(20));
    let resp = c.unary(r).await.expect("unary");
    assert_eq!(
        resp.metadata().get("x-echo").map(|v| v.to_str().ok()),
        Some(Some("1"))
    );
    assert_eq!(
        resp.metadata().get("x-instance").map(|v| v.to_str().ok()),
        Some(Some("g1"))
    );
    let reply = resp.into_inner();
    assert_eq!(
        (reply.payload.as_slice(), reply.instance.as_str()),
        (&b"hi"[..], "g1")
    );
    let md = app.last_metadata();
    let get = |k: &str| md.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("x-custom").as_deref(), Some("yes"));
    assert!(get("traceparent").is_some(), "trace context forwarded");
    // The deadline travels as the remaining time.
    let timeout = get("grpc-timeout").expect("grpc-timeout forwarded");
    let remaining = wharf_invoke::deadline::parse_grpc_timeout(&timeout).expect("valid");
    assert!(remaining <= Duration::from_secs(20) && remaining > Duration::ZERO);

    // Server streaming.
    let mut s = c
        .server_stream(req("s", 3))
        .await
        .expect("stream")
        .into_inner();
    let mut counts = Vec::new();
    while let Some(m) = s.message().await.expect("message") {
        counts.push(m.count);
    }
    assert_eq!(counts, [1, 2, 3], "every message, then OK in the trailers");

    // Client streaming.
    let reply = c
        .client_stream(futures_util::stream::iter(vec![
            req("a", 0),
            req("b", 0),
            req("c", 0),
        ]))
        .await
        .expect("client stream")
        .into_inner();
    assert_eq!((reply.payload.as_slice(), reply.count), (&b"abc"[..], 3));

    // Bidi: each request answered before the next is sent.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = c
        .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("bidi")
        .into_inner();
    for i in 1..=3u32 {
        tx.send(req(&format!("m{i}"), 0)).await.expect("send");
        let m = replies.message().await.expect("reply").expect("one");
        assert_eq!((m.payload, m.count), (format!("m{i}").into_bytes(), i));
    }
    drop(tx);
    assert!(replies.message().await.expect("end").is_none());

    // The app's own error status passes through (trailers-only answer).
    app.set_mode(GrpcMode::Unavailable);
    let e = c.unary(req("x", 0)).await.expect_err("unavailable");
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(e.message(), "g1 unavailable");
    assert!(
        e.metadata().get("wharf-error-code").is_none(),
        "the app's, not Wharf's"
    );
}

#[tokio::test]
async fn routing_by_metadata_and_wharf_errors() {
    let server = TestServer::start().await;
    let app = GrpcEchoApp::start("g1").await;
    register(&server, "byname", &[], &app).await;
    let mut c = client(&server).await;
    // No app serves the service: UNIMPLEMENTED.
    let e = c.unary(req("x", 0)).await.expect_err("unrouted");
    assert_eq!(e.code(), Code::Unimplemented);
    assert_eq!(app.hits(), 0);
    // `wharf-app` names the app.
    let mut r = Request::new(req("routed", 0));
    r.metadata_mut()
        .insert("wharf-app", "byname".parse().expect("ascii"));
    let reply = c.unary(r).await.expect("routed").into_inner();
    assert_eq!(reply.payload, b"routed");
    assert!(
        app.last_metadata().iter().all(|(k, _)| k != "wharf-app"),
        "Wharf's routing metadata is not passed on"
    );
    // Wharf's own errors: a gRPC status with the stable code.
    let mut r = Request::new(req("x", 0));
    r.metadata_mut()
        .insert("wharf-app", "missing".parse().expect("ascii"));
    let e = c.unary(r).await.expect_err("unknown app");
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(
        e.metadata()
            .get("wharf-error-code")
            .map(|v| v.to_str().ok()),
        Some(Some("app_not_found"))
    );
    // A hung app: the app's deadline (policy timeout_ms) ends the call with
    // DEADLINE_EXCEEDED and Wharf's code.
    let (status, body) = server
        .put(
            "/v1/apps/byname",
            json!({ "policy": { "timeout_ms": 300 } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.set_mode(GrpcMode::Hang);
    let mut r = Request::new(req("x", 0));
    r.metadata_mut()
        .insert("wharf-app", "byname".parse().expect("ascii"));
    let e = c.unary(r).await.expect_err("deadline");
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert_eq!(
        e.metadata()
            .get("wharf-error-code")
            .map(|v| v.to_str().ok()),
        Some(Some("deadline_exceeded"))
    );
    // Over the concurrency limit: RESOURCE_EXHAUSTED at once.
    let (status, body) = server
        .put(
            "/v1/apps/byname",
            json!({ "policy": { "max_concurrency": 1, "timeout_ms": 60000 } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut held_client = c.clone();
    let held = tokio::spawn(async move {
        let mut r = Request::new(req("held", 0));
        r.metadata_mut()
            .insert("wharf-app", "byname".parse().expect("ascii"));
        held_client.unary(r).await.map(|r| r.into_inner().payload)
    });
    assert!(
        app.wait_for_hits(3, TIMEOUT).await,
        "the held call reached the app"
    );
    let mut r = Request::new(req("x", 0));
    r.metadata_mut()
        .insert("wharf-app", "byname".parse().expect("ascii"));
    let e = c.unary(r).await.expect_err("limited");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    app.set_mode(GrpcMode::Ok);
    assert_eq!(held.await.expect("task").expect("held call"), b"held");
}
