//! `dsync stack up`: the tables and queues, with the definitions the infra uses (`dsync::schema`).

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{KeyType, TableDescription, TableStatus};
use aws_sdk_sqs::types::QueueAttributeName;
use dsync::aws::{load_sdk_config, DynamoClient, SdkBudget, SqsClient};
use dsync::schema;

use crate::sdk_err;

/// The longest prefix: SQS queue names are at most 80 characters and the DLQ adds `-events-dlq`.
const MAX_PREFIX: usize = 60;

/// Validate `--prefix`: letters, digits, `-` and `_` (valid in both queue and table names).
pub fn parse_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > MAX_PREFIX {
        return Err(format!("must be 1 to {MAX_PREFIX} characters"));
    }
    if !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err("may contain only letters, digits, '-' and '_'".into());
    }
    Ok(s.to_string())
}

/// Resource names for a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackNames {
    pub events_table: String,
    pub state_table: String,
    /// The events queue; its DLQ is `<queue>-dlq` (see `schema::create_queue_with_dlq`).
    pub queue: String,
}

impl StackNames {
    pub fn for_prefix(prefix: &str) -> Self {
        StackNames {
            events_table: format!("{prefix}-events"),
            state_table: format!("{prefix}-state"),
            queue: format!("{prefix}-events"),
        }
    }
}

/// What `stack up` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackOutput {
    pub events_table: String,
    pub state_table: String,
    pub queue_url: String,
    pub dlq_url: String,
}

impl StackOutput {
    /// `NAME=value` lines a shell can `eval` (values quoted when needed).
    pub fn env_lines(&self) -> String {
        [
            ("EVENTS_TABLE", &self.events_table),
            ("STATE_TABLE", &self.state_table),
            ("EVENTS_QUEUE_URL", &self.queue_url),
            ("DLQ_URL", &self.dlq_url),
        ]
        .iter()
        .map(|(k, v)| format!("{k}={}\n", shell_quote(v)))
        .collect()
    }
}

/// Quote a value for a POSIX shell, unless it only has characters that need none.
pub fn shell_quote(v: &str) -> String {
    let safe = !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if safe {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\'', r"'\''"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Events,
    State,
}

impl Table {
    /// (hash key, range key) the table must have.
    fn keys(self) -> (&'static str, Option<&'static str>) {
        match self {
            Table::Events => (schema::events::KEY, None),
            Table::State => (schema::state::PK, Some(schema::state::SK)),
        }
    }
}

pub async fn up(prefix: &str, visibility_timeout: u32, max_receive_count: u32) -> Result<StackOutput, String> {
    let names = StackNames::for_prefix(prefix);
    let sdk = load_sdk_config(SdkBudget::WORKER).await;
    let ddb = DynamoClient::new(&sdk);
    let sqs = SqsClient::new(&sdk);
    ensure_table(&ddb, &names.events_table, Table::Events).await?;
    ensure_table(&ddb, &names.state_table, Table::State).await?;
    check_existing_queue(&sqs, &names.queue, visibility_timeout, max_receive_count).await?;
    // CreateQueue returns the existing queue when the attributes match.
    let (queue_url, dlq_url) = schema::create_queue_with_dlq(&sqs, &names.queue, visibility_timeout, max_receive_count)
        .await
        .map_err(|e| format!("creating queue {} and its DLQ: {}", names.queue, crate::tidy(&e)))?;
    eprintln!("queue {} ready (DLQ {}-dlq)", names.queue, names.queue);
    Ok(StackOutput {
        events_table: names.events_table,
        state_table: names.state_table,
        queue_url,
        dlq_url,
    })
}

/// An existing queue must have the settings asked for (SQS would refuse with a bare "already exists").
async fn check_existing_queue(
    sqs: &SqsClient,
    name: &str,
    visibility_timeout: u32,
    max_receive_count: u32,
) -> Result<(), String> {
    let url = match sqs.get_queue_url().queue_name(name).send().await {
        Ok(out) => out.queue_url.unwrap_or_default(),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_queue_does_not_exist()) => return Ok(()),
        Err(e) => return Err(format!("looking up queue {name}: {}", sdk_err(e))),
    };
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::VisibilityTimeout)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .map_err(|e| format!("reading queue {name}: {}", sdk_err(e)))?
        .attributes
        .unwrap_or_default();
    let vt = attrs
        .get(&QueueAttributeName::VisibilityTimeout)
        .cloned()
        .unwrap_or_default();
    let mrc = attrs
        .get(&QueueAttributeName::RedrivePolicy)
        .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
        .and_then(|p| match &p["maxReceiveCount"] {
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::String(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "none".into());
    if vt != visibility_timeout.to_string() || mrc != max_receive_count.to_string() {
        return Err(format!(
            "queue {name} exists with visibility timeout {vt} s and maxReceiveCount {mrc}; asked for \
             {visibility_timeout} s and {max_receive_count} (use those values, or another --prefix)"
        ));
    }
    Ok(())
}

async fn describe(ddb: &DynamoClient, name: &str) -> Result<Option<TableDescription>, String> {
    match ddb.describe_table().table_name(name).send().await {
        Ok(out) => Ok(out.table),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            Ok(None)
        }
        Err(e) => Err(format!("describing table {name}: {}", sdk_err(e))),
    }
}

async fn ensure_table(ddb: &DynamoClient, name: &str, kind: Table) -> Result<(), String> {
    let existing = describe(ddb, name).await?;
    let table = match existing {
        Some(t) => {
            eprintln!("table {name} exists");
            t
        }
        None => {
            let created = match kind {
                Table::Events => schema::create_events_table(ddb, name).await,
                Table::State => schema::create_state_table(ddb, name).await,
            };
            match (created, describe(ddb, name).await?) {
                (Ok(()), Some(t)) => {
                    eprintln!("table {name} created");
                    t
                }
                // Someone else created it meanwhile (or only the TTL step failed): use it.
                (Err(e), Some(t)) => {
                    eprintln!("table {name} exists ({e})");
                    t
                }
                (Ok(()), None) => return Err(format!("table {name} was created but cannot be described")),
                (Err(e), None) => return Err(format!("creating table {name}: {e}")),
            }
        }
    };
    check_keys(name, &table, kind)?;
    wait_active(ddb, name, table.table_status).await?;
    if kind == Table::Events {
        ensure_ttl(ddb, name).await?;
    }
    Ok(())
}

/// An existing table must have the key schema the processor expects.
fn check_keys(name: &str, t: &TableDescription, kind: Table) -> Result<(), String> {
    let key_of = |ty: KeyType| {
        t.key_schema()
            .iter()
            .find(|k| k.key_type == ty)
            .map(|k| k.attribute_name.as_str())
    };
    let (hash, range) = kind.keys();
    if key_of(KeyType::Hash) != Some(hash) || key_of(KeyType::Range) != range {
        return Err(format!(
            "table {name} exists with another key schema (want hash key {hash:?}, range key {range:?})"
        ));
    }
    Ok(())
}

async fn wait_active(ddb: &DynamoClient, name: &str, mut status: Option<TableStatus>) -> Result<(), String> {
    let started = Instant::now();
    loop {
        match status {
            Some(TableStatus::Active) | Some(TableStatus::Updating) => return Ok(()),
            Some(TableStatus::Creating) | None => {}
            Some(other) => return Err(format!("table {name} is {}", other.as_str())),
        }
        if started.elapsed() > Duration::from_secs(120) {
            return Err(format!("table {name} did not become ACTIVE within 120 s"));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        status = describe(ddb, name).await?.and_then(|t| t.table_status);
    }
}

/// TTL on `expires_at` (set by `create_events_table`; set here too when that step could not run).
async fn ensure_ttl(ddb: &DynamoClient, name: &str) -> Result<(), String> {
    use aws_sdk_dynamodb::types::{TimeToLiveSpecification, TimeToLiveStatus};
    let out = ddb
        .describe_time_to_live()
        .table_name(name)
        .send()
        .await
        .map_err(|e| format!("reading the TTL of table {name}: {}", sdk_err(e)))?;
    let ttl = out.time_to_live_description;
    let enabled = ttl.as_ref().is_some_and(|d| {
        matches!(
            d.time_to_live_status,
            Some(TimeToLiveStatus::Enabled) | Some(TimeToLiveStatus::Enabling)
        )
    });
    if enabled {
        let attr = ttl.and_then(|d| d.attribute_name).unwrap_or_default();
        if attr != schema::events::TTL {
            return Err(format!(
                "table {name} has TTL on {attr:?}, not {:?}",
                schema::events::TTL
            ));
        }
        return Ok(());
    }
    let spec = TimeToLiveSpecification::builder()
        .attribute_name(schema::events::TTL)
        .enabled(true)
        .build()
        .map_err(|e| e.to_string())?;
    ddb.update_time_to_live()
        .table_name(name)
        .time_to_live_specification(spec)
        .send()
        .await
        .map_err(|e| format!("enabling TTL on table {name}: {}", sdk_err(e)))?;
    eprintln!("table {name}: TTL enabled on {}", schema::events::TTL);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        let n = StackNames::for_prefix("demo");
        assert_eq!(n.events_table, "demo-events");
        assert_eq!(n.state_table, "demo-state");
        assert_eq!(n.queue, "demo-events");
    }

    #[test]
    fn prefix_rules() {
        assert!(parse_prefix("demo-1_a").is_ok());
        assert!(parse_prefix("").is_err());
        assert!(parse_prefix("a.b").is_err());
        assert!(parse_prefix(&"x".repeat(61)).is_err());
        // The longest prefix still gives a valid DLQ name (at most 80 characters).
        assert!(format!("{}-events-dlq", "x".repeat(MAX_PREFIX)).len() <= 80);
    }

    #[test]
    fn env_lines_are_eval_able() {
        let out = StackOutput {
            events_table: "demo-events".into(),
            state_table: "demo-state".into(),
            queue_url: "http://127.0.0.1:4566/123456789012/demo-events".into(),
            dlq_url: "it's odd".into(),
        };
        assert_eq!(
            out.env_lines(),
            "EVENTS_TABLE=demo-events\nSTATE_TABLE=demo-state\n\
             EVENTS_QUEUE_URL=http://127.0.0.1:4566/123456789012/demo-events\nDLQ_URL='it'\\''s odd'\n"
        );
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a$b"), "'a$b'");
    }
}
