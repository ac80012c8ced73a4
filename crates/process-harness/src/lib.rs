//! Clusters of real `deployd` processes, for tests and benchmarks.
//!
//! - [`Spec`]: the shape of a cluster (nodes, regions, workers, racks, timing, security),
//!   written as the cluster config the processes read.
//! - [`process`]: [`ProcessCluster`], real `deployd` processes (nodes, workers, relays,
//!   agents), each on a reserved port, stopped with SIGTERM or `kill -9`.
//! - [`releases`]: simulated hosts and release helpers over the public API.
//! - [`s3`]: an S3-compatible server (moto) for a region's store.
//! - [`secure`]: talking to a secure cluster as an API client would.
//!
//! It drives the system only from outside, through its binaries, its config and its public
//! API: it must not depend on the coordinator, Raft or the replicated state, so that `chaos`
//! and `deploy-bench` can use it without linking them (`test-harness` adds the in-process
//! clusters that do).

pub mod process;
pub mod releases;
pub mod s3;
pub mod secure;

pub use process::ProcessCluster;
pub use test_support::{gitrepo, ports, wait_every, wait_until};

/// The shape of a test cluster: node names follow it (`g1..`, `<region>-1..`, `s1..`).
#[derive(Debug, Clone)]
pub struct Spec {
    pub global: usize,
    pub regions: Vec<(String, usize)>,
    /// Nodes hosting the global group without being voters (for add-node).
    pub spares: usize,
    /// Build workers: (id, region).
    pub workers: Vec<(String, String)>,
    /// `DEPLOY_WORKER_FAILPOINT` for every worker process (see `deployd worker`).
    pub worker_failpoint: Option<String>,
    /// Workers the config names but nobody starts: the caller plays them over gRPC.
    pub external_workers: Vec<(String, String)>,
    pub lease_ms: u64,
    pub replication_deadline_secs: u64,
    /// (builds.keep_per_service, builds.gc_grace_secs)
    pub retention: (u32, u64),
    /// `[retention]` (keep_per_service, collect_every_secs) with keep_days = 0: finished
    /// builds beyond the newest ones leave the state at once. None: the shipped defaults.
    pub state_retention: Option<(u32, u64)>,
    pub forget_hosts_after_secs: Option<u64>,
    pub chunk_bytes: u64,
    /// builds.max_queued
    pub max_queued: u32,
    /// builds.allowed_repos (default: every local path, where tests keep their repos)
    pub allowed_repos: Vec<String>,
    /// Use the shipped Raft timing defaults instead of the tests' slower, steadier one.
    pub default_timing: bool,
    /// (heartbeat, election timeout min, max) in ms, instead of either.
    pub raft_timing: Option<(u64, u64, u64)>,
    /// Regions whose store is an S3 bucket: region -> (endpoint, bucket).
    pub s3: std::collections::BTreeMap<String, (String, String)>,
    /// (raft.snapshot_every_logs, raft.keep_logs_after_snapshot)
    pub snapshots: (u64, u64),
    /// Racks: (region, hosts); each gets one relay. Names follow [`Spec::racks_of`].
    pub racks: Vec<(String, usize)>,
    /// (child relay, parent relay): relays fetching from another relay, not the store.
    pub parents: Vec<(String, String)>,
    /// Mutual TLS and tokens (a CA, every process's certificate and an admin token made
    /// under the cluster's directory), instead of `insecure = true`.
    pub secure: bool,
    /// Every relay's and agent's NIC limited to this many bytes per second in each direction
    /// (`--nic-in`, `--nic-out`), summed over all its connections.
    pub nic_limit: Option<u64>,
    /// Agents verify and record releases but start no process (`deployd agent --sim`).
    pub sim_agents: bool,
    /// Hosts whose NIC is limited to another rate than [`Spec::nic_limit`] (a slow host).
    pub host_nics: std::collections::BTreeMap<String, u64>,
    /// Every region's `peer_exchange` (default on).
    pub peer_exchange: bool,
}

/// A directory a [`Spec`]'s builds may write to: tests' builds leave evidence there.
pub fn witness_dir(root: &std::path::Path) -> std::path::PathBuf {
    root.join("witness")
}

/// Where a secure [`Spec`]'s cluster keeps its CA, certificates and admin token.
pub fn certs_dir(root: &std::path::Path) -> std::path::PathBuf {
    root.join("certs")
}

/// The admin token of a secure [`Spec`]'s cluster made under `root`.
pub fn admin_token(root: &std::path::Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(root.join("admin.token"))?
        .trim()
        .to_string())
}

/// A client of a cluster under `root` over `endpoints`: TLS with its CA and admin token if
/// the cluster is secure, plain otherwise.
pub fn client_for<S: AsRef<str>>(
    root: &std::path::Path,
    endpoints: impl IntoIterator<Item = S>,
) -> anyhow::Result<deploy_client::Client> {
    let ca = certs_dir(root).join("ca.pem");
    if !ca.exists() {
        return Ok(deploy_client::Client::new(endpoints)?);
    }
    let pem = std::fs::read(&ca)?;
    Ok(
        deploy_client::Client::secure(endpoints, deploy_client::trusting(&pem))?
            .with_token(&admin_token(root)?)?,
    )
}

/// A rack of a [`Spec`]: its name, relay id and host ids.
#[derive(Debug, Clone)]
pub struct RackSpec {
    pub region: String,
    pub name: String,
    pub relay: String,
    pub hosts: Vec<String>,
}

impl Spec {
    pub fn new(global: usize) -> Self {
        Self {
            global,
            regions: Vec::new(),
            spares: 0,
            workers: Vec::new(),
            external_workers: Vec::new(),
            worker_failpoint: None,
            lease_ms: 2000,
            replication_deadline_secs: 600,
            retention: (10, 3600),
            chunk_bytes: 65536,
            max_queued: 10_000,
            allowed_repos: vec!["/**".into()],
            default_timing: false,
            raft_timing: None,
            s3: std::collections::BTreeMap::new(),
            snapshots: (5000, 1000),
            state_retention: None,
            forget_hosts_after_secs: None,
            racks: Vec::new(),
            parents: Vec::new(),
            secure: false,
            nic_limit: None,
            sim_agents: false,
            host_nics: std::collections::BTreeMap::new(),
            peer_exchange: true,
        }
    }

    /// Limits every relay's and agent's NIC to `bytes_per_sec` in each direction.
    pub fn nic_limit(mut self, bytes_per_sec: u64) -> Self {
        self.nic_limit = Some(bytes_per_sec);
        self
    }

    /// Runs the agents in sim mode: they verify and record releases, and start nothing.
    pub fn sim_agents(mut self) -> Self {
        self.sim_agents = true;
        self
    }

    /// Mutual TLS and tokens instead of `insecure = true`.
    pub fn secure(mut self) -> Self {
        self.secure = true;
        self
    }

    /// Limits host `host`'s NIC to `bytes_per_sec` in each direction, not the others' rate.
    pub fn host_nic(mut self, host: &str, bytes_per_sec: u64) -> Self {
        self.host_nics.insert(host.to_string(), bytes_per_sec);
        self
    }

    /// Turns the intra-rack exchange off in every region (relays serve every host).
    pub fn without_peer_exchange(mut self) -> Self {
        self.peer_exchange = false;
        self
    }

    /// Snapshots every `every` log entries, keeping `keep` entries behind each.
    pub fn snapshots(mut self, every: u64, keep: u64) -> Self {
        self.snapshots = (every, keep);
        self
    }

    /// Keeps `region`'s artifacts in `bucket` of the S3-compatible server at `endpoint`.
    pub fn s3_region(mut self, region: &str, endpoint: &str, bucket: &str) -> Self {
        self.s3.insert(
            region.to_string(),
            (endpoint.to_string(), bucket.to_string()),
        );
        self
    }

    /// Uses the shipped Raft timing defaults (what `deployd` runs with).
    pub fn default_timing(mut self) -> Self {
        self.default_timing = true;
        self
    }

    /// Raft timing of its own: heartbeat and election timeout (min, max), in ms.
    pub fn raft_timing(mut self, heartbeat_ms: u64, min_ms: u64, max_ms: u64) -> Self {
        self.raft_timing = Some((heartbeat_ms, min_ms, max_ms));
        self
    }

    pub fn allowed_repos(mut self, patterns: &[&str]) -> Self {
        self.allowed_repos = patterns.iter().map(|p| p.to_string()).collect();
        self
    }

    pub fn max_queued(mut self, n: u32) -> Self {
        self.max_queued = n;
        self
    }

    pub fn chunk_bytes(mut self, n: u64) -> Self {
        self.chunk_bytes = n;
        self
    }

    /// Builds beyond the newest `keep_per_service` finished ones of a service leave the
    /// state within `collect_every_secs` of finishing (and stay in the history a day).
    pub fn state_retention(mut self, keep_per_service: u32, collect_every_secs: u64) -> Self {
        self.state_retention = Some((keep_per_service, collect_every_secs));
        self
    }

    /// With [`Spec::state_retention`]: hosts and relays quiet this long leave the registry.
    pub fn forget_hosts_after_secs(mut self, secs: u64) -> Self {
        self.forget_hosts_after_secs = Some(secs);
        self
    }

    pub fn retention(mut self, keep_per_service: u32, gc_grace_secs: u64) -> Self {
        self.retention = (keep_per_service, gc_grace_secs);
        self
    }

    pub fn replication_deadline_secs(mut self, secs: u64) -> Self {
        self.replication_deadline_secs = secs;
        self
    }

    pub fn region(mut self, name: &str, nodes: usize) -> Self {
        self.regions.push((name.to_string(), nodes));
        self
    }

    pub fn spares(mut self, n: usize) -> Self {
        self.spares = n;
        self
    }

    pub fn worker(mut self, id: &str, region: &str) -> Self {
        self.workers.push((id.to_string(), region.to_string()));
        self
    }

    /// Every worker process runs with this failpoint (`DEPLOY_WORKER_FAILPOINT`).
    pub fn worker_failpoint(mut self, failpoint: &str) -> Self {
        self.worker_failpoint = Some(failpoint.to_string());
        self
    }

    /// A worker in the config with no process: the caller speaks its part of the protocol.
    pub fn external_worker(mut self, id: &str, region: &str) -> Self {
        self.external_workers
            .push((id.to_string(), region.to_string()));
        self
    }

    /// A rack of `hosts` hosts in `region`, with one relay.
    pub fn rack(mut self, region: &str, hosts: usize) -> Self {
        self.racks.push((region.to_string(), hosts));
        self
    }

    /// The racks, named `rack-<k>` per region, relays `<region>-rack-<k>-relay`, hosts
    /// `<region>-<k>-h<i>`.
    pub fn racks_of(&self) -> Vec<RackSpec> {
        let mut per_region: std::collections::BTreeMap<&str, usize> = Default::default();
        self.racks
            .iter()
            .map(|(region, hosts)| {
                let k = per_region.entry(region).or_default();
                *k += 1;
                let name = format!("rack-{k}");
                RackSpec {
                    relay: format!("{region}-{name}-relay"),
                    hosts: (1..=*hosts).map(|i| format!("{region}-{k}-h{i}")).collect(),
                    region: region.clone(),
                    name,
                }
            })
            .collect()
    }

    /// Makes relay `child` fetch from relay `parent` (a two-level tree).
    pub fn relay_parent(mut self, child: &str, parent: &str) -> Self {
        self.parents.push((child.to_string(), parent.to_string()));
        self
    }

    /// Every relay id.
    pub fn relay_ids(&self) -> Vec<String> {
        self.racks_of().into_iter().map(|r| r.relay).collect()
    }

    pub fn lease_ms(mut self, ms: u64) -> Self {
        self.lease_ms = ms;
        self
    }

    /// Every node name, in config order.
    pub fn node_names(&self) -> Vec<String> {
        let mut out: Vec<String> = (1..=self.global).map(|i| format!("g{i}")).collect();
        for (r, n) in &self.regions {
            out.extend((1..=*n).map(|i| format!("{r}-{i}")));
        }
        out.extend((1..=self.spares).map(|i| format!("s{i}")));
        out
    }

    /// The config text, with each node at `addrs[name]` and stores under `root/stores`; makes
    /// a signing key at `root/keys/build.key` if there is none, and [`witness_dir`], where
    /// tests' builds may leave evidence (builds write nowhere else outside their scratch).
    pub fn toml(
        &self,
        addrs: &std::collections::BTreeMap<String, String>,
        root: &std::path::Path,
    ) -> anyhow::Result<String> {
        let store_root = root.join("stores");
        let witness = witness_dir(root);
        std::fs::create_dir_all(&witness)?;
        let key_path = root.join("keys").join("build.key");
        if !key_path.exists() {
            deploy_artifact::KeyPair::generate()?.save(&key_path)?;
        }
        let public = deploy_artifact::KeyPair::load(&key_path)?.public_hex();
        let mut s = format!(
            "[cluster]\nname = \"test\"\n\n[raft]\n{}\n",
            if let Some((hb, min, max)) = self.raft_timing {
                format!(
                    "heartbeat_ms = {hb}\nelection_timeout_min_ms = {min}\nelection_timeout_max_ms = {max}\n\
                     snapshot_every_logs = {}\nkeep_logs_after_snapshot = {}\n",
                    self.snapshots.0, self.snapshots.1
                )
            } else if self.default_timing {
                String::new()
            } else {
                test_timing(self.snapshots.0, self.snapshots.1)
            }
        );
        s.push_str(&format!(
            "[builds]\nlease_ms = {}\nmax_attempts = 3\nlog_cap_bytes = 1048576\ndefault_timeout_secs = 120\nchunk_bytes = {}\nreplication_deadline_secs = {}\nkeep_per_service = {}\ngc_grace_secs = {}\nsandbox_write_paths = [{:?}]\nmax_queued = {}\nallowed_repos = {:?}\n\n",
            self.lease_ms,
            self.chunk_bytes,
            self.replication_deadline_secs,
            self.retention.0,
            self.retention.1,
            witness.display().to_string(),
            self.max_queued,
            self.allowed_repos
        ));
        if let Some((keep, every)) = self.state_retention {
            s.push_str(&format!(
                "[retention]\nkeep_per_service = {keep}\nkeep_days = 0\nhistory_days = 1\ncollect_every_secs = {every}\n"
            ));
            if let Some(secs) = self.forget_hosts_after_secs {
                s.push_str(&format!("forget_hosts_after_secs = {secs}\n"));
            }
            s.push('\n');
        }
        let spares: Vec<String> = (1..=self.spares).map(|i| format!("s{i}")).collect();
        for name in self.node_names() {
            let addr = addrs.get(&name).cloned().unwrap_or_default();
            s.push_str(&format!("[[nodes]]\nid = \"{name}\"\naddr = \"{addr}\"\n"));
            if spares.contains(&name) {
                s.push_str("join = [\"global\"]\n");
            }
        }
        let list = |names: Vec<String>| {
            names
                .iter()
                .map(|n| format!("\"{n}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        s.push_str(&format!(
            "\n[global]\nvoters = [{}]\n",
            list((1..=self.global).map(|i| format!("g{i}")).collect())
        ));
        for (r, n) in &self.regions {
            let store = match self.s3.get(r) {
                Some((endpoint, bucket)) => format!(
                    "store = \"s3://{bucket}/{r}\"\nstore_options = {{ aws_endpoint = \"{endpoint}\", aws_allow_http = \"true\", \
                     aws_access_key_id = \"test\", aws_secret_access_key = \"test\", aws_region = \"us-east-1\" }}\n"
                ),
                None => format!("store = \"file://{}\"\n", store_root.join(r).display()),
            };
            s.push_str(&format!(
                "\n[[regions]]\nname = \"{r}\"\nvoters = [{}]\n{store}peer_exchange = {}\n",
                list((1..=*n).map(|i| format!("{r}-{i}")).collect()),
                self.peer_exchange,
            ));
        }
        for (id, region) in self.workers.iter().chain(&self.external_workers) {
            s.push_str(&format!(
                "\n[[workers]]\nid = \"{id}\"\nregion = \"{region}\"\n"
            ));
        }
        for r in self.racks_of() {
            let addr = addrs.get(&r.relay).cloned().unwrap_or_default();
            let parent = self
                .parents
                .iter()
                .find(|(c, _)| *c == r.relay)
                .map(|(_, p)| format!(", parent = \"{p}\""))
                .unwrap_or_default();
            s.push_str(&format!(
                "\n[[racks]]\nregion = \"{}\"\nname = \"{}\"\nrelays = [{{ id = \"{}\", addr = \"{addr}\"{parent} }}]\nhosts = [{}]\n",
                r.region,
                r.name,
                r.relay,
                list(r.hosts.clone())
            ));
        }
        s.push_str(&format!(
            "\n[signing]\nkey_file = \"{}\"\ntrusted_keys = [\"{public}\"]\n",
            key_path.display()
        ));
        if self.secure {
            s.push_str(&self.make_security(addrs, root)?);
        } else {
            s.push_str("\n[security]\ninsecure = true\n");
        }
        Ok(s)
    }

    /// A CA, a certificate for every process and an admin token under `root` (once), and
    /// the `[security]` section naming them.
    fn make_security(
        &self,
        addrs: &std::collections::BTreeMap<String, String>,
        root: &std::path::Path,
    ) -> anyhow::Result<String> {
        let dir = certs_dir(root);
        if !dir.join("ca.pem").exists() {
            deploy_tls::certs::init_ca(&dir, "test")?;
        }
        let mut ids = self.node_names();
        ids.extend(
            self.workers
                .iter()
                .chain(&self.external_workers)
                .map(|(w, _)| w.clone()),
        );
        for r in self.racks_of() {
            ids.push(r.relay.clone());
            ids.extend(r.hosts.clone());
        }
        for id in ids {
            if dir.join(format!("{id}.pem")).exists() {
                continue;
            }
            let mut hosts = vec!["127.0.0.1".to_string()];
            hosts.extend(addrs.get(&id).and_then(|a| deploy_tls::certs::host_of(a)));
            deploy_tls::certs::issue(&dir, &id, &hosts)?;
        }
        let token_file = root.join("admin.token");
        if !token_file.exists() {
            let token =
                deploy_client::request_id().ok_or_else(|| anyhow::anyhow!("no randomness"))?;
            std::fs::write(&token_file, format!("{token}\n"))?;
        }
        let hash = deploy_types::security::token_sha256(&admin_token(root)?);
        Ok(format!(
            "\n[security]\nca = \"{}\"\ncerts = \"{}\"\nadmin_token_sha256 = \"{hash}\"\n",
            dir.join("ca.pem").display(),
            dir.display()
        ))
    }
}

/// Raft timing for tests: the production defaults, with snapshots every `snapshot_every` logs.
pub fn test_timing(snapshot_every: u64, keep: u64) -> String {
    format!(
        "heartbeat_ms = 100\nelection_timeout_min_ms = 500\nelection_timeout_max_ms = 900\n\
         snapshot_every_logs = {snapshot_every}\nkeep_logs_after_snapshot = {keep}\n"
    )
}
