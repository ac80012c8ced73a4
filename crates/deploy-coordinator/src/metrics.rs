//! `/metrics` of a coordinator node, in the Prometheus text format.
//!
//! Most series are read from the node's state when scraped (Raft indexes, the build queue,
//! host states); the few that count events (leader changes, request latencies) live in
//! [`NodeMetrics`] for the node's lifetime.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use deploy_types::GroupName;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::node::Node;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabel {
    pub group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegionStateLabel {
    region: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

fn new_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Event counts kept for the node's lifetime.
pub struct NodeMetrics {
    pub leader_changes: Family<GroupLabel, Counter>,
    pub requests: Family<RouteLabel, Histogram, fn() -> Histogram>,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self {
            leader_changes: Family::default(),
            requests: Family::new_with_constructor(new_histogram),
        }
    }
}

/// Counts every change of each hosted group's leader.
pub fn spawn_leader_watch(node: Arc<Node>) {
    for g in node.groups() {
        let mut rx = g.watch();
        let label = GroupLabel {
            group: g.name().to_string(),
        };
        let node = node.clone();
        tokio::spawn(async move {
            let mut leader = rx.borrow().current_leader;
            loop {
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    _ = node.stopped() => return,
                }
                let now = rx.borrow().current_leader;
                if now != leader && now.is_some() {
                    node.metrics.leader_changes.get_or_create(&label).inc();
                }
                leader = now;
            }
        });
    }
}

/// The gRPC methods this node serves, `/package.Service/Method`: every method of the
/// `deploy.v1` descriptor set, with health and reflection.
static METHODS: std::sync::LazyLock<std::collections::HashSet<String>> =
    std::sync::LazyLock::new(|| {
        use prost::Message;
        let mut known: std::collections::HashSet<String> = [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        // The set is compiled in; one that does not decode leaves only the names above.
        if let Ok(set) =
            prost_types::FileDescriptorSet::decode(deploy_proto::v1::FILE_DESCRIPTOR_SET)
        {
            for file in &set.file {
                let package = file.package();
                for service in &file.service {
                    for method in &service.method {
                        known.insert(format!("/{package}.{}/{}", service.name(), method.name()));
                    }
                }
            }
        }
        known
    });

/// A bounded route label: gRPC methods this node serves and its HTTP routes, else "other".
/// A caller inventing method names makes no new label (each label is a histogram).
fn route_of(path: &str) -> String {
    if METHODS.contains(path) {
        return path.to_string();
    }
    for known in [
        "/v1/chunks",
        "/v1/manifests",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        if path.starts_with(known) {
            return known.to_string();
        }
    }
    "other".to_string()
}

/// Middleware recording each request's time to its response headers.
pub async fn track(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let route = route_of(req.uri().path());
    let start = Instant::now();
    let resp = next.run(req).await;
    node.metrics
        .requests
        .get_or_create(&RouteLabel { route })
        .observe(start.elapsed().as_secs_f64());
    resp
}

fn gauge(reg: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    reg.register(name, help, g);
}

/// The node's metrics, as Prometheus text.
pub fn render(node: &Node) -> String {
    let mut reg = Registry::default();
    let term: Family<GroupLabel, Gauge> = Family::default();
    let last_log: Family<GroupLabel, Gauge> = Family::default();
    let applied: Family<GroupLabel, Gauge> = Family::default();
    let leader: Family<GroupLabel, Gauge> = Family::default();
    let committed: Family<GroupLabel, Gauge> = Family::default();
    let snapshot_bytes: Family<GroupLabel, Gauge> = Family::default();
    let snapshot_lock: Family<GroupLabel, Gauge> = Family::default();
    let apply_max: Family<GroupLabel, Gauge> = Family::default();
    for g in node.groups() {
        let m = g.metrics();
        // On the leader: the highest index a majority of voters holds; elsewhere the
        // applied index (which trails the commit index by at most what is in flight).
        let commit = match &m.replication {
            Some(rep) => {
                let voters: Vec<_> = m.membership_config.membership().voter_ids().collect();
                let mut matched: Vec<u64> = voters
                    .iter()
                    .map(|v| {
                        if *v == m.id {
                            m.last_log_index.unwrap_or(0)
                        } else {
                            rep.get(v)
                                .and_then(|x| x.as_ref().map(|l| l.index))
                                .unwrap_or(0)
                        }
                    })
                    .collect();
                matched.sort_unstable_by(|a, b| b.cmp(a));
                matched.get(voters.len() / 2).copied().unwrap_or(0)
            }
            None => m.last_applied.map(|x| x.index).unwrap_or(0),
        };
        let l = GroupLabel {
            group: g.name().to_string(),
        };
        term.get_or_create(&l).set(m.current_term as i64);
        last_log
            .get_or_create(&l)
            .set(m.last_log_index.unwrap_or(0) as i64);
        applied
            .get_or_create(&l)
            .set(m.last_applied.map(|x| x.index).unwrap_or(0) as i64);
        leader.get_or_create(&l).set(i64::from(g.is_leader()));
        committed.get_or_create(&l).set(commit as i64);
        let stats = g.stats();
        snapshot_bytes
            .get_or_create(&l)
            .set(stats.snapshot_bytes() as i64);
        snapshot_lock
            .get_or_create(&l)
            .set(stats.snapshot_lock_max_us() as i64);
        apply_max.get_or_create(&l).set(stats.apply_max_us() as i64);
    }
    reg.register(
        "deploy_raft_term",
        "Current Raft term of each hosted group",
        term,
    );
    reg.register(
        "deploy_raft_last_log_index",
        "Last log index of each hosted group",
        last_log,
    );
    reg.register(
        "deploy_raft_last_applied",
        "Last applied log index of each hosted group",
        applied,
    );
    reg.register(
        "deploy_raft_is_leader",
        "1 where this node leads the group",
        leader,
    );
    reg.register(
        "deploy_raft_commit_index",
        "Commit index as this node knows it (quorum-acknowledged on the leader, applied elsewhere)",
        committed,
    );
    reg.register(
        "deploy_snapshot_bytes",
        "Size of each hosted group's newest snapshot (built or received)",
        snapshot_bytes,
    );
    reg.register(
        "deploy_snapshot_lock_max_us",
        "Longest a snapshot build held the state lock since the process started, microseconds",
        snapshot_lock,
    );
    reg.register(
        "deploy_raft_apply_max_us",
        "Longest apply call (waiting for the state lock included) in the last 10 to 20 s, microseconds",
        apply_max,
    );
    reg.register(
        "deploy_raft_leader_changes",
        "Leader changes seen by this node, per group",
        node.metrics.leader_changes.clone(),
    );
    if let Some(h) = node.global() {
        let (queued, by_state) = h.state.read(|d| {
            let b = &d.state.builds;
            let mut by: std::collections::BTreeMap<&'static str, i64> = Default::default();
            for x in b.by_seq.values() {
                *by.entry(x.state.as_str()).or_default() += 1;
            }
            (b.queued.len() as i64, by)
        });
        gauge(
            &mut reg,
            "deploy_build_queue_depth",
            "Builds waiting for a worker",
            queued,
        );
        let builds: Family<StateLabel, Gauge> = Family::default();
        for (s, n) in by_state {
            builds.get_or_create(&StateLabel { state: s.into() }).set(n);
        }
        reg.register("deploy_builds", "Builds by state", builds);
    }
    let hosts: Family<RegionStateLabel, Gauge> = Family::default();
    let registered: Family<GroupLabel, Gauge> = Family::default();
    for g in node.regions() {
        let GroupName::Region(region) = &g.name else {
            continue;
        };
        registered
            .get_or_create(&GroupLabel {
                group: g.name.to_string(),
            })
            .set(g.state.read(|d| d.state.region.hosts.len() as i64));
        if !g.is_leader() {
            continue;
        }
        let term = g.metrics().current_term;
        for seen in node.reports.all(region, term, Instant::now()).values() {
            for s in seen.services.values() {
                hosts
                    .get_or_create(&RegionStateLabel {
                        region: region.clone(),
                        state: s.state.name().to_string(),
                    })
                    .inc();
            }
        }
    }
    reg.register(
        "deploy_region_hosts_registered",
        "Hosts registered per regional group",
        registered,
    );
    reg.register(
        "deploy_region_host_services",
        "Host services by reported state (on the regional leader)",
        hosts,
    );
    gauge(
        &mut reg,
        "deploy_store_chunk_reads",
        "Chunks served from this node's region store over HTTP",
        node.chunk_reads.load(std::sync::atomic::Ordering::Relaxed) as i64,
    );
    gauge(
        &mut reg,
        "deploy_api_calls_shed",
        "API calls and streams refused with ResourceExhausted by the per-node and per-client limits",
        node.limits.shed.load(std::sync::atomic::Ordering::Relaxed) as i64,
    );
    gauge(
        &mut reg,
        "deploy_api_calls_queued",
        "API calls that waited in a per-client or per-node queue before they ran",
        node.limits
            .waited
            .load(std::sync::atomic::Ordering::Relaxed) as i64,
    );
    reg.register(
        "deploy_request_seconds",
        "Time to response headers, per gRPC method or HTTP route",
        node.metrics.requests.clone(),
    );
    let mut out = String::new();
    if encode(&mut out, &reg).is_err() {
        return String::new();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{route_of, METHODS};

    #[test]
    fn route_labels_stay_bounded() {
        assert_eq!(
            route_of("/deploy.v1.BuildService/SubmitBuild"),
            "/deploy.v1.BuildService/SubmitBuild"
        );
        assert_eq!(
            route_of(&format!("/v1/chunks/{}", "a".repeat(64))),
            "/v1/chunks"
        );
        assert_eq!(route_of("/random/path/123"), "other");
        assert_eq!(
            route_of(&format!("/deploy.v1.{}", "x".repeat(200))),
            "other"
        );
        assert_eq!(route_of("/deploy.v1.X/<script>"), "other");
        assert_eq!(
            route_of("/deploy.v1.RaftService/Vote"),
            "/deploy.v1.RaftService/Vote"
        );
        assert_eq!(
            route_of("/grpc.health.v1.Health/Check"),
            "/grpc.health.v1.Health/Check"
        );
    }

    #[test]
    fn ten_thousand_invented_method_names_make_one_label() {
        let labels: std::collections::HashSet<String> = (0..10_000)
            .map(|i| route_of(&format!("/deploy.v1.BuildService/Invented{i}")))
            .chain((0..10_000).map(|i| route_of(&format!("/grpc.Fake{i}/X"))))
            .collect();
        assert_eq!(
            labels.len(),
            1,
            "{:?}",
            labels.iter().take(5).collect::<Vec<_>>()
        );
        assert!(
            METHODS.len() > 30,
            "the descriptor set names every method: {}",
            METHODS.len()
        );
    }
}
