//! The invariants checked once the cluster has healed and converged, from what every node
//! holds on its own (stale reads answered by each replica itself) and what the clients were
//! told.

use std::collections::{BTreeMap, BTreeSet};

use deploy_proto::v1 as pb;
use deploy_proto::v1::region_service_client::RegionServiceClient;
use serde::Serialize;

use crate::cluster::Cluster;
use crate::control;
use crate::history::{Op, OpKind, Outcome};

/// One invariant's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub name: String,
    pub passed: bool,
    /// What was checked (figures), or what broke.
    pub detail: String,
    pub violations: Vec<String>,
}

impl Verdict {
    pub fn new(name: &str, detail: String, violations: Vec<String>) -> Self {
        Self {
            name: name.to_string(),
            passed: violations.is_empty(),
            detail,
            violations,
        }
    }
}

/// What each replica holds, read from itself.
#[derive(Default)]
pub struct Replicas {
    /// Global node -> its builds by id.
    pub builds: BTreeMap<String, BTreeMap<String, pb::Build>>,
    /// Global node -> its releases by id.
    pub releases: BTreeMap<String, BTreeMap<String, pb::Release>>,
    /// Region node -> (its status, its hosts).
    pub regions: BTreeMap<String, (pb::RegionStatusReply, Vec<pb::Host>)>,
    /// Nodes that did not answer, and why.
    pub unreadable: Vec<String>,
}

/// Reads every replica of every group from the replica itself.
pub async fn read_replicas(cluster: &Cluster) -> Replicas {
    let mut r = Replicas::default();
    for n in &cluster.layout.nodes {
        let Ok(c) = cluster.control(&n.name) else {
            continue;
        };
        let c = c.with_timeout(std::time::Duration::from_secs(10));
        match &n.region {
            None => match (
                control::builds(&c, true).await,
                control::releases(&c, true).await,
            ) {
                (Ok(b), Ok(rel)) => {
                    r.builds.insert(
                        n.name.clone(),
                        b.into_iter().map(|b| (b.id.clone(), b)).collect(),
                    );
                    r.releases.insert(
                        n.name.clone(),
                        rel.into_iter().map(|x| (x.id.clone(), x)).collect(),
                    );
                }
                (Err(e), _) | (_, Err(e)) => r.unreadable.push(format!("{}: {e}", n.name)),
            },
            Some(region) => {
                let status = c
                    .region_status(pb::RegionStatusRequest {
                        region: region.clone(),
                        stale: true,
                    })
                    .await
                    .map_err(|e| e.to_string());
                match (status, control::hosts(&c, region, true).await) {
                    (Ok(s), Ok(h)) => {
                        r.regions.insert(n.name.clone(), (s, h));
                    }
                    (Err(e), _) | (_, Err(e)) => r.unreadable.push(format!("{}: {e}", n.name)),
                }
            }
        }
    }
    r
}

/// Every acknowledged build, release and operator decision is on every replica of the
/// global group, as the client was told it.
pub fn acknowledged_everywhere(history: &[Op], rep: &Replicas) -> Verdict {
    let mut v = Vec::new();
    let (mut builds, mut releases, mut actions) = (0, 0, 0);
    for op in history {
        match (&op.kind, &op.outcome) {
            (OpKind::SubmitBuild { commit }, Outcome::Build(b)) => {
                builds += 1;
                for (node, held) in &rep.builds {
                    match held.get(&b.id) {
                        None => v.push(format!(
                            "build {} (commit {}) was acknowledged (op {}) but {node} does not hold it",
                            b.id, short(commit), op.id
                        )),
                        Some(x) if x.commit != *commit || x.service != b.service => v.push(format!(
                            "build {} was acknowledged for commit {} (op {}) but {node} holds it for commit {}",
                            b.id, short(commit), op.id, short(&x.commit)
                        )),
                        Some(_) => {}
                    }
                }
            }
            (OpKind::CreateRelease { build, tag }, Outcome::Release(r)) => {
                releases += 1;
                for (node, held) in &rep.releases {
                    match held.get(&r.id) {
                        None => v.push(format!(
                            "release {} was acknowledged (op {}) but {node} does not hold it",
                            r.id, op.id
                        )),
                        Some(x) if x.created_by != *tag || x.build_id != *build => v.push(format!(
                            "release {} was acknowledged as {tag}'s of {build} (op {}) but {node} holds {}'s of {}",
                            r.id, op.id, x.created_by, x.build_id
                        )),
                        Some(_) => {}
                    }
                }
            }
            (
                OpKind::ReleaseAction {
                    release,
                    action,
                    tag,
                },
                Outcome::Release(_),
            ) => {
                actions += 1;
                for (node, held) in &rep.releases {
                    let found = held.get(release).is_some_and(|x| {
                        x.history
                            .iter()
                            .any(|e| e.by == *tag && e.what.starts_with(action.as_str()))
                    });
                    if !found {
                        v.push(format!(
                            "{action} of {release} was acknowledged (op {}, {tag}) but {node} does not record it",
                            op.id
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    let nodes = rep.builds.len();
    Verdict::new(
        "acknowledged writes are on every replica",
        format!("{builds} builds, {releases} releases, {actions} operator actions, each on {nodes} global nodes"),
        v,
    )
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(10)]
}

/// No build SUCCEEDED twice or with two artifacts, no two SUCCEEDED builds of one commit,
/// and no build id given to two commits.
/// In a run whose faults never keep a live worker from renewing (`may_cost_a_lease` is
/// false for all of them: a skewed clock is one), no build's lease may expire: an expiry there
/// means a leader took its own wall clock, or another's, for the lease's.
pub fn no_lease_expired(rep: &Replicas, applies: bool) -> Verdict {
    let name = "no lease expired under a live worker";
    if !applies {
        return Verdict::new(
            name,
            "not checked: the run's faults may cost leases".into(),
            vec![],
        );
    }
    let mut seen = BTreeSet::new();
    let mut v = Vec::new();
    for builds in rep.builds.values() {
        for b in builds.values() {
            for t in &b.history {
                if t.note.contains("lease of")
                    && t.note.contains("expired")
                    && seen.insert((b.id.clone(), t.note.clone()))
                {
                    v.push(format!("{}: {}", b.id, t.note));
                }
            }
        }
    }
    let n: usize = rep.builds.values().map(BTreeMap::len).max().unwrap_or(0);
    Verdict::new(name, format!("{n} builds' histories read"), v)
}

pub fn one_success_per_build(history: &[Op], rep: &Replicas) -> Verdict {
    let mut v = Vec::new();
    let mut digests: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut commit_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for op in history {
        if let Outcome::Build(b) = &op.outcome {
            if !b.digest.is_empty() {
                digests
                    .entry(b.id.clone())
                    .or_default()
                    .insert(b.digest.clone());
            }
            commit_of
                .entry(b.id.clone())
                .or_default()
                .insert(b.commit.clone());
        }
    }
    let mut succeeded_by_commit: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for held in rep.builds.values() {
        for b in held.values() {
            if !b.artifact_digest.is_empty() {
                digests
                    .entry(b.id.clone())
                    .or_default()
                    .insert(b.artifact_digest.clone());
            }
            commit_of
                .entry(b.id.clone())
                .or_default()
                .insert(b.commit.clone());
            let successes = b
                .history
                .iter()
                .filter(|t| t.state().name() == "SUCCEEDED")
                .count();
            if successes > 1 {
                v.push(format!("build {} SUCCEEDED {successes} times", b.id));
            }
            if b.state().name() == "SUCCEEDED" {
                succeeded_by_commit
                    .entry(format!("{}/{}", b.service, b.commit))
                    .or_default()
                    .insert(b.id.clone());
            }
        }
    }
    for (id, d) in &digests {
        if d.len() > 1 {
            v.push(format!(
                "build {id} was seen with {} artifacts: {d:?}",
                d.len()
            ));
        }
    }
    for (id, c) in &commit_of {
        if c.len() > 1 {
            v.push(format!("build id {id} was given to {} commits", c.len()));
        }
    }
    for (key, ids) in &succeeded_by_commit {
        if ids.len() > 1 {
            v.push(format!(
                "commit {key} has {} SUCCEEDED builds: {ids:?}",
                ids.len()
            ));
        }
    }
    let n = rep.builds.values().map(BTreeMap::len).max().unwrap_or(0);
    Verdict::new(
        "one success, one artifact per build",
        format!("{n} builds, {} with an artifact", digests.len()),
        v,
    )
}

/// Every release and operator decision in the cluster comes from exactly one call: none is
/// applied twice (a retried write) or from nowhere.
pub fn no_duplicate_or_phantom_writes(history: &[Op], rep: &Replicas) -> Verdict {
    let mut v = Vec::new();
    let mut creates: BTreeSet<&str> = BTreeSet::new();
    let mut acts: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    for op in history {
        match &op.kind {
            OpKind::CreateRelease { tag, .. } => {
                creates.insert(tag);
            }
            OpKind::ReleaseAction {
                release,
                action,
                tag,
            } => {
                acts.insert(tag, (release, action));
            }
            _ => {}
        }
    }
    let Some((node, releases)) = rep.releases.iter().next() else {
        return Verdict::new(
            "no duplicate or phantom writes",
            "no replica read".into(),
            vec!["no global replica could be read".into()],
        );
    };
    let mut by_tag: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut events = 0;
    for r in releases.values() {
        if r.created_by.starts_with("chaos-") {
            by_tag.entry(&r.created_by).or_default().push(&r.id);
            if !creates.contains(r.created_by.as_str()) {
                v.push(format!(
                    "{node}: release {} was created by {}, which no call was",
                    r.id, r.created_by
                ));
            }
        }
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for e in &r.history {
            if !e.by.starts_with("chaos-act-") && !e.by.starts_with("chaos-finish-") {
                continue;
            }
            events += 1;
            *seen.entry(&e.by).or_default() += 1;
            match acts.get(e.by.as_str()) {
                Some((rel, action)) if *rel == r.id && e.what.starts_with(action) => {}
                _ => v.push(format!(
                    "{node}: release {} records {:?} by {}, which no call asked for",
                    r.id, e.what, e.by
                )),
            }
        }
        for (tag, n) in seen {
            if n > 1 {
                v.push(format!(
                    "{node}: release {} records {tag}'s action {n} times",
                    r.id
                ));
            }
        }
    }
    for (tag, ids) in by_tag {
        if ids.len() > 1 {
            v.push(format!(
                "{tag}'s one CreateRelease made {} releases: {ids:?}",
                ids.len()
            ));
        }
    }
    Verdict::new(
        "no duplicate or phantom writes",
        format!(
            "{} releases and {events} operator decisions traced to their calls",
            releases.len()
        ),
        v,
    )
}

/// The region's decisions, as the global group holds them: region -> the numbers of the
/// decisions addressed to it.
pub async fn decisions_for(
    cluster: &Cluster,
    global_leader: &str,
    region: &str,
) -> Result<Vec<u64>, String> {
    let n = cluster.layout.node(global_leader).ok_or("unknown node")?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", n.listen))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut client = RegionServiceClient::new(channel);
    let mut after = 0;
    let mut out = Vec::new();
    loop {
        let reply = client
            .pull_decisions(pb::PullDecisionsRequest {
                region: region.into(),
                after,
                limit: 256,
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        let ds: Vec<serde_json::Value> =
            serde_json::from_slice(&reply.decisions).map_err(|e| e.to_string())?;
        out.extend(
            ds.iter()
                .filter_map(|d| d.get("seq").and_then(serde_json::Value::as_u64)),
        );
        if reply.upto <= after || ds.is_empty() {
            return Ok(out);
        }
        after = reply.upto;
    }
}

/// Every region replica applied every decision the global group addressed to its region,
/// and the replicas of a region agree on its releases and on every host's goal.
pub async fn regions_agree(cluster: &Cluster, rep: &Replicas, global_leader: &str) -> Verdict {
    let mut v = Vec::new();
    let mut detail = Vec::new();
    for region in &cluster.layout.regions {
        let decisions = match decisions_for(cluster, global_leader, region).await {
            Ok(d) => d,
            Err(e) => {
                v.push(format!(
                    "{region}: cannot read its decisions from the global group: {e}"
                ));
                continue;
            }
        };
        let last = decisions.iter().copied().max().unwrap_or(0);
        let members: Vec<&String> = rep
            .regions
            .keys()
            .filter(|n| cluster.layout.node(n).and_then(|x| x.region.as_ref()) == Some(region))
            .collect();
        // The first replica read: its name, its releases' states and its hosts' goals.
        type View<'a> = (&'a String, Vec<(String, String)>, Vec<(String, String)>);
        let mut first: Option<View> = None;
        for m in members {
            let (status, hosts) = &rep.regions[m];
            if status.applied_decision < last {
                v.push(format!(
                    "{m} applied decisions up to {} of {region}'s {last}",
                    status.applied_decision
                ));
            }
            let rels: Vec<(String, String)> = status
                .releases
                .iter()
                .map(|r| (r.id.clone(), r.state().name().to_string()))
                .collect();
            let goals: Vec<(String, String)> = hosts
                .iter()
                .map(|h| (h.host.clone(), crate::hosts::view(h).goal))
                .collect();
            match &first {
                None => first = Some((m, rels, goals)),
                Some((other, r0, g0)) => {
                    if *r0 != rels {
                        v.push(format!("{m} and {other} disagree on {region}'s releases"));
                    }
                    if *g0 != goals {
                        v.push(format!("{m} and {other} disagree on {region}'s goals"));
                    }
                }
            }
        }
        detail.push(format!("{region}: {} decisions", decisions.len()));
    }
    Verdict::new(
        "region replicas hold every decision and agree",
        detail.join(", "),
        v,
    )
}
