//! Bounds on what clients may ask of a node, so a flood from one client neither starves the
//! others nor the cluster's own traffic.
//!
//! Public API calls pass two gates before their handler runs: at most [`MAX_CALLS_PER_CLIENT`]
//! in flight from one client (its token's name, or its address on an insecure cluster), then
//! at most [`MAX_API_CALLS`] in flight on the node. A call over a gate waits its turn, first
//! come first served, as Kubernetes' priority and fairness queues do: a burst is smoothed,
//! not failed. The queues are bounded: a client may have [`MAX_QUEUED_PER_CLIENT`] calls
//! waiting, the node [`MAX_QUEUED`], and none waits longer than [`MAX_QUEUE_WAIT`]. Past a
//! bound a call is refused with `ResourceExhausted` (nothing done: the client may retry after
//! a pause). Long-lived streams (a build's log followed, a rack watched) count apart: at most
//! [`MAX_WATCHES_PER_CLIENT`] per client, refused at once past that. Raft, workers, relays and
//! agents never wait behind these gates: a node's own traffic is not a client's to crowd out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// Public API calls in flight on one node, at most.
pub const MAX_API_CALLS: usize = 256;
/// Public API calls in flight from one client on one node, at most.
pub const MAX_CALLS_PER_CLIENT: usize = 64;
/// Calls of one client waiting for one of its places, at most.
pub const MAX_QUEUED_PER_CLIENT: usize = 1024;
/// Calls waiting for a place on the node, at most.
pub const MAX_QUEUED: usize = 4096;
/// The longest a call waits in a queue before it is refused.
pub const MAX_QUEUE_WAIT: Duration = Duration::from_secs(10);
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

/// One client's gate: its places, and how many of its calls hold or wait for one.
#[derive(Debug)]
struct ClientGate {
    places: Arc<Semaphore>,
    users: usize,
}

/// The gates of the clients with a call in flight or waiting; an entry leaves with its last
/// call, so the map never holds more names than there are calls.
type Gates = Arc<Mutex<HashMap<String, ClientGate>>>;

/// The node's gates.
#[derive(Debug)]
pub struct Limits {
    calls: Arc<Semaphore>,
    max_calls: usize,
    /// Calls waiting for a node place now.
    queued: AtomicUsize,
    max_queued: usize,
    per_client: Gates,
    max_per_client: usize,
    max_queued_per_client: usize,
    max_wait: Duration,
    watches: Counts,
    max_watches: usize,
    /// Calls and streams refused by a gate, for `/metrics`.
    pub shed: AtomicU64,
    /// Calls that waited in a queue before they ran, for `/metrics`.
    pub waited: AtomicU64,
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(MAX_API_CALLS, MAX_CALLS_PER_CLIENT, MAX_WATCHES_PER_CLIENT)
    }
}

/// One stream's share of its client's, given back when dropped.
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

/// A call's membership of its client's gate (holding a place or waiting for one), given
/// back when dropped.
#[derive(Debug)]
struct Member {
    gates: Gates,
    client: String,
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut m = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = m.get_mut(&self.client) {
            g.users -= 1;
            if g.users == 0 {
                m.remove(&self.client);
            }
        }
    }
}

/// A call's place in flight: held until its answer is ready.
#[derive(Debug)]
pub struct CallPermit {
    _node: OwnedSemaphorePermit,
    _client: Option<(OwnedSemaphorePermit, Member)>,
}

/// Gives back a node queue place when dropped (the call got in, failed or was cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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
        Self::with_queues(
            max_calls,
            max_per_client,
            max_watches,
            (MAX_QUEUED, MAX_QUEUED_PER_CLIENT, MAX_QUEUE_WAIT),
        )
    }

    /// As [`Limits::new`], with the queues bounded by `(node, per client, wait)`.
    pub fn with_queues(
        max_calls: usize,
        max_per_client: usize,
        max_watches: usize,
        (max_queued, max_queued_per_client, max_wait): (usize, usize, Duration),
    ) -> Self {
        Self {
            calls: Arc::new(Semaphore::new(max_calls)),
            max_calls,
            queued: AtomicUsize::new(0),
            max_queued,
            per_client: Default::default(),
            max_per_client,
            max_queued_per_client,
            max_wait,
            watches: Default::default(),
            max_watches,
            shed: AtomicU64::new(0),
            waited: AtomicU64::new(0),
        }
    }

    fn refuse(&self, why: String) -> Status {
        self.shed.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%why, "shedding a call");
        Status::resource_exhausted(why)
    }

    /// Joins `client`'s gate: its places, or `ResourceExhausted` when its queue is full.
    fn join(&self, client: &str) -> Result<(Arc<Semaphore>, Member), Status> {
        let mut m = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let gate = m.entry(client.to_string()).or_insert_with(|| ClientGate {
            places: Arc::new(Semaphore::new(self.max_per_client)),
            users: 0,
        });
        if gate.users >= self.max_per_client + self.max_queued_per_client {
            return Err(self.refuse(format!(
                "{client} has {} calls in flight and {} waiting on this node, the most one client may; retry after a pause",
                self.max_per_client, self.max_queued_per_client
            )));
        }
        gate.users += 1;
        let places = gate.places.clone();
        drop(m);
        Ok((
            places,
            Member {
                gates: self.per_client.clone(),
                client: client.to_string(),
            },
        ))
    }

    /// Waits for a permit of `places`, at most the queue's wait; `what` names the gate.
    async fn wait(
        &self,
        places: &Arc<Semaphore>,
        what: &str,
    ) -> Result<OwnedSemaphorePermit, Status> {
        if let Ok(p) = places.clone().try_acquire_owned() {
            return Ok(p);
        }
        self.waited.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(self.max_wait, places.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(self.refuse(format!("{what} is closed"))),
            Err(_) => Err(self.refuse(format!(
                "{what} stayed full for {:?}; retry after a pause",
                self.max_wait
            ))),
        }
    }

    /// A place for one more call of `client`, waiting for one in turn; `ResourceExhausted`
    /// when a queue is full or the wait too long, saying which. A call with no client to name
    /// (one an insecure cluster's node forwarded for clients it cannot tell apart) passes the
    /// node's gate only.
    pub async fn call(&self, client: Option<&str>) -> Result<CallPermit, Status> {
        let mine = match client {
            None => None,
            Some(client) => {
                let (places, member) = self.join(client)?;
                let what = format!(
                    "{client}'s share of this node ({} calls)",
                    self.max_per_client
                );
                let permit = self.wait(&places, &what).await?;
                Some((permit, member))
            }
        };
        let node = match self.calls.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if self.queued.fetch_add(1, Ordering::Relaxed) >= self.max_queued {
                    self.queued.fetch_sub(1, Ordering::Relaxed);
                    return Err(self.refuse(format!(
                        "this node is serving its limit of {} API calls with {} waiting; retry after a pause",
                        self.max_calls, self.max_queued
                    )));
                }
                let _waiting = Waiting(&self.queued);
                let what = format!("this node's limit of {} API calls", self.max_calls);
                self.wait(&self.calls, &what).await?
            }
        };
        Ok(CallPermit {
            _node: node,
            _client: mine,
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

    fn small(wait: Duration) -> Limits {
        // 3 on the node, 2 per client, 1 stream; queues of 2 on the node and 1 per client.
        Limits::with_queues(3, 2, 1, (2, 1, wait))
    }

    #[tokio::test]
    async fn a_call_over_its_clients_share_waits_its_turn() {
        let l = small(Duration::from_secs(30));
        let a1 = l.call(Some("a")).await.unwrap();
        let _a2 = l.call(Some("a")).await.unwrap();
        let third = l.call(Some("a"));
        tokio::pin!(third);
        // It waits, not refused...
        assert!(futures::poll!(&mut third).is_pending());
        // ...and a fourth finds the client's queue (of 1) full.
        let e = l.call(Some("a")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(
            e.message()
                .contains("a has 2 calls in flight and 1 waiting"),
            "{}",
            e.message()
        );
        // Another client still gets in meanwhile.
        let b1 = l.call(Some("b")).await.unwrap();
        // When one of a's calls ends, the waiting one runs.
        drop(a1);
        let _a3 = third.await.unwrap();
        assert_eq!(l.shed.load(Ordering::Relaxed), 1);
        assert_eq!(l.waited.load(Ordering::Relaxed), 1);
        drop(b1);
    }

    #[tokio::test]
    async fn the_node_gate_queues_then_refuses_past_its_queue() {
        let l = small(Duration::from_secs(30));
        let held: Vec<_> = futures::future::join_all(["a", "b", "c"].map(|c| l.call(Some(c))))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let w1 = l.call(Some("d"));
        let w2 = l.call(None);
        tokio::pin!(w1, w2);
        assert!(futures::poll!(&mut w1).is_pending());
        assert!(futures::poll!(&mut w2).is_pending());
        let e = l.call(Some("e")).await.unwrap_err();
        assert!(
            e.message().contains("limit of 3 API calls with 2 waiting"),
            "{}",
            e.message()
        );
        drop(held);
        let (_p1, _p2) = (w1.await.unwrap(), w2.await.unwrap());
    }

    #[tokio::test]
    async fn a_wait_longer_than_the_bound_is_refused_and_takes_nothing() {
        let l = small(Duration::from_millis(50));
        let _a1 = l.call(Some("a")).await.unwrap();
        let _a2 = l.call(Some("a")).await.unwrap();
        let e = l.call(Some("a")).await.unwrap_err();
        assert!(
            e.message().contains("stayed full for 50ms"),
            "{}",
            e.message()
        );
        // The refused call left the client's count as it was: one more still queues.
        let again = l.call(Some("a"));
        tokio::pin!(again);
        assert!(futures::poll!(&mut again).is_pending());
    }

    #[tokio::test]
    async fn the_client_map_empties_with_the_last_call() {
        let l = small(Duration::from_secs(30));
        let calls =
            futures::future::join_all((0..3).map(|i| l.call(Some(if i < 2 { "a" } else { "b" }))))
                .await;
        assert_eq!(l.per_client.lock().unwrap().len(), 2);
        drop(calls);
        assert!(l.per_client.lock().unwrap().is_empty());
    }

    #[test]
    fn streams_are_refused_past_their_bound_and_freed_on_drop() {
        let l = small(Duration::from_secs(30));
        let w = l.watch("a").unwrap();
        assert!(l.watch("a").is_err());
        let _wb = l.watch("b").unwrap();
        drop(w);
        let _w = l.watch("a").unwrap();
    }
}
