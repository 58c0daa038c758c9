//! Cursor pagination as the WorkOS list endpoints do it (workos-api.md §3 "Pagination").
//!
//! `limit` 1–100 (default 10); `after` / `before` are object ids; `order` is `desc` (default),
//! `asc`, or `normal` (descending, with `before` fetching older and `after` newer records).
//! Cursors are compared as ids, so a cursor naming a since-deleted object still works.

/// Default page size.
pub const DEFAULT_LIMIT: usize = 10;
/// Largest page size accepted.
pub const MAX_LIMIT: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    Asc,
    #[default]
    Desc,
    Normal,
}

impl Order {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "asc" => Some(Order::Asc),
            "desc" => Some(Order::Desc),
            "normal" => Some(Order::Normal),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageParams {
    pub limit: usize,
    pub after: Option<String>,
    pub before: Option<String>,
    pub order: Order,
}

impl Default for PageParams {
    fn default() -> Self {
        PageParams {
            limit: DEFAULT_LIMIT,
            after: None,
            before: None,
            order: Order::Desc,
        }
    }
}

/// Why the pagination parameters were refused; the route answers 422 naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidParam {
    pub field: &'static str,
    pub code: String,
}

/// Parse a `limit` value: an integer in 1..=100.
pub fn parse_limit(raw: Option<&str>) -> Result<usize, InvalidParam> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_LIMIT);
    };
    match raw.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(InvalidParam {
            field: "limit",
            code: format!("limit must be between 1 and {MAX_LIMIT}"),
        }),
    }
}

impl PageParams {
    /// Build from the raw query values (empty strings count as absent).
    pub fn parse(
        limit: Option<&str>,
        after: Option<&str>,
        before: Option<&str>,
        order: Option<&str>,
    ) -> Result<Self, InvalidParam> {
        let limit = parse_limit(limit)?;
        let order = match order {
            None => Order::Desc,
            Some(o) => Order::parse(o).ok_or_else(|| InvalidParam {
                field: "order",
                code: "order must be one of asc, desc, normal".into(),
            })?,
        };
        Ok(PageParams {
            limit,
            after: after.map(str::to_owned),
            before: before.map(str::to_owned),
            order,
        })
    }
}

/// One page and the cursors of its neighbours (`None` when there is nothing that way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// Page through `items`, which must be sorted by ascending id (creation order).
pub fn paginate<T: Clone>(items: &[T], id: impl Fn(&T) -> &str, p: &PageParams) -> Page<T> {
    let asc = p.order == Order::Asc;
    // In display order, does `a` come strictly before `b`?
    let precedes = |a: &str, b: &str| if asc { a < b } else { a > b };
    // `normal` swaps what the cursors mean relative to the (descending) display order.
    let (after, before) = match p.order {
        Order::Normal => (p.before.as_deref(), p.after.as_deref()),
        Order::Asc | Order::Desc => (p.after.as_deref(), p.before.as_deref()),
    };
    let mut seq: Vec<&T> = items.iter().collect();
    if !asc {
        seq.reverse();
    }
    let in_range = |x: &&T| {
        let xid = id(x);
        after.is_none_or(|c| precedes(c, xid)) && before.is_none_or(|c| precedes(xid, c))
    };
    let start = seq.iter().position(in_range).unwrap_or(seq.len());
    let end = seq.iter().rposition(in_range).map_or(start, |i| i + 1);
    let (lo, hi) = if before.is_some() && after.is_none() {
        // Walking backwards: the `limit` items closest to the cursor.
        (end.saturating_sub(p.limit).max(start), end)
    } else {
        (start, (start + p.limit).min(end))
    };
    let data: Vec<T> = seq[lo..hi].iter().map(|x| (*x).clone()).collect();
    let first = seq[lo..hi].first().map(|x| id(x).to_owned());
    let last = seq[lo..hi].last().map(|x| id(x).to_owned());
    let prev = if lo > 0 { first } else { None };
    let next = if hi < seq.len() { last } else { None };
    match p.order {
        Order::Normal => Page {
            data,
            before: next,
            after: prev,
        },
        Order::Asc | Order::Desc => Page {
            data,
            before: prev,
            after: next,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("x_{i:04}")).collect()
    }

    fn page(items: &[String], p: &PageParams) -> Page<String> {
        paginate(items, |s| s.as_str(), p)
    }

    #[test]
    fn limit_is_validated() {
        assert_eq!(parse_limit(None), Ok(10));
        assert_eq!(parse_limit(Some("100")), Ok(100));
        for bad in ["0", "101", "-1", "ten", ""] {
            assert_eq!(parse_limit(Some(bad)).map_err(|e| e.field), Err("limit"), "{bad}");
        }
        assert!(PageParams::parse(None, None, None, Some("sideways")).is_err());
    }

    #[test]
    fn default_is_newest_first_with_after_cursor() {
        let items = ids(25);
        let p = page(&items, &PageParams::default());
        assert_eq!(p.data.first().map(String::as_str), Some("x_0025"));
        assert_eq!(p.data.len(), 10);
        assert_eq!(p.before, None);
        assert_eq!(p.after.as_deref(), Some("x_0016"));
    }

    /// Walk forward with `after` then back with `before`: every item exactly once each way.
    #[test]
    fn walks_visit_every_item_once_in_both_orders() {
        for n in [0, 1, 7, 10, 23, 100] {
            let items = ids(n);
            for order in [Order::Asc, Order::Desc] {
                for limit in [1, 3, 10, 100] {
                    let mut expected: Vec<String> = items.clone();
                    if order == Order::Desc {
                        expected.reverse();
                    }
                    let mut params = PageParams {
                        limit,
                        order,
                        ..Default::default()
                    };
                    let mut seen = Vec::new();
                    let mut last_page;
                    loop {
                        let p = page(&items, &params);
                        assert!(p.data.len() <= limit);
                        seen.extend(p.data.iter().cloned());
                        last_page = p.clone();
                        match p.after {
                            Some(a) => params.after = Some(a),
                            None => break,
                        }
                    }
                    assert_eq!(seen, expected, "forward n={n} {order:?} limit={limit}");

                    // Backwards from the last page.
                    let mut back: Vec<String> = last_page.data.clone();
                    let mut cursor = last_page.before;
                    while let Some(b) = cursor {
                        let p = page(
                            &items,
                            &PageParams {
                                limit,
                                order,
                                after: None,
                                before: Some(b),
                            },
                        );
                        assert!(!p.data.is_empty());
                        let mut chunk = p.data.clone();
                        chunk.extend(back);
                        back = chunk;
                        cursor = p.before;
                    }
                    assert_eq!(back, expected, "backward n={n} {order:?} limit={limit}");
                }
            }
        }
    }

    #[test]
    fn normal_order_is_descending_with_swapped_cursors() {
        let items = ids(5);
        let p1 = page(
            &items,
            &PageParams {
                limit: 2,
                order: Order::Normal,
                ..Default::default()
            },
        );
        assert_eq!(p1.data, ["x_0005", "x_0004"]);
        assert_eq!(p1.after, None);
        assert_eq!(p1.before.as_deref(), Some("x_0004"));
        let p2 = page(
            &items,
            &PageParams {
                limit: 2,
                order: Order::Normal,
                before: p1.before,
                after: None,
            },
        );
        assert_eq!(p2.data, ["x_0003", "x_0002"]);
        assert_eq!(p2.after.as_deref(), Some("x_0003"));
    }

    #[test]
    fn cursor_of_a_deleted_item_still_works() {
        let mut items = ids(6);
        items.remove(2); // x_0003 gone
        let p = page(
            &items,
            &PageParams {
                limit: 2,
                order: Order::Asc,
                after: Some("x_0003".into()),
                before: None,
            },
        );
        assert_eq!(p.data, ["x_0004", "x_0005"]);
    }
}
