//! Secrets the functions read at run time, and a cache that can re-read them for rotation.
//!
//! A secret comes from one of two places ([`SecretSource`]):
//! - deployed: a Secrets Manager secret, named by its ARN (or name) in `…_SECRET_ARN`, read with
//!   `GetSecretValue`, so the value never sits in the Lambda configuration;
//! - local runs and tests: the value itself in an environment variable.
//!
//! Exactly one of the two variables must be set. [`CachedSecret`] reads the secret once at init
//! (init fails if it cannot) and re-reads it on demand, at most once per interval, one read at a
//! time: callers that arrive while a read runs wait for it and then see its result.
//!
//! Nothing here logs, and no error or `Debug` output contains a secret value.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::future::BoxFuture;

use crate::clock::{Clock, EpochMillis};
use crate::config::{ConfigError, Env, SecretString};

/// The receiver's webhook secret list, as a value (local mode).
pub const ENV_WEBHOOK_SECRET: &str = "WORKOS_WEBHOOK_SECRET";
/// The receiver's webhook secret list, as a Secrets Manager secret ARN or name (deployed).
pub const ENV_WEBHOOK_SECRET_ARN: &str = "WORKOS_WEBHOOK_SECRET_ARN";
/// The processor's WorkOS API key, as a value (local mode).
pub const ENV_API_KEY: &str = "WORKOS_API_KEY";
/// The processor's WorkOS API key, as a Secrets Manager secret ARN or name (deployed).
pub const ENV_API_KEY_SECRET_ARN: &str = "WORKOS_API_KEY_SECRET_ARN";

/// The shortest interval between two re-reads of a secret that callers should use.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// The value itself, from the environment variable `var` (local mode). It never changes.
    Literal { var: &'static str, value: SecretString },
    /// A Secrets Manager secret (ARN or name), from the environment variable `var`.
    SecretsManager { var: &'static str, secret_id: String },
}

impl SecretSource {
    /// Read the source from two alternative variables: `arn_var` (Secrets Manager) or
    /// `literal_var` (the value). Exactly one must be set.
    pub fn from_env(env: &impl Env, arn_var: &'static str, literal_var: &'static str) -> Result<Self, ConfigError> {
        match (env.value(arn_var), env.value(literal_var)) {
            (Some(_), Some(_)) => Err(ConfigError::Conflict {
                first: arn_var,
                second: literal_var,
            }),
            (None, None) => Err(ConfigError::MissingOneOf {
                first: arn_var,
                second: literal_var,
            }),
            (Some(id), None) => {
                let secret_id = id.trim().to_owned();
                if secret_id.chars().any(char::is_whitespace) {
                    return Err(ConfigError::Invalid {
                        name: arn_var,
                        why: "must be a Secrets Manager secret ARN or name, without spaces".into(),
                    });
                }
                if secret_id.starts_with("arn:") && !looks_like_secret_arn(&secret_id) {
                    return Err(ConfigError::Invalid {
                        name: arn_var,
                        why:
                            "is an ARN but not a Secrets Manager secret ARN (arn:<partition>:secretsmanager:…:secret:…)"
                                .into(),
                    });
                }
                Ok(SecretSource::SecretsManager {
                    var: arn_var,
                    secret_id,
                })
            }
            (None, Some(value)) => {
                if looks_like_secret_arn(value.trim()) {
                    return Err(ConfigError::Invalid {
                        name: literal_var,
                        why: format!("holds a Secrets Manager ARN, not a value; set {arn_var} to it instead"),
                    });
                }
                Ok(SecretSource::Literal {
                    var: literal_var,
                    value: SecretString::new(value),
                })
            }
        }
    }

    /// The environment variable the source was read from.
    pub fn var(&self) -> &'static str {
        match self {
            SecretSource::Literal { var, .. } | SecretSource::SecretsManager { var, .. } => var,
        }
    }

    /// True when a re-read may return a new value (Secrets Manager), false for a literal.
    pub fn can_change(&self) -> bool {
        matches!(self, SecretSource::SecretsManager { .. })
    }

    /// The reader for this source. The Secrets Manager client is built from `sdk`, so it has
    /// that configuration's timeouts, retries and endpoint (`AWS_ENDPOINT_URL` locally).
    pub fn fetcher(&self, sdk: &aws_config::SdkConfig) -> Box<dyn FetchSecret> {
        match self {
            SecretSource::Literal { var, value } => Box::new(LiteralSecret::new(var, value.clone())),
            SecretSource::SecretsManager { var, secret_id } => Box::new(SecretsManagerSecret::new(
                aws_sdk_secretsmanager::Client::new(sdk),
                var,
                secret_id.clone(),
            )),
        }
    }
}

/// The receiver's webhook secret: `WORKOS_WEBHOOK_SECRET_ARN` or `WORKOS_WEBHOOK_SECRET`.
pub fn webhook_secret_source(env: &impl Env) -> Result<SecretSource, ConfigError> {
    SecretSource::from_env(env, ENV_WEBHOOK_SECRET_ARN, ENV_WEBHOOK_SECRET)
}

/// The processor's WorkOS API key: `WORKOS_API_KEY_SECRET_ARN` or `WORKOS_API_KEY`.
pub fn api_key_source(env: &impl Env) -> Result<SecretSource, ConfigError> {
    SecretSource::from_env(env, ENV_API_KEY_SECRET_ARN, ENV_API_KEY)
}

fn looks_like_secret_arn(s: &str) -> bool {
    let mut parts = s.splitn(7, ':');
    parts.next() == Some("arn")
        && parts.next().is_some_and(|p| p.starts_with("aws"))
        && parts.next() == Some("secretsmanager")
        && parts.nth(2) == Some("secret")
        && parts.next().is_some_and(|name| !name.is_empty())
}

/// Why a secret could not be read. Names the secret (variable, ARN), never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretReadError {
    #[error("cannot read {what}: {detail}")]
    Unavailable { what: String, detail: String },
    #[error("{what} holds no SecretString (binary secrets are not supported)")]
    NotAString { what: String },
    #[error("{what} is empty")]
    Empty { what: String },
}

/// The port: one read of a secret's current value.
pub trait FetchSecret: Send + Sync + 'static {
    fn fetch(&self) -> BoxFuture<'_, Result<SecretString, SecretReadError>>;
    /// False when a re-read can never return another value (a literal).
    fn can_change(&self) -> bool {
        true
    }
    /// What is read, for messages: a variable name and a secret ARN, never a value.
    fn describe(&self) -> String;
}

/// A value given in the environment (local mode).
#[derive(Debug, Clone)]
pub struct LiteralSecret {
    var: &'static str,
    value: SecretString,
}

impl LiteralSecret {
    pub fn new(var: &'static str, value: SecretString) -> Self {
        LiteralSecret { var, value }
    }
}

impl FetchSecret for LiteralSecret {
    fn fetch(&self) -> BoxFuture<'_, Result<SecretString, SecretReadError>> {
        let result = if self.value.expose().trim().is_empty() {
            Err(SecretReadError::Empty { what: self.describe() })
        } else {
            Ok(self.value.clone())
        };
        Box::pin(std::future::ready(result))
    }
    fn can_change(&self) -> bool {
        false
    }
    fn describe(&self) -> String {
        self.var.to_owned()
    }
}

/// A Secrets Manager secret, read with `GetSecretValue` (stage `AWSCURRENT`).
#[derive(Debug, Clone)]
pub struct SecretsManagerSecret {
    client: aws_sdk_secretsmanager::Client,
    var: &'static str,
    secret_id: String,
}

impl SecretsManagerSecret {
    pub fn new(client: aws_sdk_secretsmanager::Client, var: &'static str, secret_id: impl Into<String>) -> Self {
        SecretsManagerSecret {
            client,
            var,
            secret_id: secret_id.into(),
        }
    }
}

impl FetchSecret for SecretsManagerSecret {
    fn fetch(&self) -> BoxFuture<'_, Result<SecretString, SecretReadError>> {
        Box::pin(async move {
            let out = self
                .client
                .get_secret_value()
                .secret_id(&self.secret_id)
                .send()
                .await
                .map_err(|e| SecretReadError::Unavailable {
                    what: self.describe(),
                    detail: aws_sdk_secretsmanager::error::DisplayErrorContext(&e).to_string(),
                })?;
            match out.secret_string() {
                None => Err(SecretReadError::NotAString { what: self.describe() }),
                Some(s) if s.trim().is_empty() => Err(SecretReadError::Empty { what: self.describe() }),
                Some(s) => Ok(SecretString::new(s)),
            }
        })
    }
    fn describe(&self) -> String {
        format!("the Secrets Manager secret {} ({})", self.secret_id, self.var)
    }
}

/// An in-memory secret for tests and local tools: its value can be changed or made to fail
/// (reads fail until a value is set), and it counts reads.
#[derive(Clone, Default)]
pub struct MemorySecret {
    value: Arc<std::sync::Mutex<Option<String>>>,
    reads: Arc<AtomicU64>,
    delay_ms: Arc<AtomicU64>,
}

impl MemorySecret {
    pub fn with(value: &str) -> Self {
        let s = MemorySecret::default();
        s.set(value);
        s
    }
    /// Each read takes this long (to test concurrent callers and timeouts).
    pub fn delayed(self, delay: Duration) -> Self {
        self.set_delay(delay);
        self
    }
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::SeqCst);
    }
    pub fn set(&self, value: &str) {
        *self.value.lock().unwrap_or_else(|e| e.into_inner()) = Some(value.to_owned());
    }
    /// Make the next reads fail.
    pub fn fail(&self) {
        *self.value.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for MemorySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySecret")
            .field("value", &"[REDACTED]")
            .field("reads", &self.reads())
            .finish()
    }
}

impl FetchSecret for MemorySecret {
    fn fetch(&self) -> BoxFuture<'_, Result<SecretString, SecretReadError>> {
        Box::pin(async move {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let delay = self.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let value = self.value.lock().unwrap_or_else(|e| e.into_inner()).clone();
            match value {
                Some(v) if v.trim().is_empty() => Err(SecretReadError::Empty { what: self.describe() }),
                Some(v) => Ok(SecretString::new(v)),
                None => Err(SecretReadError::Unavailable {
                    what: self.describe(),
                    detail: "service unavailable".into(),
                }),
            }
        })
    }
    fn describe(&self) -> String {
        "the in-memory secret".into()
    }
}

/// One value of a cached secret. `version` starts at 0 and grows by one each time a re-read
/// finds a different value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedSecret {
    pub value: SecretString,
    pub version: u64,
}

/// What [`CachedSecret::refresh_if_older_than`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// Nothing was read: the last read was less than the interval ago (or the secret is a
    /// literal). Another caller's read may just have replaced the value: compare versions.
    NotDue,
    /// Read again; same value.
    Unchanged,
    /// Read again; the value was replaced and the version bumped.
    Changed,
}

/// A secret read once at init and re-read on demand.
pub struct CachedSecret {
    fetcher: Box<dyn FetchSecret>,
    clock: Arc<dyn Clock>,
    current: ArcSwap<LoadedSecret>,
    /// When the last read began (successful or not), epoch ms.
    last_read_ms: AtomicU64,
    /// Held while a read runs: one read at a time, the others wait for it.
    refreshing: tokio::sync::Mutex<()>,
}

impl fmt::Debug for CachedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedSecret")
            .field("source", &self.fetcher.describe())
            .field("version", &self.version())
            .field("value", &"[REDACTED]")
            .finish()
    }
}

impl CachedSecret {
    /// Read the secret for the first time. Fails when it cannot be read (fail init on it).
    pub async fn load(fetcher: impl FetchSecret, clock: impl Clock) -> Result<Self, SecretReadError> {
        Self::load_boxed(Box::new(fetcher), Arc::new(clock)).await
    }

    /// [`CachedSecret::load`] for a source from the environment.
    pub async fn from_source(
        source: &SecretSource,
        sdk: &aws_config::SdkConfig,
        clock: impl Clock,
    ) -> Result<Self, SecretReadError> {
        Self::load_boxed(source.fetcher(sdk), Arc::new(clock)).await
    }

    async fn load_boxed(fetcher: Box<dyn FetchSecret>, clock: Arc<dyn Clock>) -> Result<Self, SecretReadError> {
        let started = clock.now();
        let value = fetcher.fetch().await?;
        Ok(CachedSecret {
            fetcher,
            clock,
            current: ArcSwap::from_pointee(LoadedSecret { value, version: 0 }),
            last_read_ms: AtomicU64::new(started.0),
            refreshing: tokio::sync::Mutex::new(()),
        })
    }

    /// The current value.
    pub fn value(&self) -> SecretString {
        self.current.load().value.clone()
    }

    /// The current value with its version.
    pub fn current(&self) -> Arc<LoadedSecret> {
        self.current.load_full()
    }

    pub fn version(&self) -> u64 {
        self.current.load().version
    }

    /// False for a literal: re-reading can never change it.
    pub fn can_change(&self) -> bool {
        self.fetcher.can_change()
    }

    /// What is read (variable and ARN), for messages.
    pub fn describe(&self) -> String {
        self.fetcher.describe()
    }

    /// Time since the last read began.
    pub fn age(&self) -> Duration {
        EpochMillis(self.last_read_ms.load(Ordering::SeqCst)).abs_diff(self.clock.now())
    }

    fn due(&self, min_age: Duration) -> bool {
        let last = EpochMillis(self.last_read_ms.load(Ordering::SeqCst));
        last.saturating_add(min_age) <= self.clock.now()
    }

    /// Re-read the secret if the last read began at least `min_age` ago. At most one read runs
    /// at a time; a caller that arrives during a read waits for it and then gets `NotDue` (the
    /// value is already the fresh one). A failed read counts as a read, so an unreachable
    /// Secrets Manager is not asked again before `min_age` either; the old value stays.
    /// Cancel-safe: dropping the future mid-read keeps the old value.
    pub async fn refresh_if_older_than(&self, min_age: Duration) -> Result<Refresh, SecretReadError> {
        if !self.can_change() {
            return Ok(Refresh::NotDue);
        }
        // Taken even when no read is due, so a caller that arrives during a read waits for it.
        let _one_at_a_time = self.refreshing.lock().await;
        if !self.due(min_age) {
            return Ok(Refresh::NotDue);
        }
        self.last_read_ms.store(self.clock.now().0, Ordering::SeqCst);
        let value = self.fetcher.fetch().await?;
        let current = self.current.load_full();
        if current.value == value {
            return Ok(Refresh::Unchanged);
        }
        self.current.store(Arc::new(LoadedSecret {
            value,
            version: current.version.saturating_add(1),
        }));
        Ok(Refresh::Changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::collections::HashMap;

    const T0: EpochMillis = EpochMillis(1_700_000_000_000);
    const ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:dsync/workos-webhook-secret-AbCdEf";

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn webhook_secret_from_an_arn_or_a_value() {
        assert_eq!(
            webhook_secret_source(&env(&[(ENV_WEBHOOK_SECRET_ARN, ARN)])),
            Ok(SecretSource::SecretsManager {
                var: ENV_WEBHOOK_SECRET_ARN,
                secret_id: ARN.into()
            })
        );
        // A plain secret name is accepted too (GetSecretValue takes either).
        assert_eq!(
            webhook_secret_source(&env(&[(ENV_WEBHOOK_SECRET_ARN, " dsync/workos-webhook-secret ")])),
            Ok(SecretSource::SecretsManager {
                var: ENV_WEBHOOK_SECRET_ARN,
                secret_id: "dsync/workos-webhook-secret".into()
            })
        );
        let literal = webhook_secret_source(&env(&[(ENV_WEBHOOK_SECRET, "whsec_a,whsec_b")])).expect("literal");
        assert_eq!(
            literal,
            SecretSource::Literal {
                var: ENV_WEBHOOK_SECRET,
                value: SecretString::new("whsec_a,whsec_b")
            }
        );
        assert!(!literal.can_change());
        // A blank variable counts as unset.
        let blank_arn = env(&[(ENV_WEBHOOK_SECRET_ARN, "  "), (ENV_WEBHOOK_SECRET, "whsec_a")]);
        assert_eq!(
            webhook_secret_source(&blank_arn).map(|s| s.var()),
            Ok(ENV_WEBHOOK_SECRET)
        );
    }

    #[test]
    fn api_key_from_an_arn_or_a_value() {
        let s = api_key_source(&env(&[(ENV_API_KEY_SECRET_ARN, ARN)])).expect("arn");
        assert_eq!(s.var(), ENV_API_KEY_SECRET_ARN);
        assert!(s.can_change());
        let s = api_key_source(&env(&[(ENV_API_KEY, "sk_test_1")])).expect("literal");
        assert_eq!(s.var(), ENV_API_KEY);
        // The receiver's variables are not the processor's.
        assert!(api_key_source(&env(&[(ENV_WEBHOOK_SECRET_ARN, ARN)])).is_err());
    }

    #[test]
    fn neither_or_both_is_a_clear_error() {
        let e = webhook_secret_source(&env(&[])).expect_err("neither");
        assert_eq!(
            e,
            ConfigError::MissingOneOf {
                first: ENV_WEBHOOK_SECRET_ARN,
                second: ENV_WEBHOOK_SECRET
            }
        );
        assert_eq!(
            e.to_string(),
            "WORKOS_WEBHOOK_SECRET_ARN or WORKOS_WEBHOOK_SECRET must be set"
        );
        let e = api_key_source(&env(&[
            (ENV_API_KEY_SECRET_ARN, ARN),
            (ENV_API_KEY, "sk_test_topsecret"),
        ]))
        .expect_err("both");
        assert_eq!(
            e.to_string(),
            "WORKOS_API_KEY_SECRET_ARN and WORKOS_API_KEY are both set; set only one"
        );
        assert!(!e.to_string().contains("topsecret"));
    }

    #[test]
    fn arns_and_values_in_the_wrong_variable_are_refused() {
        for bad in [
            "arn:aws:sqs:us-east-1:123456789012:events",
            "arn:aws:secretsmanager:us-east-1:1:other:x",
            "a b",
        ] {
            match webhook_secret_source(&env(&[(ENV_WEBHOOK_SECRET_ARN, bad)])) {
                Err(ConfigError::Invalid { name, .. }) => assert_eq!(name, ENV_WEBHOOK_SECRET_ARN),
                other => panic!("{bad}: {other:?}"),
            }
        }
        match webhook_secret_source(&env(&[(ENV_WEBHOOK_SECRET, ARN)])) {
            Err(ConfigError::Invalid { name, why }) => {
                assert_eq!(name, ENV_WEBHOOK_SECRET);
                assert!(why.contains(ENV_WEBHOOK_SECRET_ARN), "{why}");
            }
            other => panic!("{other:?}"),
        }
        let gov = "arn:aws-us-gov:secretsmanager:us-gov-west-1:123456789012:secret:k-AbCdEf";
        assert!(api_key_source(&env(&[(ENV_API_KEY_SECRET_ARN, gov)])).is_ok());
    }

    #[test]
    fn debug_output_never_shows_a_value() {
        let s = webhook_secret_source(&env(&[(ENV_WEBHOOK_SECRET, "whsec_topsecret")])).expect("s");
        assert!(!format!("{s:?}").contains("topsecret"));
    }

    const MIN: Duration = DEFAULT_REFRESH_INTERVAL;

    #[tokio::test]
    async fn init_reads_once_and_fails_clearly() {
        let src = MemorySecret::with("v1");
        let c = CachedSecret::load(src.clone(), ManualClock::at(T0))
            .await
            .expect("load");
        assert_eq!(c.value().expose(), "v1");
        assert_eq!((c.version(), src.reads()), (0, 1));
        let bad = MemorySecret::default();
        bad.fail();
        let e = CachedSecret::load(bad, ManualClock::at(T0)).await.expect_err("fails");
        assert_eq!(e.to_string(), "cannot read the in-memory secret: service unavailable");
    }

    #[tokio::test]
    async fn refreshes_at_most_once_per_interval_and_replaces_the_value() {
        let src = MemorySecret::with("old");
        let clock = ManualClock::at(T0);
        let c = CachedSecret::load(src.clone(), clock.clone()).await.expect("load");
        src.set("old,new");
        clock.advance(MIN - Duration::from_millis(1));
        assert_eq!(c.refresh_if_older_than(MIN).await, Ok(Refresh::NotDue));
        assert_eq!((c.value().expose(), src.reads()), ("old", 1));

        clock.advance(Duration::from_millis(1));
        assert_eq!(c.refresh_if_older_than(MIN).await, Ok(Refresh::Changed));
        assert_eq!((c.value().expose(), c.version(), src.reads()), ("old,new", 1, 2));
        assert_eq!(c.refresh_if_older_than(MIN).await, Ok(Refresh::NotDue));
        assert_eq!(src.reads(), 2);

        clock.advance(MIN);
        assert_eq!(c.refresh_if_older_than(MIN).await, Ok(Refresh::Unchanged));
        assert_eq!((c.version(), src.reads()), (1, 3));

        src.set("new");
        clock.advance(MIN);
        assert_eq!(c.refresh_if_older_than(MIN).await, Ok(Refresh::Changed));
        assert_eq!((c.value().expose(), c.version()), ("new", 2));
    }

    #[tokio::test]
    async fn a_failed_read_keeps_the_value_and_counts_as_a_read() {
        let src = MemorySecret::with("v1");
        let clock = ManualClock::at(T0);
        let c = CachedSecret::load(src.clone(), clock.clone()).await.expect("load");
        src.fail();
        clock.advance(MIN);
        assert!(c.refresh_if_older_than(MIN).await.is_err());
        assert_eq!(c.value().expose(), "v1");
        assert_eq!(c.refresh_if_older_than(MIN).await, Ok(Refresh::NotDue));
        assert_eq!(src.reads(), 2);
        src.set("v2");
        clock.advance(MIN);
        assert_eq!(c.refresh_if_older_than(MIN).await, Ok(Refresh::Changed));
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_read() {
        let src = MemorySecret::with("old").delayed(Duration::from_millis(30));
        let clock = ManualClock::at(T0);
        let c = CachedSecret::load(src.clone(), clock.clone()).await.expect("load");
        src.set("new");
        clock.advance(MIN);
        let results = futures::future::join_all((0..16).map(|_| c.refresh_if_older_than(MIN))).await;
        assert_eq!(src.reads(), 2, "one initial read and one refresh, not one per caller");
        assert_eq!(results.iter().filter(|r| **r == Ok(Refresh::Changed)).count(), 1);
        assert!(results
            .iter()
            .all(|r| matches!(r, Ok(Refresh::Changed | Refresh::NotDue))));
        // Every caller, once its call returned, sees the new value.
        assert_eq!((c.value().expose(), c.version()), ("new", 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_callers_on_threads_share_one_read() {
        let src = MemorySecret::with("old").delayed(Duration::from_millis(30));
        let clock = ManualClock::at(T0);
        let c = Arc::new(CachedSecret::load(src.clone(), clock.clone()).await.expect("load"));
        src.set("new");
        clock.advance(MIN);
        let handles: Vec<_> = (0..16)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move {
                    c.refresh_if_older_than(MIN)
                        .await
                        .map(|_| c.value().expose().to_owned())
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.await.expect("join"), Ok("new".to_owned()));
        }
        assert_eq!(src.reads(), 2);
    }

    #[test]
    fn debug_of_the_in_memory_secret_is_redacted() {
        assert!(!format!("{:?}", MemorySecret::with("whsec_topsecret")).contains("topsecret"));
    }

    #[tokio::test]
    async fn a_literal_is_never_read_again() {
        let c = CachedSecret::load(
            LiteralSecret::new(ENV_WEBHOOK_SECRET, SecretString::new("whsec_l")),
            ManualClock::at(T0),
        )
        .await
        .expect("load");
        assert!(!c.can_change());
        assert_eq!(c.refresh_if_older_than(Duration::ZERO).await, Ok(Refresh::NotDue));
        assert_eq!(c.value().expose(), "whsec_l");
        assert!(!format!("{c:?}").contains("whsec_l"));
    }
}
