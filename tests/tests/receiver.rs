//! The receiver binary in local mode against moto's SQS, through the real AWS SDK client.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dsync::clock::{Clock, EpochMillis, SystemClock};
use dsync::signature::signature_header;
use integration_tests::{create_queue, drain, free_port, moto_url, spawn_receiver, sqs, wait_for_http, ChildGuard};

const SECRET: &str = "whsec_integration";

fn event_body(id: &str) -> String {
    format!(
        r#"{{"object":"event","id":"{id}","event":"dsync.group.updated","data":{{"object":"directory_group","id":"directory_group_1","directory_id":"directory_1","name":"Enterprise Admins"}},"created_at":"2026-11-25T10:00:00.000Z"}}"#
    )
}

async fn post(url: &str, body: &str, sig: Option<String>) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(s) = sig {
        req = req.header("WorkOS-Signature", s);
    }
    req.send().await.expect("request reaches the receiver")
}

fn now() -> EpochMillis {
    SystemClock.now()
}

#[tokio::test]
async fn valid_event_lands_once_byte_for_byte_with_attributes() {
    let client = sqs().await;
    let queue = create_queue(&client, "recv-valid").await;
    let rx = spawn_receiver(
        &moto_url(),
        &[("WORKOS_WEBHOOK_SECRET", SECRET), ("EVENTS_QUEUE_URL", &queue)],
    );
    // Whitespace and key order that re-serialisation would change: the queue must get these bytes.
    let body = format!("{}  \n", event_body("event_valid_1").replace("\"data\":", "\"data\" :"));
    let resp = post(
        &rx.url("/webhooks/workos"),
        &body,
        Some(signature_header(SECRET, now(), body.as_bytes())),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let msgs = drain(&client, &queue).await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].body.as_deref(), Some(body.as_str()));
    let attrs = msgs[0].message_attributes.clone().unwrap_or_default();
    assert_eq!(attrs["workos_event_id"].string_value.as_deref(), Some("event_valid_1"));
    assert_eq!(
        attrs["workos_event_type"].string_value.as_deref(),
        Some("dsync.group.updated")
    );
    assert!(attrs["workos_signed_at_ms"]
        .string_value
        .as_deref()
        .is_some_and(|t| t.len() == 13));
}

#[tokio::test]
async fn bad_signatures_are_401_and_the_queue_stays_empty() {
    let client = sqs().await;
    let queue = create_queue(&client, "recv-bad").await;
    let rx = spawn_receiver(
        &moto_url(),
        &[("WORKOS_WEBHOOK_SECRET", SECRET), ("EVENTS_QUEUE_URL", &queue)],
    );
    let url = rx.url("/webhooks/workos");
    let body = event_body("event_bad_1");
    let good = signature_header(SECRET, now(), body.as_bytes());
    let too_late = signature_header(SECRET, now().saturating_sub(Duration::from_secs(181)), body.as_bytes());
    let future = signature_header(SECRET, now().saturating_add(Duration::from_secs(181)), body.as_bytes());
    let wrong_key = signature_header("whsec_other", now(), body.as_bytes());
    let tampered_body = body.replace("Enterprise Admins", "Enterprise Admin$");
    let cases: Vec<(&str, &str, Option<String>)> = vec![
        ("no header", &body, None),
        ("garbage header", &body, Some("nonsense".into())),
        ("replayed too late", &body, Some(too_late)),
        ("from the future", &body, Some(future)),
        ("wrong secret", &body, Some(wrong_key)),
        ("tampered body", &tampered_body, Some(good.clone())),
        (
            "tampered signature",
            &body,
            Some(good.replace("v1=", "v1=0").chars().take(good.len()).collect()),
        ),
    ];
    for (name, b, sig) in cases {
        let resp = post(&url, b, sig).await;
        assert_eq!(resp.status(), 401, "{name}");
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(
            text, r#"{"message":"unauthorized"}"#,
            "{name}: the body must say nothing useful"
        );
    }
    assert!(drain(&client, &queue).await.is_empty());
}

#[tokio::test]
async fn method_size_and_shape_are_checked_before_anything_is_queued() {
    let client = sqs().await;
    let queue = create_queue(&client, "recv-shape").await;
    let rx = spawn_receiver(
        &moto_url(),
        &[("WORKOS_WEBHOOK_SECRET", SECRET), ("EVENTS_QUEUE_URL", &queue)],
    );
    let url = rx.url("/webhooks/workos");
    let http = reqwest::Client::new();
    assert_eq!(http.get(&url).send().await.expect("get").status(), 405);
    assert_eq!(http.put(&url).body("{}").send().await.expect("put").status(), 405);
    let big = format!(r#"{{"id":"e","event":"x","pad":"{}"}}"#, "a".repeat(1024 * 1024));
    let resp = post(&url, &big, Some(signature_header(SECRET, now(), big.as_bytes()))).await;
    assert_eq!(resp.status(), 413);
    for body in ["[]", "{}", r#"{"id":"e"}"#, "not json"] {
        let resp = post(&url, body, Some(signature_header(SECRET, now(), body.as_bytes()))).await;
        assert_eq!(resp.status(), 400, "{body}");
    }
    assert!(drain(&client, &queue).await.is_empty());
}

#[tokio::test]
async fn either_secret_verifies_during_rotation() {
    let client = sqs().await;
    let queue = create_queue(&client, "recv-rotate").await;
    let rx = spawn_receiver(
        &moto_url(),
        &[
            ("WORKOS_WEBHOOK_SECRET", "whsec_old,whsec_new"),
            ("EVENTS_QUEUE_URL", &queue),
        ],
    );
    for (i, secret) in ["whsec_old", "whsec_new"].iter().enumerate() {
        let body = event_body(&format!("event_rot_{i}"));
        let resp = post(
            &rx.url("/webhooks/workos"),
            &body,
            Some(signature_header(secret, now(), body.as_bytes())),
        )
        .await;
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(drain(&client, &queue).await.len(), 2);
}

#[tokio::test]
async fn missing_queue_is_5xx_never_200() {
    let queue = format!(
        "{}/123456789012/{}",
        moto_url(),
        integration_tests::unique("no-such-queue")
    );
    let rx = spawn_receiver(
        &moto_url(),
        &[("WORKOS_WEBHOOK_SECRET", SECRET), ("EVENTS_QUEUE_URL", &queue)],
    );
    let body = event_body("event_missing_q");
    let started = Instant::now();
    let resp = post(
        &rx.url("/webhooks/workos"),
        &body,
        Some(signature_header(SECRET, now(), body.as_bytes())),
    )
    .await;
    assert!(resp.status().is_server_error(), "got {}", resp.status());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered after {:?}",
        started.elapsed()
    );
}

/// A private moto, so stopping it does not disturb the other tests.
fn spawn_private_moto() -> ChildGuard {
    let bin = std::env::var("DSYNC_MOTO_BIN").expect("DSYNC_MOTO_BIN is set by scripts/test.sh");
    let port = free_port();
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto");
    let guard = ChildGuard {
        child,
        addr: format!("127.0.0.1:{port}").parse().expect("addr"),
    };
    wait_for_http(&guard.url("/moto-api/"), Duration::from_secs(20));
    guard
}

#[tokio::test]
async fn stand_in_stopped_mid_run_gives_5xx_within_the_deadline() {
    let mut moto = spawn_private_moto();
    let endpoint = format!("http://{}", moto.addr);
    let client = aws_sdk_sqs::Client::new(&integration_tests::sdk_config_for(&endpoint).await);
    let queue = create_queue(&client, "recv-stop").await;
    let rx = spawn_receiver(
        &endpoint,
        &[("WORKOS_WEBHOOK_SECRET", SECRET), ("EVENTS_QUEUE_URL", &queue)],
    );
    let url = rx.url("/webhooks/workos");
    let body = event_body("event_before_stop");
    let resp = post(&url, &body, Some(signature_header(SECRET, now(), body.as_bytes()))).await;
    assert_eq!(resp.status(), 200);

    moto.child.kill().expect("kill moto");
    moto.child.wait().expect("reap moto");
    let body = event_body("event_after_stop");
    let started = Instant::now();
    let resp = post(&url, &body, Some(signature_header(SECRET, now(), body.as_bytes()))).await;
    assert_eq!(resp.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn missing_config_fails_at_init_with_a_clear_message() {
    let out = Command::new(integration_tests::built_binary("webhook-receiver"))
        .env_clear()
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("EVENTS_QUEUE_URL", "http://127.0.0.1:1/q")
        .output()
        .expect("run receiver");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("WORKOS_WEBHOOK_SECRET must be set"), "{stderr}");
}
