//! Cluster metadata: small operator-set key/value pairs kept in a group's log.

pub const MAX_META_KEY_BYTES: usize = 256;
pub const MAX_META_VALUE_BYTES: usize = 64 * 1024;
pub const MAX_META_KEYS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("key must be 1-{MAX_META_KEY_BYTES} bytes of printable ASCII without spaces")]
    BadKey,
    #[error("value is {0} bytes, over the {MAX_META_VALUE_BYTES}-byte limit")]
    ValueTooLarge(usize),
    #[error("the group already holds {MAX_META_KEYS} metadata keys")]
    TooManyKeys,
}

pub(crate) fn check(
    meta: &imbl::OrdMap<String, String>,
    key: &str,
    value: Option<&str>,
) -> Result<(), MetaError> {
    let key_ok = !key.is_empty()
        && key.len() <= MAX_META_KEY_BYTES
        && key.bytes().all(|b| b.is_ascii_graphic());
    if !key_ok {
        return Err(MetaError::BadKey);
    }
    if let Some(v) = value {
        if v.len() > MAX_META_VALUE_BYTES {
            return Err(MetaError::ValueTooLarge(v.len()));
        }
        if !meta.contains_key(key) && meta.len() >= MAX_META_KEYS {
            return Err(MetaError::TooManyKeys);
        }
    }
    Ok(())
}
