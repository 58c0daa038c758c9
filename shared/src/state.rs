//! The directory picture and the entitlements derived from it, in the state table.
//!
//! Items, all under `pk = dir#<directory id>`:
//! - `group#<gid>`: the group's name as last read, or a tombstone; `read_at_ms`, `members_read_at_ms`.
//! - `user#<uid>`: state, `read_at_ms`, `groups_read_at_ms`, a `version` bumped after every fact that
//!   affects the user, and the derived `entitlements` with the `computed_version` they reflect.
//!   `gsi1pk = user#<uid>` finds a user without knowing the directory.
//! - `member#<uid>#<gid>`: one membership edge, `member` true or false (a tombstone), `read_at_ms`.
//!   `gsi1pk = group#<gid>` lists a group's members.
//! - `directory`: `full_read_at_ms`, when the last directory-wide reconcile began.
//!
//! Fencing: every fact carries the time the read that produced it *began*; a write whose read began
//! earlier than the stored one is refused by a condition. WorkOS's own `updated_at` cannot serve,
//! because membership changes do not bump it.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, DeleteRequest, KeysAndAttributes, ReturnValue, TransactWriteItem, Update,
    WriteRequest,
};

use crate::clock::EpochMillis;
use crate::directory::UserState;
use crate::dynamo::{
    applied, b, get_bool, get_list, get_n, get_s, is_condition_failed, list, n, s, sdk_error, Item, StoreError,
};
use crate::schema::state::{GSI1, GSI1_PK, GSI1_SK, PK, SK};

pub fn dir_pk(directory_id: &str) -> String {
    format!("dir#{directory_id}")
}
fn user_sk(uid: &str) -> String {
    format!("user#{uid}")
}
fn group_sk(gid: &str) -> String {
    format!("group#{gid}")
}
fn edge_sk(uid: &str, gid: &str) -> String {
    format!("member#{uid}#{gid}")
}
const DIRECTORY_SK: &str = "directory";

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredUser {
    pub directory_id: String,
    pub user_id: String,
    /// `None` until the user has been read.
    pub state: Option<UserState>,
    pub read_at: Option<EpochMillis>,
    pub groups_read_at: Option<EpochMillis>,
    pub version: u64,
    pub computed_version: Option<u64>,
    pub entitlements: Vec<String>,
    pub group_ids: Vec<String>,
    pub group_names: Vec<String>,
}

impl StoredUser {
    /// The entitlements reflect every fact written so far.
    pub fn is_current(&self) -> bool {
        self.computed_version == Some(self.version)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredGroup {
    pub directory_id: String,
    pub group_id: String,
    /// `None` for a deleted group.
    pub name: Option<String>,
    pub read_at: EpochMillis,
    pub members_read_at: Option<EpochMillis>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub user_id: String,
    pub group_id: String,
    pub member: bool,
    pub read_at: EpochMillis,
}

/// Everything stored for one directory.
#[derive(Debug, Clone, Default)]
pub struct DirectorySnapshot {
    pub users: Vec<StoredUser>,
    pub groups: Vec<StoredGroup>,
    pub edges: Vec<Edge>,
    pub full_read_at: Option<EpochMillis>,
}

/// The result of writing a group fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupWrite {
    /// False when a newer read was already stored.
    pub applied: bool,
    /// The name or the deleted flag changed, so its members' entitlements may change.
    pub changed: bool,
}

/// The state store port.
pub trait StateStore: Send + Sync + 'static {
    /// Write a group's name (or `None`: a tombstone) as read at `read_at`.
    fn put_group(
        &self,
        dir: &str,
        gid: &str,
        name: Option<&str>,
        read_at: EpochMillis,
        members_read: bool,
    ) -> impl Future<Output = Result<GroupWrite, StoreError>> + Send;
    /// Write a user's state as read at `read_at`; `groups_read` when its groups were read too.
    fn put_user_state(
        &self,
        dir: &str,
        uid: &str,
        state: &UserState,
        read_at: EpochMillis,
        groups_read: bool,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Write one membership edge as read at `read_at`. Returns false when a newer read of the
    /// edge, of the group's members or of the user's groups is already stored.
    fn put_edge(
        &self,
        dir: &str,
        uid: &str,
        gid: &str,
        member: bool,
        read_at: EpochMillis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Note that a fact affecting the user changed (after writing it, before recomputing).
    fn bump(&self, dir: &str, uid: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn user(&self, dir: &str, uid: &str) -> impl Future<Output = Result<Option<StoredUser>, StoreError>> + Send;
    fn group(&self, dir: &str, gid: &str) -> impl Future<Output = Result<Option<StoredGroup>, StoreError>> + Send;
    fn groups(&self, dir: &str, gids: &[String]) -> impl Future<Output = Result<Vec<StoredGroup>, StoreError>> + Send;
    /// The user's edges, strongly consistent.
    fn user_edges(&self, dir: &str, uid: &str) -> impl Future<Output = Result<Vec<Edge>, StoreError>> + Send;
    /// Users with a `member = true` edge to the group (from the index: eventually consistent).
    fn group_member_ids(&self, dir: &str, gid: &str) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
    /// Store derived entitlements if the user's version is still `version`.
    fn write_entitlements(
        &self,
        dir: &str,
        uid: &str,
        version: u64,
        entitlements: &[String],
        groups: &[(String, String)],
        now: EpochMillis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn snapshot(&self, dir: &str) -> impl Future<Output = Result<DirectorySnapshot, StoreError>> + Send;
    fn set_full_read_at(&self, dir: &str, read_at: EpochMillis) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// When the last completed directory-wide reconcile began.
    fn full_read_at(&self, dir: &str) -> impl Future<Output = Result<Option<EpochMillis>, StoreError>> + Send;
    /// Remove everything stored for the directory. Returns the number of items deleted.
    fn purge(&self, dir: &str) -> impl Future<Output = Result<usize, StoreError>> + Send;
}

#[derive(Debug, Clone)]
pub struct DynamoStateStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoStateStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        DynamoStateStore {
            client,
            table: table.into(),
        }
    }

    fn key(&self, dir: &str, sk: String) -> HashMap<String, AttributeValue> {
        HashMap::from([(PK.to_string(), s(dir_pk(dir))), (SK.to_string(), s(sk))])
    }

    async fn get(&self, dir: &str, sk: String) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(self.key(dir, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(out.item)
    }

    /// Query a partition with an optional `begins_with` on the sort key, every page.
    async fn query_partition(&self, dir: &str, prefix: Option<&str>) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .expression_attribute_names("#pk", PK)
                .expression_attribute_values(":pk", s(dir_pk(dir)))
                .set_exclusive_start_key(start.take());
            q = match prefix {
                Some(p) => q
                    .key_condition_expression("#pk = :pk AND begins_with(#sk, :prefix)")
                    .expression_attribute_names("#sk", SK)
                    .expression_attribute_values(":prefix", s(p)),
                None => q.key_condition_expression("#pk = :pk"),
            };
            let out = q.send().await.map_err(sdk_error)?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(items),
            }
        }
    }

    /// Query the index for one `gsi1pk`, every page.
    pub async fn query_index(&self, gsi1pk: &str) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(GSI1)
                .key_condition_expression("#g = :g")
                .expression_attribute_names("#g", GSI1_PK)
                .expression_attribute_values(":g", s(gsi1pk))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(sdk_error)?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(items),
            }
        }
    }

    /// Find a user by id alone (through the index).
    pub async fn find_user(&self, uid: &str) -> Result<Option<StoredUser>, StoreError> {
        let items = self.query_index(&user_sk(uid)).await?;
        Ok(items.iter().find_map(parse_user))
    }
}

fn parse_user(item: &Item) -> Option<StoredUser> {
    if get_s(item, "kind") != Some("user") {
        return None;
    }
    Some(StoredUser {
        directory_id: get_s(item, "directory_id")?.to_string(),
        user_id: get_s(item, "user_id")?.to_string(),
        state: get_s(item, "state").map(UserState::parse),
        read_at: get_n(item, "read_at_ms").map(EpochMillis),
        groups_read_at: get_n(item, "groups_read_at_ms").map(EpochMillis),
        version: get_n(item, "version").unwrap_or(0),
        computed_version: get_n(item, "computed_version"),
        entitlements: get_list(item, "entitlements"),
        group_ids: get_list(item, "group_ids"),
        group_names: get_list(item, "group_names"),
    })
}

fn parse_group(item: &Item) -> Option<StoredGroup> {
    if get_s(item, "kind") != Some("group") {
        return None;
    }
    let deleted = get_bool(item, "deleted").unwrap_or(false);
    Some(StoredGroup {
        directory_id: get_s(item, "directory_id")?.to_string(),
        group_id: get_s(item, "group_id")?.to_string(),
        name: if deleted {
            None
        } else {
            get_s(item, "name").map(str::to_string)
        },
        read_at: EpochMillis(get_n(item, "read_at_ms")?),
        members_read_at: get_n(item, "members_read_at_ms").map(EpochMillis),
    })
}

fn parse_edge(item: &Item) -> Option<Edge> {
    if get_s(item, "kind") != Some("member") {
        return None;
    }
    Some(Edge {
        user_id: get_s(item, "user_id")?.to_string(),
        group_id: get_s(item, "group_id")?.to_string(),
        member: get_bool(item, "member")?,
        read_at: EpochMillis(get_n(item, "read_at_ms")?),
    })
}

const FENCE: &str = "attribute_not_exists(#read_at) OR #read_at <= :t";

impl StateStore for DynamoStateStore {
    async fn put_group(
        &self,
        dir: &str,
        gid: &str,
        name: Option<&str>,
        read_at: EpochMillis,
        members_read: bool,
    ) -> Result<GroupWrite, StoreError> {
        let mut set = vec![
            "kind = :kind",
            "directory_id = :dir",
            "group_id = :gid",
            "deleted = :deleted",
            "#read_at = :t",
        ];
        if members_read {
            set.push("members_read_at_ms = :t");
        }
        let mut up = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self.key(dir, group_sk(gid))))
            .expression_attribute_names("#name", "name");
        let remove = match name {
            Some(nm) => {
                set.push("#name = :name");
                up = up.expression_attribute_values(":name", s(nm));
                ""
            }
            None => " REMOVE #name",
        };
        let set = format!("SET {}{remove}", set.join(", "));
        let result = up
            .update_expression(set)
            .condition_expression(FENCE)
            .expression_attribute_names("#read_at", "read_at_ms")
            .expression_attribute_values(":kind", s("group"))
            .expression_attribute_values(":dir", s(dir))
            .expression_attribute_values(":gid", s(gid))
            .expression_attribute_values(":deleted", b(name.is_none()))
            .expression_attribute_values(":t", n(read_at.0))
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => {
                let old = out.attributes.unwrap_or_default();
                let old_deleted = get_bool(&old, "deleted").unwrap_or(false);
                let old_name = if old_deleted { None } else { get_s(&old, "name") };
                let existed = !old.is_empty();
                Ok(GroupWrite {
                    applied: true,
                    changed: existed && old_name != name,
                })
            }
            Err(e) if is_condition_failed(&e) => Ok(GroupWrite {
                applied: false,
                changed: false,
            }),
            Err(e) => Err(sdk_error(e)),
        }
    }

    async fn put_user_state(
        &self,
        dir: &str,
        uid: &str,
        state: &UserState,
        read_at: EpochMillis,
        groups_read: bool,
    ) -> Result<bool, StoreError> {
        let mut set = String::from(
            "SET kind = :kind, directory_id = :dir, user_id = :uid, #state = :state, #read_at = :t, \
             #g1pk = :g1pk, #g1sk = :g1sk",
        );
        if groups_read {
            set.push_str(", groups_read_at_ms = :t");
        }
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self.key(dir, user_sk(uid))))
            .update_expression(set)
            .condition_expression(FENCE)
            .expression_attribute_names("#read_at", "read_at_ms")
            .expression_attribute_names("#state", "state")
            .expression_attribute_names("#g1pk", GSI1_PK)
            .expression_attribute_names("#g1sk", GSI1_SK)
            .expression_attribute_values(":kind", s("user"))
            .expression_attribute_values(":dir", s(dir))
            .expression_attribute_values(":uid", s(uid))
            .expression_attribute_values(":state", s(state.as_str()))
            .expression_attribute_values(":t", n(read_at.0))
            .expression_attribute_values(":g1pk", s(user_sk(uid)))
            .expression_attribute_values(":g1sk", s(dir_pk(dir)))
            .send()
            .await;
        applied(result)
    }

    async fn put_edge(
        &self,
        dir: &str,
        uid: &str,
        gid: &str,
        member: bool,
        read_at: EpochMillis,
    ) -> Result<bool, StoreError> {
        // The edge's own fence is not enough: an absent edge carries no time, so an older read
        // could create it after a newer read saw it absent. The newer read left its time on the
        // group (`members_read_at_ms`) or the user (`groups_read_at_ms`); check both atomically.
        let t = n(read_at.0);
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(self.key(dir, edge_sk(uid, gid))))
            .update_expression(
                "SET kind = :kind, user_id = :uid, group_id = :gid, #member = :m, #read_at = :t, #g1pk = :g1pk, #g1sk = :g1sk",
            )
            .condition_expression(FENCE)
            .expression_attribute_names("#read_at", "read_at_ms")
            .expression_attribute_names("#member", "member")
            .expression_attribute_names("#g1pk", GSI1_PK)
            .expression_attribute_names("#g1sk", GSI1_SK)
            .expression_attribute_values(":kind", s("member"))
            .expression_attribute_values(":uid", s(uid))
            .expression_attribute_values(":gid", s(gid))
            .expression_attribute_values(":m", b(member))
            .expression_attribute_values(":t", t.clone())
            .expression_attribute_values(":g1pk", s(group_sk(gid)))
            .expression_attribute_values(":g1sk", s(user_sk(uid)))
            .build()
            .map_err(|e| StoreError::Dynamo(e.to_string()))?;
        let check = |sk: String, attr: &str| {
            ConditionCheck::builder()
                .table_name(&self.table)
                .set_key(Some(self.key(dir, sk)))
                .condition_expression("attribute_not_exists(#a) OR #a <= :t")
                .expression_attribute_names("#a", attr)
                .expression_attribute_values(":t", t.clone())
                .build()
                .map_err(|e| StoreError::Dynamo(e.to_string()))
        };
        let items = vec![
            TransactWriteItem::builder().update(update).build(),
            TransactWriteItem::builder()
                .condition_check(check(group_sk(gid), "members_read_at_ms")?)
                .build(),
            TransactWriteItem::builder()
                .condition_check(check(user_sk(uid), "groups_read_at_ms")?)
                .build(),
        ];
        for attempt in 0..5u32 {
            match self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await
            {
                Ok(_) => return Ok(true),
                Err(e) => {
                    let reasons: Vec<String> = match e.as_service_error() {
                        Some(TransactWriteItemsError::TransactionCanceledException(c)) => c
                            .cancellation_reasons()
                            .iter()
                            .filter_map(|r| r.code().map(str::to_string))
                            .collect(),
                        _ => return Err(sdk_error(e)),
                    };
                    if reasons.iter().any(|r| r == "ConditionalCheckFailed") {
                        return Ok(false);
                    }
                    if !reasons.iter().any(|r| r == "TransactionConflict") || attempt == 4 {
                        return Err(sdk_error(e));
                    }
                    tokio::time::sleep(Duration::from_millis(20 + fastrand::u64(0..(40 << attempt)))).await;
                }
            }
        }
        Err(StoreError::Dynamo("transaction kept conflicting".into()))
    }

    async fn bump(&self, dir: &str, uid: &str) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self.key(dir, user_sk(uid))))
            .update_expression(
                "SET kind = :kind, directory_id = :dir, user_id = :uid, #g1pk = :g1pk, #g1sk = :g1sk ADD version :one",
            )
            .expression_attribute_names("#g1pk", GSI1_PK)
            .expression_attribute_names("#g1sk", GSI1_SK)
            .expression_attribute_values(":kind", s("user"))
            .expression_attribute_values(":dir", s(dir))
            .expression_attribute_values(":uid", s(uid))
            .expression_attribute_values(":g1pk", s(user_sk(uid)))
            .expression_attribute_values(":g1sk", s(dir_pk(dir)))
            .expression_attribute_values(":one", n(1))
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }

    async fn user(&self, dir: &str, uid: &str) -> Result<Option<StoredUser>, StoreError> {
        Ok(self.get(dir, user_sk(uid)).await?.as_ref().and_then(parse_user))
    }

    async fn group(&self, dir: &str, gid: &str) -> Result<Option<StoredGroup>, StoreError> {
        Ok(self.get(dir, group_sk(gid)).await?.as_ref().and_then(parse_group))
    }

    async fn groups(&self, dir: &str, gids: &[String]) -> Result<Vec<StoredGroup>, StoreError> {
        let mut out = Vec::new();
        for chunk in gids.chunks(100) {
            let mut pending: Option<KeysAndAttributes> = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(chunk.iter().map(|g| self.key(dir, group_sk(g))).collect()))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| StoreError::Dynamo(e.to_string()))?,
            );
            let mut attempts = 0u32;
            while let Some(keys) = pending.take() {
                let resp = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, keys)
                    .send()
                    .await
                    .map_err(sdk_error)?;
                if let Some(items) = resp.responses.and_then(|mut r| r.remove(&self.table)) {
                    out.extend(items.iter().filter_map(parse_group));
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
        }
        Ok(out)
    }

    async fn user_edges(&self, dir: &str, uid: &str) -> Result<Vec<Edge>, StoreError> {
        let items = self.query_partition(dir, Some(&format!("member#{uid}#"))).await?;
        Ok(items.iter().filter_map(parse_edge).collect())
    }

    async fn group_member_ids(&self, dir: &str, gid: &str) -> Result<Vec<String>, StoreError> {
        let pk = dir_pk(dir);
        let items = self.query_index(&group_sk(gid)).await?;
        Ok(items
            .iter()
            .filter(|i| get_s(i, PK) == Some(pk.as_str()))
            .filter_map(parse_edge)
            .filter(|e| e.member)
            .map(|e| e.user_id)
            .collect())
    }

    async fn write_entitlements(
        &self,
        dir: &str,
        uid: &str,
        version: u64,
        entitlements: &[String],
        groups: &[(String, String)],
        now: EpochMillis,
    ) -> Result<bool, StoreError> {
        let up = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self.key(dir, user_sk(uid))))
            .update_expression(
                "SET entitlements = :e, group_ids = :gids, group_names = :gnames, computed_version = :v, computed_at_ms = :now",
            )
            .expression_attribute_values(":e", list(entitlements.iter().cloned()))
            .expression_attribute_values(":gids", list(groups.iter().map(|(id, _)| id.clone())))
            .expression_attribute_values(":gnames", list(groups.iter().map(|(_, name)| name.clone())))
            .expression_attribute_values(":v", n(version))
            .expression_attribute_values(":now", n(now.0))
            .expression_attribute_names("#ver", "version");
        let up = if version == 0 {
            up.condition_expression("attribute_exists(user_id) AND attribute_not_exists(#ver)")
        } else {
            up.condition_expression("#ver = :v")
        };
        applied(up.send().await)
    }

    async fn snapshot(&self, dir: &str) -> Result<DirectorySnapshot, StoreError> {
        let items = self.query_partition(dir, None).await?;
        let mut snap = DirectorySnapshot::default();
        for item in &items {
            match get_s(item, "kind") {
                Some("user") => snap.users.extend(parse_user(item)),
                Some("group") => snap.groups.extend(parse_group(item)),
                Some("member") => snap.edges.extend(parse_edge(item)),
                Some("directory") => snap.full_read_at = get_n(item, "full_read_at_ms").map(EpochMillis),
                _ => {}
            }
        }
        Ok(snap)
    }

    async fn set_full_read_at(&self, dir: &str, read_at: EpochMillis) -> Result<(), StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self.key(dir, DIRECTORY_SK.to_string())))
            .update_expression("SET kind = :kind, full_read_at_ms = :t")
            .condition_expression("attribute_not_exists(full_read_at_ms) OR full_read_at_ms <= :t")
            .expression_attribute_values(":kind", s("directory"))
            .expression_attribute_values(":t", n(read_at.0))
            .send()
            .await;
        applied(result).map(|_| ())
    }

    async fn full_read_at(&self, dir: &str) -> Result<Option<EpochMillis>, StoreError> {
        Ok(self
            .get(dir, DIRECTORY_SK.to_string())
            .await?
            .and_then(|i| get_n(&i, "full_read_at_ms"))
            .map(EpochMillis))
    }

    async fn purge(&self, dir: &str) -> Result<usize, StoreError> {
        let items = self.query_partition(dir, None).await?;
        let keys: Vec<HashMap<String, AttributeValue>> = items
            .iter()
            .filter_map(|i| {
                Some(HashMap::from([
                    (PK.to_string(), i.get(PK)?.clone()),
                    (SK.to_string(), i.get(SK)?.clone()),
                ]))
            })
            .collect();
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
        Ok(keys.len())
    }
}
