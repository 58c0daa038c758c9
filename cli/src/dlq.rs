//! `dsync dlq redrive`: move messages from the DLQ back to a queue by hand (receive, send with the
//! same body and message attributes, delete). Works on AWS and on moto, which lacks
//! `StartMessageMoveTask`. A message is deleted from the DLQ only after the target accepted it,
//! so an interruption can duplicate a message, never lose one (the processor deduplicates).

use std::io::Write;

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, QueueAttributeName, SendMessageBatchRequestEntry};
use dsync::aws::{load_sdk_config, SdkBudget, SqsClient};

use crate::sdk_err;

/// How long received messages stay hidden from other consumers while being moved.
const MOVE_VISIBILITY_SECS: i32 = 60;

fn progress(moved: u64, total: Option<u64>) -> String {
    match total {
        Some(t) => format!("moved {moved}/{t}"),
        None => format!("moved {moved}/…"),
    }
}

pub async fn redrive(from: &str, to: &str, max: Option<u64>) -> Result<(), String> {
    if from == to {
        return Err("--from and --to are the same queue".into());
    }
    let sqs = SqsClient::new(&load_sdk_config(SdkBudget::WORKER).await);
    // Fail early (and clearly) when the target does not exist.
    sqs.get_queue_attributes()
        .queue_url(to)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| format!("target queue {to}: {}", sdk_err(e)))?;
    let approx: Option<u64> = sqs
        .get_queue_attributes()
        .queue_url(from)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .map_err(|e| format!("source queue {from}: {}", sdk_err(e)))?
        .attributes
        .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages).cloned())
        .and_then(|n| n.parse().ok());
    let total = match (approx, max) {
        (Some(a), Some(m)) => Some(a.min(m)),
        (a, None) => a,
        (None, m) => m,
    };
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut moved: u64 = 0;
    let result = move_all(&sqs, from, to, max, &mut moved, |n| {
        if tty {
            eprint!("\r{}", progress(n, total));
            let _ = std::io::stderr().flush();
        } else {
            eprintln!("{}", progress(n, total));
        }
    })
    .await;
    if tty && moved > 0 {
        eprintln!();
    }
    println!("moved {moved} message(s) from {from} to {to}");
    result
}

async fn move_all(
    sqs: &SqsClient,
    from: &str,
    to: &str,
    max: Option<u64>,
    moved: &mut u64,
    mut report: impl FnMut(u64),
) -> Result<(), String> {
    loop {
        let left = max.map_or(10, |m| m.saturating_sub(*moved));
        if left == 0 {
            return Ok(());
        }
        let out = sqs
            .receive_message()
            .queue_url(from)
            .max_number_of_messages(i32::try_from(left.min(10)).unwrap_or(10))
            .wait_time_seconds(1)
            .visibility_timeout(MOVE_VISIBILITY_SECS)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| format!("receiving from {from}: {}", sdk_err(e)))?;
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            return Ok(());
        }
        let mut entries = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let entry = SendMessageBatchRequestEntry::builder()
                .id(format!("m{i}"))
                .message_body(m.body.clone().unwrap_or_default())
                .set_message_attributes(m.message_attributes.clone().filter(|a| !a.is_empty()))
                .build()
                .map_err(|e| e.to_string())?;
            entries.push(entry);
        }
        let sent = sqs
            .send_message_batch()
            .queue_url(to)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| format!("sending to {to}: {}", sdk_err(e)))?;
        let failed: Vec<String> = sent
            .failed
            .iter()
            .map(|f| format!("{}: {}", f.code, f.message.clone().unwrap_or_default()))
            .collect();
        let mut deletes = Vec::new();
        for ok in &sent.successful {
            let Some(i) = ok.id.strip_prefix('m').and_then(|i| i.parse::<usize>().ok()) else {
                continue;
            };
            if let Some(handle) = messages.get(i).and_then(|m| m.receipt_handle.clone()) {
                deletes.push(
                    DeleteMessageBatchRequestEntry::builder()
                        .id(format!("m{i}"))
                        .receipt_handle(handle)
                        .build()
                        .map_err(|e| e.to_string())?,
                );
            }
        }
        if !deletes.is_empty() {
            let n = deletes.len();
            let del = sqs
                .delete_message_batch()
                .queue_url(from)
                .set_entries(Some(deletes))
                .send()
                .await
                .map_err(|e| format!("deleting from {from} (the copies were sent): {}", sdk_err(e)))?;
            if !del.failed.is_empty() {
                return Err(format!(
                    "{} message(s) were copied to {to} but could not be deleted from {from}; they will be moved again",
                    del.failed.len()
                ));
            }
            *moved += n as u64;
            report(*moved);
        }
        if !failed.is_empty() {
            return Err(format!(
                "{to} refused {} message(s) (left on {from}, visible again in {MOVE_VISIBILITY_SECS} s): {}",
                failed.len(),
                failed.join("; ")
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::progress;

    #[test]
    fn progress_line() {
        assert_eq!(progress(37, Some(120)), "moved 37/120");
        assert_eq!(progress(3, None), "moved 3/…");
    }
}
