//! The sandbox's state read in-process, through the pipeline's `DirectoryApi`, `DirectoryList` and
//! `EventsApi` ports: the same
//! answers the HTTP routes give (ids in ascending order, `after` cursors, 404 as `None`), without
//! HTTP. For the convergence property test and the fast benchmarks; the HTTP sandbox and the real
//! WorkOS client cover the wire.

use std::sync::{Arc, Mutex};

use dsync::directory::{
    ApiError, CallBudget, DirGroup, DirInfo, DirUser, DirectoryApi, DirectoryList, Listing, Page, UserState,
};
use dsync::model::{email_hash, idp_hash};
use dsync::ports::events::{EventsApi, EventsCursor, RawEvent};

use crate::events::EventQuery;
use crate::lock;
use crate::model::{Group, User};
use crate::state::Store;

/// Random failures to inject, per call.
#[derive(Debug, Clone, Copy, Default)]
pub struct DirectFaults {
    /// Probability (0..=1) that a call answers 503 instead.
    pub server_error: f64,
}

/// `DirectoryApi` over a shared sandbox [`Store`].
#[derive(Debug, Clone)]
pub struct DirectApi {
    store: Arc<Mutex<Store>>,
    page: usize,
    faults: DirectFaults,
    rng: Arc<Mutex<fastrand::Rng>>,
}

impl DirectApi {
    /// Pages of `page` items (WorkOS: up to 100; small pages exercise resumption).
    pub fn new(store: Arc<Mutex<Store>>, page: usize) -> Self {
        DirectApi {
            store,
            page: page.max(1),
            faults: DirectFaults::default(),
            rng: Arc::new(Mutex::new(fastrand::Rng::with_seed(1))),
        }
    }

    pub fn with_faults(mut self, faults: DirectFaults, seed: u64) -> Self {
        self.faults = faults;
        self.rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(seed)));
        self
    }

    fn call(&self, budget: &CallBudget) -> Result<(), ApiError> {
        budget.record_call();
        if self.faults.server_error > 0.0 && lock(&self.rng).f64() < self.faults.server_error {
            return Err(ApiError::Server {
                status: 503,
                request_id: None,
            });
        }
        Ok(())
    }
}

fn user(u: &User) -> DirUser {
    DirUser {
        id: u.id.clone(),
        directory_id: u.directory_id.clone(),
        state: UserState::parse(u.state.as_str()),
        email_hash: Some(email_hash(&u.email)),
        idp_hash: Some(idp_hash(&u.idp_id)),
        updated_at: Some(u.updated_at),
    }
}

fn group(g: &Group) -> DirGroup {
    DirGroup {
        id: g.id.clone(),
        directory_id: g.directory_id.clone(),
        name: g.name.clone(),
        updated_at: Some(g.updated_at),
    }
}

/// One page of `items` (sorted by id) after `after`.
fn page_of<T: Clone>(mut items: Vec<(String, T)>, after: Option<&str>, size: usize) -> Page<T> {
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let start = after.map_or(0, |a| items.partition_point(|(id, _)| id.as_str() <= a));
    let rest = &items[start.min(items.len())..];
    let chosen: Vec<(String, T)> = rest.iter().take(size).cloned().collect();
    let after = (rest.len() > size)
        .then(|| chosen.last().map(|(id, _)| id.clone()))
        .flatten();
    Page {
        items: chosen.into_iter().map(|(_, t)| t).collect(),
        after,
    }
}

impl DirectoryApi for DirectApi {
    async fn get_directory(&self, directory_id: &str, budget: &CallBudget) -> Result<Option<DirInfo>, ApiError> {
        self.call(budget)?;
        Ok(lock(&self.store).directory(directory_id).map(info))
    }

    async fn get_user(&self, _d: &str, user_id: &str, budget: &CallBudget) -> Result<Option<DirUser>, ApiError> {
        self.call(budget)?;
        Ok(lock(&self.store).user(user_id).map(user))
    }

    async fn get_group(&self, _d: &str, group_id: &str, budget: &CallBudget) -> Result<Option<DirGroup>, ApiError> {
        self.call(budget)?;
        Ok(lock(&self.store).group(group_id).map(group))
    }

    async fn user_groups(
        &self,
        _d: &str,
        user_id: &str,
        budget: &CallBudget,
    ) -> Result<Option<Vec<DirGroup>>, ApiError> {
        self.call(budget)?;
        let s = lock(&self.store);
        if s.user(user_id).is_none() {
            return Ok(None);
        }
        Ok(Some(s.groups_of(user_id).into_iter().map(group).collect()))
    }

    async fn users_page(
        &self,
        directory_id: &str,
        listing: Listing<'_>,
        after: Option<&str>,
        budget: &CallBudget,
    ) -> Result<Option<Page<DirUser>>, ApiError> {
        self.call(budget)?;
        let s = lock(&self.store);
        let items: Vec<(String, DirUser)> = match listing {
            Listing::Directory => {
                if s.directory(directory_id).is_none() {
                    return Ok(None);
                }
                s.users
                    .values()
                    .filter(|u| u.directory_id == directory_id)
                    .map(|u| (u.id.clone(), user(u)))
                    .collect()
            }
            Listing::Group(g) => {
                if s.group(g).is_none() {
                    return Ok(None);
                }
                s.members_of(g).into_iter().map(|u| (u.id.clone(), user(u))).collect()
            }
        };
        Ok(Some(page_of(items, after, self.page)))
    }

    async fn groups_page(
        &self,
        directory_id: &str,
        after: Option<&str>,
        budget: &CallBudget,
    ) -> Result<Option<Page<DirGroup>>, ApiError> {
        self.call(budget)?;
        let s = lock(&self.store);
        if s.directory(directory_id).is_none() {
            return Ok(None);
        }
        let items = s
            .groups
            .values()
            .filter(|g| g.directory_id == directory_id)
            .map(|g| (g.id.clone(), group(g)))
            .collect();
        Ok(Some(page_of(items, after, self.page)))
    }
}

fn info(d: &crate::model::Directory) -> DirInfo {
    DirInfo {
        id: d.id.clone(),
        organization_id: Some(d.organization_id.clone()),
        state: "linked".into(),
    }
}

impl DirectoryList for DirectApi {
    async fn directories_page(&self, after: Option<&str>, budget: &CallBudget) -> Result<Page<DirInfo>, ApiError> {
        self.call(budget)?;
        let items = lock(&self.store)
            .all_directories()
            .map(|d| (d.id.clone(), info(d)))
            .collect();
        Ok(page_of(items, after, self.page))
    }
}

impl EventsApi for DirectApi {
    /// `GET /events` from [`crate::Store::events`], as the HTTP route serves it: oldest first,
    /// pages of at most `limit` (and of this adapter's page size), the exact webhook body.
    async fn events_page(
        &self,
        types: &[&str],
        cursor: EventsCursor,
        limit: u32,
        budget: &CallBudget,
    ) -> Result<Page<RawEvent>, ApiError> {
        self.call(budget)?;
        if types.is_empty() {
            return Err(ApiError::Client {
                status: 400,
                message: "One or more event names must be provided using the events parameter.".into(),
            });
        }
        let (after, range_start) = match cursor {
            EventsCursor::After(id) => (Some(id), None),
            EventsCursor::RangeStart(t) => (None, Some(t)),
        };
        let query = EventQuery {
            events: types.iter().map(|t| t.to_string()).collect(),
            after,
            limit: (limit.clamp(1, 100) as usize).min(self.page),
            range_start,
            range_end: None,
            organization_id: None,
        };
        let page = query.run(lock(&self.store).events());
        let mut items = Vec::with_capacity(page.data.len());
        for e in &page.data {
            let raw = String::from_utf8_lossy(&e.to_body()).into_owned();
            items.push(RawEvent::parse(raw).map_err(|e| ApiError::BadResponse(e.to_string()))?);
        }
        Ok(Page {
            items,
            after: page.after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_after_cursors_in_id_order() {
        let items: Vec<(String, u32)> = (0..7).rev().map(|i| (format!("id{i}"), i)).collect();
        let p1 = page_of(items.clone(), None, 3);
        assert_eq!(p1.items, vec![0, 1, 2]);
        let p2 = page_of(items.clone(), p1.after.as_deref(), 3);
        assert_eq!(p2.items, vec![3, 4, 5]);
        let p3 = page_of(items.clone(), p2.after.as_deref(), 3);
        assert_eq!((p3.items, p3.after), (vec![6], None));
        // A cursor naming a since-deleted id still works.
        assert_eq!(page_of(items, Some("id2x"), 10).items, vec![3, 4, 5, 6]);
    }
}
