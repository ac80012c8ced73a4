//! Host agents as real `deployd agent` processes, killed with SIGKILL in the middle of an
//! install.

use std::time::Duration;

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

/// The pid of the service `current` runs, if it is alive.
fn running_pid(c: &ProcessCluster, host: &str) -> Option<u32> {
    let text = std::fs::read_to_string(c.host_root(host).join("services/web/pid")).ok()?;
    let pid: u32 = text.split_whitespace().next()?.parse().ok()?;
    deploy_fanout::service::alive(pid).then_some(pid)
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
    assert_eq!(first.state, "SUCCEEDED", "{first:#?}");
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
    assert_eq!(done.state, "SUCCEEDED", "{done:#?}");
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
