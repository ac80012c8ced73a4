//! Relay and agent options from the cluster config's racks, shared by `deployd` and tests.

use std::path::PathBuf;

use anyhow::Context;
use deploy_artifact::TrustedKeys;
use deploy_types::ClusterConfig;

use crate::agent::AgentOptions;
use crate::bucket::Nic;
use crate::relay::RelayOptions;

/// Bandwidth and cache settings shared by the relay and agent commands.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// One connection's pace from upstream (a relay's fetches).
    pub up: Option<u64>,
    /// One connection's pace toward hosts (a relay's answers, an agent's downloads).
    pub down: Option<u64>,
    pub cache_bytes: Option<u64>,
    /// The process's NIC, each direction summed over all its connections; `None` takes the
    /// config's `[fanout]` budget.
    pub nic_in: Option<u64>,
    pub nic_out: Option<u64>,
    /// An agent's chunk server for its rack's peers: where it binds (`None`: the default,
    /// [`DEFAULT_PEER_LISTEN`]; `Some("")`: no server), and the address peers use if not that.
    pub peer_listen: Option<String>,
    pub peer_advertise: Option<String>,
}

/// Where an agent serves its chunks to its peers unless told otherwise: loopback, any port
/// (one machine: `deployd dev`, tests). A fleet's hosts name their own address.
pub const DEFAULT_PEER_LISTEN: &str = "127.0.0.1:0";

impl Limits {
    /// The NIC of a process with these limits under `config`.
    pub fn nic(&self, config: &ClusterConfig) -> Nic {
        Nic::new(
            self.nic_in.or(config.fanout.nic_in_bytes_per_sec),
            self.nic_out.or(config.fanout.nic_out_bytes_per_sec),
        )
    }
}

pub fn trusted(config: &ClusterConfig) -> anyhow::Result<TrustedKeys> {
    TrustedKeys::parse(&config.signing.trusted_keys).context("signing.trusted_keys")
}

/// Relay `id` of the config, caching under `dir`; also returns the address it binds.
pub fn relay_options(
    config: &ClusterConfig,
    id: &str,
    dir: PathBuf,
    limits: &Limits,
    transport: &deploy_tls::Transport,
) -> anyhow::Result<(RelayOptions, String)> {
    let (rack, relay) = config
        .relay(id)
        .with_context(|| format!("relay {id} is not declared in the cluster config"))?;
    let parent = relay
        .parent
        .as_ref()
        .and_then(|p| config.relay(p))
        .map(|(_, r)| transport.url(&r.addr));
    Ok((
        RelayOptions {
            id: id.to_string(),
            region: rack.region.clone(),
            rack: rack.name.clone(),
            hosts: rack.hosts.clone(),
            coordinators: urls(transport, config.region_addrs(&rack.region)),
            parent,
            cache_dir: dir.join("cache"),
            cache_max_bytes: limits.cache_bytes.unwrap_or(2 << 30),
            up_limit: limits.up,
            down_limit: limits.down,
            nic: limits.nic(config),
            trusted: trusted(config)?,
            max_chunk_bytes: config.builds.chunk_bytes as usize,
            transport: transport.clone(),
            exchange: config.region(&rack.region).is_none_or(|r| r.peer_exchange),
        },
        relay.listen_addr().to_string(),
    ))
}

/// Agent `id` of the config, with its root at `root`.
pub fn agent_options(
    config: &ClusterConfig,
    id: &str,
    root: PathBuf,
    sim: bool,
    limits: &Limits,
    transport: &deploy_tls::Transport,
) -> anyhow::Result<AgentOptions> {
    let place = config
        .host(id)
        .with_context(|| format!("host {id} is not declared in the cluster config"))?;
    // Its rack's relays first, then the region's others.
    let mut relays: Vec<String> = place.rack.relays.iter().map(|r| r.addr.clone()).collect();
    let rack_relays = relays.len();
    relays.extend(
        config
            .racks()
            .iter()
            .filter(|r| r.region == place.region && r.name != place.rack.name)
            .flat_map(|r| r.relays.iter().map(|x| x.addr.clone())),
    );
    Ok(AgentOptions {
        id: id.to_string(),
        region: place.region.to_string(),
        rack: place.rack.name.clone(),
        root,
        relays: urls(transport, relays),
        rack_relays,
        stores: urls(transport, config.region_addrs(place.region)),
        trusted: trusted(config)?,
        sim,
        down_limit: limits.down,
        nic: limits.nic(config),
        max_chunk_bytes: config.builds.chunk_bytes as usize,
        failpoint: std::env::var("DEPLOY_AGENT_FAILPOINT").ok(),
        transport: transport.clone(),
        peer_listen: match limits.peer_listen.as_deref() {
            None => Some(DEFAULT_PEER_LISTEN.to_string()),
            Some("") => None,
            Some(a) => Some(a.to_string()),
        },
        peer_advertise: limits.peer_advertise.clone(),
        peer_upload: config.fanout.peer_upload_bytes_per_sec,
        peer_allowed: place
            .rack
            .hosts
            .iter()
            .cloned()
            .chain(place.rack.relays.iter().map(|r| r.id.clone()))
            .collect(),
    })
}

/// `addrs` as URLs of `transport`'s scheme.
fn urls(transport: &deploy_tls::Transport, addrs: Vec<String>) -> Vec<String> {
    addrs.iter().map(|a| transport.url(a)).collect()
}
