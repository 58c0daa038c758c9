//! `dsync`: operate the pipeline, locally or against AWS (the normal AWS config chain,
//! `AWS_ENDPOINT_URL` for the local stand-ins).

mod dlq;
mod load;
mod process;
mod show;
mod stack;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dsync::aws::{load_sdk_config, SdkBudget, SqsClient};
use dsync::clock::{Clock, SystemClock};
use dsync::signature::signature_header;

#[derive(Parser, Debug)]
#[command(
    name = "dsync",
    version,
    about = "Operate the WorkOS directory-sync entitlement pipeline",
    after_help = "AWS access uses the normal AWS configuration chain; set AWS_ENDPOINT_URL to use the local \
                  stand-ins (eval \"$(scripts/emu.sh env)\")."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Send a signed test event to a webhook URL, like the WorkOS dashboard's "Send test event".
    SendTestEvent {
        /// The receiver's URL, e.g. http://127.0.0.1:3000/webhooks/workos
        #[arg(long)]
        url: String,
        /// The webhook secret to sign with (the first of a comma-separated list is used).
        #[arg(long, env = "WORKOS_WEBHOOK_SECRET", hide_env_values = true)]
        secret: String,
        /// The event type.
        #[arg(long, default_value = "dsync.user.created")]
        event: String,
        /// The event id (default: a fresh one).
        #[arg(long)]
        id: Option<String>,
        /// The `data` object, as JSON.
        #[arg(
            long,
            default_value = r#"{"object":"directory_user","id":"directory_user_test","directory_id":"directory_test"}"#
        )]
        data: String,
    },
    /// SQS queues.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Send many signed events to a receiver and report latency and throughput (benchmarks).
    Load {
        #[arg(long)]
        url: String,
        #[arg(long, env = "WORKOS_WEBHOOK_SECRET", hide_env_values = true)]
        secret: String,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// The pipeline's tables and queues.
    #[command(subcommand)]
    Stack(StackCommand),
    /// Print stored entitlements (from the state table).
    #[command(subcommand)]
    Show(ShowCommand),
    /// The dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Ask for a full reconcile of a directory: enqueue a `dsync.reconcile_requested` event.
    Reconcile {
        /// The events queue.
        #[arg(long, env = "EVENTS_QUEUE_URL")]
        queue_url: String,
        /// The WorkOS directory id.
        #[arg(long, value_parser = non_empty)]
        directory: String,
    },
    /// Run the event processor locally behind a stand-in for the SQS event source (the same
    /// handler as the Lambda; configuration from the Lambda's variables: EVENTS_TABLE,
    /// STATE_TABLE, WORKOS_API_KEY, WORKOS_API_BASE_URL, ENTITLEMENT_RULES, ...).
    /// Runs until Ctrl-C unless --once or --until-empty.
    Process(ProcessArgs),
}

#[derive(Subcommand, Debug)]
enum QueueCommand {
    /// Create a queue (and print its URL).
    Create { name: String },
    /// Receive and print up to N messages without deleting them (they reappear after the visibility timeout).
    Peek {
        url: String,
        #[arg(long, default_value_t = 10)]
        max: i32,
    },
}

#[derive(Subcommand, Debug)]
enum StackCommand {
    /// Create the events table, the state table, the events queue and its DLQ (existing ones are
    /// kept) and print `NAME=value` lines for `eval`.
    Up {
        /// Resources are named PREFIX-events (table and queue), PREFIX-state, PREFIX-events-dlq.
        #[arg(long, value_parser = stack::parse_prefix)]
        prefix: String,
        /// The events queue's visibility timeout in seconds (>= 6 x the processor's timeout).
        #[arg(long, default_value_t = 360, value_parser = clap::value_parser!(u32).range(0..=43_200))]
        visibility_timeout: u32,
        /// Receives before a message moves to the DLQ.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
        max_receive_count: u32,
    },
}

#[derive(Subcommand, Debug)]
enum ShowCommand {
    /// One user's groups and entitlements.
    User {
        #[arg(long, env = "STATE_TABLE")]
        state_table: String,
        /// The directory id (without it the user is found through the index).
        #[arg(long)]
        directory: Option<String>,
        /// The WorkOS directory user id.
        #[arg(long, value_parser = non_empty)]
        user: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Every stored user of a directory.
    Directory {
        #[arg(long, env = "STATE_TABLE")]
        state_table: String,
        #[arg(long, value_parser = non_empty)]
        directory: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum DlqCommand {
    /// Move messages from the DLQ back to the events queue (same body and message attributes).
    Redrive {
        /// The dead-letter queue URL.
        #[arg(long)]
        from: String,
        /// The queue to move the messages to.
        #[arg(long, env = "EVENTS_QUEUE_URL")]
        to: String,
        /// Move at most this many messages.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        max: Option<u64>,
    },
}

#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct ProcessArgs {
    /// The events queue.
    #[arg(long, env = "EVENTS_QUEUE_URL")]
    pub queue_url: String,
    /// Receive and process one batch, then stop.
    #[arg(long, conflicts_with = "until_empty")]
    pub once: bool,
    /// Stop when a receive finds the queue empty.
    #[arg(long)]
    pub until_empty: bool,
    /// Messages per batch (1 to 10).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i32).range(1..=10))]
    pub batch_size: i32,
    /// Long-poll wait per receive, in seconds (0 to 20).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=20))]
    pub wait_secs: u64,
    /// The deadline the handler gets per batch, like the Lambda's timeout (1 to 900 s).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=900))]
    pub function_timeout_secs: u64,
}

fn non_empty(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(t.to_string())
    }
}

/// An AWS SDK error for the user: the service's code and message, or the transport error's chain.
pub(crate) fn sdk_err<E, R>(e: aws_sdk_sqs::error::SdkError<E, R>) -> String
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e.as_service_error() {
        Some(se) => format!(
            "{}: {}",
            se.code().unwrap_or("service error"),
            se.message().unwrap_or("(no message)")
        ),
        None => tidy(&aws_sdk_sqs::error::DisplayErrorContext(&e).to_string()).to_string(),
    }
}

/// An SDK error's display without the `Debug` dump the SDK appends (raw response, headers, …).
pub(crate) fn tidy(s: &str) -> &str {
    const DUMPS: [&str; 5] = [
        " (ServiceError(",
        " (DispatchFailure(",
        " (TimeoutError(",
        " (ResponseError(",
        " (ConstructionFailure(",
    ];
    DUMPS.iter().filter_map(|d| s.find(d)).min().map_or(s, |i| &s[..i])
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dsync: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::SendTestEvent {
            url,
            secret,
            event,
            id,
            data,
        } => send_test_event(url, secret, event, id, data).await,
        Command::Queue(q) => {
            let sqs = SqsClient::new(&load_sdk_config(SdkBudget::WORKER).await);
            match q {
                QueueCommand::Create { name } => {
                    let out = sqs.create_queue().queue_name(name).send().await.map_err(sdk_err)?;
                    println!("{}", out.queue_url.unwrap_or_default());
                    Ok(())
                }
                QueueCommand::Peek { url, max } => {
                    let out = sqs
                        .receive_message()
                        .queue_url(url)
                        .max_number_of_messages(max.clamp(1, 10))
                        .visibility_timeout(0)
                        .message_attribute_names("All")
                        .send()
                        .await
                        .map_err(sdk_err)?;
                    for m in out.messages.unwrap_or_default() {
                        let attrs = m.message_attributes.unwrap_or_default();
                        let attr = |k: &str| attrs.get(k).and_then(|v| v.string_value.clone()).unwrap_or_default();
                        println!(
                            "{}  event_id={}  type={}  bytes={}",
                            m.message_id.unwrap_or_default(),
                            attr(dsync::queue::ATTR_EVENT_ID),
                            attr(dsync::queue::ATTR_EVENT_TYPE),
                            m.body.map(|b| b.len()).unwrap_or(0)
                        );
                    }
                    Ok(())
                }
            }
        }
        Command::Stack(StackCommand::Up {
            prefix,
            visibility_timeout,
            max_receive_count,
        }) => {
            let out = stack::up(&prefix, visibility_timeout, max_receive_count).await?;
            print!("{}", out.env_lines());
            Ok(())
        }
        Command::Show(ShowCommand::User {
            state_table,
            directory,
            user,
            json,
        }) => show::user(&state_table, directory.as_deref(), &user, json).await,
        Command::Show(ShowCommand::Directory {
            state_table,
            directory,
            json,
        }) => show::directory(&state_table, &directory, json).await,
        Command::Dlq(DlqCommand::Redrive { from, to, max }) => dlq::redrive(&from, &to, max).await,
        Command::Reconcile { queue_url, directory } => process::request_reconcile(&queue_url, &directory).await,
        Command::Process(args) => process::run(&args).await,
        Command::Load {
            url,
            secret,
            count,
            concurrency,
        } => {
            let secret = secret
                .split(',')
                .map(str::trim)
                .find(|s| !s.is_empty())
                .ok_or("the secret is empty")?;
            let s = load::run(&url, secret, count, concurrency).await?;
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            println!(
                "sent {} ok {} failed {} in {:.2} s: {:.0} req/s; latency ms p50 {:.1} p95 {:.1} p99 {:.1} max {:.1}",
                s.sent,
                s.ok,
                s.failed,
                s.elapsed.as_secs_f64(),
                s.ok as f64 / s.elapsed.as_secs_f64().max(1e-9),
                ms(s.p50),
                ms(s.p95),
                ms(s.p99),
                ms(s.max)
            );
            if s.failed > 0 {
                Err(format!("{} requests failed", s.failed))
            } else {
                Ok(())
            }
        }
    }
}

async fn send_test_event(
    url: String,
    secret: String,
    event: String,
    id: Option<String>,
    data: String,
) -> Result<(), String> {
    let secret = secret
        .split(',')
        .map(str::trim)
        .find(|s| !s.is_empty())
        .ok_or("the secret is empty")?;
    let data: serde_json::Value = serde_json::from_str(&data).map_err(|e| format!("--data is not JSON: {e}"))?;
    let now = SystemClock.now();
    let id = id.unwrap_or_else(|| format!("event_test_{}", now.0));
    let body = serde_json::to_vec(&serde_json::json!({
        "object": "event",
        "id": id,
        "event": event,
        "data": data,
        "created_at": dsync::event::format_created_at(now),
    }))
    .map_err(|e| e.to_string())?;
    let resp = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?
        .post(&url)
        .header("content-type", "application/json")
        .header("WorkOS-Signature", signature_header(secret, now, &body))
        .body(body)
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    println!("{} {} -> {} {}", event, id, status.as_u16(), text);
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("dsync").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_tree_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn stack_up_defaults_and_bounds() {
        let cli = parse(&["stack", "up", "--prefix", "demo"]).expect("parses");
        match cli.command {
            Command::Stack(StackCommand::Up {
                prefix,
                visibility_timeout,
                max_receive_count,
            }) => {
                assert_eq!(prefix, "demo");
                assert_eq!(visibility_timeout, 360);
                assert_eq!(max_receive_count, 5);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(parse(&["stack", "up", "--prefix", "has space"]).is_err());
        assert!(parse(&["stack", "up", "--prefix", "ok", "--max-receive-count", "0"]).is_err());
        assert!(parse(&["stack", "up"]).is_err(), "the prefix is required");
    }

    #[test]
    fn process_flags() {
        let cli = parse(&[
            "process",
            "--queue-url",
            "http://q",
            "--until-empty",
            "--batch-size",
            "5",
        ])
        .expect("parses");
        let Command::Process(p) = cli.command else {
            panic!("not process")
        };
        assert_eq!(
            p,
            ProcessArgs {
                queue_url: "http://q".into(),
                once: false,
                until_empty: true,
                batch_size: 5,
                wait_secs: 1,
                function_timeout_secs: 60,
            }
        );
        assert!(parse(&["process", "--queue-url", "q", "--batch-size", "11"]).is_err());
        assert!(parse(&["process", "--queue-url", "q", "--wait-secs", "21"]).is_err());
        assert!(parse(&["process", "--queue-url", "q", "--once", "--until-empty"]).is_err());
    }

    #[test]
    fn show_and_reconcile_need_their_ids() {
        assert!(parse(&["show", "user", "--state-table", "t", "--user", ""]).is_err());
        assert!(parse(&["show", "directory", "--state-table", "t", "--directory", " "]).is_err());
        assert!(parse(&["reconcile", "--queue-url", "q", "--directory", ""]).is_err());
        let cli = parse(&["show", "user", "--state-table", "t", "--user", "u1", "--json"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::Show(ShowCommand::User {
                directory: None,
                json: true,
                ..
            })
        ));
    }

    #[test]
    fn sdk_dumps_are_cut() {
        assert_eq!(
            tidy("dispatch failure: io error: Connection refused (os error 111) (DispatchFailure(DispatchFailure { x }))"),
            "dispatch failure: io error: Connection refused (os error 111)"
        );
        assert_eq!(tidy("plain (with parentheses)"), "plain (with parentheses)");
    }

    #[test]
    fn dlq_redrive_max_is_positive() {
        assert!(parse(&["dlq", "redrive", "--from", "a", "--to", "b", "--max", "0"]).is_err());
        let cli = parse(&["dlq", "redrive", "--from", "a", "--to", "b", "--max", "3"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::Dlq(DlqCommand::Redrive { max: Some(3), .. })
        ));
    }
}
