//! `dsync`: operate the pipeline, locally or against AWS (the normal AWS config chain,
//! `AWS_ENDPOINT_URL` for the local stand-ins).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dsync::aws::{load_sdk_config, SdkBudget, SqsClient};
use dsync::clock::{Clock, SystemClock};
use dsync::signature::signature_header;

#[derive(Parser)]
#[command(
    name = "dsync",
    version,
    about = "Operate the WorkOS directory-sync entitlement pipeline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
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
}

#[derive(Subcommand)]
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

#[tokio::main]
async fn main() -> ExitCode {
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
        } => {
            let secret = secret
                .split(',')
                .map(str::trim)
                .find(|s| !s.is_empty())
                .ok_or("the secret is empty")?;
            let data: serde_json::Value =
                serde_json::from_str(&data).map_err(|e| format!("--data is not JSON: {e}"))?;
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
        Command::Queue(q) => {
            let sqs = SqsClient::new(&load_sdk_config(SdkBudget::WORKER).await);
            match q {
                QueueCommand::Create { name } => {
                    let out = sqs
                        .create_queue()
                        .queue_name(name)
                        .send()
                        .await
                        .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())?;
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
                        .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())?;
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
    }
}
