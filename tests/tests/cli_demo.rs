//! `scripts/demo.sh`, run as a user runs it: the whole pipeline (sandbox → signed webhook →
//! receiver → SQS → `dsync process` → DynamoDB) with its own moto, sandbox and receiver on free
//! ports (never the suite's moto), then the group rename. It must exit 0 and show every member of
//! the renamed group as "Platform Admins" with both entitlements.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use integration_tests::free_port;

/// Generous: the script may still have to build a binary or install moto on a fresh machine.
const TIMEOUT: Duration = Duration::from_secs(600);

fn read_all(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Three distinct free ports.
fn ports() -> (u16, u16, u16) {
    let mut seen = HashSet::new();
    let mut next = || loop {
        let p = free_port();
        if seen.insert(p) {
            return p;
        }
    };
    (next(), next(), next())
}

/// Wait for the script; on timeout ask it to stop (its trap stops what it started), then kill it.
fn wait_with_timeout(child: &mut Child) -> Option<ExitStatus> {
    let started = Instant::now();
    while started.elapsed() < TIMEOUT {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    std::thread::sleep(Duration::from_secs(5));
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn run_demo(repo: &Path, demo_dir: &Path) -> (Option<ExitStatus>, String, String) {
    let (moto, sandbox, receiver) = ports();
    let mut child = Command::new("bash")
        .arg("scripts/demo.sh")
        .current_dir(repo)
        .env("MOTO_PORT", moto.to_string())
        .env("SANDBOX_PORT", sandbox.to_string())
        .env("RECEIVER_PORT", receiver.to_string())
        .env("DEMO_DIR", demo_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bash scripts/demo.sh");
    let out = read_all(child.stdout.take().expect("stdout"));
    let err = read_all(child.stderr.take().expect("stderr"));
    let status = wait_with_timeout(&mut child);
    (status, out.join().unwrap_or_default(), err.join().unwrap_or_default())
}

#[test]
fn demo_script_shows_the_renamed_group_for_every_member() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let demo_dir = std::env::temp_dir().join(format!("dsync-demo-test-{}", std::process::id()));
    let (status, stdout, stderr) = run_demo(&repo, &demo_dir);
    let _ = std::fs::remove_dir_all(&demo_dir);
    let context = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    let status = status.unwrap_or_else(|| panic!("scripts/demo.sh did not finish within {TIMEOUT:?}\n{context}"));
    assert!(status.success(), "scripts/demo.sh failed ({status})\n{context}");

    let (before, after) = stdout
        .split_once("=== AFTER the rename")
        .unwrap_or_else(|| panic!("no AFTER table\n{context}"));
    let before_admins: Vec<&str> = before
        .lines()
        .filter(|l| l.starts_with("directory_user_") && l.contains("Enterprise Admins"))
        .collect();
    assert_eq!(before_admins.len(), 10, "BEFORE shows the 10 admins\n{context}");
    assert!(
        before_admins
            .iter()
            .all(|l| l.contains("admin-console") && !l.contains("audit-log")),
        "before the rename the admins have admin-console only\n{context}"
    );

    let table: Vec<&str> = after.lines().filter(|l| l.starts_with("directory_user_")).collect();
    assert_eq!(table.len(), 20, "AFTER lists the 20 users\n{context}");
    // Every former "Enterprise Admins" member is now shown in "Platform Admins", with both entitlements.
    let member_ids: Vec<&str> = before_admins
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for id in &member_ids {
        let row = table
            .iter()
            .find(|l| l.split_whitespace().next() == Some(id))
            .unwrap_or_else(|| panic!("{id} missing after the rename\n{context}"));
        assert!(
            row.contains("Platform Admins") && row.contains("admin-console, audit-log") && row.ends_with('✓'),
            "{id} after the rename: {row}\n{context}"
        );
    }
    assert!(!after.contains("Enterprise Admins"), "the old name is gone\n{context}");
    assert!(
        stdout.contains("ok: all 10 members of the renamed group show \"Platform Admins\""),
        "the script's own check passed\n{context}"
    );
}
