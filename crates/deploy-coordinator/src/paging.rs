//! The arguments and pages of the list calls (builds, releases), checked the same way.

use crate::error::ApiError;

const MAX_PAGE: u32 = 500;
const DEFAULT_PAGE: u32 = 50;

/// A list request's checked filters and page.
pub struct ListArgs<S> {
    pub service: Option<String>,
    pub state: Option<S>,
    /// List items older than this sequence number (from a previous page's token).
    pub before: Option<u64>,
    pub size: usize,
}

/// Checks a list request: a valid service name if any, a state `parse` knows (`states`
/// names them for the error), a token this server gave, a bounded page size.
pub fn list_args<S>(
    service: &str,
    state: &str,
    parse: impl Fn(&str) -> Option<S>,
    states: &str,
    page_token: &str,
    page_size: u32,
) -> Result<ListArgs<S>, ApiError> {
    if !service.is_empty() {
        deploy_types::check_service(service)
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
    }
    let state = match state {
        "" => None,
        s => Some(parse(s).ok_or_else(|| {
            ApiError::InvalidArgument(format!(
                "state {:?} is not one of {states}",
                s.chars().take(40).collect::<String>()
            ))
        })?),
    };
    let before = match page_token {
        "" => None,
        t => Some(t.parse::<u64>().map_err(|_| {
            ApiError::InvalidArgument(format!(
                "page_token {:?} is not one this server gave",
                t.chars().take(40).collect::<String>()
            ))
        })?),
    };
    let size = match page_size {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    } as usize;
    Ok(ListArgs {
        service: (!service.is_empty()).then(|| service.to_string()),
        state,
        before,
        size,
    })
}

/// Up to `size` items, and the token of the next page (empty on the last).
pub fn page<T>(
    items: impl Iterator<Item = T>,
    size: usize,
    token: impl Fn(&T) -> u64,
) -> (Vec<T>, String) {
    let mut page: Vec<T> = items.take(size + 1).collect();
    if page.len() <= size {
        return (page, String::new());
    }
    page.truncate(size);
    let next = page
        .last()
        .map(|t| token(t).to_string())
        .unwrap_or_default();
    (page, next)
}
