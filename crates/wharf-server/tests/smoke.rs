//! The server starts on port 0, takes a publish, and hands the message back.

use serde_json::json;
use wharf_test::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_read_back() {
    let s = TestServer::start().await;
    let (st, body) = s.put("/v1/topics/smoke", json!({})).await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = s
        .post(
            "/v1/topics/smoke/messages",
            json!({"key": "k", "value": "hello"}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["results"][0]["offset"], 0);
    let (st, body) = s.get("/v1/topics/smoke/messages?offset=0").await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["messages"][0]["value"], "hello");
    s.stop().await;
}
