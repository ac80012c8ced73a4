//! The fleet in the cluster config: racks, their relays and their hosts.
//!
//! ```toml
//! [[racks]]
//! region = "us-east"
//! name = "rack-1"
//! relays = [{ id = "us-east-rack-1-relay", addr = "127.0.0.1:7101" }]
//! hosts = ["us-east-1-h1", "us-east-1-h2"]
//! ```
//!
//! A relay serves its rack's hosts over HTTP and may name a `parent` relay (one level up)
//! to fetch from; without one it fetches from its region's store through the region's nodes.

use std::collections::{BTreeSet, HashMap};

use serde::Deserialize;

use crate::config::{check_addr, ClusterConfig};
use crate::ids::check_name;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    pub id: String,
    /// Where its hosts (and child relays) reach it over HTTP, host:port.
    pub addr: String,
    /// host:port it binds, when it differs from `addr` (a proxy in between). Default: `addr`.
    #[serde(default)]
    pub listen: Option<String>,
    /// A relay one level up to fetch from, instead of the region's store.
    #[serde(default)]
    pub parent: Option<String>,
}

impl RelayConfig {
    /// The address the relay binds: `listen`, else `addr`.
    pub fn listen_addr(&self) -> &str {
        self.listen.as_deref().unwrap_or(&self.addr)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RackConfig {
    pub region: String,
    pub name: String,
    #[serde(default)]
    pub relays: Vec<RelayConfig>,
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// Checks racks against the regions and the nodes' addresses; every problem is named.
pub(crate) fn check_racks(
    racks: &[RackConfig],
    regions: &[&str],
    node_addrs: &BTreeSet<String>,
    problems: &mut Vec<String>,
) {
    let mut rack_names = BTreeSet::new();
    let mut relay_ids = BTreeSet::new();
    let mut host_ids = BTreeSet::new();
    let mut addrs = node_addrs.clone();
    for r in racks {
        if !regions.contains(&r.region.as_str()) {
            problems.push(format!(
                "rack {:?} is in region {:?}, which the config does not declare",
                r.name, r.region
            ));
        }
        if let Err(e) = check_name("rack", &r.name) {
            problems.push(e.to_string());
        }
        if !rack_names.insert((r.region.clone(), r.name.clone())) {
            problems.push(format!(
                "rack {:?} of {:?} is declared twice",
                r.name, r.region
            ));
        }
        for relay in &r.relays {
            if let Err(e) = check_name("relay id", &relay.id) {
                problems.push(e.to_string());
            }
            if !relay_ids.insert(relay.id.clone()) {
                problems.push(format!("relay id {:?} is declared twice", relay.id));
            }
            if let Err(e) = check_addr(&relay.addr) {
                problems.push(format!(
                    "relay {:?}: address {:?} {e}",
                    relay.id, relay.addr
                ));
            } else if !addrs.insert(relay.addr.clone()) {
                problems.push(format!("address {:?} is used twice", relay.addr));
            }
            if let Some(listen) = &relay.listen {
                if let Err(e) = check_addr(listen) {
                    problems.push(format!(
                        "relay {:?}: listen address {listen:?} {e}",
                        relay.id
                    ));
                } else if listen != &relay.addr && !addrs.insert(listen.clone()) {
                    problems.push(format!("address {listen:?} is used twice"));
                }
            }
        }
        for h in &r.hosts {
            if let Err(e) = check_name("host", h) {
                problems.push(e.to_string());
            }
            if !host_ids.insert(h.clone()) {
                problems.push(format!("host {h:?} is declared twice"));
            }
        }
    }
    for r in racks {
        for relay in &r.relays {
            if let Some(p) = &relay.parent {
                let parent = racks
                    .iter()
                    .filter(|x| x.region == r.region)
                    .flat_map(|x| x.relays.iter())
                    .find(|x| &x.id == p);
                match parent {
                    None => problems.push(format!(
                        "relay {:?}: parent {p:?} is not a relay of region {:?}",
                        relay.id, r.region
                    )),
                    Some(x) if x.id == relay.id || x.parent.as_deref() == Some(&relay.id) => {
                        problems.push(format!("relay {:?}: parent {p:?} makes a loop", relay.id))
                    }
                    Some(_) => {}
                }
            }
        }
    }
}

/// Where a host is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPlace<'a> {
    pub region: &'a str,
    pub rack: &'a RackConfig,
}

/// The racks, indexed by host and by relay id: the API's peer checks look a host up on every
/// call, and a region holds up to 100,000 of them, so a lookup is one hash probe, not a scan.
/// Built once from the validated racks (ids are unique, so each index entry is the only one).
/// Bounded by the config: one entry per host and relay it lists, and a config file is at
/// most `MAX_CONFIG_BYTES`.
#[derive(Clone, Default)]
pub(crate) struct Fleet {
    racks: Vec<RackConfig>,
    /// Host id -> index into `racks`.
    hosts: HashMap<String, usize>,
    /// Relay id -> (rack index, relay index within the rack).
    relays: HashMap<String, (usize, usize)>,
}

/// Only the racks: the index is derived from them, and a `HashMap`'s order differs from one
/// map to the next, so printing it would make two equal configs print differently.
impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("racks", &self.racks).finish()
    }
}

impl Fleet {
    pub(crate) fn new(racks: Vec<RackConfig>) -> Self {
        let mut hosts = HashMap::new();
        let mut relays = HashMap::new();
        for (i, rack) in racks.iter().enumerate() {
            for h in &rack.hosts {
                hosts.entry(h.clone()).or_insert(i);
            }
            for (j, relay) in rack.relays.iter().enumerate() {
                relays.entry(relay.id.clone()).or_insert((i, j));
            }
        }
        Self {
            racks,
            hosts,
            relays,
        }
    }
}

impl ClusterConfig {
    pub fn racks(&self) -> &[RackConfig] {
        &self.fleet.racks
    }

    /// A relay by id, with its rack.
    pub fn relay(&self, id: &str) -> Option<(&RackConfig, &RelayConfig)> {
        let &(i, j) = self.fleet.relays.get(id)?;
        let rack = &self.fleet.racks[i];
        Some((rack, &rack.relays[j]))
    }

    /// A host's region and rack.
    pub fn host(&self, id: &str) -> Option<HostPlace<'_>> {
        let &i = self.fleet.hosts.get(id)?;
        let rack = &self.fleet.racks[i];
        Some(HostPlace {
            region: &rack.region,
            rack,
        })
    }

    /// The addresses of a region's group members (where its store is served over HTTP).
    pub fn region_addrs(&self, region: &str) -> Vec<String> {
        let group = crate::GroupName::Region(region.to_string());
        self.voters(&group)
            .unwrap_or_default()
            .iter()
            .filter_map(|n| self.node(n).map(|n| n.addr.clone()))
            .collect()
    }

    /// Replaces every region's racks with `racks` racks of `hosts` hosts, one relay each on
    /// consecutive ports from `first_port` (for larger local runs).
    pub fn generate_racks(&mut self, racks: u32, hosts: u32, first_port: u16) {
        let regions: Vec<String> = self.regions().map(str::to_string).collect();
        let mut port = first_port;
        let mut generated = Vec::new();
        for region in regions {
            for k in 1..=racks {
                let name = format!("rack-{k}");
                generated.push(RackConfig {
                    region: region.clone(),
                    relays: vec![RelayConfig {
                        id: format!("{region}-{name}-relay"),
                        addr: format!("127.0.0.1:{port}"),
                        listen: None,
                        parent: None,
                    }],
                    hosts: (1..=hosts).map(|h| format!("{region}-{k}-h{h}")).collect(),
                    name,
                });
                port = port.wrapping_add(1);
            }
        }
        self.fleet = Fleet::new(generated);
    }
}

/// The rack's max-unavailable gate, the one rule every place that moves hosts applies (the
/// relay handing out goals, the simulated hosts): one more host of a rack may begin updating
/// a service while `updating` hosts of the rack are mid-update on it, if that is below
/// `max_unavailable_per_rack`. A limit of 0 is taken as 1, so a rollout always moves.
pub fn may_begin_update(updating: usize, max_unavailable_per_rack: u32) -> bool {
    updating < max_unavailable_per_rack.max(1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rack_gate_admits_below_its_limit_and_always_one() {
        assert!(may_begin_update(0, 2) && may_begin_update(1, 2));
        assert!(!may_begin_update(2, 2) && !may_begin_update(3, 2));
        assert!(may_begin_update(0, 0) && !may_begin_update(1, 0));
    }

    /// What the index must agree with: a scan of every rack.
    fn scanned<'a>(config: &'a ClusterConfig, host: &str) -> Option<&'a RackConfig> {
        config
            .racks()
            .iter()
            .find(|r| r.hosts.iter().any(|h| h == host))
    }

    #[test]
    fn the_host_and_relay_index_agrees_with_the_racks() {
        let config = ClusterConfig::local();
        let mut seen = 0;
        for rack in config.racks() {
            for h in &rack.hosts {
                let place = config.host(h).expect("a listed host is found");
                assert_eq!(place.rack, scanned(&config, h).expect("scan finds it"));
                assert_eq!(place.region, rack.region);
                seen += 1;
            }
            for relay in &rack.relays {
                let (r, x) = config.relay(&relay.id).expect("a listed relay is found");
                assert_eq!((r, x), (rack, relay));
            }
        }
        assert!(seen > 0, "local.toml lists hosts");
        assert!(config.host("no-such-host").is_none());
        assert!(config.relay("no-such-relay").is_none());
    }

    #[test]
    fn generated_racks_replace_the_index() {
        let mut config = ClusterConfig::local();
        assert!(config.host("us-east-2-h4").is_some());
        config.generate_racks(1, 1, 20_000);
        assert!(
            config.host("us-east-2-h4").is_none(),
            "the old racks' hosts are gone"
        );
        assert!(config.relay("us-east-rack-2-relay").is_none());
        config.generate_racks(3, 5, 20_000);
        let region = config.racks()[0].region.clone();
        let place = config
            .host(&format!("{region}-3-h5"))
            .expect("a generated host");
        assert_eq!(place.rack.name, "rack-3");
        assert_eq!(
            config
                .relay(&format!("{region}-rack-2-relay"))
                .map(|(r, _)| r.name.as_str()),
            Some("rack-2")
        );
        let hosts: usize = config.racks().iter().map(|r| r.hosts.len()).sum();
        assert_eq!(hosts, 15 * config.regions().count());
    }
}
