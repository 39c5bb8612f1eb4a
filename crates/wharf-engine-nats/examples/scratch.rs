//! scratch
#![allow(missing_docs, clippy::unwrap_used)]
use futures_util::StreamExt;
#[tokio::main]
async fn main() {
    let c = async_nats::connect("127.0.0.1:4222").await.unwrap();
    let req = |s: &str, b: serde_json::Value| {
        let c = c.clone();
        let s = s.to_owned();
        async move {
            let r = c
                .request(s, serde_json::to_vec(&b).unwrap().into())
                .await
                .unwrap();
            String::from_utf8_lossy(&r.payload).to_string()
        }
    };
    println!(
        "{}",
        req(
            "$JS.API.STREAM.CREATE.SCR",
            serde_json::json!({"name":"SCR","subjects":["scr"],"storage":"file"})
        )
        .await
        .chars()
        .take(80)
        .collect::<String>()
    );
    println!("{}", req("$JS.API.CONSUMER.DURABLE.CREATE.SCR.C1", serde_json::json!({"stream_name":"SCR","config":{"durable_name":"C1","ack_policy":"explicit","ack_wait":2000000000u64,"max_deliver":3,"backoff":[3000000000u64,4000000000u64]}})).await.chars().take(300).collect::<String>());
    for i in 0..3 {
        c.publish("scr", format!("m{i}").into()).await.unwrap();
    }
    c.flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    for (label, body) in [
        ("nowait10", serde_json::json!({"batch":10,"no_wait":true})),
        (
            "nowait-empty",
            serde_json::json!({"batch":10,"no_wait":true}),
        ),
        (
            "expires",
            serde_json::json!({"batch":10,"expires":300000000}),
        ),
    ] {
        let inbox = c.new_inbox();
        let mut sub = c.subscribe(inbox.clone()).await.unwrap();
        let t = std::time::Instant::now();
        c.publish_with_reply(
            "$JS.API.CONSUMER.MSG.NEXT.SCR.C1",
            inbox,
            serde_json::to_vec(&body).unwrap().into(),
        )
        .await
        .unwrap();
        loop {
            match tokio::time::timeout(std::time::Duration::from_secs(2), sub.next()).await {
                Ok(Some(m)) => {
                    println!(
                        "{label} {:?} {:?} status={:?} desc={:?} reply={:?} hdr={:?}",
                        t.elapsed(),
                        String::from_utf8_lossy(&m.payload),
                        m.status,
                        m.description,
                        m.reply,
                        m.headers
                    );
                    if m.status.is_some() {
                        break;
                    }
                }
                _ => {
                    println!("{label} timeout {:?}", t.elapsed());
                    break;
                }
            }
        }
    }
    // ack with reply
    println!(
        "{}",
        req("$JS.API.CONSUMER.INFO.SCR.C1", serde_json::json!({})).await
    );
    println!(
        "{}",
        req("$JS.API.STREAM.DELETE.SCR", serde_json::json!({})).await
    );
}
