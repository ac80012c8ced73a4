//! Host agents as real `deployd agent` processes, killed with SIGKILL in the middle of an
//! install.

use std::time::Duration;

use test_harness::ports::{spawn_with, Ports};
use test_harness::releases::{all_at_once, is_final, release, wait_release, web_builds, T};
use test_harness::{wait_until, ProcessCluster, Spec};

/// The build `current` points at, checked to be a whole release (its run file and binary).
fn complete_current(c: &ProcessCluster, host: &str) -> anyhow::Result<String> {
    let sdir = c.host_root(host).join("services/web");
    let link = std::fs::read_link(sdir.join("current"))?;
    let dir = sdir.join(&link);
    anyhow::ensure!(
        dir.join(".deploy/run.toml").is_file(),
        "{host}: {} is not whole",
        dir.display()
    );
    anyhow::ensure!(
        dir.join("out/web").is_file(),
        "{host}: {} is not whole",
        dir.display()
    );
    Ok(link
        .file_name()
        .map(|b| b.to_string_lossy().into_owned())
        .unwrap_or_default())
}

/// Writes `spec`'s config with reserved loopback ports; returns its path, the addresses and
/// the reservation (whose listeners the one process serving them all is given).
fn write_config(
    spec: &Spec,
    dir: &std::path::Path,
) -> anyhow::Result<(
    std::path::PathBuf,
    std::collections::BTreeMap<String, String>,
    Ports,
)> {
    let names: Vec<String> = spec
        .node_names()
        .into_iter()
        .chain(spec.relay_ids())
        .collect();
    let ports = Ports::reserve(names.len())?;
    let addrs: std::collections::BTreeMap<String, String> = names
        .iter()
        .zip(ports.addrs())
        .map(|(n, a)| (n.clone(), a.to_string()))
        .collect();
    let config = dir.join("cluster.toml");
    std::fs::write(&config, spec.toml(&addrs, dir)?)?;
    Ok((config, addrs, ports))
}

/// The pid of the service `current` runs, if it is alive.
fn running_pid(c: &ProcessCluster, host: &str) -> Option<u32> {
    let f = deploy_fanout::service::PidFile::read(&c.host_root(host).join("services/web/pid"))?;
    f.proc.alive().then_some(f.proc.pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_install_leaves_a_whole_release_and_carries_on() -> anyhow::Result<()> {
    let spec = Spec::new(1)
        .region("east", 1)
        .worker("wk", "east")
        .rack("east", 3);
    let mut c = ProcessCluster::start_spec(spec)?;
    let client = c.client()?;
    let hosts = ["east-1-h1", "east-1-h2", "east-1-h3"];
    for h in hosts {
        c.start_agent(h, None)?;
    }
    let ids = web_builds(&client, c.dir(), 256 * 1024, &[("v1", true), ("v2", true)]).await?;
    let first = release(&client, &ids[0], "east", all_at_once(3)).await?;
    assert_eq!(first.state().name(), "SUCCEEDED", "{first:#?}");
    for h in hosts {
        assert_eq!(complete_current(&c, h)?, ids[0]);
    }
    // Each agent will stop at a different step of the next install.
    let steps = ["unpack", "switch", "health"];
    for (h, step) in hosts.iter().zip(steps) {
        c.kill9(h)?;
        c.start_agent(h, Some(step))?;
    }
    let r = client
        .create_release(deploy_proto::v1::CreateReleaseRequest {
            service: "web".into(),
            build_id: ids[1].clone(),
            regions: vec!["east".into()],
            strategy: Some(all_at_once(3)),
            actor: "tester".into(),
            request_id: String::new(),
        })
        .await?;
    for (h, step) in hosts.iter().zip(steps) {
        let marker = c.host_root(h).join(format!("failpoint-{step}"));
        wait_until(T, &format!("{h} to reach {step}"), || async {
            marker.exists().then_some(())
        })
        .await?;
        c.kill9(h)?;
        // Killed there, the host still has a whole release in place, old or new.
        let cur = complete_current(&c, h)?;
        assert!(cur == ids[0] || cur == ids[1], "{h}: current is {cur}");
        if step == "switch" {
            assert_eq!(cur, ids[0], "the switch had not happened");
        }
        std::fs::remove_file(&marker)?;
        c.start_agent(h, None)?;
    }
    let done = wait_release(&client, &r.id, "to end", is_final).await?;
    assert_eq!(done.state().name(), "SUCCEEDED", "{done:#?}");
    // Agents and workers serve their probes too.
    let http = reqwest::Client::new();
    for who in ["east-1-h1", "wk"] {
        let base = format!("http://{}", c.addr(who)?);
        assert_eq!(
            http.get(format!("{base}/readyz")).send().await?.status(),
            200,
            "{who}"
        );
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let m = test_harness::releases::parse_metrics(&text)?;
        if who == "wk" {
            assert_eq!(m.get("deploy_worker_built_total"), Some(&2.0), "{text}");
        } else {
            let key = format!(
                "deploy_agent_service{{service=\"web\",build=\"{}\",state=\"HEALTHY\"}}",
                ids[1]
            );
            let healthy = wait_until(
                T,
                "the agent's metrics to show the new build healthy",
                || {
                    let (http, addr, key) = (http.clone(), c.addr(who), key.clone());
                    async move {
                        let m = test_harness::releases::scrape(&http, addr.ok()?).await?;
                        m.get(&key).copied()
                    }
                },
            )
            .await?;
            assert_eq!(healthy, 1.0);
            assert!(m.contains_key("deploy_agent_installs_total"), "{text}");
        }
    }
    for h in hosts {
        assert_eq!(complete_current(&c, h)?, ids[1], "{h}");
        let pid = wait_until(
            Duration::from_secs(10),
            &format!("{h}'s service"),
            || async { running_pid(&c, h) },
        )
        .await?;
        assert!(pid > 1);
        let partial = std::fs::read_dir(c.host_root(h).join("services/web/releases"))?
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with('.'));
        assert!(!partial, "{h}: a partial release was left behind");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployd_dev_with_two_regions_of_two_racks_of_four_hosts_runs_the_release_everywhere(
) -> anyhow::Result<()> {
    let mut spec = Spec::new(1)
        .region("us-east", 1)
        .region("eu-west", 1)
        .worker("worker-1", "us-east");
    for region in ["us-east", "eu-west"] {
        spec = spec.rack(region, 4).rack(region, 4);
    }
    let dir = tempfile::tempdir()?;
    let (config, addrs, ports) = write_config(&spec, dir.path())?;
    let data = dir.path().join("dev");
    let bins = test_harness::process::bin_dir()?;
    let log = std::fs::File::create(dir.path().join("dev.log"))?;
    let mut dev = spawn_with(
        std::process::Command::new(bins.join("deployd"))
            .arg("dev")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone()?)
            .stderr(log),
        ports.listeners()?,
    )?;
    let result = async {
        let nodes: Vec<String> = spec.node_names().iter().map(|n| addrs[n].clone()).collect();
        let client = deploy_client::Client::new(&nodes)?;
        wait_until(T, "the dev cluster to lead its groups", || async {
            let s = client.cluster_status().await.ok()?;
            s.groups.iter().all(|g| !g.leader.is_empty()).then_some(())
        })
        .await?;
        let ids = web_builds(&client, dir.path(), 4096, &[("v1", true)]).await?;
        let r = client
            .create_release(deploy_proto::v1::CreateReleaseRequest {
                service: "web".into(),
                build_id: ids[0].clone(),
                regions: vec![],
                strategy: Some(deploy_proto::v1::Strategy {
                    min_healthy_ms: Some(300),
                    max_unavailable_per_rack: Some(2),
                    ..Default::default()
                }),
                actor: "tester".into(),
                request_id: String::new(),
            })
            .await?;
        let done = wait_release(&client, &r.id, "to end", is_final).await?;
        anyhow::ensure!(done.state().name() == "SUCCEEDED", "{done:#?}");
        anyhow::ensure!(done.hosts_updated == 16, "{done:#?}");
        for rack in spec.racks_of() {
            for h in rack.hosts {
                let sdir = data.join("hosts").join(&h).join("services/web");
                let link = std::fs::read_link(sdir.join("current"))?;
                anyhow::ensure!(
                    link.ends_with(&ids[0]),
                    "{h}: current -> {}",
                    link.display()
                );
                // The process of the new build is up and has answered.
                let answer = std::fs::read_to_string(sdir.join(&link).join("answer"))?;
                anyhow::ensure!(answer.trim() == ids[0], "{h}: answered {answer:?}");
                let pid = deploy_fanout::service::PidFile::read(&sdir.join("pid"))
                    .ok_or_else(|| anyhow::anyhow!("{h}: no pid file"))?
                    .proc;
                anyhow::ensure!(pid.alive(), "{h}: service {pid} is not running");
                // Its chunk server for the rack's peers is up: dev shares chunks by default.
                let peer = data
                    .join("hosts")
                    .join(&h)
                    .join(deploy_fanout::agent::PEER_ADDR_FILE);
                anyhow::ensure!(peer.is_file(), "{h}: no chunk server");
            }
            // Every relay planned its rack's exchange, and its hosts took chunks from each
            // other: the relay sent fewer bytes than one copy per host.
            let http = reqwest::Client::new();
            let m = test_harness::releases::scrape(&http, &addrs[&rack.relay])
                .await
                .ok_or_else(|| anyhow::anyhow!("no metrics from {}", rack.relay))?;
            let asks = m
                .get("deploy_relay_exchange_asks_total")
                .copied()
                .unwrap_or(0.0);
            anyhow::ensure!(asks > 0.0, "{}: no exchange plans asked: {m:?}", rack.relay);
            let requests = m
                .get("deploy_relay_chunk_requests_total")
                .copied()
                .unwrap_or(0.0);
            anyhow::ensure!(
                requests < 4.0,
                "{}: {requests} chunk requests for 4 hosts: {m:?}",
                rack.relay
            );
        }
        anyhow::Ok(())
    }
    .await;
    // A clean stop takes the services down with the cluster.
    // SAFETY: SIGINT to the dev process this test started.
    unsafe {
        libc::kill(dev.id() as i32, libc::SIGINT);
    }
    let _ = dev.wait();
    // On a failure, what the dev process said is what explains it.
    result.map_err(|e| {
        let log = std::fs::read_to_string(dir.path().join("dev.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        e.context(format!(
            "deployd dev's last log lines:\n{}",
            tail.join("\n")
        ))
    })
}

#[test]
fn the_demo_runs_to_completion_and_leaves_every_host_on_the_good_build() -> anyhow::Result<()> {
    let mut spec = Spec::new(1)
        .region("us-east", 1)
        .region("eu-west", 1)
        .worker("worker-1", "us-east");
    for region in ["us-east", "eu-west"] {
        spec = spec.rack(region, 2).rack(region, 2);
    }
    let dir = tempfile::tempdir()?;
    let (config, _, ports) = write_config(&spec, dir.path())?;
    let data = dir.path().join("demo");
    let out = spawn_with(
        std::process::Command::new(test_harness::process::bin_dir()?.join("deployd"))
            .arg("demo")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .arg("--short")
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
        ports.listeners()?,
    )?
    .wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ROLLED_BACK"), "{stdout}");
    // The broken build was rolled back: every host's current is the good one (b-1).
    for rack in spec.racks_of() {
        for h in rack.hosts {
            let link =
                std::fs::read_link(data.join("hosts").join(&h).join("services/hello/current"))?;
            assert!(link.ends_with("b-1"), "{h}: current -> {}", link.display());
        }
    }
    Ok(())
}
