//! The README's 5-minute tour, run as written: every ```sh block between `<!-- tour:begin -->`
//! and `<!-- tour:end -->` goes to `bash -e` against a freshly started `wharf serve` (port 0,
//! temporary data directory), and the output must show what the tour says it shows. Then the
//! server gets SIGTERM and must exit 0.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{ChildGuard, GENEROUS, Server, wait_bounded};

/// The shell blocks of the tour, in order, joined.
fn tour_script() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    let readme = std::fs::read_to_string(path).expect("read README.md");
    let begin = readme
        .find("<!-- tour:begin -->")
        .expect("README has <!-- tour:begin -->");
    let end = readme
        .find("<!-- tour:end -->")
        .expect("README has <!-- tour:end -->");
    assert!(begin < end, "tour markers out of order");
    let tour = &readme[begin..end];
    let mut script = String::new();
    let mut blocks = 0;
    let mut in_sh = false;
    for line in tour.lines() {
        if in_sh {
            if line.trim_start().starts_with("```") {
                in_sh = false;
            } else {
                script.push_str(line);
                script.push('\n');
            }
        } else if line.trim() == "```sh" {
            in_sh = true;
            blocks += 1;
        }
    }
    assert!(!in_sh, "unterminated ```sh block in the tour");
    assert!(blocks >= 1, "no ```sh block in the tour");
    script
}

/// Every line of the output that is a JSON document, with its line number.
fn json_lines(lines: &[&str]) -> Vec<(usize, Value)> {
    lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| serde_json::from_str::<Value>(l).ok().map(|v| (i, v)))
        .filter(|(_, v)| v.is_object())
        .collect()
}

#[test]
fn readme_tour_runs_as_written() {
    let script = tour_script();
    assert!(
        script.contains("localhost:7400"),
        "the tour no longer talks to localhost:7400"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(&dir.path().join("data"));
    let script = script.replace("localhost:7400", &format!("127.0.0.1:{}", server.port));
    let script_path = dir.path().join("tour.sh");
    std::fs::write(&script_path, &script).expect("write script");
    // Output to files, not pipes: a background `curl -N` left behind by a failing script must
    // not keep the test waiting for end-of-file.
    let out_path = dir.path().join("tour.out");
    let err_path = dir.path().join("tour.err");
    let started = Instant::now();
    let child = Command::new("bash")
        .arg("-e")
        .arg(&script_path)
        .current_dir(dir.path())
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("out file"))
        .stderr(std::fs::File::create(&err_path).expect("err file"))
        .spawn()
        .expect("spawn bash");
    let mut bash = ChildGuard(Some(child));
    let status = wait_bounded(bash.0.as_mut().expect("bash"), GENEROUS);
    let took = started.elapsed();
    let out = std::fs::read_to_string(&out_path).expect("read output");
    let err = std::fs::read_to_string(&err_path).expect("read stderr");
    let context = format!(
        "--- script ---\n{script}\n--- stdout ---\n{out}\n--- stderr ---\n{err}\n--- server ---\n{}",
        server.stderr_text()
    );
    let status =
        status.unwrap_or_else(|| panic!("tour still running after {GENEROUS:?}\n{context}"));
    bash.0 = None;
    assert!(status.success(), "bash -e tour: {status}\n{context}");
    eprintln!("tour ran in {took:?}");

    let lines: Vec<&str> = out.lines().collect();

    // No error answer anywhere (every error body carries "code").
    for l in &lines {
        assert!(!l.contains("\"code\":"), "error answer {l:?}\n{context}");
    }
    let docs = json_lines(&lines);

    // Publishing the same wharf-message-id twice: the second answers duplicate, pointing at
    // the first one's place.
    let published: Vec<&(usize, Value)> = docs
        .iter()
        .filter(|(_, v)| v["results"][0].get("duplicate").is_some())
        .collect();
    let dups: Vec<usize> = published
        .iter()
        .enumerate()
        .filter(|(_, (_, v))| v["results"][0]["duplicate"] == true)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(dups.len(), 1, "one duplicate publish answer\n{context}");
    assert!(
        lines[published[dups[0]].0].contains("\"duplicate\":true"),
        "{context}"
    );
    let (first, again) = (&published[dups[0] - 1].1, &published[dups[0]].1);
    assert_eq!(first["results"][0]["duplicate"], false, "{context}");
    assert_eq!(
        (
            &first["results"][0]["partition"],
            &first["results"][0]["offset"]
        ),
        (
            &again["results"][0]["partition"],
            &again["results"][0]["offset"]
        ),
        "the duplicate answer names the first publish's place\n{context}"
    );

    // Replay: commit, reset to earliest, and the second fetch hands back what the first did
    // (the four distinct messages published so far).
    let fetches: Vec<&Value> = docs
        .iter()
        .map(|(_, v)| v)
        .filter(|v| v.as_object().is_some_and(|o| o.len() == 1) && v["messages"].is_array())
        .collect();
    assert_eq!(fetches.len(), 2, "two fetch answers\n{context}");
    assert_eq!(
        fetches[0]["messages"].as_array().map(Vec::len),
        Some(4),
        "{context}"
    );
    assert_eq!(fetches[0], fetches[1], "replay after reset\n{context}");
    assert!(
        lines.contains(&r#"{"offsets":[{"partition":0,"offset":2},{"partition":1,"offset":2}]}"#),
        "commit answer\n{context}"
    );
    assert!(
        lines.contains(&r#"{"offsets":[{"partition":0,"offset":0},{"partition":1,"offset":0}]}"#),
        "reset answer\n{context}"
    );

    // The SSE stream printed the history and the message published while it ran.
    let events: Vec<Value> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| **l == "event: message")
        .map(|(i, _)| {
            let data = lines
                .get(i + 1)
                .and_then(|l| l.strip_prefix("data: "))
                .unwrap_or_else(|| panic!("event without data line\n{context}"));
            assert!(
                lines.get(i + 2).is_some_and(|l| l.starts_with("id: ")),
                "event without id line\n{context}"
            );
            serde_json::from_str(data).expect("event data is JSON")
        })
        .collect();
    // Every message of the topic (the duplicate stored once), the live one included.
    let mut values: Vec<&str> = events.iter().filter_map(|e| e["value"].as_str()).collect();
    values.sort_unstable();
    assert_eq!(
        values,
        ["hello", "order 1", "order 2", "order 4", "order 5"],
        "SSE events\n{context}"
    );
    let live = events
        .iter()
        .find(|e| e["value"] == "order 5")
        .expect("the live event");
    assert_eq!(live["key"], "customer-9", "{context}");

    // Dead letters: the failing mail, with the reason headers.
    let dead: Vec<&Value> = docs
        .iter()
        .map(|(_, v)| v)
        .filter(|v| v["messages"][0]["value"] == "welcome mail for ada@example.com")
        .collect();
    assert_eq!(dead.len(), 1, "one dead-letter listing\n{context}");
    let messages = dead[0]["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 1, "{context}");
    let headers = &messages[0]["headers"];
    assert_eq!(headers["wharf-dlq-reason"], "nack", "{context}");
    assert_eq!(headers["wharf-dlq-deliveries"], "2", "{context}");
    assert_eq!(headers["wharf-dlq-source-topic"], "emails", "{context}");

    // Two nacks and the final ack, each settled without error; the ack comes right after the
    // redrive answer.
    let settled: Vec<&(usize, Value)> = docs
        .iter()
        .filter(|(_, v)| v["results"][0].get("ack_id").is_some())
        .collect();
    assert_eq!(settled.len(), 3, "two nacks and an ack\n{context}");
    for (_, v) in &settled {
        let results = v["results"].as_array().expect("results");
        assert_eq!(results.len(), 1, "{context}");
        assert_eq!(results[0]["error"], Value::Null, "{context}");
    }
    let redriven = lines
        .iter()
        .position(|l| *l == r#"{"redriven":1}"#)
        .unwrap_or_else(|| panic!("no {{\"redriven\":1}}\n{context}"));
    let (ack_line, ack) = settled.last().expect("ack");
    assert_eq!(*ack_line, redriven + 1, "{context}");
    assert!(lines[*ack_line].contains("\"error\":null"), "{context}");

    // The closing look around.
    assert!(
        lines.contains(&r#"wharf_subscription_lag{topic="emails",subscription="emails"} 0"#),
        "{context}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.trim_start().starts_with("\"openapi\":")),
        "{context}"
    );
    assert!(
        !ack["results"][0]["ack_id"]
            .as_str()
            .unwrap_or("")
            .is_empty()
    );

    let stop = server.stop_cleanly();
    assert!(
        stop < Duration::from_secs(20),
        "an idle server took {stop:?} to stop"
    );
}
