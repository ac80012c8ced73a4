//! End to end: a commit submitted until every host of a dev-shaped cluster (3 global nodes,
//! 2 regions of 3 nodes, a worker per region, 2 racks of 4 hosts per region, real agents
//! running real processes) runs it healthy, and the parts of that time. The system's own
//! overhead is the total minus the build command's own run time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use deploy_proto::v1 as pb;
use process_harness::gitrepo::GitRepo;
use process_harness::releases::{hosts, is_final, status, wait_build};
use process_harness::{wait_every, wait_until, ProcessCluster, Spec};
use serde_json::{json, Value};

use crate::stats::round;

#[derive(clap::Args)]
pub struct Args {
    /// The sample's payload in MiB.
    #[arg(long, default_value_t = 16)]
    pub size_mib: u64,
    /// Minimum healthy time per wave, in ms.
    #[arg(long, default_value_t = 2000)]
    pub min_healthy_ms: u64,
}

const REGIONS: [&str; 2] = ["us-east", "eu-west"];

/// Seconds between the first transitions into `from` and into `to`.
fn between(b: &pb::Build, from: &str, to: &str) -> f64 {
    let at = |s: &str| {
        b.history
            .iter()
            .find(|t| t.state().name() == s)
            .map(|t| t.at_ms)
    };
    match (at(from), at(to)) {
        (Some(a), Some(z)) => round(z.saturating_sub(a) as f64 / 1000.0),
        _ => 0.0,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub async fn run(args: Args) -> anyhow::Result<Value> {
    let mut spec = Spec::new(3).default_timing();
    for (i, r) in REGIONS.iter().enumerate() {
        spec = spec
            .region(r, 3)
            .worker(&format!("w{}", i + 1), r)
            .rack(r, 4)
            .rack(r, 4);
    }
    let host_count = 16;
    let mut c = ProcessCluster::start_spec(spec)?;
    let client = c.client()?;
    c.start_agents()?;
    for r in REGIONS {
        wait_until(Duration::from_secs(60), "hosts to register", || async {
            (status(&client, r).await?.hosts >= 8).then_some(())
        })
        .await?;
    }
    let repo = GitRepo::init(&c.dir().join("sample"))?;
    let recipe = "[build]\ncommand = \"sh build.sh\"\noutputs = [\"out\"]\ntimeout_secs = 300\n\n\
                  [run]\ncommand = \"./out/web\"\nhealth_command = \"test -x out/web\"\n";
    let script = format!(
        "mkdir -p out\nhead -c {} /dev/urandom > out/blob\n\
         printf '#!/bin/sh\\nexec sleep 100000\\n' > out/web\nchmod +x out/web\n",
        args.size_mib << 20
    );
    let sha = repo.commit("v1", &[("deploy.toml", recipe), ("build.sh", &script)])?;
    let submitted_ms = now_ms();
    let start = Instant::now();
    let b = client.submit_build("web", &repo.url(), &sha).await?;
    let build = wait_build(&client, &b.id, Duration::from_secs(600)).await?;
    anyhow::ensure!(
        build.state().name() == "SUCCEEDED",
        "the build ended {}: {}",
        build.state().name(),
        build.error
    );
    let built = start.elapsed();
    let mut logs = String::new();
    if let Ok(mut stream) = client.build_logs(&build.id, false).await {
        while let Ok(Some(chunk)) = stream.message().await {
            logs.push_str(&String::from_utf8_lossy(&chunk.data));
        }
    }
    let command_secs = logs
        .lines()
        .find_map(|l| {
            let rest = l.split("build command succeeded in ").nth(1)?;
            rest.trim().trim_end_matches('s').parse::<f64>().ok()
        })
        .unwrap_or(0.0);
    let strategy = pb::Strategy {
        canary: Some("first-rack".into()),
        waves: vec![50, 100],
        min_healthy_ms: Some(args.min_healthy_ms),
        max_unavailable_per_rack: Some(2),
        ..Default::default()
    };
    let r = client
        .create_release(pb::CreateReleaseRequest {
            service: "web".into(),
            build_id: build.id.clone(),
            regions: vec![],
            strategy: Some(strategy),
            actor: "bench".into(),
            request_id: String::new(),
        })
        .await?;
    let released = start.elapsed();
    let everywhere = wait_every(
        Duration::from_millis(50),
        Duration::from_secs(600),
        "every host to run the build",
        || async {
            let mut n = 0;
            for region in REGIONS {
                for h in hosts(&client, region).await.ok()? {
                    if h.services.iter().any(|s| {
                        s.service == "web"
                            && s.running_build_id == build.id
                            && s.state().name() == "HEALTHY"
                    }) {
                        n += 1;
                    }
                }
            }
            (n >= host_count).then(|| start.elapsed())
        },
    )
    .await?;
    let done = wait_until(Duration::from_secs(600), "the release to end", || async {
        let r = client.get_release(&r.id, false).await.ok()?;
        is_final(&r).then_some(r)
    })
    .await?;
    anyhow::ensure!(
        done.state().name() == "SUCCEEDED",
        "the release ended {}",
        done.state
    );
    let mut waves: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for region in REGIONS {
        if let Some(s) = status(&client, region).await {
            if let Some(rr) = s.releases.iter().find(|x| x.id == r.id) {
                waves.insert(
                    region.to_string(),
                    rr.history
                        .iter()
                        .map(|e| {
                            json!({
                                "secs_after_release": round(e.at_ms.saturating_sub(done.created_at_ms) as f64 / 1000.0),
                                "what": e.what,
                            })
                        })
                        .collect(),
                );
            }
        }
    }
    let total = everywhere.as_secs_f64();
    println!(
        "e2e: every host runs {} {total:.1} s after the commit was submitted (build command {command_secs:.1} s)",
        build.id
    );
    Ok(json!({
        "what": "a commit submitted until every host of a dev-shaped cluster runs it healthy",
        "hosts": host_count,
        "regions": REGIONS,
        "payload_mib": args.size_mib,
        "artifact_bytes": build.artifact_size,
        "total_secs": round(total),
        "parts": {
            "submit_ack_secs": round(build.created_at_ms.saturating_sub(submitted_ms) as f64 / 1000.0),
            "queue_wait_secs": between(&build, "QUEUED", "RUNNING"),
            "build_attempt_secs": between(&build, "RUNNING", "REPLICATING"),
            "build_command_secs": command_secs,
            "replication_secs": between(&build, "REPLICATING", "SUCCEEDED"),
            "build_succeeded_after_secs": round(built.as_secs_f64()),
            "release_decided_after_secs": round(released.as_secs_f64()),
            "rollout_secs": round(total - released.as_secs_f64()),
            "min_healthy_secs_per_wave": round(args.min_healthy_ms as f64 / 1000.0),
        },
        "overhead_secs": round(total - command_secs),
        "release_state": done.state().name(),
        "release_secs": round(done.finished_at_ms.saturating_sub(done.created_at_ms) as f64 / 1000.0),
        "region_events": waves,
    }))
}
