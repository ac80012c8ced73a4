//! One chaos run, start to end: make the cluster, run the workload under the fault schedule,
//! heal, wait for convergence, check every invariant, report.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::check::{self, Verdict};
use crate::cluster::{mount_tmpfs, Cluster, Kind};
use crate::control;
use crate::fault::{self, FaultKind};
use crate::history::History;
use crate::hosts;
use crate::inject::Injector;
use crate::layout::Layout;
use crate::lin;
use crate::logs;
use crate::net::Net;
use crate::report::{count_ops, Report};
use crate::scenario::Scenario;
use crate::workload::Workload;

/// How a run is set up.
#[derive(Debug, Clone)]
pub struct Options {
    pub scenario: Scenario,
    pub seed: u64,
    pub duration: Duration,
    /// The `deployd` binary every process runs.
    pub deployd: PathBuf,
    /// Where the run keeps its data; a fresh temporary directory if `None`.
    pub dir: Option<PathBuf>,
    /// Keep the run's directory even when nothing broke.
    pub keep: bool,
    /// The replay command to print (how this run was started).
    pub replay: String,
}

const TMPFS_MIB: u64 = 192;
/// The agents' download limit: transfers take a while, so relays and agents die mid-way.
const AGENT_DOWN_LIMIT: u64 = 1 << 20;

fn progress(msg: impl AsRef<str>) {
    eprintln!("chaos: {}", msg.as_ref());
}

/// Runs one scenario and returns its report (violations in it, not as an error: an error
/// means the harness itself could not run).
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    let wall = Instant::now();
    let scenario = &opts.scenario;
    let duration_ms = opts.duration.as_millis() as u64;
    let (dir, tempdir) = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            (d.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new().prefix("chaos-").tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let dir = dir.canonicalize()?;
    let key_path = dir.join("keys").join("build.key");
    let key = deploy_artifact::KeyPair::generate()?;
    key.save(&key_path)
        .with_context(|| format!("cannot write {}", key_path.display()))?;
    let public = key.public_hex();
    let trusted = deploy_artifact::TrustedKeys::parse(std::slice::from_ref(&public))?;
    for r in &scenario.cluster.regions {
        std::fs::create_dir_all(dir.join("stores").join(r))?;
    }
    let w = &scenario.workload;
    let commits_needed = (duration_ms / w.build_every_ms.0.max(1)) as usize + 5;
    progress(format!(
        "{}: making a repository of {} commits in {}",
        scenario.name,
        commits_needed.min(400),
        dir.display()
    ));
    let commits = crate::workload::make_repo(
        &dir.join("repo"),
        commits_needed.min(400),
        w.artifact_bytes,
        w.unhealthy_pct,
        opts.seed,
    )?;
    let mut layout = Layout::new(&scenario.cluster)?;
    let proxies = std::mem::take(&mut layout.proxies);
    let config = layout.config_toml(&dir, &public, &key_path);
    // Disk-full faults need each node's data on a small filesystem of its own.
    let wants_disk = scenario
        .faults
        .weights
        .get(&FaultKind::DiskFull)
        .is_some_and(|w| *w > 0);
    let mut tmpfs = Vec::new();
    let mut disk_note = None;
    if wants_disk {
        for n in &layout.nodes {
            let d = dir.join("nodes").join(&n.name);
            match mount_tmpfs(&d, TMPFS_MIB) {
                Ok(()) => tmpfs.push(d),
                Err(e) => {
                    disk_note = Some(e.to_string());
                    break;
                }
            }
        }
        if let Some(e) = &disk_note {
            progress(format!("disk-full faults will be skipped: {e}"));
        }
    }
    let net = Net::new(layout.node_ips());
    let cluster = Arc::new(Cluster::new(
        &dir,
        layout,
        opts.deployd.clone(),
        &config,
        tmpfs,
        AGENT_DOWN_LIMIT,
    )?);
    let stop_proxies = CancellationToken::new();
    for (name, listener, upstream) in proxies {
        listener.set_nonblocking(true)?;
        let l = tokio::net::TcpListener::from_std(listener)?;
        tokio::spawn(net.clone().serve(l, name, upstream, stop_proxies.clone()));
    }
    let outcome = drive(
        &opts,
        cluster.clone(),
        net.clone(),
        commits,
        &trusted,
        disk_note,
    )
    .await;
    stop_proxies.cancel();
    let mut report = outcome?;
    report.wall_ms = wall.elapsed().as_millis() as u64;
    report.dir = dir.display().to_string();
    drop(cluster);
    match tempdir {
        Some(t) if report.passed() && !opts.keep => drop(t),
        Some(t) => {
            let kept = t.keep();
            report.dir = kept.display().to_string();
        }
        None => {}
    }
    Ok(report)
}

async fn wait_fleet(cluster: &Cluster) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut missing = Vec::new();
        for region in &cluster.layout.regions {
            let want = cluster
                .layout
                .hosts
                .iter()
                .filter(|h| &h.region == region)
                .count();
            let group = format!("region/{region}");
            let got = match control::leader(cluster, &group).await {
                Some(l) => match cluster.control(&l) {
                    Ok(c) => control::hosts(&c, region, false)
                        .await
                        .map(|h| h.len())
                        .unwrap_or(0),
                    Err(_) => 0,
                },
                None => 0,
            };
            if got < want {
                missing.push(format!("{region}: {got}/{want} hosts registered"));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the fleet did not come up within 90 s: {}",
                missing.join(", ")
            );
        }
        cluster.supervise();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn drive(
    opts: &Options,
    cluster: Arc<Cluster>,
    net: Net,
    commits: Vec<crate::workload::Commit>,
    trusted: &deploy_artifact::TrustedKeys,
    disk_note: Option<String>,
) -> anyhow::Result<Report> {
    let scenario = &opts.scenario;
    let duration_ms = opts.duration.as_millis() as u64;
    let groups: Vec<String> = cluster.layout.groups().into_keys().collect();
    progress(format!(
        "starting {} nodes, {} workers, {} relays and {} agents ({})",
        cluster.layout.nodes.len(),
        cluster.layout.workers.len(),
        cluster.layout.relays.len(),
        cluster.layout.hosts.len(),
        opts.deployd.display()
    ));
    cluster.start_all(Kind::Node)?;
    for g in &groups {
        if control::wait_leader(&cluster, g, Duration::from_secs(60))
            .await
            .is_none()
        {
            anyhow::bail!(
                "group {g} elected no leader within 60 s; last log lines of its first member:\n{}",
                cluster.log_tail(&cluster.layout.members(g)[0].name, 20)
            );
        }
    }
    cluster.start_all(Kind::Worker)?;
    cluster.start_all(Kind::Relay)?;
    cluster.start_all(Kind::Agent)?;
    wait_fleet(&cluster).await?;

    // The supervisor: restarts what exits on its own, records how it ended.
    let stop_supervisor = CancellationToken::new();
    let supervisor = {
        let (c, stop) = (cluster.clone(), stop_supervisor.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                c.supervise();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    // Cheap continuous check: never two leaders in one term of one group.
    let split_brain = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop_monitor = CancellationToken::new();
    let monitor = {
        let (c, stop, found, groups) = (
            cluster.clone(),
            stop_monitor.clone(),
            split_brain.clone(),
            groups.clone(),
        );
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                for g in &groups {
                    let mut leaders: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
                    for (name, s) in control::group_status(&c, g).await {
                        if let Some(s) = s.filter(|s| s.role().name() == "LEADER") {
                            leaders.entry(s.term).or_default().insert(name);
                        }
                    }
                    for (term, names) in leaders {
                        if names.len() > 1 {
                            found
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(format!("{g}: {names:?} all lead term {term}"));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    let t0 = Instant::now();
    let history = Arc::new(History::new(t0));
    let timeout = Duration::from_millis(scenario.workload.call_timeout_ms);
    let mut clients = Vec::new();
    for n in &cluster.layout.nodes {
        clients.push((n.name.clone(), Arc::new(cluster.client(&n.name, timeout)?)));
    }
    let global = cluster.layout.members("global").len();
    let repo = cluster.dir.join("repo").display().to_string();
    let workload = Arc::new(Workload::new(
        history.clone(),
        scenario.workload.clone(),
        repo,
        commits,
        cluster.layout.regions.clone(),
        clients,
        global,
        opts.seed,
    ));
    let plan = fault::plan(scenario, opts.seed, duration_ms);
    progress(format!(
        "running the workload for {} s with {} faults planned (seed {})",
        duration_ms / 1000,
        plan.len(),
        opts.seed
    ));
    let injector = Arc::new(Injector::new(cluster.clone(), net.clone(), t0));
    let stop_faults = CancellationToken::new();
    let faults = tokio::spawn(injector.clone().run(plan.clone(), stop_faults.clone()));
    let stop_work = CancellationToken::new();
    let work = tokio::spawn(workload.clone().run(stop_work.clone()));
    tokio::time::sleep(opts.duration).await;
    stop_work.cancel();
    // Every fault heals by the end of the schedule; give the last ones their hold.
    if tokio::time::timeout(Duration::from_secs(60), faults)
        .await
        .is_err()
    {
        stop_faults.cancel();
    }
    let _ = tokio::time::timeout(Duration::from_secs(120), work).await;

    // Heal everything.
    net.heal_all();
    for d in &cluster.tmpfs {
        let _ = std::fs::remove_file(d.join(".chaos-filler"));
    }
    cluster.heal()?;
    let healed = Instant::now();
    progress("healed every fault; waiting for the cluster to converge");
    let bound = Duration::from_secs(scenario.converge_within_secs);
    let (converged, pending, host_views) = converge(&cluster, &workload, bound).await;
    let converged_after_ms = converged.then(|| healed.elapsed().as_millis() as u64);
    stop_monitor.cancel();
    let _ = monitor.await;

    progress("checking invariants");
    let mut verdicts: Vec<Verdict> = Vec::new();
    let ops = history.ops();
    // Every call, for whoever reads a violation: the run's directory is kept when one is found.
    if let Ok(json) = serde_json::to_vec_pretty(&ops) {
        let _ = std::fs::write(cluster.dir.join("history.json"), json);
    }
    let replicas = check::read_replicas(&cluster).await;
    let mut unread = replicas.unreadable.clone();
    unread.sort();
    verdicts.push(Verdict::new(
        "every replica answers from its own state",
        format!(
            "{} global, {} regional replicas read",
            replicas.builds.len(),
            replicas.regions.len()
        ),
        unread
            .iter()
            .map(|u| format!("cannot read replica {u}"))
            .collect(),
    ));
    verdicts.push(check::acknowledged_everywhere(&ops, &replicas));
    verdicts.push(check::one_success_per_build(&ops, &replicas));
    verdicts.push(check::no_duplicate_or_phantom_writes(&ops, &replicas));
    let lease_safe = scenario
        .faults
        .weights
        .iter()
        .all(|(k, w)| *w == 0 || !k.may_cost_a_lease());
    verdicts.push(check::no_lease_expired(&replicas, lease_safe));
    let global_leader = control::wait_leader(&cluster, "global", Duration::from_secs(10)).await;
    match &global_leader {
        Some(l) => verdicts.push(check::regions_agree(&cluster, &replicas, l).await),
        None => verdicts.push(Verdict::new(
            "region replicas hold every decision and agree",
            String::new(),
            vec!["the global group has no leader to read decisions from".into()],
        )),
    }
    verdicts.push(Verdict::new(
        "no stuck build or release",
        format!(
            "every build and release final within {} s of healing",
            scenario.converge_within_secs
        ),
        if converged {
            Vec::new()
        } else {
            pending.clone()
        },
    ));
    let (host_verdict, hosts_ok) = check_hosts(
        &cluster,
        &replicas,
        &host_views,
        trusted,
        &commits_of(&workload),
    )
    .await;
    verdicts.push(host_verdict);
    let split: Vec<String> = split_brain
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    verdicts.push(Verdict::new(
        "at most one leader per term",
        "every group's members polled every 500 ms".into(),
        split,
    ));

    if let Some(secs) = std::env::var("CHAOS_HOLD_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        progress(format!(
            "holding the cluster for {secs} s (CHAOS_HOLD_SECS)"
        ));
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    progress("stopping the cluster");
    stop_supervisor.cancel();
    let _ = supervisor.await;
    {
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || c.stop_all()).await?;
    }
    verdicts.push(compare_logs(&cluster, &groups).await);

    progress(format!(
        "checking linearizability of {} operations",
        ops.len()
    ));
    let dead: BTreeSet<String> = replicas
        .builds
        .values()
        .next()
        .map(|b| {
            b.values()
                .filter(|b| matches!(b.state().name(), "FAILED" | "CANCELLED"))
                .map(|b| b.id.clone())
                .collect()
        })
        .unwrap_or_default();
    let lin_ops = ops.clone();
    let lin = tokio::task::spawn_blocking(move || lin::check_history(&lin_ops, &dead)).await?;
    verdicts.push(Verdict::new(
        "the build and release API is linearizable",
        format!(
            "{} objects, {} calls, WGL (todc-utils)",
            lin.objects, lin.calls
        ),
        lin.failures
            .iter()
            .map(|f| format!("{} is not linearizable: {}", f.object, f.detail))
            .collect(),
    ));
    let exits: Vec<crate::cluster::Exit> = cluster
        .exits
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    verdicts.push(Verdict::new(
        "no process exits on its own",
        "besides nodes whose disk was full".into(),
        exits
            .iter()
            .filter(|e| !e.expected)
            .map(|e| {
                format!(
                    "{} exited on its own at {:.1} s: {}",
                    e.process,
                    e.at_ms as f64 / 1000.0,
                    e.status
                )
            })
            .collect(),
    ));

    let injected = injector
        .injected
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut injected = injected;
    injected.sort_by_key(|i| i.index);
    if let Some(note) = &disk_note {
        for i in injected
            .iter_mut()
            .filter(|i| i.kind == FaultKind::DiskFull)
        {
            i.skipped = Some(format!("no tmpfs: {note}"));
        }
    }
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for i in injected.iter().filter(|i| i.skipped.is_none()) {
        *by_kind.entry(i.kind.to_string()).or_default() += 1;
    }
    let (ops_by, ops_total) = count_ops(&ops);
    let tally = |states: Vec<String>| {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for s in states {
            *m.entry(s).or_default() += 1;
        }
        m
    };
    let builds_by_state = tally(
        replicas
            .builds
            .values()
            .next()
            .map(|b| b.values().map(|x| x.state().name().to_string()).collect())
            .unwrap_or_default(),
    );
    let releases_by_state = tally(
        replicas
            .releases
            .values()
            .next()
            .map(|r| r.values().map(|x| x.state().name().to_string()).collect())
            .unwrap_or_default(),
    );
    let violations: Vec<String> = verdicts.iter().flat_map(|v| v.violations.clone()).collect();
    let shape = &scenario.cluster;
    Ok(Report {
        scenario: scenario.name.clone(),
        seed: opts.seed,
        duration_ms,
        binary: opts.deployd.display().to_string(),
        replay: opts.replay.clone(),
        cluster: format!(
            "{} processes: global group of {}, {} regions of {} ({}), {} workers, {} relays, {} hosts",
            cluster.layout.process_names().len(),
            shape.global,
            shape.regions.len(),
            shape.region_nodes,
            shape.regions.join(", "),
            cluster.layout.workers.len(),
            cluster.layout.relays.len(),
            cluster.layout.hosts.len()
        ),
        faults_injected: injected.iter().filter(|i| i.skipped.is_none()).count(),
        faults_skipped: injected.iter().filter(|i| i.skipped.is_some()).count(),
        planned: plan,
        faults: injected,
        faults_by_kind: by_kind,
        ops: ops_by,
        ops_total,
        linearizable: lin.failures.is_empty(),
        invariants: verdicts,
        violations,
        converged_after_ms,
        hosts: cluster.layout.hosts.len(),
        hosts_converged: hosts_ok,
        builds_by_state,
        releases_by_state,
        exits,
        dir: String::new(),
        wall_ms: 0,
    })
}

fn commits_of(w: &Workload) -> BTreeMap<String, bool> {
    w.commits()
        .iter()
        .map(|c| (c.sha.clone(), c.healthy))
        .collect()
}

/// Waits until every group agrees, every build and release is final (resuming paused ones)
/// and every host runs its goal, within `bound`. Returns whether it did, what was still
/// pending, and the hosts as their regions' leaders last saw them.
async fn converge(
    cluster: &Cluster,
    workload: &Workload,
    bound: Duration,
) -> (bool, Vec<String>, Vec<hosts::HostView>) {
    let deadline = Instant::now() + bound;
    let healthy = commits_of(workload);
    let mut pending;
    let mut views = Vec::new();
    loop {
        pending = Vec::new();
        for g in cluster.layout.groups().keys() {
            if let Err(e) = control::group_converged(cluster, g).await {
                pending.push(e);
            }
        }
        let mut build_commit: BTreeMap<String, String> = BTreeMap::new();
        match control::leader(cluster, "global").await {
            None => pending.push("the global group has no leader".into()),
            Some(l) => {
                let client = cluster
                    .control(&l)
                    .map(|c| c.with_timeout(Duration::from_secs(10)));
                if let Ok(c) = client {
                    match control::builds(&c, false).await {
                        Ok(builds) => {
                            for b in &builds {
                                build_commit.insert(b.id.clone(), b.commit.clone());
                                if !b.state().is_final() {
                                    pending.push(format!("build {} is {}", b.id, b.state().name()));
                                }
                            }
                        }
                        Err(e) => pending.push(format!("cannot list builds: {e}")),
                    }
                    match control::releases(&c, false).await {
                        Ok(releases) => {
                            if releases.iter().any(|r| r.state().name() == "PAUSED") {
                                workload.resume_paused(&releases).await;
                            }
                            for r in &releases {
                                if !r.state().is_final() {
                                    pending.push(format!(
                                        "release {} is {}",
                                        r.id,
                                        r.state().name()
                                    ));
                                }
                            }
                        }
                        Err(e) => pending.push(format!("cannot list releases: {e}")),
                    }
                }
            }
        }
        views.clear();
        for region in &cluster.layout.regions {
            let group = format!("region/{region}");
            let Some(l) = control::leader(cluster, &group).await else {
                pending.push(format!("{group} has no leader"));
                continue;
            };
            let Ok(c) = cluster.control(&l) else { continue };
            match control::hosts(&c, region, false).await {
                Ok(hs) => {
                    for h in &hs {
                        let v = hosts::view(h);
                        let ok = build_commit
                            .get(&v.goal)
                            .and_then(|commit| healthy.get(commit).copied());
                        if let Some(why) = hosts::not_converged(&v, ok) {
                            pending.push(why);
                        }
                        views.push(v);
                    }
                }
                Err(e) => pending.push(format!("cannot list {region}'s hosts: {e}")),
            }
        }
        if views.len() < cluster.layout.hosts.len() {
            pending.push(format!(
                "{} of {} hosts registered",
                views.len(),
                cluster.layout.hosts.len()
            ));
        }
        if pending.is_empty() {
            return (true, pending, views);
        }
        if Instant::now() >= deadline {
            pending.truncate(20);
            let pending = pending
                .into_iter()
                .map(|p| format!("not converged within {} s of healing: {p}", bound.as_secs()))
                .collect();
            return (false, pending, views);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every host runs its region's goal, and its files are the signed artifact's.
async fn check_hosts(
    cluster: &Cluster,
    replicas: &check::Replicas,
    views: &[hosts::HostView],
    trusted: &deploy_artifact::TrustedKeys,
    healthy: &BTreeMap<String, bool>,
) -> (Verdict, usize) {
    let mut v = Vec::new();
    let builds = replicas.builds.values().next().cloned().unwrap_or_default();
    let mut trees: BTreeMap<(String, String), Result<hosts::Tree, String>> = BTreeMap::new();
    let mut ok = 0;
    for spec in &cluster.layout.hosts {
        let Some(view) = views.iter().find(|x| x.host == spec.id) else {
            v.push(format!("{}: its region does not know it", spec.id));
            continue;
        };
        let goal_ok = builds
            .get(&view.goal)
            .and_then(|b| healthy.get(&b.commit).copied());
        if let Some(why) = hosts::not_converged(view, goal_ok) {
            v.push(why);
            continue;
        }
        if view.goal.is_empty() {
            ok += 1;
            continue;
        }
        let Some(build) = builds.get(&view.goal) else {
            v.push(format!(
                "{}: goal {} is not a known build",
                spec.id, view.goal
            ));
            continue;
        };
        let key = (spec.region.clone(), view.goal.clone());
        if !trees.contains_key(&key) {
            let dest = cluster
                .dir
                .join("verify")
                .join(&spec.region)
                .join(&view.goal);
            let store = cluster.dir.join("stores").join(&spec.region);
            let t = match hosts::unpack_artifact(
                &store,
                &build.artifact_digest,
                trusted,
                64 << 20,
                &dest,
            )
            .await
            {
                Ok(()) => hosts::tree(&dest).map_err(|e| e.to_string()),
                Err(e) => Err(format!(
                    "cannot unpack {} from {}'s store: {e:#}",
                    view.goal, spec.region
                )),
            };
            trees.insert(key.clone(), t);
        }
        match &trees[&key] {
            Err(e) => v.push(e.clone()),
            Ok(expected) => {
                match hosts::check_disk(&spec.id, &cluster.data_dir(&spec.id), &view.goal, expected)
                {
                    Ok(()) => ok += 1,
                    Err(e) => v.push(e),
                }
            }
        }
    }
    let verdict = Verdict::new(
        "every host runs its region's goal, byte for byte",
        format!(
            "{ok}/{} hosts: goal running with a live process, files equal to the signed artifact ({} artifacts unpacked)",
            cluster.layout.hosts.len(),
            trees.len()
        ),
        v,
    );
    (verdict, ok)
}

async fn compare_logs(cluster: &Cluster, groups: &[String]) -> Verdict {
    let mut v = Vec::new();
    let mut detail = Vec::new();
    for g in groups {
        let mut member_logs = Vec::new();
        for m in cluster.layout.members(g) {
            let data = cluster.data_dir(&m.name);
            match logs::read(cluster.bin(), &m.name, &data, g).await {
                Ok(l) => member_logs.push(l),
                Err(e) => v.push(format!("{g}: {e:#}")),
            }
        }
        let a = logs::compare(g, &member_logs);
        let committed: Vec<u64> = member_logs.iter().map(|l| l.committed).collect();
        detail.push(format!(
            "{g}: {} entries compared up to {} (committed {committed:?})",
            a.compared, a.upto
        ));
        v.extend(a.disagreements);
    }
    Verdict::new("committed log prefixes agree", detail.join("; "), v)
}

/// The `deployd` next to this program (`target/<profile>/`), built first when run through
/// cargo so that it is never stale.
pub fn find_deployd(explicit: Option<&Path>, bin: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        anyhow::ensure!(p.is_file(), "{} does not exist", p.display());
        return Ok(p.to_path_buf());
    }
    if let Some(d) = std::env::var_os("DEPLOY_BIN_DIR") {
        let p = PathBuf::from(d).join(bin);
        anyhow::ensure!(
            p.is_file(),
            "{} does not exist (DEPLOY_BIN_DIR)",
            p.display()
        );
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("no directory of the chaos binary")?
        .to_path_buf();
    // A test binary lives in target/<profile>/deps.
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let release = dir.file_name().is_some_and(|n| n == "release");
    if let Some(cargo) = std::env::var_os("CARGO") {
        if bin == "deployd" {
            let mut cmd = std::process::Command::new(cargo);
            cmd.args(["build", "--quiet", "-p", "deployd", "--bin", "deployd"])
                .current_dir(crate::scenario::package_dir());
            if release {
                cmd.arg("--release");
            }
            let status = cmd.status().context("cannot run cargo build for deployd")?;
            anyhow::ensure!(status.success(), "cargo build -p deployd failed ({status})");
        }
    }
    let p = dir.join(bin);
    anyhow::ensure!(
        p.is_file(),
        "{} is missing: build it first (cargo build -p {bin})",
        p.display(),
    );
    Ok(p)
}
