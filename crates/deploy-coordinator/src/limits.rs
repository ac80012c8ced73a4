//! Bounds on what clients may ask of a node, so a flood from one client neither starves the
//! others nor the cluster's own traffic.
//!
//! Public API calls pass two gates before their handler runs: at most [`MAX_API_CALLS`] in
//! flight on the node, and at most [`MAX_CALLS_PER_CLIENT`] of them from one client (its
//! token's name, or its address on an insecure cluster). A call over either is refused at
//! once with `ResourceExhausted` (nothing queued, nothing done: the client may retry after a
//! pause). Long-lived streams (a build's log followed, a rack watched) count apart: at most
//! [`MAX_WATCHES_PER_CLIENT`] per client. Raft, workers, relays and agents never wait
//! behind these gates: a node's own traffic is not a client's to crowd out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// Public API calls in flight on one node, at most.
pub const MAX_API_CALLS: usize = 256;
/// Public API calls in flight from one client on one node, at most.
pub const MAX_CALLS_PER_CLIENT: usize = 64;
/// Open streams (followed logs, rack watches) of one client on one node, at most.
pub const MAX_WATCHES_PER_CLIENT: usize = 16;
/// The longest any call may take to answer (a stream: to start). Above the longest wait a
/// call makes on purpose: a learner catching up (60 s), a worker's long poll (30 s).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// HTTP/2 streams one connection may have open at once.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 512;
/// Total size of one request's headers (tokens, ids, trace context: all small).
pub const MAX_HEADER_BYTES: u32 = 16 * 1024;

/// Counts per client, shared with the guards that give them back.
type Counts = Arc<Mutex<HashMap<String, usize>>>;

/// The node's gates.
#[derive(Debug)]
pub struct Limits {
    calls: Arc<Semaphore>,
    max_calls: usize,
    per_client: Counts,
    max_per_client: usize,
    watches: Counts,
    max_watches: usize,
    /// Calls and streams refused by a gate, for `/metrics`.
    pub shed: AtomicU64,
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(MAX_API_CALLS, MAX_CALLS_PER_CLIENT, MAX_WATCHES_PER_CLIENT)
    }
}

/// One client's share, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    counts: Counts,
    client: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.client);
            }
        }
    }
}

/// A call's place in flight: held until its answer is ready.
#[derive(Debug)]
pub struct CallPermit {
    _node: OwnedSemaphorePermit,
    _client: Option<Slot>,
}

fn take(counts: &Counts, client: &str, max: usize) -> Option<Slot> {
    let mut m = counts.lock().unwrap_or_else(|p| p.into_inner());
    let n = m.entry(client.to_string()).or_insert(0);
    if *n >= max {
        return None;
    }
    *n += 1;
    Some(Slot {
        counts: counts.clone(),
        client: client.to_string(),
    })
}

impl Limits {
    pub fn new(max_calls: usize, max_per_client: usize, max_watches: usize) -> Self {
        Self {
            calls: Arc::new(Semaphore::new(max_calls)),
            max_calls,
            per_client: Default::default(),
            max_per_client,
            watches: Default::default(),
            max_watches,
            shed: AtomicU64::new(0),
        }
    }

    fn refuse(&self, why: String) -> Status {
        self.shed.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%why, "shedding a call");
        Status::resource_exhausted(why)
    }

    /// A place for one more call of `client`, or `ResourceExhausted` saying which gate is full.
    /// A call with no client to name (one an insecure cluster's node forwarded for clients it
    /// cannot tell apart) passes the node's gate only.
    pub fn call(&self, client: Option<&str>) -> Result<CallPermit, Status> {
        let slot = match client {
            None => None,
            Some(client) => match take(&self.per_client, client, self.max_per_client) {
                Some(slot) => Some(slot),
                None => {
                    return Err(self.refuse(format!(
                        "{client} has {} calls in flight on this node, the most one client may; retry after a pause",
                        self.max_per_client
                    )))
                }
            },
        };
        let Ok(node) = self.calls.clone().try_acquire_owned() else {
            return Err(self.refuse(format!(
                "this node is serving its limit of {} API calls; retry after a pause",
                self.max_calls
            )));
        };
        Ok(CallPermit {
            _node: node,
            _client: slot,
        })
    }

    /// A place for one more open stream of `client`, to hold for the stream's life.
    pub fn watch(&self, client: &str) -> Result<Slot, Status> {
        take(&self.watches, client, self.max_watches).ok_or_else(|| {
            self.refuse(format!(
                "{client} has {} streams open on this node, the most one client may; close one first",
                self.max_watches
            ))
        })
    }
}

/// `stream`, holding `slot` until it is dropped.
pub fn holding<S: futures::Stream + Send + 'static>(
    stream: S,
    slot: impl Send + 'static,
) -> impl futures::Stream<Item = S::Item> + Send {
    use futures::StreamExt;
    stream.map(move |item| {
        let _held = &slot;
        item
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_gate_refuses_past_its_bound_and_frees_on_drop() {
        let l = Limits::new(3, 2, 1);
        let a1 = l.call(Some("a")).unwrap();
        let _a2 = l.call(Some("a")).unwrap();
        let e = l.call(Some("a")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("a has 2 calls"), "{}", e.message());
        // Another client still gets in, up to the node's bound.
        let _b1 = l.call(Some("b")).unwrap();
        let e = l.call(Some("b")).unwrap_err();
        assert!(e.message().contains("limit of 3"), "{}", e.message());
        // A refused call took nothing: "b" still holds one place only.
        drop(a1);
        let _b2 = l.call(Some("b")).unwrap();
        assert_eq!(l.shed.load(Ordering::Relaxed), 2);
        // The node's gate holds for calls without a client too.
        assert!(l.call(None).is_err());

        let w = l.watch("a").unwrap();
        assert!(l.watch("a").is_err());
        let _wb = l.watch("b").unwrap();
        drop(w);
        let _w = l.watch("a").unwrap();
    }
}
