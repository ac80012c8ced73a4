//! The record of every client operation: what was asked, through which node, when it was
//! invoked and when it returned (monotonic microseconds), and what came back.

use std::sync::Mutex;
use std::time::Instant;

use deploy_client::ClientError;
use deploy_proto::v1 as pb;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpKind {
    SubmitBuild {
        commit: String,
    },
    GetBuild {
        id: String,
    },
    CreateRelease {
        build: String,
        tag: String,
    },
    ReleaseAction {
        release: String,
        action: String,
        tag: String,
    },
    GetRelease {
        id: String,
    },
    ListBuilds,
    ListReleases,
}

impl OpKind {
    pub fn name(&self) -> &'static str {
        match self {
            OpKind::SubmitBuild { .. } => "submit-build",
            OpKind::GetBuild { .. } => "get-build",
            OpKind::CreateRelease { .. } => "create-release",
            OpKind::ReleaseAction { .. } => "release-action",
            OpKind::GetRelease { .. } => "get-release",
            OpKind::ListBuilds => "list-builds",
            OpKind::ListReleases => "list-releases",
        }
    }

    pub fn is_write(&self) -> bool {
        matches!(
            self,
            OpKind::SubmitBuild { .. }
                | OpKind::CreateRelease { .. }
                | OpKind::ReleaseAction { .. }
        )
    }
}

/// What a build looked like to a client.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct BuildObs {
    pub id: String,
    pub service: String,
    pub repo: String,
    pub commit: String,
    pub state: String,
    pub digest: String,
    pub created: bool,
    /// (state, at_ms, note), oldest first.
    pub history: Vec<(String, u64, String)>,
}

impl From<&pb::Build> for BuildObs {
    fn from(b: &pb::Build) -> Self {
        Self {
            id: b.id.clone(),
            service: b.service.clone(),
            repo: b.repo.clone(),
            commit: b.commit.clone(),
            state: b.state().name().to_string(),
            digest: b.artifact_digest.clone(),
            created: b.created,
            history: b
                .history
                .iter()
                .map(|t| (t.state().name().to_string(), t.at_ms, t.note.clone()))
                .collect(),
        }
    }
}

/// What a release looked like to a client.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ReleaseObs {
    pub id: String,
    pub build: String,
    pub state: String,
    pub created_by: String,
    /// (at_ms, by, what), oldest first.
    pub history: Vec<(u64, String, String)>,
}

impl From<&pb::Release> for ReleaseObs {
    fn from(r: &pb::Release) -> Self {
        Self {
            id: r.id.clone(),
            build: r.build_id.clone(),
            state: r.state().name().to_string(),
            created_by: r.created_by.clone(),
            history: r
                .history
                .iter()
                .map(|e| (e.at_ms, e.by.clone(), e.what.clone()))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Build(BuildObs),
    Release(ReleaseObs),
    /// A page of a list: each entry is a read of that object.
    Builds {
        builds: Vec<BuildObs>,
    },
    Releases {
        releases: Vec<ReleaseObs>,
    },
    /// A definite refusal: the call changed nothing.
    Refused {
        code: String,
        message: String,
    },
    /// The call may or may not have taken effect (a timeout, a lost connection, an answer
    /// that does not say).
    Unknown {
        message: String,
    },
}

impl Outcome {
    pub fn acknowledged(&self) -> bool {
        matches!(
            self,
            Outcome::Build(_)
                | Outcome::Release(_)
                | Outcome::Builds { .. }
                | Outcome::Releases { .. }
        )
    }

    /// A refusal saying the object does not exist.
    pub fn not_found(&self) -> bool {
        matches!(self, Outcome::Refused { code, .. } if code == "NotFound")
    }

    /// How a failed call ended: a code the server sends only for requests it did not apply
    /// is a refusal; anything else may have been applied.
    pub fn from_error(e: &ClientError) -> Self {
        match e {
            // Nothing was sent: no node accepted the connection.
            ClientError::Unavailable { reason, .. } => Outcome::Refused {
                code: "NotConnected".into(),
                message: reason.clone(),
            },
            ClientError::BadEndpoint { reason, .. } => Outcome::Refused {
                code: "BadEndpoint".into(),
                message: reason.clone(),
            },
            ClientError::Api { code, message, .. } => {
                let definite = matches!(
                    code,
                    tonic::Code::InvalidArgument
                        | tonic::Code::NotFound
                        | tonic::Code::FailedPrecondition
                        | tonic::Code::AlreadyExists
                        | tonic::Code::OutOfRange
                        | tonic::Code::PermissionDenied
                        | tonic::Code::Unauthenticated
                );
                if definite {
                    Outcome::Refused {
                        code: format!("{code:?}"),
                        message: message.clone(),
                    }
                } else {
                    Outcome::Unknown {
                        message: format!("{code:?}: {message}"),
                    }
                }
            }
        }
    }
}

/// One client operation.
#[derive(Debug, Clone, Serialize)]
pub struct Op {
    pub id: u64,
    #[serde(flatten)]
    pub kind: OpKind,
    /// The node the client sent it to.
    pub via: String,
    /// Invoked and returned, microseconds since the workload started.
    pub start_us: u64,
    pub end_us: u64,
    #[serde(flatten)]
    pub outcome: Outcome,
}

pub struct History {
    t0: Instant,
    ops: Mutex<Vec<Op>>,
}

impl History {
    pub fn new(t0: Instant) -> Self {
        Self {
            t0,
            ops: Mutex::default(),
        }
    }

    pub fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.t0).as_micros() as u64
    }

    pub fn record(&self, kind: OpKind, via: &str, started: Instant, outcome: Outcome) -> u64 {
        let end_us = self.micros(Instant::now());
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let id = ops.len() as u64;
        ops.push(Op {
            id,
            kind,
            via: via.to_string(),
            start_us: self.micros(started),
            end_us,
            outcome,
        });
        id
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
