//! `dsync show user|directory`: stored entitlements as an aligned table or JSON.
//! The store holds ids, states, group names and entitlements only (never e-mails).

use std::collections::HashMap;

use dsync::adapters::dynamo_state::DynamoStateStore;
use dsync::aws::{load_sdk_config, DynamoClient, SdkBudget};
use dsync::view::{EntitlementReader, Lookup};
use serde::Serialize;

/// One user, as printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserView {
    pub directory_id: String,
    pub user_id: String,
    /// `active`, `inactive`, `deleted`, …; `null` until the user has been read from WorkOS.
    pub state: Option<String>,
    pub groups: Vec<GroupView>,
    pub entitlements: Vec<String>,
    /// Nothing received about the user is still pending (the gate answers `Unknown` otherwise).
    pub current: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupView {
    pub id: String,
    /// The name as last read from the WorkOS API.
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirectoryView {
    pub directory_id: String,
    pub users: Vec<UserView>,
}

impl UserView {
    /// A gate view, with group names (as last read) from `names`.
    pub fn of(u: dsync::view::UserView, names: &HashMap<String, String>) -> Self {
        UserView {
            state: u.state.as_ref().map(|s| s.as_str().to_string()),
            groups: u
                .groups
                .iter()
                .map(|id| GroupView {
                    id: id.clone(),
                    name: names.get(id).cloned().unwrap_or_else(|| id.clone()),
                })
                .collect(),
            current: u.is_current(),
            directory_id: u.directory_id,
            user_id: u.user_id,
            entitlements: u.entitlements.into_iter().collect(),
        }
    }
}

type Reader = EntitlementReader<DynamoStateStore>;

async fn names(r: &Reader, directory_id: &str) -> Result<HashMap<String, String>, String> {
    Ok(r.group_names(directory_id)
        .await
        .map_err(|e| format!("reading group names: {e}"))?
        .into_iter()
        .filter_map(|(id, name)| name.map(|n| (id, n)))
        .collect())
}

fn join_or_dash(items: impl Iterator<Item = String>) -> String {
    let s = items.collect::<Vec<_>>().join(", ");
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

/// An aligned table: user, state, groups (by name), entitlements, current (✓, or … while a
/// recompute is pending).
pub fn table(users: &[UserView]) -> String {
    let header = ["USER", "STATE", "GROUPS", "ENTITLEMENTS", "CURRENT"].map(String::from);
    let rows: Vec<[String; 5]> = users
        .iter()
        .map(|u| {
            [
                u.user_id.clone(),
                u.state.clone().unwrap_or_else(|| "unread".into()),
                join_or_dash(u.groups.iter().map(|g| g.name.clone())),
                join_or_dash(u.entitlements.iter().cloned()),
                if u.current { "✓" } else { "…" }.to_string(),
            ]
        })
        .collect();
    let mut widths = [0usize; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

async fn reader(state_table: &str) -> Reader {
    let sdk = load_sdk_config(SdkBudget::WORKER).await;
    EntitlementReader::new(DynamoStateStore::new(DynamoClient::new(&sdk), state_table))
}

fn to_json<T: Serialize>(v: &T) -> Result<String, String> {
    serde_json::to_string_pretty(v).map_err(|e| format!("cannot serialize: {e}"))
}

pub async fn user(state_table: &str, directory: Option<&str>, user_id: &str, json: bool) -> Result<(), String> {
    let r = reader(state_table).await;
    let found = match directory {
        Some(d) => r.user(d, user_id).await,
        None => r.user_by_id(user_id).await,
    }
    .map_err(|e| format!("reading table {state_table}: {e}"))?;
    let Lookup::Found(u) = found else {
        return Err(match directory {
            Some(d) => format!("no user {user_id} stored for directory {d} in table {state_table}"),
            None => format!("no user {user_id} stored in table {state_table}"),
        });
    };
    let names = names(&r, &u.directory_id).await?;
    let view = UserView::of(u, &names);
    if json {
        println!("{}", to_json(&view)?);
    } else {
        println!("directory {}", view.directory_id);
        print!("{}", table(std::slice::from_ref(&view)));
    }
    Ok(())
}

pub async fn directory(state_table: &str, directory_id: &str, json: bool) -> Result<(), String> {
    let r = reader(state_table).await;
    let users = r
        .directory(directory_id)
        .await
        .map_err(|e| format!("reading table {state_table}: {e}"))?;
    let names = names(&r, directory_id).await?;
    if users.is_empty() {
        return Err(format!(
            "nothing stored for directory {directory_id} in table {state_table} (never synced, or purged)"
        ));
    }
    let view = DirectoryView {
        directory_id: directory_id.to_string(),
        users: users.into_iter().map(|u| UserView::of(u, &names)).collect(),
    };
    if json {
        println!("{}", to_json(&view)?);
    } else {
        let current = view.users.iter().filter(|u| u.current).count();
        println!("directory {directory_id}");
        print!("{}", table(&view.users));
        println!("{} users, {current} current", view.users.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dsync::directory::UserState;

    fn ent(uid: &str, groups: &[(&str, &str)], ents: &[&str], current: bool) -> UserView {
        let v = dsync::view::UserView {
            directory_id: "directory_1".into(),
            user_id: uid.into(),
            state: Some(UserState::Active),
            entitlements: ents.iter().map(|s| s.to_string()).collect(),
            groups: groups.iter().map(|(i, _)| i.to_string()).collect(),
            stale: (!current).then_some(dsync::view::Staleness::PendingEvent),
        };
        let names = groups.iter().map(|(i, n)| (i.to_string(), n.to_string())).collect();
        UserView::of(v, &names)
    }

    #[test]
    fn table_is_aligned() {
        let users: Vec<UserView> = vec![
            ent(
                "directory_user_1",
                &[("g1", "Platform Admins")],
                &["admin-console", "audit-log"],
                true,
            ),
            ent("u2", &[], &[], false),
        ];
        let t = table(&users);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines,
            [
                "USER              STATE   GROUPS           ENTITLEMENTS              CURRENT",
                "directory_user_1  active  Platform Admins  admin-console, audit-log  ✓",
                "u2                active  -                -                         …",
            ]
        );
    }

    #[test]
    fn an_unread_user_says_so() {
        let mut u: UserView = ent("u", &[], &[], true);
        u.state = None;
        assert!(table(&[u]).lines().nth(1).is_some_and(|l| l.contains("unread")));
    }

    #[test]
    fn json_has_named_groups_and_no_email() {
        let v = DirectoryView {
            directory_id: "directory_1".into(),
            users: vec![ent("u1", &[("g1", "Engineering")], &[], true)],
        };
        let j: serde_json::Value = serde_json::from_str(&to_json(&v).expect("json")).expect("parses");
        assert_eq!(j["users"][0]["groups"][0]["name"], "Engineering");
        assert_eq!(j["users"][0]["state"], "active");
        assert_eq!(j["users"][0]["current"], true);
        assert!(!j.to_string().contains("email"));
    }
}
