//! The receiver binary in local mode against moto's SQS, through the real AWS SDK client.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::MessageSystemAttributeName;
use dsync::clock::{Clock, EpochMillis, SystemClock};
use dsync::queue::decode_body;
use dsync::signature::signature_header;
use integration_tests::{
    create_queue, drain, free_port, moto_url, secretsmanager, spawn_receiver, spawn_receiver_logging_to, sqs, unique,
    wait_for_http, ChildGuard,
};

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
    assert!(!attrs.contains_key("body_encoding"), "a raw body carries no encoding");
    // Routed per directory: the message group is the payload's data.directory_id.
    assert_eq!(
        attrs["workos_directory_id"].string_value.as_deref(),
        Some("directory_1")
    );
    let system = msgs[0].attributes.clone().unwrap_or_default();
    assert_eq!(
        system
            .get(&MessageSystemAttributeName::MessageGroupId)
            .map(String::as_str),
        Some("directory_1"),
        "{system:?}"
    );
}

#[tokio::test]
async fn events_without_a_directory_share_one_message_group() {
    let client = sqs().await;
    let queue = create_queue(&client, "recv-nodir").await;
    let rx = spawn_receiver(
        &moto_url(),
        &[("WORKOS_WEBHOOK_SECRET", SECRET), ("EVENTS_QUEUE_URL", &queue)],
    );
    let directory = r#"{"object":"event","id":"event_dir_1","event":"dsync.activated","data":{"object":"directory","id":"directory_9","name":"Acme"}}"#;
    let none = r#"{"object":"event","id":"event_nodir_1","event":"connection.activated","data":{"object":"connection","id":"conn_1"}}"#;
    for body in [directory, none] {
        let resp = post(
            &rx.url("/webhooks/workos"),
            body,
            Some(signature_header(SECRET, now(), body.as_bytes())),
        )
        .await;
        assert_eq!(resp.status(), 200);
    }
    let msgs = drain(&client, &queue).await;
    let mut groups: Vec<(String, Option<String>, Option<String>)> = msgs
        .iter()
        .map(|m| {
            let attrs = m.message_attributes.clone().unwrap_or_default();
            (
                attrs["workos_event_id"].string_value.clone().unwrap_or_default(),
                m.attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId).cloned()),
                attrs.get("workos_directory_id").and_then(|a| a.string_value.clone()),
            )
        })
        .collect();
    groups.sort();
    assert_eq!(
        groups,
        vec![
            (
                "event_dir_1".into(),
                Some("directory_9".into()),
                Some("directory_9".into())
            ),
            ("event_nodir_1".into(), Some("no-directory".into()), None),
        ]
    );
}

#[tokio::test]
async fn a_body_sqs_refuses_is_queued_base64_and_decodes_to_the_same_bytes() {
    let client = sqs().await;
    let queue = create_queue(&client, "recv-b64").await;
    let rx = spawn_receiver(
        &moto_url(),
        &[("WORKOS_WEBHOOK_SECRET", SECRET), ("EVENTS_QUEUE_URL", &queue)],
    );
    // U+FFFE and U+FFFF may stand raw in a JSON string; SQS refuses both in a message body.
    let body = event_body("event_b64_1").replace("Enterprise Admins", "Admins \u{FFFE}\u{FFFF} \\u0001");
    let resp = post(
        &rx.url("/webhooks/workos"),
        &body,
        Some(signature_header(SECRET, now(), body.as_bytes())),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let msgs = drain(&client, &queue).await;
    assert_eq!(msgs.len(), 1);
    let attrs = msgs[0].message_attributes.clone().unwrap_or_default();
    let encoding = attrs.get("body_encoding").and_then(|a| a.string_value.as_deref());
    assert_eq!(encoding, Some("base64"));
    assert_eq!(attrs["workos_event_id"].string_value.as_deref(), Some("event_b64_1"));
    let queued = msgs[0].body.as_deref().unwrap_or_default();
    assert!(dsync::queue::sqs_body_allowed(queued));
    let original = decode_body(queued, encoding).expect("decodes");
    assert_eq!(original.as_bytes(), body.as_bytes());
}

/// Send `body` signed with `secret` and return the status.
async fn status_for(url: &str, secret: &str, id: &str) -> u16 {
    let body = event_body(id);
    post(url, &body, Some(signature_header(secret, now(), body.as_bytes())))
        .await
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_secret_comes_from_secrets_manager_and_rotates_without_a_restart() {
    let client = sqs().await;
    let queue = create_queue(&client, "recv-sm").await;
    let sm = secretsmanager().await;
    let arn = sm
        .create_secret()
        .name(unique("dsync/workos-webhook-secret"))
        .secret_string("whsec_sm_old")
        .send()
        .await
        .expect("create_secret on moto")
        .arn
        .expect("secret arn");
    let log = std::env::temp_dir().join(format!("{}.log", unique("receiver-sm")));
    let rx = spawn_receiver_logging_to(
        &moto_url(),
        &[
            ("WORKOS_WEBHOOK_SECRET_ARN", &arn),
            ("EVENTS_QUEUE_URL", &queue),
            ("WORKOS_WEBHOOK_SECRET_REFRESH_SECS", "1"),
            ("AWS_LAMBDA_LOG_FORMAT", "JSON"),
        ],
        &log,
    );
    let url = rx.url("/webhooks/workos");
    let put = |value: &'static str| {
        let (sm, arn) = (sm.clone(), arn.clone());
        async move {
            sm.put_secret_value()
                .secret_id(arn)
                .secret_string(value)
                .send()
                .await
                .expect("put_secret_value on moto");
        }
    };
    let refresh_interval = Duration::from_millis(1100);

    assert_eq!(status_for(&url, "whsec_sm_old", "event_sm_1").await, 200);
    // Rotation step 2: both secrets stored. No restart: the first mismatch re-reads the list.
    put("whsec_sm_old,whsec_sm_new").await;
    tokio::time::sleep(refresh_interval).await;
    assert_eq!(status_for(&url, "whsec_sm_new", "event_sm_2").await, 200);
    assert_eq!(status_for(&url, "whsec_sm_old", "event_sm_3").await, 200);
    // Step 4: the old secret removed. The next mismatch re-reads the list; the old one is refused.
    put("whsec_sm_new").await;
    tokio::time::sleep(refresh_interval).await;
    assert_eq!(status_for(&url, "whsec_sm_probe", "event_sm_probe").await, 401);
    assert_eq!(status_for(&url, "whsec_sm_old", "event_sm_4").await, 401);
    assert_eq!(status_for(&url, "whsec_sm_new", "event_sm_5").await, 200);

    let mut ids: Vec<String> = drain(&client, &queue)
        .await
        .iter()
        .filter_map(|m| {
            m.message_attributes
                .as_ref()?
                .get("workos_event_id")?
                .string_value
                .clone()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, ["event_sm_1", "event_sm_2", "event_sm_3", "event_sm_5"]);

    drop(rx);
    let text = std::fs::read_to_string(&log).expect("receiver log");
    let _ = std::fs::remove_file(&log);
    let refreshed = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["fields"]["outcome"] == "secret_refreshed" && l["fields"]["changed"] == true)
        .count();
    assert_eq!(refreshed, 2, "two re-reads that found a new value:\n{text}");
    assert!(!text.contains("whsec_sm"), "a secret reached the log:\n{text}");
}

#[tokio::test]
async fn an_unreadable_secret_fails_init_with_a_clear_message() {
    let missing = format!(
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:{}-AbCdEf",
        unique("no-such-secret")
    );
    let out = Command::new(integration_tests::built_binary("webhook-receiver"))
        .env_clear()
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("EVENTS_QUEUE_URL", "http://127.0.0.1:1/q")
        .env("WORKOS_WEBHOOK_SECRET_ARN", &missing)
        .env("AWS_ENDPOINT_URL", moto_url())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .expect("run receiver");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot read the webhook secret"), "{stderr}");
    assert!(stderr.contains(&missing), "names the secret: {stderr}");
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
    assert!(
        stderr.contains("WORKOS_WEBHOOK_SECRET_ARN or WORKOS_WEBHOOK_SECRET must be set"),
        "{stderr}"
    );
}
