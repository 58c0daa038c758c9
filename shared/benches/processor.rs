//! The processor's pure parts: parsing a queued event into an action, and deriving entitlements.
//! Run: cargo bench -p dsync --bench processor

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use dsync::directory::UserState;
use dsync::plan::parse_event;
use dsync::rules::{GroupRef, Rules, Tenant};

fn parsing(c: &mut Criterion) {
    let group_updated = r#"{"object":"event","id":"event_01HZTEST","event":"dsync.group.updated","data":{"object":"directory_group","id":"directory_group_01","idp_id":"00gabc","directory_id":"directory_01","organization_id":"org_01","name":"Enterprise Admins","created_at":"2026-01-15T12:00:00.000Z","updated_at":"2026-01-15T12:00:00.000Z","raw_attributes":{},"previous_attributes":{"name":"Admins"}},"created_at":"2026-11-25T10:00:00.000Z"}"#;
    let user_added = r#"{"object":"event","id":"event_01HZTEST2","event":"dsync.group.user_added","data":{"directory_id":"directory_01","user":{"object":"directory_user","id":"directory_user_01","directory_id":"directory_01","organization_id":"org_01","idp_id":"2836","email":"a@example.com","first_name":"A","last_name":"B","state":"active","custom_attributes":{"department":"Engineering"},"raw_attributes":{},"created_at":"2026-01-15T12:00:00.000Z","updated_at":"2026-01-15T12:00:00.000Z"},"group":{"object":"directory_group","id":"directory_group_01","name":"Admins"}},"created_at":"2026-11-25T10:00:00.000Z"}"#;
    c.bench_function("parse_event/group_updated", |b| {
        b.iter(|| parse_event(black_box(group_updated)))
    });
    c.bench_function("parse_event/user_added", |b| {
        b.iter(|| parse_event(black_box(user_added)))
    });
}

fn entitlements(c: &mut Criterion) {
    let mut json = String::from(r#"{"by_group_id":{"#);
    json.push_str(
        &(0..50)
            .map(|i| format!(r#""directory_group_{i}":["feature-{i}","admin-console"]"#))
            .collect::<Vec<_>>()
            .join(","),
    );
    json.push_str(r#"},"by_group_name":{"#);
    json.push_str(
        &(0..50)
            .map(|i| format!(r#""Group {i}":["named-{i}"]"#))
            .collect::<Vec<_>>()
            .join(","),
    );
    json.push_str("}}");
    let rules = Rules::parse(&json).expect("rules");
    let groups: Vec<(String, String)> = (0..20)
        .map(|i| (format!("directory_group_{}", i * 3), format!("Group {i}")))
        .collect();
    c.bench_function("entitlements/20_groups_100_rules", |b| {
        b.iter(|| {
            rules.entitlements(
                Tenant {
                    organization_id: "org_bench",
                    directory_id: "directory_bench",
                },
                &UserState::Active,
                groups.iter().map(|(id, name)| GroupRef { id, name }),
            )
        })
    });
}

criterion_group!(benches, parsing, entitlements);
criterion_main!(benches);
