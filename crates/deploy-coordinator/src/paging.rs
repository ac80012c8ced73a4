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

/// Checks a list request: a valid service name if any, a token this server gave, a bounded
/// page size. (The state filter comes parsed: see `states::build_filter`.)
pub fn list_args<S>(
    service: &str,
    state: Option<S>,
    page_token: &str,
    page_size: u32,
) -> Result<ListArgs<S>, ApiError> {
    if !service.is_empty() {
        deploy_types::check_service(service)
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
    }
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

/// History rows a list call reads for one page, at most: a filter that matches few old
/// records ends the page early (with a token to go on) rather than reading the whole history.
pub const MAX_HISTORY_SCAN: usize = 10_000;

/// One page, newest first, of the live items (`live`: newest first, already filtered, at
/// least `size + 1` of them when there are that many) merged with those retention moved to
/// the history (`older`: seq and the record if it matches the filter, newest first). Reads
/// at most `scan` history rows; a page cut short by that bound carries a token below the
/// last row read, so the caller goes on from there.
pub fn merged_page<T>(
    live: Vec<T>,
    older: impl Iterator<Item = Result<(u64, Option<T>), ApiError>>,
    size: usize,
    scan: usize,
    seq: impl Fn(&T) -> u64,
) -> Result<(Vec<T>, String), ApiError> {
    let mut live = live.into_iter().peekable();
    let mut older = older.take(scan);
    let mut scanned = 0usize;
    let mut lowest_read: Option<u64> = None;
    let mut next_old: Option<T> = None;
    let mut old_done = false;
    let mut out: Vec<T> = Vec::new();
    while out.len() <= size {
        while next_old.is_none() && !old_done {
            match older.next() {
                None => old_done = true,
                Some(row) => {
                    let (s, record) = row?;
                    scanned += 1;
                    lowest_read = Some(s);
                    next_old = record;
                }
            }
        }
        // Rows below the last one read may hold records not yet seen: a live item there
        // waits for the next page.
        let floor = (old_done && scanned == scan)
            .then_some(lowest_read)
            .flatten();
        let live_ok = live
            .peek()
            .is_some_and(|l| floor.is_none_or(|f| seq(l) > f));
        let take_old = match (&next_old, live_ok) {
            (Some(o), true) => live.peek().is_some_and(|l| seq(o) > seq(l)),
            (Some(_), false) => true,
            (None, _) => false,
        };
        if take_old {
            out.extend(next_old.take());
        } else if live_ok {
            out.extend(live.next());
        } else {
            let token = floor.filter(|f| *f > 0).map(|f| f.to_string());
            return Ok((out, token.unwrap_or_default()));
        }
    }
    out.truncate(size);
    let next = out.last().map(|t| seq(t).to_string()).unwrap_or_default();
    Ok((out, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn old(
        seqs: &[(u64, bool)],
    ) -> impl Iterator<Item = Result<(u64, Option<u64>), ApiError>> + '_ {
        seqs.iter()
            .map(|&(s, matches)| Ok((s, matches.then_some(s))))
    }

    #[test]
    fn live_and_history_interleave_newest_first() {
        let (page, next) = merged_page(
            vec![9, 7, 3],
            old(&[(8, true), (5, true), (4, false), (2, true)]),
            4,
            100,
            |x| *x,
        )
        .unwrap();
        assert_eq!(page, vec![9, 8, 7, 5]);
        assert_eq!(next, "5");
        let (page, next) =
            merged_page(vec![3], old(&[(4, false), (2, true)]), 4, 100, |x| *x).unwrap();
        assert_eq!((page, next.as_str()), (vec![3, 2], ""));
    }

    #[test]
    fn a_page_cut_short_by_the_scan_bound_goes_on_below_the_last_row_read() {
        // Three rows read, none matching: the live item below them waits.
        let (page, next) = merged_page(
            vec![10, 1],
            old(&[(6, false), (5, false), (4, false), (2, true)]),
            5,
            3,
            |x| *x,
        )
        .unwrap();
        assert_eq!(page, vec![10]);
        assert_eq!(next, "4");
        // The next page starts below 4.
        let (page, next) = merged_page(vec![1], old(&[(2, true)]), 5, 3, |x| *x).unwrap();
        assert_eq!((page, next.as_str()), (vec![2, 1], ""));
    }

    #[test]
    fn a_history_error_is_the_answer() {
        let rows = vec![Ok((5, Some(5))), Err(ApiError::Internal("disk".into()))];
        assert!(merged_page(vec![1], rows.into_iter(), 5, 100, |x| *x).is_err());
    }
}
