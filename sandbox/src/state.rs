//! The in-memory directory state and its mutations. Every mutation changes state the way WorkOS
//! would and records the `dsync.*` events WorkOS would emit (workos-api.md §3 "Deleted objects", §4).
//!
//! The store is plain data: callers pass the time in, so tests can fix it.

use std::collections::{BTreeMap, BTreeSet};

use dsync::clock::EpochMillis;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::SandboxError;
use crate::events::{self, Event};
use crate::model::{previous_attributes, Directory, DirectoryCounts, Group, IdGen, User, UserState};

/// What to seed: one directory, its groups (each with that many new members), and users in no group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SeedSpec {
    /// Directory name; defaults to `Sandbox Directory <n>`.
    pub name: Option<String>,
    /// Directory / e-mail domain; defaults to one derived from the name.
    pub domain: Option<String>,
    pub groups: Vec<GroupSpec>,
    /// Users created in no group.
    pub extra_users: usize,
}

/// A seeded group and how many new users to create in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSpec {
    pub name: String,
    pub users: usize,
}

impl SeedSpec {
    pub fn new(name: impl Into<String>) -> Self {
        SeedSpec {
            name: Some(name.into()),
            ..Default::default()
        }
    }

    /// Add a group with `users` new members.
    pub fn group(mut self, name: impl Into<String>, users: usize) -> Self {
        self.groups.push(GroupSpec {
            name: name.into(),
            users,
        });
        self
    }

    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// Add `n` users that belong to no group.
    pub fn extra_users(mut self, n: usize) -> Self {
        self.extra_users = n;
        self
    }
}

/// The ids a seed created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Seeded {
    pub directory_id: String,
    pub organization_id: String,
    pub groups: Vec<SeededGroup>,
    /// Users in no group.
    pub extra_user_ids: Vec<String>,
    /// Every user, in creation order.
    pub user_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeededGroup {
    pub id: String,
    pub name: String,
    pub user_ids: Vec<String>,
}

/// What [`Store::seed_scale`] makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleSpec {
    pub name: String,
    pub users: usize,
    pub groups: usize,
    pub memberships: usize,
    /// Members of the first group.
    pub biggest: usize,
}

/// What [`Store::seed_scale`] made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScaleSeeded {
    pub directory_id: String,
    pub organization_id: String,
    pub group_ids: Vec<String>,
    /// Members of each group, in `group_ids` order.
    pub group_sizes: Vec<usize>,
    pub user_ids: Vec<String>,
}

/// A user to create.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NewUser {
    pub email: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// Defaults to a generated one.
    pub idp_id: Option<String>,
}

impl NewUser {
    pub fn new(email: impl Into<String>) -> Self {
        NewUser {
            email: email.into(),
            ..Default::default()
        }
    }

    pub fn name(mut self, first: impl Into<String>, last: impl Into<String>) -> Self {
        self.first_name = Some(first.into());
        self.last_name = Some(last.into());
        self
    }
}

/// Attribute changes; `None` leaves a field alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UserUpdate {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
}

#[derive(Debug, Default)]
pub struct Store {
    ids: IdGen,
    /// Directories seeded so far (for default names).
    seq: u64,
    /// Users generated so far (for unique e-mails).
    generated: u64,
    pub(crate) directories: BTreeMap<String, Directory>,
    pub(crate) users: BTreeMap<String, User>,
    pub(crate) groups: BTreeMap<String, Group>,
    /// (group id, user id)
    members: BTreeSet<(String, String)>,
    /// (user id, group id)
    memberships: BTreeSet<(String, String)>,
    pub(crate) events: Vec<Event>,
    /// Events are not kept while this is set (seeding a large directory quietly).
    quiet: bool,
}

fn not_found(kind: &str, id: &str) -> SandboxError {
    SandboxError::NotFound(format!("{kind} {id}"))
}

/// The second elements of the pairs in `set` whose first element is `key`.
fn related<'a>(set: &'a BTreeSet<(String, String)>, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    set.range((key.to_owned(), String::new())..)
        .take_while(move |(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

impl Store {
    // ---- queries -------------------------------------------------------------------------

    pub fn directory(&self, id: &str) -> Option<&Directory> {
        self.directories.get(id)
    }

    pub fn user(&self, id: &str) -> Option<&User> {
        self.users.get(id)
    }

    pub fn group(&self, id: &str) -> Option<&Group> {
        self.groups.get(id)
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Every directory, user and group, in id order.
    pub fn all_directories(&self) -> impl Iterator<Item = &Directory> {
        self.directories.values()
    }

    pub fn all_users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    pub fn all_groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.values()
    }

    pub fn counts(&self, directory_id: &str) -> DirectoryCounts {
        let mut c = DirectoryCounts::default();
        for u in self.users.values().filter(|u| u.directory_id == directory_id) {
            match u.state {
                UserState::Active => c.active_users += 1,
                UserState::Inactive => c.inactive_users += 1,
            }
        }
        c.groups = self.groups.values().filter(|g| g.directory_id == directory_id).count();
        c
    }

    /// The user's groups, in id order.
    pub fn groups_of(&self, user_id: &str) -> Vec<&Group> {
        related(&self.memberships, user_id)
            .filter_map(|g| self.groups.get(g))
            .collect()
    }

    /// The group's members, in id order.
    pub fn members_of(&self, group_id: &str) -> Vec<&User> {
        related(&self.members, group_id)
            .filter_map(|u| self.users.get(u))
            .collect()
    }

    pub fn is_member(&self, user_id: &str, group_id: &str) -> bool {
        self.memberships.contains(&(user_id.to_owned(), group_id.to_owned()))
    }

    /// The REST JSON of a user, with its groups.
    pub fn user_json(&self, u: &User) -> Value {
        u.to_json_with_groups(self.groups_of(&u.id))
    }

    // ---- recording -----------------------------------------------------------------------

    fn record(&mut self, name: &str, data: Value, organization_id: &str, now: EpochMillis) {
        if self.quiet {
            return;
        }
        let id = self.ids.next("event");
        self.events.push(Event {
            id,
            event: name.into(),
            data,
            created_at: now,
            organization_id: organization_id.into(),
        });
    }

    fn membership_event(&mut self, name: &str, user: &User, group: &Group, now: EpochMillis) {
        let data = json!({ "directory_id": group.directory_id, "user": user.to_json(), "group": group.to_json() });
        self.record(name, data, &group.organization_id, now);
    }

    // ---- mutations -----------------------------------------------------------------------

    /// A large directory for benchmarks, made without recording events (as if it had been
    /// connected before the pipeline was deployed): `users` users, `groups` groups, about
    /// `memberships` memberships of which `biggest` are in the first group.
    pub fn seed_scale(&mut self, spec: &ScaleSpec, now: EpochMillis) -> ScaleSeeded {
        self.quiet = true;
        let seeded = self.seed(&SeedSpec::new(spec.name.clone()), now);
        let dir = seeded.directory_id.clone();
        let group_ids: Vec<String> = (0..spec.groups.max(1))
            .map(|i| self.insert_group(&dir, &format!("Group {i}"), now))
            .collect();
        let user_ids: Vec<String> = (0..spec.users)
            .filter_map(|_| self.create_generated_user(&dir, now))
            .collect();
        let n = user_ids.len().max(1);
        for uid in user_ids.iter().take(spec.biggest) {
            let _ = self.add_member(uid, &group_ids[0], now);
        }
        let others = group_ids.len().saturating_sub(1).max(1);
        for j in 0..spec.memberships.saturating_sub(spec.biggest) {
            let u = &user_ids[j % n];
            let g = &group_ids[(1 + (j / n + j * 7919) % others).min(group_ids.len() - 1)];
            let _ = self.add_member(u, g, now);
        }
        self.quiet = false;
        ScaleSeeded {
            group_sizes: group_ids.iter().map(|g| self.members_of(g).len()).collect(),
            directory_id: dir,
            organization_id: seeded.organization_id,
            group_ids,
            user_ids,
        }
    }

    /// Change `n` memberships of a directory at random (half removed, half added), with their
    /// events. Returns how many changed.
    pub fn churn(&mut self, directory_id: &str, n: usize, seed: u64, now: EpochMillis) -> usize {
        let users: Vec<String> = self
            .users
            .values()
            .filter(|u| u.directory_id == directory_id)
            .map(|u| u.id.clone())
            .collect();
        let groups: Vec<String> = self
            .groups
            .values()
            .filter(|g| g.directory_id == directory_id)
            .map(|g| g.id.clone())
            .collect();
        if users.is_empty() || groups.is_empty() {
            return 0;
        }
        let existing: Vec<(String, String)> = self
            .memberships
            .iter()
            .filter(|(u, _)| self.users.get(u).is_some_and(|x| x.directory_id == directory_id))
            .cloned()
            .collect();
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut changed = 0;
        for _ in 0..n / 2 {
            if existing.is_empty() {
                break;
            }
            let (u, g) = &existing[rng.usize(..existing.len())];
            if self.remove_member(u, g, now).unwrap_or(false) {
                changed += 1;
            }
        }
        let mut tries = 0;
        while changed < n && tries < n * 10 {
            tries += 1;
            let u = &users[rng.usize(..users.len())];
            let g = &groups[rng.usize(..groups.len())];
            if self.add_member(u, g, now).unwrap_or(false) {
                changed += 1;
            }
        }
        changed
    }

    /// `n` new users of a directory, each added to `group_id` (the events of an onboarding).
    pub fn burst(
        &mut self,
        directory_id: &str,
        group_id: &str,
        n: usize,
        now: EpochMillis,
    ) -> Result<Vec<String>, SandboxError> {
        if self.group(group_id).is_none() {
            return Err(not_found("directory group", group_id));
        }
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let uid = self
                .create_generated_user(directory_id, now)
                .ok_or_else(|| not_found("directory", directory_id))?;
            self.add_member(&uid, group_id, now)?;
            ids.push(uid);
        }
        Ok(ids)
    }

    /// Stop (or resume) recording events.
    pub fn set_quiet(&mut self, quiet: bool) {
        self.quiet = quiet;
    }

    /// Create a linked directory (`dsync.activated`), its groups, users and memberships, with the
    /// events an initial sync produces.
    pub fn seed(&mut self, spec: &SeedSpec, now: EpochMillis) -> Seeded {
        self.seq += 1;
        let name = spec
            .name
            .clone()
            .unwrap_or_else(|| format!("Sandbox Directory {}", self.seq));
        let domain = spec.domain.clone().unwrap_or_else(|| {
            let slug: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '-'
                    }
                })
                .collect();
            format!("{}-{}.example.com", slug.trim_matches('-'), self.seq)
        });
        let dir = Directory {
            id: self.ids.next("directory"),
            organization_id: self.ids.next("org"),
            domain_id: self.ids.next("org_domain"),
            external_key: format!("sandbox-{}", self.seq),
            name,
            domain,
            created_at: now,
            updated_at: now,
        };
        let (dir_id, org_id) = (dir.id.clone(), dir.organization_id.clone());
        self.record(events::DSYNC_ACTIVATED, dir.to_activated_json(), &org_id, now);
        self.directories.insert(dir_id.clone(), dir);

        let mut seeded = Seeded {
            directory_id: dir_id.clone(),
            organization_id: org_id,
            groups: Vec::new(),
            extra_user_ids: Vec::new(),
            user_ids: Vec::new(),
        };
        // Only fails for a missing directory, which was just inserted.
        let new_user = |store: &mut Store| store.create_generated_user(&dir_id, now);
        for g in &spec.groups {
            let id = self.insert_group(&dir_id, &g.name, now);
            seeded.groups.push(SeededGroup {
                id,
                name: g.name.clone(),
                user_ids: Vec::new(),
            });
        }
        for gi in 0..spec.groups.len() {
            for _ in 0..spec.groups[gi].users {
                if let Some(uid) = new_user(self) {
                    seeded.groups[gi].user_ids.push(uid.clone());
                    seeded.user_ids.push(uid);
                }
            }
        }
        for _ in 0..spec.extra_users {
            if let Some(uid) = new_user(self) {
                seeded.extra_user_ids.push(uid.clone());
                seeded.user_ids.push(uid);
            }
        }
        for g in &seeded.groups {
            for uid in &g.user_ids {
                // Cannot fail: both were created above in this directory.
                let _ = self.add_member(uid, &g.id, now);
            }
        }
        seeded
    }

    fn create_generated_user(&mut self, directory_id: &str, now: EpochMillis) -> Option<String> {
        self.generated += 1;
        let n = self.generated;
        let domain = self.directories.get(directory_id)?.domain.clone();
        let user = NewUser {
            email: format!("user{n}@{domain}"),
            first_name: Some("Sandbox".into()),
            last_name: Some(format!("User {n}")),
            idp_id: None,
        };
        self.create_user(directory_id, &user, now).ok()
    }

    /// Create a user (`dsync.user.created`).
    pub fn create_user(&mut self, directory_id: &str, new: &NewUser, now: EpochMillis) -> Result<String, SandboxError> {
        let dir = self
            .directories
            .get(directory_id)
            .ok_or_else(|| not_found("directory", directory_id))?;
        if new.email.trim().is_empty() {
            return Err(SandboxError::Invalid("email is required".into()));
        }
        let organization_id = dir.organization_id.clone();
        let id = self.ids.next("directory_user");
        let user = User {
            idp_id: new
                .idp_id
                .clone()
                .unwrap_or_else(|| format!("idp-{}", &id[id.len() - 8..])),
            id: id.clone(),
            directory_id: directory_id.into(),
            organization_id: organization_id.clone(),
            email: new.email.clone(),
            first_name: new.first_name.clone().unwrap_or_default(),
            last_name: new.last_name.clone().unwrap_or_default(),
            state: UserState::Active,
            created_at: now,
            updated_at: now,
        };
        self.record(events::USER_CREATED, user.to_json(), &organization_id, now);
        self.users.insert(id.clone(), user);
        Ok(id)
    }

    /// Apply `change` to a user; if anything visible changed, bump `updated_at` and record
    /// `dsync.user.updated` with `previous_attributes`. Returns whether it changed.
    fn change_user(
        &mut self,
        id: &str,
        now: EpochMillis,
        change: impl FnOnce(&mut User),
    ) -> Result<bool, SandboxError> {
        let user = self.users.get_mut(id).ok_or_else(|| not_found("directory user", id))?;
        let before = user.to_json();
        change(user);
        let prev = previous_attributes(&before, &user.to_json());
        if prev.is_empty() {
            return Ok(false);
        }
        user.updated_at = now;
        let mut data = user.to_json();
        if let Value::Object(m) = &mut data {
            m.insert("previous_attributes".into(), Value::Object(prev));
        }
        let org = user.organization_id.clone();
        self.record(events::USER_UPDATED, data, &org, now);
        Ok(true)
    }

    /// Rename or re-address a user (`dsync.user.updated`); `false` if nothing changed.
    pub fn update_user(&mut self, id: &str, update: &UserUpdate, now: EpochMillis) -> Result<bool, SandboxError> {
        if update.email.as_deref().is_some_and(|e| e.trim().is_empty()) {
            return Err(SandboxError::Invalid("email must not be empty".into()));
        }
        self.change_user(id, now, |u| {
            if let Some(v) = &update.first_name {
                u.first_name.clone_from(v);
            }
            if let Some(v) = &update.last_name {
                u.last_name.clone_from(v);
            }
            if let Some(v) = &update.email {
                u.email.clone_from(v);
            }
        })
    }

    /// Deactivate or reactivate (`dsync.user.updated` with `previous_attributes.state`).
    pub fn set_user_state(&mut self, id: &str, state: UserState, now: EpochMillis) -> Result<bool, SandboxError> {
        self.change_user(id, now, |u| u.state = state)
    }

    /// Hard-delete a user (`dsync.user.deleted`); its memberships go with it.
    pub fn delete_user(&mut self, id: &str, now: EpochMillis) -> Result<(), SandboxError> {
        let user = self.users.remove(id).ok_or_else(|| not_found("directory user", id))?;
        let groups: Vec<String> = related(&self.memberships, id).map(str::to_owned).collect();
        for g in groups {
            self.members.remove(&(g.clone(), id.to_owned()));
            self.memberships.remove(&(id.to_owned(), g));
        }
        self.record(events::USER_DELETED, user.to_json(), &user.organization_id, now);
        Ok(())
    }

    fn insert_group(&mut self, directory_id: &str, name: &str, now: EpochMillis) -> String {
        let organization_id = self
            .directories
            .get(directory_id)
            .map(|d| d.organization_id.clone())
            .unwrap_or_default();
        let id = self.ids.next("directory_group");
        let group = Group {
            idp_id: format!("idp-{}", &id[id.len() - 8..]),
            id: id.clone(),
            directory_id: directory_id.into(),
            organization_id: organization_id.clone(),
            name: name.into(),
            created_at: now,
            updated_at: now,
        };
        self.record(events::GROUP_CREATED, group.to_json(), &organization_id, now);
        self.groups.insert(id.clone(), group);
        id
    }

    /// Create a group (`dsync.group.created`).
    pub fn create_group(&mut self, directory_id: &str, name: &str, now: EpochMillis) -> Result<String, SandboxError> {
        if !self.directories.contains_key(directory_id) {
            return Err(not_found("directory", directory_id));
        }
        Ok(self.insert_group(directory_id, name, now))
    }

    /// Rename a group (`dsync.group.updated`, `previous_attributes: {name: old}`); `false` if the
    /// name is unchanged.
    pub fn rename_group(&mut self, id: &str, name: &str, now: EpochMillis) -> Result<bool, SandboxError> {
        let group = self
            .groups
            .get_mut(id)
            .ok_or_else(|| not_found("directory group", id))?;
        if group.name == name {
            return Ok(false);
        }
        let old = std::mem::replace(&mut group.name, name.into());
        group.updated_at = now;
        let mut data = group.to_json();
        if let Value::Object(m) = &mut data {
            m.insert("previous_attributes".into(), json!({ "name": old }));
        }
        let org = group.organization_id.clone();
        self.record(events::GROUP_UPDATED, data, &org, now);
        Ok(true)
    }

    /// Delete a group (`dsync.group.deleted`). Its memberships are dropped without
    /// `dsync.group.user_removed` events, as WorkOS does.
    pub fn delete_group(&mut self, id: &str, now: EpochMillis) -> Result<(), SandboxError> {
        let group = self.groups.remove(id).ok_or_else(|| not_found("directory group", id))?;
        let users: Vec<String> = related(&self.members, id).map(str::to_owned).collect();
        for u in users {
            self.memberships.remove(&(u.clone(), id.to_owned()));
            self.members.remove(&(id.to_owned(), u));
        }
        self.record(events::GROUP_DELETED, group.to_json(), &group.organization_id, now);
        Ok(())
    }

    fn pair(&self, user_id: &str, group_id: &str) -> Result<(User, Group), SandboxError> {
        let user = self
            .users
            .get(user_id)
            .ok_or_else(|| not_found("directory user", user_id))?;
        let group = self
            .groups
            .get(group_id)
            .ok_or_else(|| not_found("directory group", group_id))?;
        if user.directory_id != group.directory_id {
            return Err(SandboxError::Conflict(format!(
                "{user_id} and {group_id} are in different directories"
            )));
        }
        Ok((user.clone(), group.clone()))
    }

    /// Add a user to a group (`dsync.group.user_added`); `false` if already a member. Neither
    /// object's `updated_at` moves (WorkOS's known caveat).
    pub fn add_member(&mut self, user_id: &str, group_id: &str, now: EpochMillis) -> Result<bool, SandboxError> {
        let (user, group) = self.pair(user_id, group_id)?;
        if !self.memberships.insert((user_id.to_owned(), group_id.to_owned())) {
            return Ok(false);
        }
        self.members.insert((group_id.to_owned(), user_id.to_owned()));
        self.membership_event(events::GROUP_USER_ADDED, &user, &group, now);
        Ok(true)
    }

    /// Remove a user from a group (`dsync.group.user_removed`); `false` if not a member.
    pub fn remove_member(&mut self, user_id: &str, group_id: &str, now: EpochMillis) -> Result<bool, SandboxError> {
        let (user, group) = self.pair(user_id, group_id)?;
        if !self.memberships.remove(&(user_id.to_owned(), group_id.to_owned())) {
            return Ok(false);
        }
        self.members.remove(&(group_id.to_owned(), user_id.to_owned()));
        self.membership_event(events::GROUP_USER_REMOVED, &user, &group, now);
        Ok(true)
    }

    /// Delete a directory (`dsync.deleted` only): its users, groups and memberships vanish
    /// without per-object events.
    pub fn delete_directory(&mut self, id: &str, now: EpochMillis) -> Result<(), SandboxError> {
        let dir = self.directories.remove(id).ok_or_else(|| not_found("directory", id))?;
        let users: BTreeSet<String> = self
            .users
            .values()
            .filter(|u| u.directory_id == id)
            .map(|u| u.id.clone())
            .collect();
        let groups: BTreeSet<String> = self
            .groups
            .values()
            .filter(|g| g.directory_id == id)
            .map(|g| g.id.clone())
            .collect();
        self.users.retain(|k, _| !users.contains(k));
        self.groups.retain(|k, _| !groups.contains(k));
        self.memberships.retain(|(u, _)| !users.contains(u));
        self.members.retain(|(g, _)| !groups.contains(g));
        self.record(events::DSYNC_DELETED, dir.to_deleted_json(), &dir.organization_id, now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: EpochMillis = EpochMillis(1_700_000_000_000);
    const T1: EpochMillis = EpochMillis(1_700_000_001_000);

    fn names(events: &[Event]) -> Vec<&str> {
        events.iter().map(|e| e.event.as_str()).collect()
    }

    fn seeded() -> (Store, Seeded) {
        let mut s = Store::default();
        let seeded = s.seed(&SeedSpec::new("Acme").group("Admins", 2).extra_users(1), T0);
        (s, seeded)
    }

    #[test]
    fn seed_records_an_initial_sync() {
        let (s, seeded) = seeded();
        assert_eq!(
            names(s.events()),
            [
                "dsync.activated",
                "dsync.group.created",
                "dsync.user.created",
                "dsync.user.created",
                "dsync.user.created",
                "dsync.group.user_added",
                "dsync.group.user_added",
            ]
        );
        let act = &s.events()[0].data;
        assert_eq!(act["id"], seeded.directory_id.as_str());
        assert_eq!(act["state"], "active");
        assert_eq!(act["domains"][0]["object"], "organization_domain");
        let added = &s.events()[5].data;
        assert_eq!(added["directory_id"], seeded.directory_id.as_str());
        assert_eq!(added["user"]["id"], seeded.groups[0].user_ids[0].as_str());
        assert_eq!(added["group"]["name"], "Admins");
        assert!(added["user"].get("groups").is_none(), "event users carry no groups");
        assert_eq!(s.members_of(&seeded.groups[0].id).len(), 2);
        assert_eq!(
            s.counts(&seeded.directory_id),
            DirectoryCounts {
                active_users: 3,
                inactive_users: 0,
                groups: 1
            }
        );
        let mut ids: Vec<&str> = s.events().iter().map(|e| e.id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(
            ids,
            s.events().iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            "event ids sort in order"
        );
    }

    #[test]
    fn create_user_records_user_created() {
        let (mut s, seeded) = seeded();
        let n = s.events().len();
        let id = s
            .create_user(
                &seeded.directory_id,
                &NewUser::new("new@acme.test").name("New", "Person"),
                T1,
            )
            .unwrap();
        let e = &s.events()[n];
        assert_eq!(e.event, "dsync.user.created");
        assert_eq!(e.data["id"], id.as_str());
        assert_eq!(
            e.data["emails"][0],
            json!({"primary": true, "type": "work", "value": "new@acme.test"})
        );
        assert_eq!(e.data["state"], "active");
        assert_eq!(e.created_at, T1);
        assert_eq!(
            s.create_user("directory_nope", &NewUser::new("x@y"), T1)
                .map_err(|_| ()),
            Err(())
        );
    }

    #[test]
    fn update_user_records_previous_attributes() {
        let (mut s, seeded) = seeded();
        let uid = &seeded.user_ids[0];
        let old_email = s.user(uid).unwrap().email.clone();
        let n = s.events().len();
        let update = UserUpdate {
            email: Some("renamed@acme.test".into()),
            ..Default::default()
        };
        assert_eq!(s.update_user(uid, &update, T1), Ok(true));
        let e = &s.events()[n];
        assert_eq!(e.event, "dsync.user.updated");
        assert_eq!(e.data["email"], "renamed@acme.test");
        assert_eq!(e.data["updated_at"], "2023-11-14T22:13:21.000Z");
        let prev = &e.data["previous_attributes"];
        assert_eq!(prev["email"], old_email.as_str());
        assert_eq!(prev["username"], old_email.as_str());
        assert_eq!(prev["emails"][0]["value"], old_email.as_str());
        assert!(prev.get("first_name").is_none());
        // No change, no event.
        assert_eq!(s.update_user(uid, &update, T1), Ok(false));
        assert_eq!(s.events().len(), n + 1);
    }

    #[test]
    fn deactivate_and_reactivate_record_state_changes() {
        let (mut s, seeded) = seeded();
        let uid = &seeded.user_ids[1];
        assert_eq!(s.set_user_state(uid, UserState::Inactive, T1), Ok(true));
        let e = s.events().last().unwrap();
        assert_eq!(
            (e.event.as_str(), &e.data["state"]),
            ("dsync.user.updated", &json!("inactive"))
        );
        assert_eq!(e.data["previous_attributes"], json!({"state": "active"}));
        assert_eq!(s.set_user_state(uid, UserState::Active, T1), Ok(true));
        assert_eq!(
            s.events().last().unwrap().data["previous_attributes"],
            json!({"state": "inactive"})
        );
        assert_eq!(s.set_user_state(uid, UserState::Active, T1), Ok(false));
    }

    #[test]
    fn delete_user_records_user_deleted_and_drops_memberships() {
        let (mut s, seeded) = seeded();
        let uid = &seeded.groups[0].user_ids[0];
        let n = s.events().len();
        s.delete_user(uid, T1).unwrap();
        assert_eq!(names(&s.events()[n..]), ["dsync.user.deleted"]);
        assert_eq!(s.events()[n].data["id"], uid.as_str());
        assert!(s.user(uid).is_none());
        assert_eq!(s.members_of(&seeded.groups[0].id).len(), 1);
        assert!(s.delete_user(uid, T1).is_err());
    }

    #[test]
    fn group_lifecycle_events() {
        let (mut s, seeded) = seeded();
        let n = s.events().len();
        let gid = s.create_group(&seeded.directory_id, "Developers", T1).unwrap();
        assert_eq!(s.rename_group(&gid, "Platform Developers", T1), Ok(true));
        assert_eq!(s.rename_group(&gid, "Platform Developers", T1), Ok(false));
        assert_eq!(names(&s.events()[n..]), ["dsync.group.created", "dsync.group.updated"]);
        let upd = &s.events()[n + 1].data;
        assert_eq!(upd["name"], "Platform Developers");
        assert_eq!(upd["previous_attributes"], json!({"name": "Developers"}));
        assert_eq!(upd["object"], "directory_group");
    }

    #[test]
    fn group_delete_drops_memberships_without_user_removed() {
        let (mut s, seeded) = seeded();
        let g = &seeded.groups[0];
        let n = s.events().len();
        s.delete_group(&g.id, T1).unwrap();
        assert_eq!(names(&s.events()[n..]), ["dsync.group.deleted"]);
        assert!(s.groups_of(&g.user_ids[0]).is_empty());
        assert!(s.members_of(&g.id).is_empty());
    }

    #[test]
    fn membership_events() {
        let (mut s, seeded) = seeded();
        let (uid, gid) = (&seeded.extra_user_ids[0], &seeded.groups[0].id);
        let n = s.events().len();
        assert_eq!(s.add_member(uid, gid, T1), Ok(true));
        assert_eq!(s.add_member(uid, gid, T1), Ok(false));
        assert_eq!(s.remove_member(uid, gid, T1), Ok(true));
        assert_eq!(s.remove_member(uid, gid, T1), Ok(false));
        assert_eq!(
            names(&s.events()[n..]),
            ["dsync.group.user_added", "dsync.group.user_removed"]
        );
        let rm = &s.events()[n + 1].data;
        assert_eq!(rm["directory_id"], seeded.directory_id.as_str());
        assert_eq!(rm["user"]["id"], uid.as_str());
        assert_eq!(rm["group"]["id"], gid.as_str());
        // Membership changes do not bump the user's updated_at.
        assert_eq!(rm["user"]["updated_at"], rm["user"]["created_at"]);

        let other = s.seed(&SeedSpec::new("Other").group("X", 0), T1);
        assert!(matches!(
            s.add_member(uid, &other.groups[0].id, T1),
            Err(SandboxError::Conflict(_))
        ));
    }

    #[test]
    fn delete_directory_records_only_dsync_deleted() {
        let (mut s, seeded) = seeded();
        let other = s.seed(&SeedSpec::new("Other").group("X", 1), T0);
        let n = s.events().len();
        s.delete_directory(&seeded.directory_id, T1).unwrap();
        assert_eq!(names(&s.events()[n..]), ["dsync.deleted"]);
        let d = &s.events()[n].data;
        assert_eq!(
            (d["object"].as_str(), d["state"].as_str()),
            (Some("directory"), Some("deleting"))
        );
        assert!(s.users.values().all(|u| u.directory_id == other.directory_id));
        assert!(s.groups.values().all(|g| g.directory_id == other.directory_id));
        assert_eq!(s.members_of(&other.groups[0].id).len(), 1);
        assert!(s.groups_of(&seeded.groups[0].user_ids[0]).is_empty());
    }
}
