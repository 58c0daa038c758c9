//! The state store on DynamoDB (see `ports::state` for the semantics).
//!
//! One table, `pk`/`sk`:
//! - `dir#<d>` / `fence`: lease, tombstone, job checkpoint (JSON), pacing. Version `v`.
//! - `dir#<d>` / `ctl`: organization, pending sets, full request, applied marks, propagation marks
//!   (`prop#<group>` attributes), the last run.
//! - `dir#<d>` / `user#<u>`: a user's facts and entitlements (memberships as a map). Version `v`.
//! - `dir#<d>` / `group#<g>`: a group's name as read. Version `v`.
//! - `dir#<d>` / `gm#<g>#<u>`: the group → member index.
//! - `dir#<d>` / `run#<started>#<id>`: a finished run's summary (expires).
//! - `org#<o>` / `<email|idp>#<hash>#<d>#<u>`: look-ups for the gate.
//! - `uid#<u>` / `alias`: the directory of a user id.
//! - `directories` / `<d>`: the registry of directories we hold data for (and deleted ones).
//! - `run#<d>#<run>` / `<container>#<page>`: what a reconcile listed (fingerprints; expires).
//! - `cursor#<name>` / `cursor`: a stream cursor and its run lease (the events poller's is
//!   `cursor#events`). Version `v`.
//!
//! Every commit is one `TransactWriteItems` whose first item checks the fence's version, so the
//! tombstone and the lease are checked by every fact write, without a hot item: only the lease
//! holder writes facts of its directory, one transaction at a time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, Delete, DeleteRequest, KeysAndAttributes, Put, TransactWriteItem, WriteRequest,
};

use crate::adapters::dynamo::{applied, bill, get_bool, get_list, get_n, get_s, item_size, n, s, sdk_error, Item};
use crate::clock::EpochMillis;
use crate::directory::UserState;
use crate::model::{GroupRecord, Membership, UserRecord};
use crate::ports::state::*;
use crate::ports::StoreError;
use crate::schema::state::{PK, SK, TTL};

pub fn dir_pk(dir: &str) -> String {
    format!("dir#{dir}")
}
fn user_sk(uid: &str) -> String {
    format!("user#{uid}")
}
fn group_sk(gid: &str) -> String {
    format!("group#{gid}")
}
fn member_sk(gid: &str, uid: &str) -> String {
    format!("gm#{gid}#{uid}")
}
fn lookup_sk(kind: LookupKind, hash: &str, dir: &str, uid: &str) -> String {
    format!("{}#{hash}#{dir}#{uid}", kind.as_str())
}
const FENCE_SK: &str = "fence";
/// The registry of directories we hold data for.
const REGISTRY_PK: &str = "directories";
const CTL_SK: &str = "ctl";
/// Stream cursors: `cursor#<name>` / `cursor` (the events poller's is `cursor#events`).
const CURSOR_SK: &str = "cursor";

pub fn cursor_pk(name: &str) -> String {
    format!("cursor#{name}")
}
const PROP_PREFIX: &str = "prop#";
/// A pending user: an item of its own, `pending#<user id>`, its time in `t`.
const PENDING_USER_PREFIX: &str = "pending#";
fn pending_sk(uid: &str) -> String {
    format!("{PENDING_USER_PREFIX}{uid}")
}
/// Pending-user writes in flight at once.
const PENDING_CONCURRENCY: usize = 16;
/// How long a reconcile's fingerprints and a run summary are kept.
const SEEN_TTL: Duration = Duration::from_secs(7 * 86_400);
const RUN_TTL: Duration = Duration::from_secs(90 * 86_400);

fn key(pk: String, sk: String) -> Item {
    HashMap::from([(PK.to_string(), s(pk)), (SK.to_string(), s(sk))])
}

fn opt_n(item: &mut Item, k: &str, v: Option<EpochMillis>) {
    if let Some(t) = v {
        item.insert(k.to_string(), n(t.0));
    }
}

fn get_t(item: &Item, k: &str) -> Option<EpochMillis> {
    get_n(item, k).map(EpochMillis)
}

fn malformed(what: &str) -> StoreError {
    StoreError::Malformed(what.to_string())
}

/// Record ↔ item conversions (also used by the in-memory adapter to bill like DynamoDB).
pub mod codec {
    use super::*;

    pub fn user(dir: &str, r: &UserRecord, version: u64) -> Item {
        let mut it = key(dir_pk(dir), user_sk(&r.user_id));
        it.insert("kind".into(), s("user"));
        it.insert("v".into(), n(version));
        it.insert("user_id".into(), s(&r.user_id));
        if let Some(st) = &r.state {
            it.insert("state".into(), s(st.as_str()));
        }
        opt_n(&mut it, "state_at_ms", r.state_at);
        let groups: HashMap<String, AttributeValue> = r
            .groups
            .iter()
            .map(|(g, m)| {
                (
                    g.clone(),
                    AttributeValue::M(HashMap::from([
                        ("p".to_string(), AttributeValue::Bool(m.present)),
                        ("t".to_string(), n(m.at.0)),
                    ])),
                )
            })
            .collect();
        it.insert("groups".into(), AttributeValue::M(groups));
        opt_n(&mut it, "groups_read_ms", r.groups_read_at);
        if let Some(h) = &r.email_hash {
            it.insert("email_hash".into(), s(h));
        }
        if let Some(h) = &r.idp_hash {
            it.insert("idp_hash".into(), s(h));
        }
        opt_n(&mut it, "applied_ms", r.applied_at);
        it.insert(
            "entitlements".into(),
            AttributeValue::L(r.entitlements.iter().map(|e| s(e.as_str())).collect()),
        );
        opt_n(&mut it, "computed_ms", r.computed_at);
        it.insert("rules_fp".into(), s(&r.rules_fp));
        it
    }

    pub fn parse_user(it: &Item) -> Result<Versioned<UserRecord>, StoreError> {
        let user_id = get_s(it, "user_id").ok_or_else(|| malformed("user without user_id"))?;
        let mut groups = BTreeMap::new();
        if let Some(AttributeValue::M(m)) = it.get("groups") {
            for (g, v) in m {
                let AttributeValue::M(pair) = v else {
                    return Err(malformed("membership is not a map"));
                };
                let present = matches!(pair.get("p"), Some(AttributeValue::Bool(true)));
                let at = pair
                    .get("t")
                    .and_then(|t| t.as_n().ok())
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| malformed("membership without time"))?;
                groups.insert(
                    g.clone(),
                    Membership {
                        present,
                        at: EpochMillis(at),
                    },
                );
            }
        }
        Ok(Versioned {
            version: get_n(it, "v").unwrap_or(0),
            value: UserRecord {
                user_id: user_id.to_string(),
                state: get_s(it, "state").map(UserState::parse),
                state_at: get_t(it, "state_at_ms"),
                groups,
                groups_read_at: get_t(it, "groups_read_ms"),
                email_hash: get_s(it, "email_hash").map(str::to_string),
                idp_hash: get_s(it, "idp_hash").map(str::to_string),
                applied_at: get_t(it, "applied_ms"),
                entitlements: get_list(it, "entitlements").into_iter().collect(),
                computed_at: get_t(it, "computed_ms"),
                rules_fp: get_s(it, "rules_fp").unwrap_or_default().to_string(),
            },
        })
    }

    pub fn group(dir: &str, r: &GroupRecord, version: u64) -> Item {
        let mut it = key(dir_pk(dir), group_sk(&r.group_id));
        it.insert("kind".into(), s("group"));
        it.insert("v".into(), n(version));
        it.insert("group_id".into(), s(&r.group_id));
        if let Some(name) = &r.name {
            it.insert("name".into(), s(name));
        }
        it.insert("deleted".into(), AttributeValue::Bool(r.is_deleted()));
        opt_n(&mut it, "name_at_ms", r.name_at);
        opt_n(&mut it, "changed_ms", r.changed_at);
        opt_n(&mut it, "members_applied_ms", r.members_applied_at);
        it
    }

    pub fn parse_group(it: &Item) -> Result<Versioned<GroupRecord>, StoreError> {
        let group_id = get_s(it, "group_id").ok_or_else(|| malformed("group without group_id"))?;
        let deleted = get_bool(it, "deleted").unwrap_or(false);
        Ok(Versioned {
            version: get_n(it, "v").unwrap_or(0),
            value: GroupRecord {
                group_id: group_id.to_string(),
                name: if deleted {
                    None
                } else {
                    get_s(it, "name").map(str::to_string)
                },
                name_at: get_t(it, "name_at_ms"),
                changed_at: get_t(it, "changed_ms"),
                members_applied_at: get_t(it, "members_applied_ms"),
            },
        })
    }

    pub fn member(dir: &str, gid: &str, uid: &str) -> Item {
        let mut it = key(dir_pk(dir), member_sk(gid, uid));
        it.insert("kind".into(), s("member"));
        it.insert("group_id".into(), s(gid));
        it.insert("user_id".into(), s(uid));
        it
    }

    pub fn lookup(dir: &str, org: &str, kind: LookupKind, hash: &str, uid: &str) -> Item {
        let mut it = key(format!("org#{org}"), lookup_sk(kind, hash, dir, uid));
        it.insert("kind".into(), s("lookup"));
        it.insert("directory_id".into(), s(dir));
        it.insert("user_id".into(), s(uid));
        it
    }

    pub fn alias(dir: &str, uid: &str) -> Item {
        let mut it = key(format!("uid#{uid}"), "alias".to_string());
        it.insert("kind".into(), s("alias"));
        it.insert("directory_id".into(), s(dir));
        it
    }

    pub fn fence(dir: &str, f: &Fence, version: u64) -> Result<Item, StoreError> {
        let mut it = key(dir_pk(dir), FENCE_SK.to_string());
        it.insert("kind".into(), s("fence"));
        it.insert("v".into(), n(version));
        it.insert("epoch".into(), n(f.epoch));
        if let Some(o) = &f.owner {
            it.insert("owner".into(), s(o));
        }
        it.insert("lease_until_ms".into(), n(f.lease_until.0));
        opt_n(&mut it, "deleted_at_ms", f.deleted_at);
        it.insert("pace_next_ms".into(), n(f.pace_next.0));
        if let Some(job) = &f.job {
            let json = serde_json::to_string(job).map_err(|e| StoreError::Malformed(e.to_string()))?;
            it.insert("job".into(), s(json));
        }
        Ok(it)
    }

    pub fn parse_fence(it: &Item) -> Result<Versioned<Fence>, StoreError> {
        let job = match get_s(it, "job") {
            None => None,
            Some(j) => Some(serde_json::from_str(j).map_err(|e| StoreError::Malformed(format!("job: {e}")))?),
        };
        Ok(Versioned {
            version: get_n(it, "v").ok_or_else(|| malformed("fence without version"))?,
            value: Fence {
                epoch: get_n(it, "epoch").unwrap_or(0),
                owner: get_s(it, "owner").map(str::to_string),
                lease_until: get_t(it, "lease_until_ms").unwrap_or_default(),
                deleted_at: get_t(it, "deleted_at_ms"),
                pace_next: get_t(it, "pace_next_ms").unwrap_or_default(),
                job,
            },
        })
    }

    /// The control record as stored (the adapter writes it attribute by attribute; this is
    /// what a read returns, used to bill reads of it).
    pub fn ctl(dir: &str, c: &Ctl) -> Item {
        let mut it = key(dir_pk(dir), CTL_SK.to_string());
        it.insert("kind".into(), s("ctl"));
        if let Some(o) = &c.organization_id {
            it.insert("organization_id".into(), s(o));
        }
        opt_n(&mut it, "deleted_at_ms", c.deleted_at);
        if !c.pending_groups.is_empty() {
            it.insert(
                "pending_groups".into(),
                AttributeValue::Ss(c.pending_groups.iter().cloned().collect()),
            );
        }
        opt_n(&mut it, "groups_overflow_ms", c.groups_overflow);
        if let Some(f) = &c.full {
            it.insert("full_first_ms".into(), n(f.first.0));
            it.insert("full_after_ms".into(), n(f.after.0));
        }
        opt_n(&mut it, "full_applied_ms", c.full_applied_at);
        for (g, t) in &c.propagating {
            it.insert(format!("{PROP_PREFIX}{g}"), n(t.0));
        }
        if let Some(r) = &c.last_run {
            if let Ok(j) = serde_json::to_string(r) {
                it.insert("last_run".into(), s(j));
            }
        }
        if let Some(c) = c.full_cost {
            it.insert("full_cost".into(), n(c));
        }
        it
    }

    /// A pending user's item.
    pub fn pending_user(dir: &str, uid: &str, t: EpochMillis) -> Item {
        let mut it = key(dir_pk(dir), pending_sk(uid));
        it.insert("kind".into(), s("pending"));
        it.insert("t".into(), n(t.0));
        it
    }

    pub fn parse_pending_user(it: &Item) -> Result<(String, EpochMillis), StoreError> {
        let uid = get_s(it, SK)
            .and_then(|k| k.strip_prefix(PENDING_USER_PREFIX))
            .ok_or_else(|| malformed("pending user key"))?;
        let t = get_t(it, "t").ok_or_else(|| malformed("pending user time"))?;
        Ok((uid.to_string(), t))
    }

    pub fn parse_ctl(it: &Item) -> Result<Ctl, StoreError> {
        let set = |k: &str| -> BTreeSet<String> {
            it.get(k)
                .and_then(|v| v.as_ss().ok())
                .map(|v| v.iter().cloned().collect())
                .unwrap_or_default()
        };
        let full = match (get_t(it, "full_first_ms"), get_t(it, "full_after_ms")) {
            (Some(first), Some(after)) => Some(FullRequest { first, after }),
            (Some(first), None) => Some(FullRequest { first, after: first }),
            (None, Some(after)) => Some(FullRequest { first: after, after }),
            (None, None) => None,
        };
        let prefixed = |prefix: &str| -> BTreeMap<String, EpochMillis> {
            it.iter()
                .filter_map(|(k, v)| {
                    let id = k.strip_prefix(prefix)?;
                    let t = v.as_n().ok()?.parse().ok()?;
                    Some((id.to_string(), EpochMillis(t)))
                })
                .collect()
        };
        let propagating = prefixed(PROP_PREFIX);
        let last_run = match get_s(it, "last_run") {
            None => None,
            Some(j) => serde_json::from_str(j).ok(),
        };
        Ok(Ctl {
            organization_id: get_s(it, "organization_id").map(str::to_string),
            deleted_at: get_t(it, "deleted_at_ms"),
            pending_users: BTreeMap::new(),
            pending_users_more: false,
            pending_groups: set("pending_groups"),
            groups_overflow: get_t(it, "groups_overflow_ms"),
            full,
            full_applied_at: get_t(it, "full_applied_ms"),
            propagating,
            last_run,
            full_cost: get_n(it, "full_cost"),
        })
    }

    pub fn seen(dir: &str, run: &str, container: &str, page: u32, p: &SeenPage, expires: u64) -> Item {
        let mut it = key(format!("run#{dir}#{run}"), format!("{container}#{page:06}"));
        it.insert("kind".into(), s("seen"));
        it.insert("started_ms".into(), n(p.started.0));
        let mut bytes = Vec::with_capacity(p.hashes.len() * 8);
        for h in &p.hashes {
            bytes.extend_from_slice(&h.to_be_bytes());
        }
        if !bytes.is_empty() {
            it.insert("hashes".into(), AttributeValue::B(Blob::new(bytes)));
        }
        if !p.ids.is_empty() {
            it.insert(
                "ids".into(),
                AttributeValue::L(p.ids.iter().map(|i| s(i.as_str())).collect()),
            );
        }
        it.insert("last".into(), AttributeValue::Bool(p.last));
        it.insert(TTL.into(), n(expires));
        it
    }

    pub fn parse_seen(it: &Item) -> Result<SeenPage, StoreError> {
        let mut hashes = Vec::new();
        if let Some(AttributeValue::B(b)) = it.get("hashes") {
            let bytes = b.as_ref();
            if bytes.len() % 8 != 0 {
                return Err(malformed("fingerprints are not 8-byte aligned"));
            }
            for c in bytes.chunks_exact(8) {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                hashes.push(u64::from_be_bytes(a));
            }
        }
        Ok(SeenPage {
            started: get_t(it, "started_ms").ok_or_else(|| malformed("seen page without start"))?,
            hashes,
            ids: get_list(it, "ids"),
            last: get_bool(it, "last").unwrap_or(false),
        })
    }

    pub fn registered(r: &Registered) -> Item {
        let mut it = key(REGISTRY_PK.to_string(), r.directory_id.clone());
        it.insert("kind".into(), s("directory"));
        if let Some(o) = &r.organization_id {
            it.insert("organization_id".into(), s(o));
        }
        it.insert("deleted".into(), AttributeValue::Bool(r.deleted));
        it
    }

    pub fn cursor(name: &str, c: &SavedCursor, version: u64) -> Item {
        let mut it = key(cursor_pk(name), CURSOR_SK.to_string());
        it.insert("kind".into(), s("cursor"));
        it.insert("v".into(), n(version));
        if let Some(e) = &c.event_id {
            it.insert("event_id".into(), s(e));
        }
        opt_n(&mut it, "event_at_ms", c.event_at);
        it.insert("saved_at_ms".into(), n(c.saved_at.0));
        it.insert("caught_up".into(), AttributeValue::Bool(c.caught_up));
        if let Some(o) = &c.owner {
            it.insert("owner".into(), s(o));
        }
        it.insert("lease_until_ms".into(), n(c.lease_until.0));
        it
    }

    pub fn parse_cursor(it: &Item) -> Result<Versioned<SavedCursor>, StoreError> {
        Ok(Versioned {
            version: get_n(it, "v").ok_or_else(|| malformed("cursor without version"))?,
            value: SavedCursor {
                event_id: get_s(it, "event_id").map(str::to_string),
                event_at: get_t(it, "event_at_ms"),
                saved_at: get_t(it, "saved_at_ms").unwrap_or_default(),
                caught_up: get_bool(it, "caught_up").unwrap_or(false),
                owner: get_s(it, "owner").map(str::to_string),
                lease_until: get_t(it, "lease_until_ms").unwrap_or_default(),
            },
        })
    }

    pub fn run(dir: &str, r: &RunSummary, expires: u64) -> Result<Item, StoreError> {
        let mut it = key(dir_pk(dir), format!("run#{:013}#{}", r.started_at, r.id));
        it.insert("kind".into(), s("run"));
        let json = serde_json::to_string(r).map_err(|e| StoreError::Malformed(e.to_string()))?;
        it.insert("summary".into(), s(json));
        it.insert(TTL.into(), n(expires));
        Ok(it)
    }
}

/// The state store on DynamoDB.
#[derive(Debug, Clone)]
pub struct DynamoStateStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    meters: Vec<Arc<Meter>>,
}

impl DynamoStateStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        DynamoStateStore {
            client,
            table: table.into(),
            meters: Vec::new(),
        }
    }

    fn read(&self, tenths: u64) {
        for m in &self.meters {
            m.add_read_tenths(tenths);
        }
    }

    fn wrote(&self, units: u64) {
        for m in &self.meters {
            m.add_write_units(units);
        }
    }

    async fn get(&self, pk: String, sk: String) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_error)?;
        self.read(bill::read_item(out.item.as_ref().map_or(0, item_size)));
        Ok(out.item)
    }

    /// One page of a partition whose sort keys begin with `prefix`, after `after` (a sort key).
    async fn query(
        &self,
        pk: &str,
        prefix: &str,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<(Vec<Item>, Option<String>), StoreError> {
        let mut q = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .expression_attribute_names("#pk", PK)
            .expression_attribute_values(":pk", s(pk));
        q = if prefix.is_empty() {
            q.key_condition_expression("#pk = :pk")
        } else {
            q.key_condition_expression("#pk = :pk AND begins_with(#sk, :prefix)")
                .expression_attribute_names("#sk", SK)
                .expression_attribute_values(":prefix", s(prefix))
        };
        if let Some(a) = after {
            q = q.set_exclusive_start_key(Some(key(pk.to_string(), a.to_string())));
        }
        if let Some(l) = limit {
            q = q.limit(i32::try_from(l).unwrap_or(i32::MAX).max(1));
        }
        let out = q.send().await.map_err(sdk_error)?;
        let items = out.items.unwrap_or_default();
        self.read(bill::query(items.iter().map(item_size).sum()));
        let next = out
            .last_evaluated_key
            .as_ref()
            .and_then(|k| get_s(k, SK))
            .map(str::to_string);
        Ok((items, next))
    }

    /// Every item of a partition whose sort keys begin with `prefix`.
    async fn query_all(&self, pk: &str, prefix: &str) -> Result<Vec<Item>, StoreError> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (items, next) = self.query(pk, prefix, after.as_deref(), None).await?;
            all.extend(items);
            match next {
                Some(n) => after = Some(n),
                None => return Ok(all),
            }
        }
    }

    async fn batch_get(&self, keys: Vec<Item>) -> Result<Vec<Item>, StoreError> {
        let mut out = Vec::new();
        for chunk in keys.chunks(100) {
            let mut pending: Option<KeysAndAttributes> = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(chunk.to_vec()))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| StoreError::Dynamo(e.to_string()))?,
            );
            let mut attempts = 0u32;
            let mut found = 0usize;
            while let Some(keys) = pending.take() {
                let resp = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, keys)
                    .send()
                    .await
                    .map_err(sdk_error)?;
                if let Some(items) = resp.responses.and_then(|mut r| r.remove(&self.table)) {
                    for it in &items {
                        self.read(bill::read_item(item_size(it)));
                    }
                    found += items.len();
                    out.extend(items);
                }
                pending = resp.unprocessed_keys.and_then(|mut u| u.remove(&self.table));
                attempts += 1;
                if pending.is_some() {
                    if attempts > 8 {
                        return Err(StoreError::Dynamo(
                            "BatchGetItem kept returning unprocessed keys".into(),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(25 << attempts.min(6))).await;
                }
            }
            // Keys that were not found are billed too.
            self.read(bill::read_item(0) * (chunk.len().saturating_sub(found)) as u64);
        }
        Ok(out)
    }

    async fn batch_delete(&self, keys: Vec<Item>) -> Result<(), StoreError> {
        for chunk in keys.chunks(25) {
            let mut pending: Vec<WriteRequest> = chunk
                .iter()
                .map(|k| {
                    DeleteRequest::builder()
                        .set_key(Some(k.clone()))
                        .build()
                        .map(|d| WriteRequest::builder().delete_request(d).build())
                        .map_err(|e| StoreError::Dynamo(e.to_string()))
                })
                .collect::<Result<_, _>>()?;
            self.wrote(chunk.len() as u64);
            let mut attempts = 0u32;
            while !pending.is_empty() {
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, pending)
                    .send()
                    .await
                    .map_err(sdk_error)?;
                pending = out
                    .unprocessed_items
                    .and_then(|mut u| u.remove(&self.table))
                    .unwrap_or_default();
                attempts += 1;
                if !pending.is_empty() {
                    if attempts > 8 {
                        return Err(StoreError::Dynamo(
                            "BatchWriteItem kept returning unprocessed items".into(),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(25 << attempts.min(6))).await;
                }
            }
        }
        Ok(())
    }

    fn put(&self, item: Item, condition: Option<&str>) -> Result<TransactWriteItem, StoreError> {
        let mut p = Put::builder().table_name(&self.table).set_item(Some(item));
        if let Some(c) = condition {
            p = p.condition_expression(c);
        }
        Ok(TransactWriteItem::builder()
            .put(p.build().map_err(|e| StoreError::Dynamo(e.to_string()))?)
            .build())
    }

    fn delete(&self, k: Item) -> Result<TransactWriteItem, StoreError> {
        Ok(TransactWriteItem::builder()
            .delete(
                Delete::builder()
                    .table_name(&self.table)
                    .set_key(Some(k))
                    .build()
                    .map_err(|e| StoreError::Dynamo(e.to_string()))?,
            )
            .build())
    }

    /// A versioned put: condition on the version read, or on absence.
    fn versioned(&self, item: Item, expect: Option<u64>) -> Result<TransactWriteItem, StoreError> {
        let mut p = Put::builder().table_name(&self.table).set_item(Some(item));
        p = match expect {
            Some(v) => p
                .condition_expression("#v = :v")
                .expression_attribute_names("#v", "v")
                .expression_attribute_values(":v", n(v)),
            None => p
                .condition_expression("attribute_not_exists(#pk)")
                .expression_attribute_names("#pk", PK),
        };
        Ok(TransactWriteItem::builder()
            .put(p.build().map_err(|e| StoreError::Dynamo(e.to_string()))?)
            .build())
    }

    async fn update(
        &self,
        dir: &str,
        expr: &str,
        cond: Option<&str>,
        names: &[(&str, &str)],
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<bool, StoreError> {
        let mut up = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(dir_pk(dir), CTL_SK.to_string())))
            .update_expression(expr);
        if let Some(c) = cond {
            up = up.condition_expression(c);
        }
        for (k, v) in names {
            up = up.expression_attribute_names(*k, *v);
        }
        for (k, v) in values {
            up = up.expression_attribute_values(k, v);
        }
        self.wrote(1);
        applied(up.send().await)
    }
}

impl DynamoStateStore {
    /// Raise one user's pending time to `at` (never lower it). A failed condition means a later
    /// request is already there.
    async fn raise_pending(&self, dir: &str, uid: &str, at: EpochMillis) -> Result<(), StoreError> {
        self.wrote(1);
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(dir_pk(dir), pending_sk(uid))))
            .update_expression("SET kind = :k, t = :t")
            .condition_expression("attribute_not_exists(t) OR t < :t")
            .expression_attribute_values(":k", s("pending"))
            .expression_attribute_values(":t", n(at.0))
            .send()
            .await;
        applied(r).map(|_| ())
    }

    /// Remove one pending user if its time is at most `upto` (a later request stays).
    async fn drop_pending(&self, dir: &str, uid: &str, upto: EpochMillis) -> Result<(), StoreError> {
        self.wrote(1);
        let r = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(dir_pk(dir), pending_sk(uid))))
            .condition_expression("t <= :u")
            .expression_attribute_values(":u", n(upto.0))
            .send()
            .await;
        applied(r).map(|_| ())
    }
}

impl StateStore for DynamoStateStore {
    fn metered(&self, meter: Arc<Meter>) -> Self {
        let mut c = self.clone();
        c.meters.push(meter);
        c
    }

    async fn users(&self, dir: &str, ids: &[String]) -> Result<Vec<Versioned<UserRecord>>, StoreError> {
        // BatchGetItem refuses a repeated key.
        let unique: BTreeSet<&String> = ids.iter().collect();
        let keys = unique.into_iter().map(|u| key(dir_pk(dir), user_sk(u))).collect();
        self.batch_get(keys).await?.iter().map(codec::parse_user).collect()
    }

    async fn users_page(
        &self,
        dir: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Stored<Versioned<UserRecord>>, StoreError> {
        let after = after.map(user_sk);
        let (items, next) = self.query(&dir_pk(dir), "user#", after.as_deref(), Some(limit)).await?;
        Ok(Stored {
            items: items.iter().map(codec::parse_user).collect::<Result<_, _>>()?,
            after: next.and_then(|sk| sk.strip_prefix("user#").map(str::to_string)),
        })
    }

    async fn groups(&self, dir: &str) -> Result<Vec<Versioned<GroupRecord>>, StoreError> {
        self.query_all(&dir_pk(dir), "group#")
            .await?
            .iter()
            .map(codec::parse_group)
            .collect()
    }

    async fn members_page(
        &self,
        dir: &str,
        group_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Stored<String>, StoreError> {
        let prefix = format!("gm#{group_id}#");
        let after = after.map(|u| member_sk(group_id, u));
        let (items, next) = self.query(&dir_pk(dir), &prefix, after.as_deref(), Some(limit)).await?;
        Ok(Stored {
            items: items
                .iter()
                .filter_map(|i| get_s(i, "user_id").map(str::to_string))
                .collect(),
            after: next.and_then(|sk| sk.strip_prefix(&prefix).map(str::to_string)),
        })
    }

    async fn commit(&self, dir: &str, fence_version: u64, writes: Vec<Write>) -> Result<(), CommitError> {
        if writes.is_empty() {
            return Ok(());
        }
        if writes.len() > MAX_COMMIT {
            return Err(CommitError::Store(StoreError::Dynamo(format!(
                "{} writes in one commit (at most {MAX_COMMIT})",
                writes.len()
            ))));
        }
        let check = ConditionCheck::builder()
            .table_name(&self.table)
            .set_key(Some(key(dir_pk(dir), FENCE_SK.to_string())))
            .condition_expression("#v = :v AND attribute_not_exists(deleted_at_ms)")
            .expression_attribute_names("#v", "v")
            .expression_attribute_values(":v", n(fence_version))
            .build()
            .map_err(|e| StoreError::Dynamo(e.to_string()))?;
        let mut items = vec![TransactWriteItem::builder().condition_check(check).build()];
        let mut units = bill::transact_item(64);
        for w in writes {
            let (item, size) = match w {
                Write::User { record, expect } => {
                    let it = codec::user(dir, &record, expect.map_or(1, |v| v + 1));
                    let size = item_size(&it);
                    (self.versioned(it, expect)?, size)
                }
                Write::Group { record, expect } => {
                    let it = codec::group(dir, &record, expect.map_or(1, |v| v + 1));
                    let size = item_size(&it);
                    (self.versioned(it, expect)?, size)
                }
                Write::Member {
                    group_id,
                    user_id,
                    present,
                } => {
                    let it = codec::member(dir, &group_id, &user_id);
                    let size = item_size(&it);
                    if present {
                        (self.put(it, None)?, size)
                    } else {
                        (self.delete(key(dir_pk(dir), member_sk(&group_id, &user_id)))?, size)
                    }
                }
                Write::Lookup {
                    organization_id,
                    kind,
                    hash,
                    user_id,
                    present,
                } => {
                    let it = codec::lookup(dir, &organization_id, kind, &hash, &user_id);
                    let size = item_size(&it);
                    if present {
                        (self.put(it, None)?, size)
                    } else {
                        let k = key(format!("org#{organization_id}"), lookup_sk(kind, &hash, dir, &user_id));
                        (self.delete(k)?, size)
                    }
                }
                Write::Alias { user_id } => {
                    let it = codec::alias(dir, &user_id);
                    let size = item_size(&it);
                    (self.put(it, None)?, size)
                }
            };
            units += bill::transact_item(size);
            items.push(item);
        }
        for attempt in 0..6u32 {
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await;
            self.wrote(units);
            let e = match result {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            let reasons: Vec<Option<String>> = match e.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(c)) => c
                    .cancellation_reasons()
                    .iter()
                    .map(|r| r.code().map(str::to_string))
                    .collect(),
                _ => return Err(CommitError::Store(sdk_error(e))),
            };
            let failed = |i: usize| reasons.get(i).and_then(|r| r.as_deref()) == Some("ConditionalCheckFailed");
            if failed(0) {
                return Err(CommitError::Fenced);
            }
            if (1..reasons.len()).any(failed) {
                return Err(CommitError::Conflict);
            }
            if !reasons.iter().any(|r| r.as_deref() == Some("TransactionConflict")) || attempt == 5 {
                return Err(CommitError::Store(sdk_error(e)));
            }
            tokio::time::sleep(Duration::from_millis(20 + fastrand::u64(0..(40 << attempt)))).await;
        }
        Err(CommitError::Store(StoreError::Dynamo(
            "transaction kept conflicting".into(),
        )))
    }

    async fn fence(&self, dir: &str) -> Result<Option<Versioned<Fence>>, StoreError> {
        match self.get(dir_pk(dir), FENCE_SK.to_string()).await? {
            None => Ok(None),
            Some(it) => codec::parse_fence(&it).map(Some),
        }
    }

    async fn put_fence(&self, dir: &str, fence: &Fence, expect: Option<u64>) -> Result<Option<u64>, StoreError> {
        let version = expect.map_or(1, |v| v + 1);
        let item = codec::fence(dir, fence, version)?;
        self.wrote(bill::write_item(item_size(&item)));
        let put = self.client.put_item().table_name(&self.table).set_item(Some(item));
        let put = match expect {
            Some(v) => put
                .condition_expression("#v = :v")
                .expression_attribute_names("#v", "v")
                .expression_attribute_values(":v", n(v)),
            None => put
                .condition_expression("attribute_not_exists(#pk)")
                .expression_attribute_names("#pk", PK),
        };
        Ok(applied(put.send().await)?.then_some(version))
    }

    async fn ctl(&self, dir: &str) -> Result<Ctl, StoreError> {
        let (item, pending) = futures::future::join(
            self.get(dir_pk(dir), CTL_SK.to_string()),
            self.pending_users(dir, None, PENDING_PAGE),
        )
        .await;
        let mut c = match item? {
            None => Ctl::default(),
            Some(it) => codec::parse_ctl(&it)?,
        };
        let (users, more) = pending?;
        c.pending_users = users.into_iter().collect();
        c.pending_users_more = more;
        Ok(c)
    }

    async fn pending_users(
        &self,
        dir: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(String, EpochMillis)>, bool), StoreError> {
        let after = after.map(pending_sk);
        // One more than asked for tells whether more follow.
        let (items, _) = self
            .query(
                &dir_pk(dir),
                PENDING_USER_PREFIX,
                after.as_deref(),
                Some(limit.max(1) + 1),
            )
            .await?;
        let mut users = items
            .iter()
            .map(codec::parse_pending_user)
            .collect::<Result<Vec<_>, _>>()?;
        let more = users.len() > limit.max(1);
        users.truncate(limit.max(1));
        Ok((users, more))
    }

    async fn pending_user(&self, dir: &str, user_id: &str) -> Result<Option<EpochMillis>, StoreError> {
        match self.get(dir_pk(dir), pending_sk(user_id)).await? {
            None => Ok(None),
            Some(it) => codec::parse_pending_user(&it).map(|(_, t)| Some(t)),
        }
    }

    async fn absorb(&self, dir: &str, a: &Absorb) -> Result<(), StoreError> {
        use futures::stream::{self, TryStreamExt};
        stream::iter(a.users.iter().map(Ok))
            .try_for_each_concurrent(PENDING_CONCURRENCY, |u| self.raise_pending(dir, u, a.at))
            .await?;
        if a.full.is_some() || !a.groups.is_empty() {
            let mut expr = String::from("SET kind = :k");
            let mut values: Vec<(&str, AttributeValue)> = vec![(":k", s("ctl"))];
            if let Some(f) = &a.full {
                expr.push_str(", full_first_ms = if_not_exists(full_first_ms, :f)");
                values.push((":f", n(f.first.0)));
            }
            if !a.groups.is_empty() {
                expr.push_str(" ADD pending_groups :g");
                values.push((":g", AttributeValue::Ss(a.groups.clone())));
            }
            self.update(dir, &expr, None, &[], values).await?;
        }
        if let Some(f) = &a.full {
            // The latest `after` wins; a failed condition means a later one is already there.
            self.update(
                dir,
                "SET full_after_ms = :a",
                Some("attribute_not_exists(full_after_ms) OR full_after_ms < :a"),
                &[],
                vec![(":a", n(f.after.0))],
            )
            .await?;
        }
        Ok(())
    }

    async fn drain(&self, dir: &str, users: &[(String, EpochMillis)], groups: &[String]) -> Result<(), StoreError> {
        use futures::stream::{self, TryStreamExt};
        if !groups.is_empty() {
            self.update(
                dir,
                "DELETE pending_groups :g",
                None,
                &[],
                vec![(":g", AttributeValue::Ss(groups.to_vec()))],
            )
            .await?;
        }
        // Each user goes only if its pending time is at most the one given.
        stream::iter(users.iter().map(Ok))
            .try_for_each_concurrent(PENDING_CONCURRENCY, |(u, t)| self.drop_pending(dir, u, *t))
            .await
    }

    async fn change_ctl(&self, dir: &str, change: &CtlChange) -> Result<(), StoreError> {
        match change {
            CtlChange::Organization(o) => {
                self.update(dir, "SET organization_id = :o", None, &[], vec![(":o", s(o))])
                    .await?;
            }
            CtlChange::FullApplied { at, cost } => {
                self.update(
                    dir,
                    "SET full_applied_ms = :t, full_cost = :c",
                    Some("attribute_not_exists(full_applied_ms) OR full_applied_ms < :t"),
                    &[],
                    vec![(":t", n(at.0)), (":c", n(*cost))],
                )
                .await?;
            }
            CtlChange::ClearFull { upto } => {
                self.update(
                    dir,
                    "REMOVE full_first_ms, full_after_ms",
                    Some("attribute_not_exists(full_after_ms) OR full_after_ms <= :u"),
                    &[],
                    vec![(":u", n(upto.0))],
                )
                .await?;
            }
            CtlChange::Propagating { group_id, since } => {
                let name = format!("{PROP_PREFIX}{group_id}");
                self.update(
                    dir,
                    "SET #p = :s",
                    Some("attribute_not_exists(#p) OR #p < :s"),
                    &[("#p", name.as_str())],
                    vec![(":s", n(since.0))],
                )
                .await?;
            }
            CtlChange::Propagated { group_id, upto } => {
                let name = format!("{PROP_PREFIX}{group_id}");
                self.update(
                    dir,
                    "REMOVE #p",
                    Some("#p <= :u"),
                    &[("#p", name.as_str())],
                    vec![(":u", n(upto.0))],
                )
                .await?;
            }
            CtlChange::Deleted(t) => {
                self.update(
                    dir,
                    "SET deleted_at_ms = if_not_exists(deleted_at_ms, :t)",
                    None,
                    &[],
                    vec![(":t", n(t.0))],
                )
                .await?;
            }
            CtlChange::GroupsOverflow { since } => {
                self.update(
                    dir,
                    "SET groups_overflow_ms = :t",
                    Some("attribute_not_exists(groups_overflow_ms) OR groups_overflow_ms < :t"),
                    &[],
                    vec![(":t", n(since.0))],
                )
                .await?;
            }
            CtlChange::LastRun(run) => {
                let json = serde_json::to_string(run).map_err(|e| StoreError::Malformed(e.to_string()))?;
                self.update(dir, "SET last_run = :r", None, &[], vec![(":r", s(json))])
                    .await?;
            }
        }
        Ok(())
    }

    async fn put_seen(
        &self,
        dir: &str,
        run: &str,
        container: &str,
        page: u32,
        seen: &SeenPage,
    ) -> Result<(), StoreError> {
        let expires = EpochMillis::from(std::time::SystemTime::now())
            .saturating_add(SEEN_TTL)
            .to_seconds()
            .0;
        let item = codec::seen(dir, run, container, page, seen, expires);
        self.wrote(bill::write_item(item_size(&item)));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }

    async fn seen(&self, dir: &str, run: &str, container: &str) -> Result<Vec<SeenPage>, StoreError> {
        self.query_all(&format!("run#{dir}#{run}"), &format!("{container}#"))
            .await?
            .iter()
            .map(codec::parse_seen)
            .collect()
    }

    async fn seen_page(
        &self,
        dir: &str,
        run: &str,
        container: &str,
        page: u32,
    ) -> Result<Option<SeenPage>, StoreError> {
        match self
            .get(format!("run#{dir}#{run}"), format!("{container}#{page:06}"))
            .await?
        {
            None => Ok(None),
            Some(it) => codec::parse_seen(&it).map(Some),
        }
    }

    async fn alias(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .get(format!("uid#{user_id}"), "alias".to_string())
            .await?
            .and_then(|it| get_s(&it, "directory_id").map(str::to_string)))
    }

    async fn lookups(
        &self,
        organization_id: &str,
        kind: LookupKind,
        hash: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let items = self
            .query_all(&format!("org#{organization_id}"), &format!("{}#{hash}#", kind.as_str()))
            .await?;
        Ok(items
            .iter()
            .filter_map(|i| Some((get_s(i, "directory_id")?.to_string(), get_s(i, "user_id")?.to_string())))
            .collect())
    }

    async fn purge_page(&self, dir: &str, after: Option<&str>, limit: usize) -> Result<Purged, StoreError> {
        let org = self.ctl(dir).await?.organization_id;
        let (items, next) = self.query(&dir_pk(dir), "", after, Some(limit)).await?;
        let mut keys = Vec::new();
        for it in &items {
            let Some(sk) = get_s(it, SK) else { continue };
            if sk == FENCE_SK || sk == CTL_SK {
                continue;
            }
            keys.push(key(dir_pk(dir), sk.to_string()));
            if get_s(it, "kind") == Some("user") {
                let u = codec::parse_user(it)?.value;
                keys.push(key(format!("uid#{}", u.user_id), "alias".to_string()));
                if let Some(org) = &org {
                    for (kind, h) in [(LookupKind::Email, &u.email_hash), (LookupKind::Idp, &u.idp_hash)] {
                        if let Some(h) = h {
                            keys.push(key(format!("org#{org}"), lookup_sk(kind, h, dir, &u.user_id)));
                        }
                    }
                }
            }
        }
        let deleted = keys.len();
        self.batch_delete(keys).await?;
        Ok(Purged { deleted, after: next })
    }

    async fn register(&self, entry: &Registered) -> Result<(), StoreError> {
        let item = codec::registered(entry);
        self.wrote(bill::write_item(item_size(&item)));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }

    async fn registered(&self, after: Option<&str>, limit: usize) -> Result<Stored<Registered>, StoreError> {
        let (items, next) = self.query(REGISTRY_PK, "", after, Some(limit)).await?;
        Ok(Stored {
            items: items
                .iter()
                .filter_map(|i| {
                    Some(Registered {
                        directory_id: get_s(i, SK)?.to_string(),
                        organization_id: get_s(i, "organization_id").map(str::to_string),
                        deleted: get_bool(i, "deleted").unwrap_or(false),
                    })
                })
                .collect(),
            after: next,
        })
    }

    async fn cursor(&self, name: &str) -> Result<Option<Versioned<SavedCursor>>, StoreError> {
        match self.get(cursor_pk(name), CURSOR_SK.to_string()).await? {
            None => Ok(None),
            Some(it) => codec::parse_cursor(&it).map(Some),
        }
    }

    async fn put_cursor(
        &self,
        name: &str,
        cursor: &SavedCursor,
        expect: Option<u64>,
    ) -> Result<Option<u64>, StoreError> {
        let version = expect.map_or(1, |v| v + 1);
        let item = codec::cursor(name, cursor, version);
        self.wrote(bill::write_item(item_size(&item)));
        let put = self.client.put_item().table_name(&self.table).set_item(Some(item));
        let put = match expect {
            Some(v) => put
                .condition_expression("#v = :v")
                .expression_attribute_names("#v", "v")
                .expression_attribute_values(":v", n(v)),
            None => put
                .condition_expression("attribute_not_exists(#pk)")
                .expression_attribute_names("#pk", PK),
        };
        Ok(applied(put.send().await)?.then_some(version))
    }

    async fn put_run(&self, dir: &str, run: &RunSummary) -> Result<(), StoreError> {
        let expires = EpochMillis(run.finished_at).saturating_add(RUN_TTL).to_seconds().0;
        let item = codec::run(dir, run, expires)?;
        self.wrote(bill::write_item(item_size(&item)));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }
}
