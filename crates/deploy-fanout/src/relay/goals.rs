//! What a relay and its hosts exchange: goals (a host's target build per service) and reports.

use super::*;

/// What a host is told to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostGoal {
    pub service: String,
    pub build_id: String,
    pub artifact_digest: Digest,
    pub release: String,
}

impl HostGoal {
    /// The goal a region's reply names, parsed once; a malformed digest is refused.
    pub fn from_proto(g: pb::ServiceGoal) -> Result<Self, deploy_types::DigestError> {
        Ok(Self {
            artifact_digest: Digest::parse(&g.artifact_digest)?,
            service: g.service,
            build_id: g.build_id,
            release: g.release,
        })
    }

    /// The goals of a reply, without (and warning of) any that does not parse.
    pub fn all_from_proto(goals: Vec<pb::ServiceGoal>) -> Vec<RackGoal> {
        goals
            .into_iter()
            .filter_map(|g| {
                let max_unavailable_per_rack = g.max_unavailable_per_rack;
                match Self::from_proto(g) {
                    Ok(goal) => Some(RackGoal {
                        goal,
                        max_unavailable_per_rack,
                    }),
                    Err(e) => {
                        warn!(error = %e, "a goal from the region is malformed; ignored");
                        None
                    }
                }
            })
            .collect()
    }
}

/// A goal as a relay holds it: what the host is told, and how many of the rack may take it
/// at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RackGoal {
    pub goal: HostGoal,
    pub max_unavailable_per_rack: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GoalReply {
    pub version: u64,
    /// What the host may act on now (a new build waits its turn in the rack).
    pub goals: Vec<HostGoal>,
    pub report_every_ms: u64,
    /// The region's goals for this host are known (heard from its leader, the host
    /// registered there): then a service not in `services` is one the host must stop.
    #[serde(default)]
    pub known: bool,
    /// Every service the region wants on this host, whether or not its turn has come.
    #[serde(default)]
    pub services: Vec<String>,
}

/// A host's state per service, as its agent reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentReport {
    pub host: String,
    pub services: Vec<ServiceState>,
    /// Its chunk server, when it serves its rack's peers.
    #[serde(default)]
    pub peer: Option<super::exchange::PeerInfo>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    pub service: String,
    pub build_id: String,
    /// By its name in JSON (`HEALTHY`).
    #[serde(with = "deploy_proto::names::service_state::typed")]
    pub state: pb::ServiceState,
    pub detail: String,
}

impl AgentReport {
    /// The report as the region's API carries it.
    pub fn to_proto(&self) -> pb::HostReport {
        pb::HostReport {
            host: self.host.clone(),
            services: self
                .services
                .iter()
                .map(|s| pb::ServiceReport {
                    service: s.service.clone(),
                    build_id: s.build_id.clone(),
                    state: s.state as i32,
                    detail: s.detail.clone(),
                })
                .collect(),
        }
    }
}
