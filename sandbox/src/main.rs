//! `workos-sandbox`: serve the WorkOS Directory Sync stand-in until Ctrl-C.
//!
//! Environment: `SANDBOX_ADDR` (default 127.0.0.1:4100), `SANDBOX_API_KEY` (default
//! `sk_test_sandbox`), `SANDBOX_WEBHOOK_URL` + `SANDBOX_WEBHOOK_SECRET` (deliver events there),
//! `SANDBOX_SEED` (e.g. `2x10`: one directory with 2 groups of 10 users), `SANDBOX_RATE_LIMIT`
//! (per-directory `/directory_users` requests per window; `0` disables; default 4),
//! `SANDBOX_RATE_WINDOW_MS` (that window, default 1000; the per-key limit's window is 60 of them),
//! `SANDBOX_KEY_LIMIT` (requests per key window; `0` disables; default 6000).

use std::net::SocketAddr;
use std::process::ExitCode;

use workos_sandbox::{Sandbox, SandboxConfig, SeedSpec, WebhookConfig};

fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// `"2x10"` → 2 groups of 10 users.
fn parse_seed(s: &str) -> Option<(usize, usize)> {
    let (g, u) = s.split_once(['x', 'X'])?;
    Some((g.trim().parse().ok()?, u.trim().parse().ok()?))
}

fn config() -> Result<(SandboxConfig, Option<(usize, usize)>), String> {
    let mut config = SandboxConfig::default();
    let addr = env("SANDBOX_ADDR").unwrap_or_else(|| "127.0.0.1:4100".into());
    config.bind = addr
        .parse::<SocketAddr>()
        .map_err(|e| format!("SANDBOX_ADDR {addr:?}: {e}"))?;
    if let Some(key) = env("SANDBOX_API_KEY") {
        config.api_key = key;
    }
    if let Some(url) = env("SANDBOX_WEBHOOK_URL") {
        let secret = env("SANDBOX_WEBHOOK_SECRET").ok_or("SANDBOX_WEBHOOK_URL needs SANDBOX_WEBHOOK_SECRET")?;
        config.webhook = Some(WebhookConfig::new(url, secret));
    }
    if let Some(rl) = env("SANDBOX_RATE_LIMIT") {
        let n: u32 = rl.parse().map_err(|e| format!("SANDBOX_RATE_LIMIT {rl:?}: {e}"))?;
        config.rate_limit_per_sec = (n > 0).then_some(n);
    }
    if let Some(w) = env("SANDBOX_RATE_WINDOW_MS") {
        let ms: u64 = w.parse().map_err(|e| format!("SANDBOX_RATE_WINDOW_MS {w:?}: {e}"))?;
        config.rate_window = std::time::Duration::from_millis(ms.max(1));
    }
    if let Some(k) = env("SANDBOX_KEY_LIMIT") {
        let n: u32 = k.parse().map_err(|e| format!("SANDBOX_KEY_LIMIT {k:?}: {e}"))?;
        config.key_limit_per_minute = (n > 0).then_some(n);
    }
    let seed = match env("SANDBOX_SEED") {
        Some(s) => Some(parse_seed(&s).ok_or_else(|| format!("SANDBOX_SEED {s:?}: expected GROUPSxUSERS, e.g. 2x10"))?),
        None => None,
    };
    Ok((config, seed))
}

#[tokio::main]
async fn main() -> ExitCode {
    let (config, seed) = match config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("workos-sandbox: {e}");
            return ExitCode::FAILURE;
        }
    };
    let webhook = config.webhook.as_ref().map(|w| w.url.clone());
    let sb = match Sandbox::start(config).await {
        Ok(sb) => sb,
        Err(e) => {
            eprintln!("workos-sandbox: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("WorkOS sandbox listening on {}", sb.base_url());
    if let Some(url) = webhook {
        println!("delivering events to {url}");
    }
    if let Some((groups, users)) = seed {
        let spec = (1..=groups).fold(SeedSpec::new("Sandbox Directory"), |s, i| {
            s.group(format!("Group {i}"), users)
        });
        let seeded = sb.seed_directory(spec);
        println!(
            "seeded directory {} ({} users, {} groups)",
            seeded.directory_id,
            seeded.user_ids.len(),
            groups
        );
        for g in &seeded.groups {
            println!("  group {} {:?} ({} users)", g.id, g.name, g.user_ids.len());
        }
    }
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("workos-sandbox: cannot wait for Ctrl-C: {e}");
    }
    sb.shutdown().await;
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::parse_seed;

    #[test]
    fn seed_spec_parses() {
        assert_eq!(parse_seed("2x10"), Some((2, 10)));
        assert_eq!(parse_seed(" 3 X 4 "), Some((3, 4)));
        assert_eq!(parse_seed("2x"), None);
        assert_eq!(parse_seed("ten"), None);
    }
}
