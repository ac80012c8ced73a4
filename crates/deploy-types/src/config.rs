//! The cluster configuration (TOML under `cluster-config/`).
//!
//! A config names every coordinator node and its address, the global group's voters, and each
//! region with its voters. Later layers add workers, stores, racks, relays and hosts. Parsing
//! refuses unknown fields, and validation reports every problem it finds in one error, so an
//! operator fixes a file in one pass instead of one complaint at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::ids::{check_name, GroupName, NodeName};

/// The embedded default: the local cluster that `deployd dev` runs.
pub const LOCAL_TOML: &str = include_str!("../../../cluster-config/local.toml");

/// Config files larger than this are refused before parsing: a config is hand-written text.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read cluster config {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cluster config {path} is {size} bytes, over the {MAX_CONFIG_BYTES}-byte limit")]
    TooLarge { path: String, size: u64 },
    #[error("cluster config {origin} does not parse: {message}")]
    Parse { origin: String, message: String },
    #[error("cluster config {origin} is invalid:\n{}", problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        origin: String,
        problems: Vec<String>,
    },
}

/// Raft timing and log compaction, shared by every group of the cluster.
///
/// openraft 0.9 gives a leader a lease of `election_timeout_max`: a follower that knew a
/// leader stands for election only after the lease plus a random election timeout without
/// heartbeats, and ignores vote requests while the lease lasts. The defaults (60 ms heartbeat,
/// 200-360 ms election) so give a new leader about 0.6-0.8 s after a leader dies on loopback,
/// while a follower must miss heartbeats for over half a second before it disturbs anyone:
/// clear of the spurious elections that openraft's own defaults cause on a loaded machine.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_every_logs: u64,
    /// Log entries kept behind the last snapshot, so slightly lagging followers catch up from
    /// the log rather than a snapshot.
    pub keep_logs_after_snapshot: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        Self {
            heartbeat_ms: 60,
            election_timeout_min_ms: 200,
            election_timeout_max_ms: 360,
            snapshot_every_logs: 5000,
            keep_logs_after_snapshot: 1000,
        }
    }
}

/// One coordinator node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: NodeName,
    /// `host:port` its peers and clients dial: the node's gRPC listener (Raft, API and health
    /// on one port), or whatever stands in front of it.
    pub addr: String,
    /// `host:port` the node binds, when it differs from `addr` (a proxy or NAT in between).
    /// Default: `addr`.
    #[serde(default)]
    pub listen: Option<String>,
    /// The local IP the node's own connections to its peers leave from (a multi-homed host
    /// pinning cluster traffic to one interface). Default: the system's choice.
    #[serde(default)]
    pub source_ip: Option<std::net::IpAddr>,
    /// Groups this node hosts without being one of their initial voters: it starts empty and
    /// waits for `deployctl cluster add-node` to bring it in.
    #[serde(default)]
    pub join: Vec<GroupName>,
}

impl NodeConfig {
    /// The address the node binds: `listen`, else `addr`.
    pub fn listen_addr(&self) -> &str {
        self.listen.as_deref().unwrap_or(&self.addr)
    }
}

/// One region and the voters of its group.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    pub name: String,
    pub voters: Vec<NodeName>,
    /// The region's artifact store: a directory path, a `file://` URL, or an
    /// `s3://bucket[/prefix]` URL. A relative path is resolved against the process's base
    /// directory (`deployd dev`: its data directory). Default: `stores/<region>`.
    #[serde(default)]
    pub store: Option<String>,
    /// Options of an object store (`aws_endpoint`, `aws_region`, `aws_allow_http`, ...), as
    /// object_store names them. Credentials normally come from the `AWS_*` environment.
    #[serde(default)]
    pub store_options: BTreeMap<String, String>,
    /// Whether the hosts of a rack share chunks among themselves, coordinated by their
    /// relay (default: on). Off: every host takes every chunk from its relays.
    #[serde(default = "peer_exchange_default")]
    pub peer_exchange: bool,
}

fn peer_exchange_default() -> bool {
    true
}

/// Where a region's store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A local directory.
    Dir(std::path::PathBuf),
    /// An object store URL (`s3://...`) and its options.
    Url {
        url: String,
        options: BTreeMap<String, String>,
    },
}

/// One build worker and the region whose store it writes to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    pub id: String,
    pub region: String,
}

/// Artifact signing: the key workers sign manifests with, and the keys everyone trusts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigningConfig {
    /// The build system's private key file (relative paths: against the store base).
    /// `deployd dev` makes one on first start when none is set.
    pub key_file: Option<String>,
    /// Public keys (64 hex characters) whose manifest signatures are accepted.
    pub trusted_keys: Vec<String>,
}

/// How builds are leased, retried and bounded.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuildSettings {
    /// How long a worker's lease lasts without renewal; workers renew at a third of it.
    pub lease_ms: u64,
    /// Attempts before a build whose leases keep expiring is FAILED.
    pub max_attempts: u32,
    /// Build log bytes kept per attempt; the rest is cut with a notice.
    pub log_cap_bytes: u64,
    /// Build command timeout when the recipe gives none.
    pub default_timeout_secs: u64,
    /// Artifact chunk size.
    pub chunk_bytes: u64,
    /// A region whose store cannot be written for this long fails the build.
    pub replication_deadline_secs: u64,
    /// Retention: the newest successful builds kept per service.
    pub keep_per_service: u32,
    /// Garbage collection never deletes objects younger than this.
    pub gc_grace_secs: u64,
    /// Directories build commands may read besides the system's (toolchains such as
    /// `/root/.cargo`); absolute paths. Builds write only to their scratch directory.
    pub sandbox_read_paths: Vec<String>,
    /// Directories build commands may also write to (a shared cache); absolute paths.
    pub sandbox_write_paths: Vec<String>,
    /// Builds waiting for a worker, at most; a submission past it is refused.
    pub max_queued: u32,
    /// Where builds may fetch from (see [`crate::repo`]); empty, the default, allows nothing.
    pub allowed_repos: crate::repo::RepoPolicy,
}

impl Default for BuildSettings {
    fn default() -> Self {
        Self {
            lease_ms: 10_000,
            max_attempts: 3,
            log_cap_bytes: 4 * 1024 * 1024,
            default_timeout_secs: 1800,
            chunk_bytes: 4 * 1024 * 1024,
            replication_deadline_secs: 600,
            keep_per_service: 10,
            gc_grace_secs: 3600,
            sandbox_read_paths: Vec::new(),
            sandbox_write_paths: Vec::new(),
            max_queued: 10_000,
            allowed_repos: crate::repo::RepoPolicy::default(),
        }
    }
}

/// How long finished records stay in the replicated state, and how long they stay
/// answerable from the on-disk history after that (`[retention]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// The newest finished builds of each service always kept in the state.
    pub keep_per_service: u32,
    /// Finished builds younger than this are always kept in the state.
    pub keep_days: u32,
    /// A collected build stays answerable from the history this long; after it, the answer
    /// is "removed by retention on DATE".
    pub history_days: u32,
    /// How often the global leader looks for builds to collect (and a regional leader for
    /// hosts that went quiet).
    pub collect_every_secs: u64,
    /// A host or relay a regional leader has heard nothing from for this long leaves the
    /// region's registry (decommissioned, renamed, or removed from the fleet config).
    pub forget_hosts_after_secs: u64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            keep_per_service: 100,
            keep_days: 7,
            history_days: 90,
            collect_every_secs: 60,
            forget_hosts_after_secs: 86_400,
        }
    }
}

impl RetentionSettings {
    /// The policy as the state machine takes it (stamped into each collect command).
    pub fn keep_ms(&self) -> u64 {
        u64::from(self.keep_days) * 86_400_000
    }

    pub fn history_ms(&self) -> u64 {
        u64::from(self.history_days) * 86_400_000
    }
}

/// The fan-out processes' network cards (`[fanout]`): one budget per direction for each relay
/// and each host agent, summed over all its connections, so a deploy takes no more of a
/// machine's NIC than this. Off (unlimited) by default; `deployd relay|agent --nic-in
/// --nic-out` override it per process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FanoutSettings {
    /// Total ingress of one relay or agent, bytes per second.
    pub nic_in_bytes_per_sec: Option<u64>,
    /// Total egress of one relay or agent, bytes per second.
    pub nic_out_bytes_per_sec: Option<u64>,
    /// What one host may upload to its rack's peers, bytes per second, within its NIC's
    /// egress: a deploy never takes more of a production host's NIC than this.
    pub peer_upload_bytes_per_sec: Option<u64>,
}

/// The least a NIC budget may be: below it a 4 MiB chunk would take minutes.
pub const MIN_NIC_BYTES_PER_SEC: u64 = 64 * 1024;

impl FanoutSettings {
    /// What is wrong with a budget of `value` named `what`, if anything.
    pub fn check_budget(what: &str, value: Option<u64>) -> Option<String> {
        value.filter(|v| *v < MIN_NIC_BYTES_PER_SEC).map(|v| {
            format!("{what} ({v}) must be at least {MIN_NIC_BYTES_PER_SEC} bytes per second")
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterSection {
    name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct GlobalSection {
    voters: Vec<NodeName>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cluster: ClusterSection,
    #[serde(default)]
    raft: RaftTiming,
    nodes: Vec<NodeConfig>,
    global: GlobalSection,
    #[serde(default)]
    regions: Vec<RegionConfig>,
    #[serde(default)]
    workers: Vec<WorkerConfig>,
    #[serde(default)]
    builds: BuildSettings,
    #[serde(default)]
    retention: RetentionSettings,
    #[serde(default)]
    fanout: FanoutSettings,
    #[serde(default)]
    signing: SigningConfig,
    #[serde(default)]
    racks: Vec<crate::fleet::RackConfig>,
    #[serde(default)]
    security: crate::security::SecurityConfig,
}

/// A parsed and validated cluster config.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub name: String,
    pub raft: RaftTiming,
    nodes: Vec<NodeConfig>,
    groups: BTreeMap<GroupName, Vec<NodeName>>,
    regions: Vec<RegionConfig>,
    pub workers: Vec<WorkerConfig>,
    pub builds: BuildSettings,
    pub retention: RetentionSettings,
    pub fanout: FanoutSettings,
    pub signing: SigningConfig,
    /// Transport security and API tokens (see `security`).
    pub security: crate::security::SecurityConfig,
    /// The config file's directory (relative paths of `[security]` are against it).
    pub base: Option<std::path::PathBuf>,
    /// Racks with their relays and hosts, indexed (see `fleet`).
    pub(crate) fleet: crate::fleet::Fleet,
    /// Non-fatal findings (an even voter count), for the caller to log.
    pub warnings: Vec<String>,
}

impl ClusterConfig {
    /// The embedded `cluster-config/local.toml`.
    pub fn local() -> Self {
        Self::parse(LOCAL_TOML, "cluster-config/local.toml")
            .expect("the embedded local.toml is validated by a unit test")
    }

    /// Reads and validates a config file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let io = |source| ConfigError::Io {
            path: shown.clone(),
            source,
        };
        let size = std::fs::metadata(path).map_err(io)?.len();
        if size > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge { path: shown, size });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let mut config = Self::parse(&text, &shown)?;
        config.base = path
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().map(std::path::Path::to_path_buf));
        Ok(config)
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let mut problems = Vec::new();
        let mut warnings = Vec::new();

        if let Err(e) = check_name("cluster name", &raw.cluster.name) {
            problems.push(e.to_string());
        }
        check_timing(&raw.raft, &mut problems);

        let mut ids = BTreeSet::new();
        let mut raft_ids = BTreeMap::new();
        let mut addrs = BTreeSet::new();
        for node in &raw.nodes {
            if !ids.insert(node.id.clone()) {
                problems.push(format!("node id {:?} is declared twice", node.id.as_str()));
            }
            if let Some(other) = raft_ids.insert(node.id.raft_id(), node.id.clone()) {
                if other != node.id {
                    problems.push(format!(
                        "node ids {:?} and {:?} hash to the same raft id; rename one",
                        other.as_str(),
                        node.id.as_str()
                    ));
                }
            }
            if let Err(e) = check_addr(&node.addr) {
                problems.push(format!(
                    "node {:?}: address {:?} {e}",
                    node.id.as_str(),
                    node.addr
                ));
            } else if !addrs.insert(node.addr.clone()) {
                problems.push(format!("address {:?} is used by two nodes", node.addr));
            }
            if let Some(listen) = &node.listen {
                if let Err(e) = check_addr(listen) {
                    problems.push(format!(
                        "node {:?}: listen address {listen:?} {e}",
                        node.id.as_str()
                    ));
                } else if listen != &node.addr && !addrs.insert(listen.clone()) {
                    problems.push(format!("address {listen:?} is used twice"));
                }
            }
        }

        let mut groups = BTreeMap::new();
        groups.insert(GroupName::Global, raw.global.voters.clone());
        for region in &raw.regions {
            match GroupName::region(region.name.clone()) {
                Ok(g) => {
                    if groups.insert(g, region.voters.clone()).is_some() {
                        problems.push(format!("region {:?} is declared twice", region.name));
                    }
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        for (group, voters) in &groups {
            check_voters(group, voters, &ids, &mut problems, &mut warnings);
        }
        for region in &raw.regions {
            if let Some(store) = &region.store {
                if let Err(e) = check_store(store) {
                    problems.push(format!("region {:?}: store {store:?} {e}", region.name));
                }
            }
        }
        let mut worker_ids = BTreeSet::new();
        for w in &raw.workers {
            if let Err(e) = check_name("worker id", &w.id) {
                problems.push(e.to_string());
            }
            if !worker_ids.insert(w.id.clone()) {
                problems.push(format!("worker id {:?} is declared twice", w.id));
            }
            if !raw.regions.iter().any(|r| r.name == w.region) {
                problems.push(format!(
                    "worker {:?} is in region {:?}, which the config does not declare",
                    w.id, w.region
                ));
            }
        }
        let r = &raw.retention;
        if r.keep_per_service == 0 {
            problems.push("retention.keep_per_service must be above 0".into());
        }
        if r.history_days > 36_500 || r.keep_days > 36_500 {
            problems.push("retention.keep_days and history_days must be at most 36500".into());
        }
        if r.collect_every_secs == 0 || r.collect_every_secs > 86_400 {
            problems.push("retention.collect_every_secs must be between 1 and 86400".into());
        }
        if r.forget_hosts_after_secs < 1 {
            problems.push("retention.forget_hosts_after_secs must be above 0".into());
        }
        for (what, v) in [
            (
                "fanout.nic_in_bytes_per_sec",
                raw.fanout.nic_in_bytes_per_sec,
            ),
            (
                "fanout.nic_out_bytes_per_sec",
                raw.fanout.nic_out_bytes_per_sec,
            ),
            (
                "fanout.peer_upload_bytes_per_sec",
                raw.fanout.peer_upload_bytes_per_sec,
            ),
        ] {
            problems.extend(FanoutSettings::check_budget(what, v));
        }
        let b = &raw.builds;
        if b.lease_ms < 300 {
            problems.push(format!(
                "builds.lease_ms ({}) must be at least 300",
                b.lease_ms
            ));
        }
        if b.max_attempts == 0 {
            problems.push("builds.max_attempts must be above 0".into());
        }
        if b.chunk_bytes < 4096 || b.chunk_bytes > 64 * 1024 * 1024 {
            problems.push(format!(
                "builds.chunk_bytes ({}) must be between 4 KiB and 64 MiB",
                b.chunk_bytes
            ));
        }
        if b.default_timeout_secs == 0 {
            problems.push("builds.default_timeout_secs must be above 0".into());
        }
        if b.max_queued == 0 || b.max_queued > 10_000_000 {
            problems.push(format!(
                "builds.max_queued ({}) must be between 1 and 10000000",
                b.max_queued
            ));
        }
        for (key, paths) in [
            ("sandbox_read_paths", &b.sandbox_read_paths),
            ("sandbox_write_paths", &b.sandbox_write_paths),
        ] {
            if paths.len() > 64 {
                problems.push(format!("builds.{key} has more than 64 entries"));
            }
            for p in paths {
                let path = std::path::Path::new(p);
                let climbs = path
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir));
                if !path.is_absolute()
                    || climbs
                    || p.len() > 4096
                    || path == std::path::Path::new("/")
                {
                    problems.push(format!(
                        "builds.{key} entry {:?} must be an absolute path other than / and without ..",
                        p.chars().take(80).collect::<String>()
                    ));
                }
            }
        }
        for k in &raw.signing.trusted_keys {
            if k.len() != 64 || !k.bytes().all(|b| b.is_ascii_hexdigit()) {
                problems.push(format!(
                    "signing.trusted_keys entry {:?} is not 64 hex characters",
                    k.chars().take(80).collect::<String>()
                ));
            }
        }
        for node in &raw.nodes {
            for g in &node.join {
                match groups.get(g) {
                    None => problems.push(format!(
                        "node {:?} joins group {g}, which the config does not declare",
                        node.id.as_str()
                    )),
                    Some(voters) if voters.contains(&node.id) => problems.push(format!(
                        "node {:?} joins group {g} but is already one of its voters",
                        node.id.as_str()
                    )),
                    Some(_) => {}
                }
            }
        }

        raw.security.check(&mut problems, &mut warnings);
        if raw.builds.allowed_repos.patterns().is_empty() {
            warnings.push(
                "builds.allowed_repos is empty: every build submission will be refused until it names the repositories builds may fetch from".into(),
            );
        }
        let region_names: Vec<&str> = raw.regions.iter().map(|r| r.name.as_str()).collect();
        crate::fleet::check_racks(&raw.racks, &region_names, &addrs, &mut problems);

        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                origin: origin.to_string(),
                problems,
            });
        }
        Ok(Self {
            name: raw.cluster.name,
            raft: raw.raft,
            nodes: raw.nodes,
            groups,
            regions: raw.regions,
            workers: raw.workers,
            builds: raw.builds,
            retention: raw.retention,
            fanout: raw.fanout,
            signing: raw.signing,
            security: raw.security,
            base: None,
            fleet: crate::fleet::Fleet::new(raw.racks),
            warnings,
        })
    }

    /// Process `id`'s TLS files, `None` on an insecure cluster; an error says what the
    /// config lacks.
    pub fn tls_paths(&self, id: &str) -> Result<Option<crate::security::TlsPaths>, String> {
        self.security.tls_paths(id, self.base.as_deref())
    }

    pub fn nodes(&self) -> &[NodeConfig] {
        &self.nodes
    }

    pub fn node(&self, id: &NodeName) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| &n.id == id)
    }

    /// Every group: `global` first, then the regions in name order.
    pub fn groups(&self) -> impl Iterator<Item = &GroupName> {
        self.groups.keys()
    }

    pub fn regions(&self) -> impl Iterator<Item = &str> {
        self.groups.keys().filter_map(|g| match g {
            GroupName::Region(r) => Some(r.as_str()),
            GroupName::Global => None,
        })
    }

    pub fn region(&self, name: &str) -> Option<&RegionConfig> {
        self.regions.iter().find(|r| r.name == name)
    }

    pub fn worker(&self, id: &str) -> Option<&WorkerConfig> {
        self.workers.iter().find(|w| w.id == id)
    }

    /// Where a region's artifact store is; relative paths are resolved against `base`.
    pub fn store_location(&self, region: &str, base: &Path) -> Option<StoreLocation> {
        let r = self.region(region)?;
        let spec = r
            .store
            .clone()
            .unwrap_or_else(|| format!("stores/{region}"));
        if spec.starts_with("s3://") {
            return Some(StoreLocation::Url {
                url: spec,
                options: r.store_options.clone(),
            });
        }
        let path = spec.strip_prefix("file://").unwrap_or(&spec);
        let path = Path::new(path);
        Some(StoreLocation::Dir(if path.is_absolute() {
            path.to_path_buf()
        } else {
            base.join(path)
        }))
    }

    /// The directory of a region's store, if it is a local one.
    pub fn store_dir(&self, region: &str, base: &Path) -> Option<std::path::PathBuf> {
        match self.store_location(region, base)? {
            StoreLocation::Dir(d) => Some(d),
            StoreLocation::Url { .. } => None,
        }
    }

    /// The signing key file, resolved against `base`.
    pub fn key_file(&self, base: &Path) -> Option<std::path::PathBuf> {
        let k = self.signing.key_file.as_ref()?;
        let p = Path::new(k);
        Some(if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        })
    }

    /// The initial voters of a group.
    pub fn voters(&self, group: &GroupName) -> Option<&[NodeName]> {
        self.groups.get(group).map(Vec::as_slice)
    }

    /// The groups a node hosts: those it is a voter of, plus those it joins.
    pub fn groups_of(&self, node: &NodeName) -> Vec<GroupName> {
        let mut out: Vec<GroupName> = self
            .groups
            .iter()
            .filter(|(_, voters)| voters.contains(node))
            .map(|(g, _)| g.clone())
            .collect();
        if let Some(n) = self.node(node) {
            out.extend(n.join.iter().cloned());
        }
        out
    }

    /// The one node that initializes a group on first start. Exactly one node per group does
    /// it, so nodes that all start at once can never bootstrap two different clusters.
    pub fn bootstrapper(&self, group: &GroupName) -> Option<&NodeName> {
        self.groups.get(group).and_then(|v| v.first())
    }
}

impl fmt::Display for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cluster {:?}: {} nodes, groups",
            self.name,
            self.nodes.len()
        )?;
        for g in self.groups.keys() {
            write!(f, " {g}")?;
        }
        Ok(())
    }
}

fn check_timing(t: &RaftTiming, problems: &mut Vec<String>) {
    if t.heartbeat_ms == 0 {
        problems.push("raft.heartbeat_ms must be above 0".into());
    }
    if t.election_timeout_min_ms <= t.heartbeat_ms {
        problems.push(format!(
            "raft.election_timeout_min_ms ({}) must be above raft.heartbeat_ms ({})",
            t.election_timeout_min_ms, t.heartbeat_ms
        ));
    }
    if t.election_timeout_max_ms <= t.election_timeout_min_ms {
        problems.push(format!(
            "raft.election_timeout_max_ms ({}) must be above raft.election_timeout_min_ms ({})",
            t.election_timeout_max_ms, t.election_timeout_min_ms
        ));
    }
    if t.snapshot_every_logs == 0 {
        problems.push("raft.snapshot_every_logs must be above 0".into());
    }
}

fn check_voters(
    group: &GroupName,
    voters: &[NodeName],
    ids: &BTreeSet<NodeName>,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) {
    if voters.is_empty() {
        problems.push(format!("group {group} has no voters"));
        return;
    }
    let mut seen = BTreeSet::new();
    for v in voters {
        if !ids.contains(v) {
            problems.push(format!(
                "group {group} names voter {:?}, which is not a declared node",
                v.as_str()
            ));
        }
        if !seen.insert(v) {
            problems.push(format!("group {group} names voter {:?} twice", v.as_str()));
        }
    }
    if voters.len().is_multiple_of(2) {
        warnings.push(format!(
            "group {group} has an even number of voters ({}): it tolerates no more failures than {} voters would",
            voters.len(),
            voters.len() - 1
        ));
    }
}

/// A store is a directory path, an absolute `file://` URL, or `s3://bucket[/prefix]`.
fn check_store(store: &str) -> Result<(), &'static str> {
    if store.is_empty() || store.chars().any(char::is_control) {
        return Err("is empty or has control characters");
    }
    if let Some(rest) = store.strip_prefix("file://") {
        return if rest.starts_with('/') {
            Ok(())
        } else {
            Err("must be an absolute file:// URL")
        };
    }
    if let Some(rest) = store.strip_prefix("s3://") {
        let bucket = rest.split('/').next().unwrap_or_default();
        let ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        return if ok {
            Ok(())
        } else {
            Err("has an invalid S3 bucket name")
        };
    }
    if store.contains("://") {
        return Err("has an unsupported scheme: use a directory, file:// or s3://");
    }
    Ok(())
}

/// Checks `host:port`, where host is an IPv4 address, a bracketed IPv6 address or a DNS name.
pub fn check_addr(addr: &str) -> Result<(), &'static str> {
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = addr.rsplit_once(':').ok_or("is not host:port")?;
    let port: u16 = port.parse().map_err(|_| "has no valid port")?;
    if port == 0 {
        return Err("has port 0; a node needs a fixed port its peers can reach");
    }
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
        });
    if host_ok {
        Ok(())
    } else {
        Err("has an invalid host name")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"
[cluster]
name = "t"
[[nodes]]
id = "a"
addr = "127.0.0.1:1"
[[nodes]]
id = "b"
addr = "127.0.0.1:2"
[[nodes]]
id = "c"
addr = "localhost:3"
[global]
voters = ["a", "b", "c"]
"#;

    fn problems(text: &str) -> Vec<String> {
        match ClusterConfig::parse(text, "test") {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn every_file_in_cluster_config_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../cluster-config");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let cfg = ClusterConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
                assert!(
                    cfg.warnings.is_empty(),
                    "{}: {:?}",
                    path.display(),
                    cfg.warnings
                );
                n += 1;
            }
        }
        assert!(n >= 1, "no config files found in {}", dir.display());
    }

    #[test]
    fn local_has_global_and_two_regions_of_three() {
        let cfg = ClusterConfig::local();
        let groups: Vec<String> = cfg.groups().map(|g| g.to_string()).collect();
        assert_eq!(groups.len(), 3, "{groups:?}");
        assert_eq!(groups[0], "global");
        for g in cfg.groups() {
            assert_eq!(cfg.voters(g).unwrap().len(), 3, "{g}");
        }
    }

    #[test]
    fn a_node_may_listen_apart_from_its_advertised_address() {
        let text = SMALL.replace(
            "addr = \"127.0.0.1:1\"",
            "addr = \"127.0.0.1:1\"\nlisten = \"127.0.0.9:11\"\nsource_ip = \"127.0.0.9\"",
        );
        let cfg = ClusterConfig::parse(&text, "test").unwrap();
        let a = cfg.node(&NodeName::new("a").unwrap()).unwrap();
        assert_eq!(
            (a.addr.as_str(), a.listen_addr()),
            ("127.0.0.1:1", "127.0.0.9:11")
        );
        assert_eq!(a.source_ip, Some("127.0.0.9".parse().unwrap()));
        let b = cfg.node(&NodeName::new("b").unwrap()).unwrap();
        assert_eq!(b.listen_addr(), "127.0.0.1:2", "listen defaults to addr");

        let clash = SMALL.replace(
            "addr = \"127.0.0.1:1\"",
            "addr = \"127.0.0.1:1\"\nlisten = \"127.0.0.1:2\"",
        );
        assert!(
            problems(&clash)
                .iter()
                .any(|p| p.contains("127.0.0.1:2") && p.contains("used")),
            "{:?}",
            problems(&clash)
        );
        let bad = SMALL.replace(
            "addr = \"127.0.0.1:1\"",
            "addr = \"127.0.0.1:1\"\nlisten = \"nowhere\"",
        );
        assert!(problems(&bad).iter().any(|p| p.contains("listen address")));
        let ip = SMALL.replace(
            "addr = \"127.0.0.1:1\"",
            "addr = \"127.0.0.1:1\"\nsource_ip = \"not-an-ip\"",
        );
        assert!(matches!(
            ClusterConfig::parse(&ip, "t"),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn nic_budgets_are_off_by_default_and_refused_below_their_minimum() {
        let cfg = ClusterConfig::parse(SMALL, "test").unwrap();
        assert_eq!(cfg.fanout, FanoutSettings::default());
        let with = |text: &str| format!("{SMALL}\n[fanout]\n{text}\n");
        let cfg = ClusterConfig::parse(
            &with("nic_in_bytes_per_sec = 1250000000\nnic_out_bytes_per_sec = 1250000000"),
            "test",
        )
        .unwrap();
        assert_eq!(cfg.fanout.nic_in_bytes_per_sec, Some(1_250_000_000));
        assert_eq!(cfg.fanout.nic_out_bytes_per_sec, Some(1_250_000_000));
        let p = problems(&with("nic_out_bytes_per_sec = 10"));
        assert!(
            p.iter()
                .any(|p| p.contains("fanout.nic_out_bytes_per_sec (10)")),
            "{p:?}"
        );
    }

    #[test]
    fn small_config_parses_with_helpers() {
        let cfg = ClusterConfig::parse(SMALL, "test").unwrap();
        let a = NodeName::new("a").unwrap();
        assert_eq!(cfg.groups_of(&a), vec![GroupName::Global]);
        assert_eq!(cfg.bootstrapper(&GroupName::Global), Some(&a));
        assert_eq!(cfg.raft, RaftTiming::default());
    }

    #[test]
    fn unknown_field_is_a_parse_error_naming_it() {
        let text = SMALL.replace("name = \"t\"", "name = \"t\"\ncolour = 1");
        match ClusterConfig::parse(&text, "test") {
            Err(ConfigError::Parse { message, .. }) => {
                assert!(message.contains("colour"), "{message}")
            }
            other => panic!("expected Parse, got {other:?}"),
        }
    }

    #[test]
    fn duplicate_ids_and_addresses_are_refused() {
        let text = SMALL.replace(
            "id = \"b\"\naddr = \"127.0.0.1:2\"",
            "id = \"a\"\naddr = \"127.0.0.1:1\"",
        );
        let p = problems(&text);
        assert!(p.iter().any(|p| p.contains("declared twice")), "{p:?}");
        assert!(p.iter().any(|p| p.contains("used by two nodes")), "{p:?}");
    }

    #[test]
    fn zero_voters_is_an_error_and_even_is_a_warning() {
        let p = problems(&SMALL.replace("voters = [\"a\", \"b\", \"c\"]", "voters = []"));
        assert!(p.iter().any(|p| p.contains("no voters")), "{p:?}");
        let cfg = ClusterConfig::parse(&SMALL.replace("\"a\", \"b\", \"c\"", "\"a\", \"b\""), "t")
            .unwrap();
        assert!(
            cfg.warnings.iter().any(|w| w.contains("even number")),
            "{:?}",
            cfg.warnings
        );
    }

    #[test]
    fn bad_addresses_are_refused() {
        for bad in [
            "127.0.0.1",
            "127.0.0.1:x",
            "host:0",
            "bad host:80",
            ":80",
            "a..b:1",
        ] {
            let p = problems(&SMALL.replace("localhost:3", bad));
            assert!(p.iter().any(|p| p.contains("address")), "{bad}: {p:?}");
        }
        for good in ["[::1]:7000", "node-3.example.com:7000"] {
            ClusterConfig::parse(&SMALL.replace("localhost:3", good), "t").unwrap();
        }
    }

    #[test]
    fn unknown_voter_and_bad_join_are_refused() {
        let p = problems(&SMALL.replace("\"a\", \"b\", \"c\"", "\"a\", \"b\", \"z\""));
        assert!(p.iter().any(|p| p.contains("\"z\"")), "{p:?}");
        let text = SMALL.replace(
            "addr = \"localhost:3\"",
            "addr = \"localhost:3\"\njoin = [\"region/nowhere\"]",
        );
        let p = problems(&text);
        assert!(p.iter().any(|p| p.contains("region/nowhere")), "{p:?}");
    }

    #[test]
    fn timing_is_checked() {
        let text = format!("{SMALL}\n[raft]\nheartbeat_ms = 500\nelection_timeout_min_ms = 400\n");
        let p = problems(&text);
        assert!(
            p.iter().any(|p| p.contains("election_timeout_min_ms")),
            "{p:?}"
        );
    }

    #[test]
    fn workers_and_stores_are_checked() {
        let base = format!("{SMALL}\n[[regions]]\nname = \"r\"\nvoters = [\"a\"]\n");
        let cfg = ClusterConfig::parse(
            &format!("{base}[[workers]]\nid = \"w1\"\nregion = \"r\"\n"),
            "t",
        )
        .unwrap();
        assert_eq!(cfg.worker("w1").map(|w| w.region.as_str()), Some("r"));
        assert_eq!(
            cfg.store_dir("r", Path::new("/data")),
            Some(std::path::PathBuf::from("/data/stores/r"))
        );
        let p = problems(&format!(
            "{base}[[workers]]\nid = \"w1\"\nregion = \"nowhere\"\n"
        ));
        assert!(p.iter().any(|p| p.contains("nowhere")), "{p:?}");
        let p = problems(&base.replace(
            "voters = [\"a\"]\n",
            "voters = [\"a\"]\nstore = \"ftp://bucket\"\n",
        ));
        assert!(p.iter().any(|p| p.contains("scheme")), "{p:?}");
        let p = problems(&base.replace(
            "voters = [\"a\"]\n",
            "voters = [\"a\"]\nstore = \"s3://B_ad\"\n",
        ));
        assert!(p.iter().any(|p| p.contains("bucket")), "{p:?}");
        let s3 = base.replace(
            "voters = [\"a\"]\n",
            "voters = [\"a\"]\nstore = \"s3://my-bucket/r\"\nstore_options = { aws_region = \"eu-west-1\" }\n",
        );
        let cfg = ClusterConfig::parse(&s3, "t").unwrap();
        match cfg.store_location("r", Path::new("/data")) {
            Some(StoreLocation::Url { url, options }) => {
                assert_eq!(url, "s3://my-bucket/r");
                assert_eq!(options["aws_region"], "eu-west-1");
            }
            other => panic!("{other:?}"),
        }
        let text = base.replace(
            "voters = [\"a\"]\n",
            "voters = [\"a\"]\nstore = \"file:///srv/r\"\n",
        );
        let cfg = ClusterConfig::parse(&text, "t").unwrap();
        assert_eq!(
            cfg.store_dir("r", Path::new("/data")),
            Some(std::path::PathBuf::from("/srv/r"))
        );
    }

    #[test]
    fn all_problems_are_reported_together() {
        let text = SMALL
            .replace("name = \"t\"", "name = \"T\"")
            .replace("\"a\", \"b\", \"c\"", "\"a\", \"q\"");
        let p = problems(&text);
        assert!(p.len() >= 2, "{p:?}");
    }
}
