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

/// `deployctl build logs ID --follow | head -1`: once the reader is gone, the command ends
/// (quietly, status 0) while the build still runs and writes nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_log_ends_when_its_reader_goes_away() -> anyhow::Result<()> {
    use std::io::BufRead;
    let spec = Spec::new(1).region("east", 1).worker("wk", "east");
    let c = GrpcCluster::start_spec(spec).await?;
    let client = c.client()?;
    let repo = test_harness::gitrepo::GitRepo::init(&c.dir().join("repo-slow"))?;
    let sha = repo.commit(
        "slow",
        &[
            (
                "deploy.toml",
                "[build]\ncommand = \"sh build.sh\"\noutputs = [\"out\"]\ntimeout_secs = 600\n\n[run]\ncommand = \"true\"\n",
            ),
            ("build.sh", "echo started\nsleep 300\n"),
        ],
    )?;
    let build = client.submit_build("slow", &repo.url(), &sha).await?;
    let bins = test_harness::process::bin_dir()?;
    let mut child = std::process::Command::new(bins.join("deployctl"))
        .arg("--endpoint")
        .arg(c.node_addrs().join(","))
        .args(["build", "logs", &build.id, "--follow"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    // Read until the build's line, then go away as `head -1` does.
    let saw = tokio::task::spawn_blocking(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        lines.any(|l| l.is_ok_and(|l| l.contains("started")))
    })
    .await?;
    assert!(saw, "the log never showed the build's line");
    let ended = test_harness::wait_until(
        std::time::Duration::from_secs(20),
        "deployctl to end once its reader went away",
        || {
            let status = child.try_wait().ok().flatten();
            async move { status }
        },
    )
    .await;
    if ended.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let status = ended?;
    assert!(status.success(), "{status}");
    let b = client.get_build(&build.id, false).await?;
    assert!(
        matches!(b.state().name(), "RUNNING" | "QUEUED"),
        "the build ended meanwhile ({}): nothing was proved",
        b.state
    );
    Ok(())
}
