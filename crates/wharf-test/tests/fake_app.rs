//! The fake apps themselves: [`HttpApp`] over HTTP/1.1 and h2c (prior knowledge) with every
//! [`Mode`], and [`GrpcEchoApp`] with all four call kinds and every [`GrpcMode`].
//!
//! Deterministic: hung requests are observed through `wait_for_hits`, never through sleeps.

use std::time::Duration;

use futures_util::StreamExt;
use tonic::Code;
use tonic::metadata::MetadataValue;
use wharf_proto::testing::v1::EchoRequest;
use wharf_proto::testing::v1::echo_client::EchoClient;
use wharf_test::fake_grpc::{GrpcEchoApp, GrpcMode};
use wharf_test::fake_http::{HttpApp, Mode};
use wharf_test::reqwest::{self, Method, Version};

const LONG: Duration = Duration::from_secs(30);

fn http1() -> reqwest::Client {
    wharf_test::install_crypto();
    reqwest::Client::builder()
        .http1_only()
        .timeout(LONG)
        .build()
        .expect("client")
}

fn h2c() -> reqwest::Client {
    wharf_test::install_crypto();
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(LONG)
        .build()
        .expect("client")
}

async fn text(resp: reqwest::Response) -> String {
    resp.text().await.expect("body")
}

#[tokio::test]
async fn http1_ok_echoes_the_body_and_records_the_request() {
    let app = HttpApp::start("a1").await;
    assert!(app.address().starts_with("http://127.0.0.1:"));
    assert_eq!(app.hits(), 0);
    let resp = http1()
        .post(format!("{}/orders/7?x=1&y=2", app.address()))
        .header("x-custom", "hello")
        .body("payload-1")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.version(), Version::HTTP_11);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-instance"], "a1");
    assert_eq!(resp.headers()["x-seen-path"], "/orders/7?x=1&y=2");
    assert_eq!(text(resp).await, "payload-1");
    assert_eq!(app.hits(), 1);
    assert_eq!(app.in_flight(), 0);
    let reqs = app.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path_and_query, "/orders/7?x=1&y=2");
    assert_eq!(r.header("x-custom"), Some("hello"));
    assert!(
        r.headers
            .iter()
            .any(|(k, v)| k == "x-custom" && v == "hello")
    );
    assert_eq!(r.body.as_ref(), b"payload-1");
    assert_eq!(r.status, 200);
    assert_eq!(r.seq, 1);
}

#[tokio::test]
async fn h2c_prior_knowledge_on_the_same_port() {
    let app = HttpApp::start("a2").await;
    let client = h2c();
    for i in 0..3 {
        let resp = client
            .put(format!("{}/h2/{i}", app.address()))
            .header("x-n", i.to_string())
            .body(format!("body-{i}"))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.version(), Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-instance"], "a2");
        assert_eq!(resp.headers()["x-seen-path"], format!("/h2/{i}").as_str());
        assert_eq!(text(resp).await, format!("body-{i}"));
    }
    // HTTP/1.1 still works on the same port.
    let resp = http1().get(app.address()).send().await.expect("request");
    assert_eq!(resp.version(), Version::HTTP_11);
    assert_eq!(resp.status(), 200);
    assert_eq!(app.hits(), 4);
    let reqs = app.requests();
    assert_eq!(
        reqs.iter()
            .map(|r| r.path_and_query.as_str())
            .collect::<Vec<_>>(),
        ["/h2/0", "/h2/1", "/h2/2", "/"]
    );
    assert_eq!(reqs[1].header("x-n"), Some("1"));
    assert_eq!(reqs[1].method, "PUT");
    assert_eq!(reqs[1].body.as_ref(), b"body-1");
}

#[tokio::test]
async fn any_method_and_path_is_accepted() {
    let app = HttpApp::start("a3").await;
    let client = http1();
    let purge = Method::from_bytes(b"PURGE").expect("method");
    for m in [
        Method::GET,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        purge,
    ] {
        let resp = client
            .request(m.clone(), format!("{}/any/{m}", app.address()))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200, "{m}");
    }
    let methods: Vec<String> = app.requests().into_iter().map(|r| r.method).collect();
    assert_eq!(methods, ["GET", "DELETE", "PATCH", "OPTIONS", "PURGE"]);
}

#[tokio::test]
async fn status_mode() {
    let app = HttpApp::start("a4").await;
    app.set_mode(Mode::Status(503));
    for client in [http1(), h2c()] {
        let resp = client
            .post(format!("{}/x", app.address()))
            .body("ignored")
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["x-instance"], "a4");
        assert_eq!(text(resp).await, "a4 says 503");
    }
    assert_eq!(app.hits(), 2);
    assert!(app.requests().iter().all(|r| r.status == 503));
    app.set_mode(Mode::Ok);
    let resp = http1().get(app.address()).send().await.expect("request");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn fail_first_counts_from_set_mode() {
    let app = HttpApp::start("a5").await;
    let client = http1();
    let url = format!("{}/ff", app.address());
    // Requests before set_mode do not count.
    assert_eq!(client.get(&url).send().await.expect("req").status(), 200);
    app.set_mode(Mode::FailFirst { n: 2, status: 500 });
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            client
                .get(&url)
                .send()
                .await
                .expect("req")
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [500, 500, 200, 200]);
    // Setting it again starts over.
    app.set_mode(Mode::FailFirst { n: 1, status: 429 });
    let resp = client.get(&url).send().await.expect("req");
    assert_eq!(resp.status(), 429);
    assert_eq!(text(resp).await, "a5 says 429");
    assert_eq!(client.get(&url).send().await.expect("req").status(), 200);
    assert_eq!(app.hits(), 7);
}

#[tokio::test]
async fn hang_is_released_by_set_mode() {
    let app = HttpApp::start("a6").await;
    app.set_mode(Mode::Hang);
    let mut pending = Vec::new();
    for (i, client) in [http1(), h2c()].into_iter().enumerate() {
        let url = format!("{}/hang/{i}", app.address());
        pending.push(tokio::spawn(async move {
            client.post(url).body("hung").send().await
        }));
    }
    assert!(app.wait_for_hits(2, LONG).await);
    // Counted on arrival and still being handled.
    assert_eq!(app.hits(), 2);
    assert_eq!(app.in_flight(), 2);
    assert!(pending.iter().all(|p| !p.is_finished()));
    app.set_mode(Mode::Status(418));
    for p in pending {
        let resp = p.await.expect("join").expect("request");
        assert_eq!(resp.status(), 418);
        assert_eq!(text(resp).await, "a6 says 418");
    }
    assert_eq!(app.in_flight(), 0);
    // Released into Ok: the body is echoed.
    app.set_mode(Mode::Hang);
    let client = http1();
    let url = app.address();
    let p = tokio::spawn(async move { client.post(url).body("late").send().await });
    assert!(app.wait_for_hits(3, LONG).await);
    app.set_mode(Mode::Ok);
    let resp = p.await.expect("join").expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(text(resp).await, "late");
}

#[tokio::test]
async fn hang_is_released_by_drop() {
    let app = HttpApp::start("a7").await;
    app.set_mode(Mode::Hang);
    let client = http1();
    let url = app.address();
    let p = tokio::spawn(async move { client.get(url).send().await });
    assert!(app.wait_for_hits(1, LONG).await);
    let addr = app.address();
    drop(app);
    let err = p.await.expect("join").expect_err("the app stopped");
    assert!(!err.is_timeout(), "{err:?}");
    // Nobody listens any more (shutdown is asynchronous: a connection racing it may still be
    // accepted, so try fresh connections until one fails; each attempt lets the app run).
    let mut refused = false;
    for _ in 0..100 {
        if http1().get(&addr).send().await.is_err() {
            refused = true;
            break;
        }
    }
    assert!(refused, "{addr} still answers after the app was dropped");
}

#[tokio::test]
async fn close_drops_the_connection() {
    let app = HttpApp::start("a8").await;
    app.set_mode(Mode::Close);
    for client in [http1(), h2c()] {
        let err = client
            .post(format!("{}/close", app.address()))
            .body("x")
            .send()
            .await
            .expect_err("no answer");
        assert!(!err.is_timeout(), "{err:?}");
        assert!(err.status().is_none(), "{err:?}");
    }
    assert_eq!(app.hits(), 2);
    assert!(app.requests().iter().all(|r| r.status == 0));
    assert_eq!(app.in_flight(), 0);
    // And it recovers.
    app.set_mode(Mode::Ok);
    for client in [http1(), h2c()] {
        let resp = client.get(app.address()).send().await.expect("request");
        assert_eq!(resp.status(), 200);
    }
}

#[tokio::test]
async fn delay_then_ok() {
    let app = HttpApp::start("a9").await;
    app.set_mode(Mode::Delay(Duration::from_millis(50)));
    let started = std::time::Instant::now();
    let resp = http1()
        .post(app.address())
        .body("slow")
        .send()
        .await
        .expect("request");
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-instance"], "a9");
    assert_eq!(text(resp).await, "slow");
}

#[tokio::test]
async fn wait_for_hits_times_out_and_requests_keep_the_last_1000() {
    let app = HttpApp::start("a10").await;
    assert!(!app.wait_for_hits(1, Duration::from_millis(20)).await);
    let client = http1();
    for i in 0..1005 {
        let resp = client
            .get(format!("{}/n/{i}", app.address()))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
    }
    assert!(app.wait_for_hits(1005, LONG).await);
    let reqs = app.requests();
    assert_eq!(reqs.len(), 1000);
    assert_eq!(reqs[0].path_and_query, "/n/5");
    assert_eq!(reqs[999].path_and_query, "/n/1004");
    assert_eq!(reqs[999].seq, 1005);
}

async fn echo_client(app: &GrpcEchoApp) -> EchoClient<tonic::transport::Channel> {
    EchoClient::connect(app.address()).await.expect("connect")
}

fn req(payload: &str, count: u32) -> EchoRequest {
    EchoRequest {
        payload: payload.as_bytes().to_vec(),
        count,
    }
}

#[tokio::test]
async fn grpc_unary_with_metadata() {
    let app = GrpcEchoApp::start("g1").await;
    assert!(app.address().starts_with("http://127.0.0.1:"));
    let mut client = echo_client(&app).await;
    let mut request = tonic::Request::new(req("hi", 0));
    request
        .metadata_mut()
        .insert("x-test", MetadataValue::from_static("yes"));
    request.metadata_mut().insert_bin(
        "x-bin-bin",
        tonic::metadata::MetadataValue::from_bytes(b"\x00\x01"),
    );
    let resp = client.unary(request).await.expect("unary");
    assert_eq!(resp.metadata().get("x-instance").expect("x-instance"), "g1");
    assert_eq!(resp.metadata().get("x-echo").expect("x-echo"), "1");
    let reply = resp.into_inner();
    assert_eq!(reply.payload, b"hi");
    assert_eq!(reply.count, 1);
    assert_eq!(reply.instance, "g1");
    assert_eq!(app.hits(), 1);
    let md = app.last_metadata();
    assert!(
        md.contains(&("x-test".to_owned(), "yes".to_owned())),
        "{md:?}"
    );
    assert!(md.iter().all(|(k, _)| !k.ends_with("-bin")), "{md:?}");
}

#[tokio::test]
async fn grpc_server_stream_sends_count_replies() {
    let app = GrpcEchoApp::start("g2").await;
    let mut client = echo_client(&app).await;
    let resp = client
        .server_stream(req("s", 3))
        .await
        .expect("server stream");
    assert_eq!(resp.metadata().get("x-instance").expect("x-instance"), "g2");
    let mut stream = resp.into_inner();
    let mut replies = Vec::new();
    while let Some(r) = stream.message().await.expect("message") {
        replies.push(r);
    }
    assert_eq!(replies.len(), 3);
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r.payload, b"s");
        assert_eq!(r.count as usize, i + 1);
        assert_eq!(r.instance, "g2");
    }
    // count 0: an empty stream that ends cleanly.
    let mut stream = client
        .server_stream(req("s", 0))
        .await
        .expect("server stream")
        .into_inner();
    assert!(stream.message().await.expect("end").is_none());
    assert_eq!(app.hits(), 2);
}

#[tokio::test]
async fn grpc_client_stream_concatenates() {
    let app = GrpcEchoApp::start("g3").await;
    let mut client = echo_client(&app).await;
    let requests = futures_util::stream::iter([req("a", 0), req("bb", 0), req("ccc", 0)]);
    let mut request = tonic::Request::new(requests);
    request
        .metadata_mut()
        .insert("x-kind", MetadataValue::from_static("client-stream"));
    let resp = client.client_stream(request).await.expect("client stream");
    assert_eq!(resp.metadata().get("x-instance").expect("x-instance"), "g3");
    let reply = resp.into_inner();
    assert_eq!(reply.payload, b"abbccc");
    assert_eq!(reply.count, 3);
    assert_eq!(reply.instance, "g3");
    assert!(
        app.last_metadata()
            .contains(&("x-kind".to_owned(), "client-stream".to_owned()))
    );
}

#[tokio::test]
async fn grpc_bidi_answers_each_request_as_it_comes() {
    let app = GrpcEchoApp::start("g4").await;
    let mut client = echo_client(&app).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(req("one", 0)).await.expect("send");
    let resp = client
        .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("bidi");
    assert_eq!(resp.metadata().get("x-instance").expect("x-instance"), "g4");
    let mut replies = resp.into_inner();
    // Lock-step: the next request is sent only after the previous reply arrived.
    for (i, p) in ["one", "two", "three"].iter().enumerate() {
        if i > 0 {
            tx.send(req(p, 0)).await.expect("send");
        }
        let r = replies.message().await.expect("message").expect("a reply");
        assert_eq!(r.payload, p.as_bytes());
        assert_eq!(r.count as usize, i + 1);
        assert_eq!(r.instance, "g4");
    }
    drop(tx);
    assert!(replies.message().await.expect("end").is_none());
}

#[tokio::test]
async fn grpc_unavailable() {
    let app = GrpcEchoApp::start("g5").await;
    app.set_mode(GrpcMode::Unavailable);
    let mut client = echo_client(&app).await;
    let err = client.unary(req("x", 0)).await.expect_err("unavailable");
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(err.message(), "g5 unavailable");
    let err = client
        .server_stream(req("x", 2))
        .await
        .expect_err("unavailable");
    assert_eq!(err.code(), Code::Unavailable);
    let err = client
        .client_stream(futures_util::stream::iter([req("x", 0)]))
        .await
        .expect_err("unavailable");
    assert_eq!(err.code(), Code::Unavailable);
    let err = client
        .bidi(futures_util::stream::iter([req("x", 0)]))
        .await
        .expect_err("unavailable");
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(app.hits(), 4);
    app.set_mode(GrpcMode::Ok);
    let reply = client.unary(req("back", 0)).await.expect("ok").into_inner();
    assert_eq!(reply.payload, b"back");
}

#[tokio::test]
async fn grpc_hang_is_released_by_set_mode() {
    let app = GrpcEchoApp::start("g6").await;
    app.set_mode(GrpcMode::Hang);
    let mut c1 = echo_client(&app).await;
    let mut c2 = c1.clone();
    let ok = tokio::spawn(async move { c1.unary(req("wait", 0)).await });
    assert!(app.wait_for_hits(1, LONG).await);
    let mut stream = {
        let s = tokio::spawn(async move { c2.server_stream(req("w", 2)).await });
        assert!(app.wait_for_hits(2, LONG).await);
        assert!(!ok.is_finished() && !s.is_finished());
        app.set_mode(GrpcMode::Ok);
        s.await.expect("join").expect("server stream").into_inner()
    };
    let reply = ok.await.expect("join").expect("unary").into_inner();
    assert_eq!(reply.payload, b"wait");
    assert_eq!(reply.instance, "g6");
    let mut n = 0;
    while stream.next().await.transpose().expect("message").is_some() {
        n += 1;
    }
    assert_eq!(n, 2);
    // Released into Unavailable.
    app.set_mode(GrpcMode::Hang);
    let mut c3 = echo_client(&app).await;
    let p = tokio::spawn(async move { c3.unary(req("x", 0)).await });
    assert!(app.wait_for_hits(3, LONG).await);
    app.set_mode(GrpcMode::Unavailable);
    let err = p.await.expect("join").expect_err("unavailable");
    assert_eq!(err.code(), Code::Unavailable);
}

#[tokio::test]
async fn grpc_stops_when_dropped() {
    let app = GrpcEchoApp::start("g7").await;
    let addr = app.address();
    let mut client = echo_client(&app).await;
    client.unary(req("x", 0)).await.expect("unary");
    assert!(!app.wait_for_hits(2, Duration::from_millis(20)).await);
    drop(app);
    // Shutdown is asynchronous: try fresh connections until one fails.
    let mut refused = false;
    for _ in 0..100 {
        let Ok(mut c) = EchoClient::connect(addr.clone()).await else {
            refused = true;
            break;
        };
        if c.unary(req("x", 0)).await.is_err() {
            refused = true;
            break;
        }
    }
    assert!(refused, "{addr} still answers after the app was dropped");
}
