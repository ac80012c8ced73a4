//! Every `deployctl --output json` command against a live cluster: the output parses and
//! carries the fields docs/cli.md documents, named as in the proto messages.

use std::process::Command;

use deploy_fanout::config::Limits;
use serde_json::Value;
use test_harness::releases::{all_at_once, release, web_builds};
use test_harness::{GrpcCluster, Spec};

fn deployctl(endpoint: &str, args: &[&str]) -> anyhow::Result<Value> {
    let bins = test_harness::process::bin_dir()?;
    let out = Command::new(bins.join("deployctl"))
        .arg("--endpoint")
        .arg(endpoint)
        .arg("--output")
        .arg("json")
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "deployctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn has(v: &Value, fields: &[&str], what: &str) {
    for f in fields {
        assert!(v.get(f).is_some(), "{what}: no field {f:?} in {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_json_output_parses_and_has_its_documented_fields() -> anyhow::Result<()> {
    let spec = Spec::new(1)
        .region("east", 1)
        .worker("wk", "east")
        .rack("east", 2);
    let mut c = GrpcCluster::start_spec(spec).await?;
    let client = c.client()?;
    c.start_fleet(&Limits::default(), true).await?;
    let ids = web_builds(&client, &c.dir(), 1024, &[("v1", true)]).await?;
    let r = release(&client, &ids[0], "east", all_at_once(2)).await?;
    let ep = c.node_addrs().join(",");
    let ep = ep.as_str();

    let status = deployctl(ep, &["cluster", "status"])?;
    let g = &status["groups"][0];
    has(
        g,
        &["name", "leader", "term", "members"],
        "cluster status group",
    );
    has(
        &g["members"][0],
        &["id", "addr", "role", "last_applied"],
        "cluster status member",
    );

    let b = deployctl(ep, &["build", "get", &ids[0]])?;
    has(
        &b,
        &[
            "id",
            "service",
            "repo",
            "commit",
            "state",
            "attempts",
            "worker",
            "artifact_digest",
            "artifact_size",
            "error",
            "created_at_ms",
            "finished_at_ms",
            "regions_done",
            "history",
            "replication",
        ],
        "build",
    );
    assert_eq!(b["state"], "SUCCEEDED");
    has(
        &b["replication"][0],
        &["region", "state", "bytes_copied"],
        "replication",
    );
    let list = deployctl(ep, &["build", "list"])?;
    has(&list, &["builds", "next_page_token"], "build list");

    let rel = deployctl(ep, &["release", "get", &r.id])?;
    has(
        &rel,
        &[
            "id",
            "service",
            "build_id",
            "state",
            "hosts_total",
            "hosts_updated",
            "hosts_failed",
            "regions",
            "history",
            "strategy",
            "created_by",
        ],
        "release",
    );
    has(
        &rel["regions"][0],
        &[
            "region",
            "state",
            "wave",
            "hosts_total",
            "hosts_updated",
            "hosts_failed",
        ],
        "release region",
    );
    has(
        &rel["history"][0],
        &["at_ms", "by", "what"],
        "release history",
    );
    assert_eq!(rel["state"], "SUCCEEDED");
    let list = deployctl(ep, &["release", "list"])?;
    has(&list, &["releases", "next_page_token"], "release list");

    let region = deployctl(ep, &["--region", "east", "region", "status"])?;
    has(
        &region,
        &[
            "region",
            "answered_by",
            "leader",
            "applied_decision",
            "hosts",
            "racks",
            "services",
            "releases",
            "has_reports",
            "relays",
        ],
        "region status",
    );
    has(
        &region["services"][0],
        &["service", "active_release", "goals", "running"],
        "service status",
    );
    let hosts = deployctl(ep, &["--region", "east", "hosts", "list"])?;
    has(&hosts, &["hosts", "next_page_token"], "hosts list");
    let h = &hosts["hosts"][0];
    has(
        h,
        &[
            "host",
            "rack",
            "region",
            "services",
            "last_report_ms_ago",
            "reported",
        ],
        "host",
    );
    has(
        &h["services"][0],
        &[
            "service",
            "goal_build_id",
            "goal_release",
            "running_build_id",
            "state",
            "detail",
        ],
        "host service",
    );
    let one = deployctl(ep, &["host", "get", "east-1-h1"])?;
    assert_eq!(one["host"], "east-1-h1");

    let set = deployctl(ep, &["cluster", "meta", "set", "k", "v"])?;
    has(&set, &["log_index", "previous"], "meta set");
    let get = deployctl(ep, &["cluster", "meta", "get", "k"])?;
    has(&get, &["value", "applied_index"], "meta get");
    let gc = deployctl(ep, &["artifacts", "gc", "--dry-run"])?;
    has(
        &gc,
        &["stores", "kept_artifacts", "dry_run"],
        "artifacts gc",
    );
    Ok(())
}
