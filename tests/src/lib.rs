//! Test harness: clients for the moto stand-in, unique resources per test, and the built
//! function binaries run as child processes (killed on drop).
//!
//! The tests need moto running (`scripts/test.sh` starts it) and find it through
//! `DSYNC_MOTO_URL`; without it they fail with a message saying so, never pass silently.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const REGION: &str = "us-east-1";

/// The moto endpoint the tests use.
pub fn moto_url() -> String {
    match std::env::var("DSYNC_MOTO_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => panic!("DSYNC_MOTO_URL is not set: run the tests through scripts/test.sh, which starts moto"),
    }
}

/// SDK config pointed at an endpoint with dummy credentials. Bounded like the functions' own
/// (`dsync::aws::SdkBudget`), more generously for moto: a request moto never answers fails and
/// is retried instead of holding a test for ever.
pub async fn sdk_config_for(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_timeout(std::time::Duration::from_secs(60))
                .operation_attempt_timeout(std::time::Duration::from_secs(20))
                .connect_timeout(std::time::Duration::from_secs(2))
                .build(),
        )
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .load()
        .await
}

pub async fn sqs() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&sdk_config_for(&moto_url()).await)
}

pub async fn dynamodb() -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&sdk_config_for(&moto_url()).await)
}

pub async fn secretsmanager() -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(&sdk_config_for(&moto_url()).await)
}

/// A name no other test (or earlier run against the same moto) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        nanos
    )
}

/// Create a fresh standard queue and return its URL.
pub async fn create_queue(client: &aws_sdk_sqs::Client, prefix: &str) -> String {
    let out = client
        .create_queue()
        .queue_name(unique(prefix))
        .send()
        .await
        .expect("create_queue on moto");
    out.queue_url.expect("queue url")
}

/// Receive everything currently visible (short polls until one comes back empty).
pub async fn drain(client: &aws_sdk_sqs::Client, queue_url: &str) -> Vec<aws_sdk_sqs::types::Message> {
    let mut all = Vec::new();
    loop {
        let out = client
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .wait_time_seconds(0)
            .send()
            .await
            .expect("receive_message");
        let msgs = out.messages.unwrap_or_default();
        if msgs.is_empty() {
            return all;
        }
        for m in &msgs {
            if let Some(h) = &m.receipt_handle {
                client
                    .delete_message()
                    .queue_url(queue_url)
                    .receipt_handle(h)
                    .send()
                    .await
                    .expect("delete");
            }
        }
        all.extend(msgs);
    }
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Path of a binary built by `cargo test --workspace` (same target dir as this test).
pub fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test>  ->  target/<profile>/<name>
    let dir = exe.parent().and_then(|p| p.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo test --workspace` (scripts/test.sh)",
        path.display()
    );
    path
}

/// A child process killed when dropped.
pub struct ChildGuard {
    pub child: Child,
    pub addr: SocketAddr,
}

impl ChildGuard {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start the receiver binary in local mode with the given extra environment, wait until it answers.
pub fn spawn_receiver(endpoint: &str, env: &[(&str, &str)]) -> ChildGuard {
    spawn_receiver_with_stdout(endpoint, env, Stdio::null())
}

/// [`spawn_receiver`] with its log (stdout, JSON lines) written to `log`.
pub fn spawn_receiver_logging_to(endpoint: &str, env: &[(&str, &str)], log: &std::path::Path) -> ChildGuard {
    let file = std::fs::File::create(log).expect("create the receiver log file");
    spawn_receiver_with_stdout(endpoint, env, Stdio::from(file))
}

fn spawn_receiver_with_stdout(endpoint: &str, env: &[(&str, &str)], stdout: Stdio) -> ChildGuard {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut cmd = Command::new(built_binary("webhook-receiver"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LISTEN_ADDR", addr.to_string())
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_REGION", REGION)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn webhook-receiver");
    let guard = ChildGuard { child, addr };
    wait_for_http(&guard.url("/healthz"), Duration::from_secs(10));
    guard
}

/// Poll a URL until it answers 200.
pub fn wait_for_http(url: &str, within: Duration) {
    let start = Instant::now();
    while !get_is_ok(url) {
        assert!(start.elapsed() < within, "{url} did not answer within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A tiny synchronous `GET` over std::net (the harness needs no blocking HTTP client).
fn get_is_ok(url: &str) -> bool {
    use std::io::{Read, Write};
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) => (h, format!("/{p}")),
        None => (rest, "/".to_string()),
    };
    let Ok(mut s) = std::net::TcpStream::connect(host) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200")
}

pub mod stack {
    //! A processor wired to real parts: the WorkOS sandbox, moto's DynamoDB and SQS through the SDK.

    use dsync::adapters::dynamo_claims::DynamoClaimStore;
    use dsync::adapters::dynamo_state::DynamoStateStore;
    use dsync::adapters::sqs_work::SqsWorkQueue;
    use dsync::adapters::workos::{WorkosClient, WorkosConfig};
    use dsync::clock::SystemClock;
    use dsync::directory::DirectoryApi;
    use dsync::model::UserRecord;
    use dsync::ports::state::StateStore;
    use dsync::processor::{Processor, ProcessorConfig, Record};
    use dsync::rules::Rules;
    use workos_sandbox::{Sandbox, SandboxConfig};

    pub const API_KEY: &str = "sk_test_stack";

    pub type RealProcessor<A = WorkosClient> =
        Processor<A, DynamoClaimStore, DynamoStateStore, SqsWorkQueue, SystemClock>;

    pub struct Stack {
        pub sandbox: Sandbox,
        pub dynamo: aws_sdk_dynamodb::Client,
        pub sqs: aws_sdk_sqs::Client,
        pub events_table: String,
        pub state_table: String,
        pub queue_url: String,
    }

    impl Stack {
        /// A fresh sandbox (4 req/s per directory on /directory_users), fresh tables and queue.
        pub async fn new() -> Stack {
            Self::with_sandbox(SandboxConfig::new(API_KEY)).await
        }

        pub async fn with_sandbox(config: SandboxConfig) -> Stack {
            let sandbox = Sandbox::start(config).await.expect("start sandbox");
            let dynamo = super::dynamodb().await;
            let sqs = super::sqs().await;
            let events_table = super::unique("events");
            let state_table = super::unique("state");
            dsync::schema::create_events_table(&dynamo, &events_table)
                .await
                .expect("events table");
            dsync::schema::create_state_table(&dynamo, &state_table)
                .await
                .expect("state table");
            let queue_url = super::create_queue(&sqs, "work").await;
            Stack {
                sandbox,
                dynamo,
                sqs,
                events_table,
                state_table,
                queue_url,
            }
        }

        pub fn workos(&self) -> WorkosClient {
            let mut cfg = WorkosConfig::new(API_KEY);
            cfg.base_url = self.sandbox.base_url();
            WorkosClient::new(cfg, SystemClock).expect("workos client")
        }

        pub fn state(&self) -> DynamoStateStore {
            DynamoStateStore::new(self.dynamo.clone(), &self.state_table)
        }

        pub fn claims(&self) -> DynamoClaimStore {
            DynamoClaimStore::new(self.dynamo.clone(), &self.events_table)
        }

        pub fn work_queue(&self) -> SqsWorkQueue {
            SqsWorkQueue::new(self.sqs.clone(), &self.queue_url)
        }

        /// A stored user, which must exist.
        pub async fn user(&self, dir: &str, uid: &str) -> UserRecord {
            self.state()
                .users(dir, &[uid.to_string()])
                .await
                .expect("read the state table")
                .pop()
                .expect("user stored")
                .value
        }

        /// The first (or, with `last`, the latest) event of a kind the sandbox recorded.
        pub fn event(&self, kind: &str, last: bool) -> workos_sandbox::Event {
            let mut events = self.sandbox.events().into_iter().filter(|e| e.event == kind);
            let found = if last { events.next_back() } else { events.next() };
            found.unwrap_or_else(|| panic!("no {kind} event recorded"))
        }

        pub fn processor(&self, rules: &str) -> RealProcessor {
            self.processor_with(self.workos(), config(rules))
        }

        pub fn processor_with<A: DirectoryApi>(&self, api: A, config: ProcessorConfig) -> RealProcessor<A> {
            Processor::new(api, self.claims(), self.state(), self.work_queue(), SystemClock, config)
        }

        /// A processor whose continuations and deferrals go to `queue_url` (the queue a test polls).
        pub fn processor_on(&self, queue_url: &str, config: ProcessorConfig) -> RealProcessor {
            Processor::new(
                self.workos(),
                self.claims(),
                self.state(),
                SqsWorkQueue::new(self.sqs.clone(), queue_url),
                SystemClock,
                config,
            )
        }

        /// Names of the groups a stored user is a member of (as last read), sorted.
        pub async fn group_names(&self, dir: &str, uid: &str) -> Vec<String> {
            let user = self.user(dir, uid).await;
            let groups = self.state().groups(dir).await.expect("groups");
            let mut names: Vec<String> = user
                .member_of()
                .filter_map(|g| {
                    groups
                        .iter()
                        .find(|x| x.value.group_id == g)
                        .and_then(|x| x.value.name.clone())
                })
                .collect();
            names.sort();
            names
        }
    }

    /// Run a directory's full reconcile to the end, chunk after chunk (what the continuation
    /// messages do in production).
    pub async fn reconcile<A: DirectoryApi>(p: &RealProcessor<A>, dir: &str) {
        use dsync::engine::Request;
        let now = || dsync::clock::Clock::now(&SystemClock);
        let deadline = || now().saturating_add(std::time::Duration::from_secs(60));
        p.engine()
            .run(dir, &[Request::Full { after: now() }], &Default::default(), deadline())
            .await
            .expect("reconcile");
        for _ in 0..200 {
            let fence = p.state().fence(dir).await.expect("fence");
            if fence.as_ref().is_none_or(|f| f.value.job.is_none()) {
                let ctl = p.state().ctl(dir).await.expect("ctl");
                if ctl.full_applied_at.is_some() && ctl.full.is_none() {
                    return;
                }
            }
            p.engine()
                .run(dir, &[], &Default::default(), deadline())
                .await
                .expect("reconcile");
        }
        panic!("the reconcile of {dir} did not finish");
    }

    /// Run the processor behind the local event source until the queue holds nothing at all
    /// (deferred events and continuations included); panics with what is left after `within`.
    pub async fn drain_all<A: DirectoryApi>(
        sqs: &aws_sdk_sqs::Client,
        queue: &str,
        p: &RealProcessor<A>,
        within: std::time::Duration,
    ) -> dsync::poller::PollReport {
        use dsync::poller::{poll_once, PollReport, PollerConfig};
        let config = PollerConfig {
            batch_size: 10,
            wait: std::time::Duration::from_secs(1),
            function_timeout: std::time::Duration::from_secs(60),
        };
        let started = std::time::Instant::now();
        let mut total = PollReport::default();
        loop {
            let r = poll_once(sqs, queue, p, &SystemClock, config).await.expect("poll");
            total.received += r.received;
            total.deleted += r.deleted;
            total.failed += r.failed;
            if r.received == 0 && dsync::poller::depth(sqs, queue).await.expect("depth") == 0 {
                return total;
            }
            if started.elapsed() > within {
                let left = super::drain(sqs, queue).await;
                let bodies: Vec<&str> = left.iter().filter_map(|m| m.body.as_deref()).collect();
                panic!("queue not empty after {within:?}: {total:?}; left: {bodies:#?}");
            }
        }
    }

    /// A fresh events queue with its DLQ (visibility 30 s, dead-lettered after 20 receives).
    pub async fn events_queue(sqs: &aws_sdk_sqs::Client, prefix: &str) -> String {
        let (queue, _dlq) = dsync::schema::create_queue_with_dlq(sqs, &super::unique(prefix), 30, 20)
            .await
            .expect("queue");
        queue
    }

    /// The entitlements of a stored user, as a sorted list.
    pub fn ents(u: &UserRecord) -> Vec<&str> {
        u.entitlements.iter().map(String::as_str).collect()
    }

    /// Processor settings with these rules (JSON) and the defaults otherwise.
    pub fn config(rules: &str) -> ProcessorConfig {
        ProcessorConfig::with_rules(Rules::parse(rules).expect("rules"))
    }

    /// A queue record carrying a sandbox event's exact body.
    pub fn record(ev: &workos_sandbox::Event) -> Record {
        Record {
            message_id: super::unique("msg"),
            body: Some(String::from_utf8_lossy(&ev.to_body()).into_owned()),
            source: "webhook".into(),
            received_at: Some(dsync::clock::Clock::now(&SystemClock)),
            receive_count: 1,
            receipt: None,
        }
    }
}

pub mod bench;
pub mod sim;
