//! The objects the sandbox holds and their JSON shapes (workos-api.md §3 for REST, §4 for events).

use chrono::{DateTime, SecondsFormat, Utc};
use dsync::clock::EpochMillis;
use serde_json::{json, Map, Value};

/// The directory type every sandbox directory reports.
pub const DIRECTORY_TYPE: &str = "okta scim v2.0";

/// ISO-8601 with milliseconds and `Z`, as WorkOS writes timestamps: `2026-01-15T12:00:00.000Z`.
pub fn iso(t: EpochMillis) -> String {
    let ms = i64::try_from(t.0).unwrap_or(i64::MAX);
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parse an RFC 3339 timestamp (as `range_start` carries it) into epoch milliseconds.
pub fn parse_iso(s: &str) -> Option<EpochMillis> {
    let t = DateTime::parse_from_rfc3339(s).ok()?;
    u64::try_from(t.timestamp_millis()).ok().map(EpochMillis)
}

/// Deterministic, sortable ids: `<prefix>_` + a 26-character upper-case body (`01SANDBOX` and a
/// zero-padded counter). One counter serves every kind, so ids sort in creation order.
#[derive(Debug, Default)]
pub struct IdGen {
    next: u64,
}

impl IdGen {
    pub fn next(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}_01SANDBOX{:017}", self.next)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UserState {
    Active,
    Inactive,
}

impl UserState {
    pub fn as_str(self) -> &'static str {
        match self {
            UserState::Active => "active",
            UserState::Inactive => "inactive",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(UserState::Active),
            "inactive" => Some(UserState::Inactive),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directory {
    pub id: String,
    pub organization_id: String,
    pub domain_id: String,
    pub external_key: String,
    pub name: String,
    pub domain: String,
    pub created_at: EpochMillis,
    pub updated_at: EpochMillis,
}

/// Counts shown in the REST `metadata` field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectoryCounts {
    pub active_users: usize,
    pub inactive_users: usize,
    pub groups: usize,
}

impl Directory {
    /// The REST `Directory` object.
    pub fn to_json(&self, counts: DirectoryCounts) -> Value {
        json!({
            "object": "directory",
            "id": self.id,
            "organization_id": self.organization_id,
            "external_key": self.external_key,
            "type": DIRECTORY_TYPE,
            "state": "linked",
            "name": self.name,
            "domain": self.domain,
            "metadata": {
                "users": { "active": counts.active_users, "inactive": counts.inactive_users },
                "groups": counts.groups,
            },
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        })
    }

    /// `data` of `dsync.activated`: event state enum, `domains` array instead of `domain`.
    pub fn to_activated_json(&self) -> Value {
        json!({
            "object": "directory",
            "id": self.id,
            "organization_id": self.organization_id,
            "type": DIRECTORY_TYPE,
            "state": "active",
            "name": self.name,
            "external_key": self.external_key,
            "domains": [{ "object": "organization_domain", "id": self.domain_id, "domain": self.domain }],
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        })
    }

    /// `data` of `dsync.deleted`.
    pub fn to_deleted_json(&self) -> Value {
        json!({
            "object": "directory",
            "id": self.id,
            "organization_id": self.organization_id,
            "type": DIRECTORY_TYPE,
            "state": "deleting",
            "name": self.name,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub directory_id: String,
    pub organization_id: String,
    pub idp_id: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub state: UserState,
    pub created_at: EpochMillis,
    pub updated_at: EpochMillis,
}

impl User {
    /// The `DirectoryUser` object (no `groups`), as events carry it.
    pub fn to_json(&self) -> Value {
        json!({
            "object": "directory_user",
            "id": self.id,
            "directory_id": self.directory_id,
            "organization_id": self.organization_id,
            "idp_id": self.idp_id,
            "email": self.email,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "name": format!("{} {}", self.first_name, self.last_name),
            "emails": [{ "primary": true, "type": "work", "value": self.email }],
            "username": self.email,
            "state": self.state.as_str(),
            "custom_attributes": {},
            "raw_attributes": {},
            "role": { "slug": "member" },
            "roles": [{ "slug": "member" }],
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        })
    }

    /// The `DirectoryUserWithGroups` object the REST endpoints return.
    pub fn to_json_with_groups<'a>(&self, groups: impl IntoIterator<Item = &'a Group>) -> Value {
        let mut v = self.to_json();
        if let Value::Object(m) = &mut v {
            m.insert(
                "groups".into(),
                Value::Array(groups.into_iter().map(Group::to_json).collect()),
            );
        }
        v
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: String,
    pub idp_id: String,
    pub directory_id: String,
    pub organization_id: String,
    pub name: String,
    pub created_at: EpochMillis,
    pub updated_at: EpochMillis,
}

impl Group {
    pub fn to_json(&self) -> Value {
        json!({
            "object": "directory_group",
            "id": self.id,
            "idp_id": self.idp_id,
            "directory_id": self.directory_id,
            "organization_id": self.organization_id,
            "name": self.name,
            "raw_attributes": {},
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        })
    }
}

/// WorkOS's `previous_attributes`: a shallow diff of root properties (ignoring `updated_at`),
/// old values keyed by name; a property new in `after` shows up as `null`.
pub fn previous_attributes(before: &Value, after: &Value) -> Map<String, Value> {
    let mut prev = Map::new();
    let (Value::Object(b), Value::Object(a)) = (before, after) else {
        return prev;
    };
    for (k, new) in a {
        if k == "updated_at" {
            continue;
        }
        let old = b.get(k).cloned().unwrap_or(Value::Null);
        if &old != new {
            prev.insert(k.clone(), old);
        }
    }
    prev
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_has_millis_and_z() {
        assert_eq!(iso(EpochMillis(1_700_000_000_000)), "2023-11-14T22:13:20.000Z");
        assert_eq!(
            parse_iso("2023-11-14T22:13:20.000Z"),
            Some(EpochMillis(1_700_000_000_000))
        );
        assert_eq!(parse_iso("yesterday"), None);
    }

    #[test]
    fn ids_sort_in_creation_order() {
        let mut g = IdGen::default();
        let ids: Vec<String> = (0..12).map(|_| g.next("directory_user")).collect();
        assert_eq!(ids[0], "directory_user_01SANDBOX00000000000000001");
        assert_eq!(ids[0].len() - "directory_user_".len(), 26);
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, ids);
    }

    #[test]
    fn previous_attributes_is_a_shallow_diff() {
        let before = json!({"name": "a", "state": "active", "updated_at": "1"});
        let after = json!({"name": "b", "state": "active", "updated_at": "2", "new": 1});
        let prev = previous_attributes(&before, &after);
        assert_eq!(Value::Object(prev), json!({"name": "a", "new": null}));
    }
}
