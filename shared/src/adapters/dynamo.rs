//! Small helpers shared by the DynamoDB adapters: attribute values, errors, and billing.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

pub type Item = HashMap<String, AttributeValue>;

pub use crate::ports::StoreError;

pub fn sdk_error<E, R>(e: aws_sdk_dynamodb::error::SdkError<E, R>) -> StoreError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    StoreError::Dynamo(aws_sdk_dynamodb::error::DisplayErrorContext(&e).to_string())
}

pub fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub fn b(v: bool) -> AttributeValue {
    AttributeValue::Bool(v)
}

pub fn list<I: IntoIterator<Item = S>, S: Into<String>>(v: I) -> AttributeValue {
    AttributeValue::L(v.into_iter().map(|x| AttributeValue::S(x.into())).collect())
}

pub fn get_s<'a>(item: &'a Item, k: &str) -> Option<&'a str> {
    item.get(k).and_then(|v| v.as_s().ok()).map(String::as_str)
}

pub fn get_n(item: &Item, k: &str) -> Option<u64> {
    item.get(k).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok())
}

pub fn get_bool(item: &Item, k: &str) -> Option<bool> {
    item.get(k).and_then(|v| v.as_bool().ok()).copied()
}

pub fn get_list(item: &Item, k: &str) -> Vec<String> {
    item.get(k)
        .and_then(|v| v.as_l().ok())
        .map(|l| l.iter().filter_map(|x| x.as_s().ok().cloned()).collect())
        .unwrap_or_default()
}

/// True when an error is a failed condition (the expected "someone else was first" answer).
pub fn is_condition_failed<E>(e: &aws_sdk_dynamodb::error::SdkError<E>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    e.as_service_error().and_then(|se| se.code()) == Some("ConditionalCheckFailedException")
}

/// A conditional write's result: `Ok(true)` when applied, `Ok(false)` when its condition failed
/// (someone newer was first), an error otherwise.
pub fn applied<T, E>(result: Result<T, aws_sdk_dynamodb::error::SdkError<E>>) -> Result<bool, StoreError>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    match result {
        Ok(_) => Ok(true),
        Err(e) if is_condition_failed(&e) => Ok(false),
        Err(e) => Err(sdk_error(e)),
    }
}

/// An item's size as DynamoDB counts it: each attribute's name plus its value.
pub fn item_size(item: &Item) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

fn value_size(v: &AttributeValue) -> usize {
    match v {
        AttributeValue::S(s) => s.len(),
        // Numbers: about one byte per two significant digits, plus one.
        AttributeValue::N(n) => n.len().div_ceil(2) + 1,
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::Ss(v) => v.iter().map(String::len).sum(),
        AttributeValue::Ns(v) => v.iter().map(|n| n.len().div_ceil(2) + 1).sum(),
        AttributeValue::Bs(v) => v.iter().map(|b| b.as_ref().len()).sum(),
        AttributeValue::L(l) => 3 + l.iter().map(|x| 1 + value_size(x)).sum::<usize>(),
        AttributeValue::M(m) => 3 + m.iter().map(|(k, x)| 1 + k.len() + value_size(x)).sum::<usize>(),
        _ => 1,
    }
}

/// Billing, as DynamoDB on-demand counts it. Reads are in tenths of a unit.
pub mod bill {
    /// A strongly consistent read of one item (`GetItem`, each key of `BatchGetItem`): one unit
    /// per 4 KB, at least one (also when the item does not exist).
    pub fn read_item(size: usize) -> u64 {
        10 * size.div_ceil(4096).max(1) as u64
    }
    /// A strongly consistent `Query` page: the items' total size per 4 KB, at least one unit.
    pub fn query(total_size: usize) -> u64 {
        10 * total_size.div_ceil(4096).max(1) as u64
    }
    /// A plain write of one item: one unit per 1 KB, at least one.
    pub fn write_item(size: usize) -> u64 {
        size.div_ceil(1024).max(1) as u64
    }
    /// One item of a transaction (a condition check included): twice a plain write.
    pub fn transact_item(size: usize) -> u64 {
        2 * write_item(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_dynamodb_rules() {
        let item: Item = HashMap::from([
            ("pk".to_string(), s("dir#d")),
            ("n".to_string(), n(12345)),
            (
                "m".to_string(),
                AttributeValue::M(HashMap::from([("k".to_string(), b(true))])),
            ),
        ]);
        // pk: 2 + 5; n: 1 + 4; m: 1 + 3 + (1 + 1 + 1)
        assert_eq!(item_size(&item), 7 + 5 + 7);
        assert_eq!(bill::read_item(0), 10);
        assert_eq!(bill::read_item(4097), 20);
        assert_eq!(bill::write_item(1025), 2);
        assert_eq!(bill::transact_item(10), 2);
    }
}
