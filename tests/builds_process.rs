//! The build system as real processes: `deployd node` and `deployd worker`, killed with
//! SIGKILL mid-work.

use std::time::Duration;

use deploy_client::{Client, ClusterStatusView};
use deploy_proto::v1::Build;
use test_harness::gitrepo::{GitRepo, RECIPE};
use test_harness::{wait_until, ProcessCluster, Spec};

const T: Duration = Duration::from_secs(60);

/// These tests each run a whole cluster of processes and move large artifacts: one at a time
/// keeps a two-core machine responsive.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    HEAVY.lock().await
}

async fn wait_final(client: &Client, id: &str) -> anyhow::Result<Build> {
    test_harness::releases::wait_build(client, id, T).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_build_loses_its_lease_and_another_worker_completes_it(
) -> anyhow::Result<()> {
    let _heavy = one_at_a_time().await;
    let spec = Spec::new(3)
        .region("east", 1)
        .worker("wk-a", "east")
        .worker("wk-b", "east")
        .lease_ms(1500);
    let mut c = ProcessCluster::start_spec(spec)?;
    let repo = GitRepo::init(&c.dir().join("repo"))?;
    let marker = test_harness::witness_dir(c.dir()).join("first-attempt");
    // The first attempt hangs until its worker is killed (its orphaned sleep ends by itself
    // seconds later); later attempts finish at once.
    let script = format!(
        "if [ ! -e {m} ]; then echo $$ > {m}; echo first attempt; sleep 8; fi\nmkdir -p out\necho ok > out/app\n",
        m = marker.display()
    );
    let sha = repo.commit("v1", &[("deploy.toml", RECIPE), ("build.sh", &script)])?;
    let client = c.client()?;
    let b = client.submit_build("svc", &repo.url(), &sha).await?;
    let first = wait_until(T, "the first attempt to start", || async {
        let b = client.get_build(&b.id, false).await.ok()?;
        (b.state().name() == "RUNNING" && marker.exists()).then_some(b)
    })
    .await?;
    assert_eq!(first.attempts, 1);
    let victim = first.worker.clone();
    c.kill9(&victim)?;

    let done = wait_final(&client, &b.id).await?;
    assert_eq!(done.state().name(), "SUCCEEDED", "{done:?}");
    assert_eq!(done.attempts, 2, "{done:?}");
    assert_ne!(
        done.worker, victim,
        "the dead worker cannot have completed it"
    );
    assert!(
        done.history
            .iter()
            .any(|t| t.note.contains("expired") && t.note.contains(&victim)),
        "{:?}",
        done.history
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_survive_kill9_of_the_global_leader() -> anyhow::Result<()> {
    let _heavy = one_at_a_time().await;
    let spec = Spec::new(3)
        .region("east", 1)
        .worker("wk-a", "east")
        .worker("wk-b", "east")
        .lease_ms(5000);
    let mut c = ProcessCluster::start_spec(spec)?;
    let repo = GitRepo::init(&c.dir().join("repo"))?;
    let script = "sleep 0.3\nmkdir -p out\ncp ID out/app\n";
    let mut commits = vec![repo.commit(
        "0",
        &[("deploy.toml", RECIPE), ("build.sh", script), ("ID", "0")],
    )?];
    for i in 1..20 {
        commits.push(repo.commit(&i.to_string(), &[("ID", &i.to_string())])?);
    }
    let client = c.client()?;
    let status = wait_until(T, "a global leader", || async {
        let s = ClusterStatusView(client.cluster_status().await.ok()?);
        s.leader("global").map(|l| (l, s))
    })
    .await?;
    let leader = status.0;
    let mut ids = Vec::new();
    for sha in &commits {
        ids.push(client.submit_build("svc", &repo.url(), sha).await?.id);
    }
    // Kill the leader once some builds are under way.
    wait_until(T, "builds to be running", || async {
        let b = client.get_build(&ids[0], false).await.ok()?;
        (b.state().name() != "QUEUED").then_some(())
    })
    .await?;
    c.kill9(&leader)?;

    let survivors: Vec<String> = c.names().into_iter().filter(|n| *n != leader).collect();
    let client = Client::new(survivors.iter().map(|n| c.addr(n).unwrap_or_default()))?;
    for id in &ids {
        let b = wait_final(&client, id).await?;
        assert_eq!(b.state().name(), "SUCCEEDED", "{b:?}");
        // Leases live in the replicated state with absolute expiry times: the new leader
        // honours them, so no build was re-queued by the failover.
        assert_eq!(b.attempts, 1, "{b:?}");
    }
    Ok(())
}

/// Files in a store's chunk directory that are not complete objects (object_store stages a
/// write in `<name>#<n>` and renames it into place).
fn staging_files(store_dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(store_dir.join("chunks"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains('#'))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_killed_mid_chunk_leaves_nothing_visible_and_the_retry_succeeds(
) -> anyhow::Result<()> {
    let _heavy = one_at_a_time().await;
    // The first chunk write of either worker stops half done (a failpoint), so the test
    // kills a writer that is certainly mid-write, however fast the disk.
    let fp = tempfile::TempDir::new()?;
    let marker = fp.path().join("mid-chunk");
    let spec = Spec::new(3)
        .region("east", 1)
        .worker("wk-a", "east")
        .worker("wk-b", "east")
        .worker_failpoint(&format!("mid-chunk:{}", marker.display()))
        .lease_ms(1500)
        .chunk_bytes(16 * 1024 * 1024)
        .retention(10, 0);
    let mut c = ProcessCluster::start_spec(spec)?;
    let repo = GitRepo::init(&c.dir().join("repo"))?;
    let script = "mkdir -p out\nhead -c 67108864 /dev/urandom > out/big\necho app > out/app\n";
    let sha = repo.commit("big", &[("deploy.toml", RECIPE), ("build.sh", script)])?;
    let client = c.client()?;
    let store_dir = c.dir().join("stores").join("east");
    let b = client.submit_build("big", &repo.url(), &sha).await?;

    // The worker holding the build stops half way through its first chunk and says so.
    wait_until(T, "a worker to stop mid-chunk", || async {
        std::fs::read_to_string(&marker)
            .ok()
            .filter(|pid| !pid.trim().is_empty())
    })
    .await?;
    let running = client.get_build(&b.id, false).await?;
    let staged = staging_files(&store_dir);
    assert!(
        !staged.is_empty(),
        "no staged chunk while a write is half done"
    );
    c.kill9(&running.worker)?;

    // No reader sees a partial object: everything the store lists (by digest: a staged
    // `<hex>#<n>` name is no digest) verifies.
    let store = c.store("east")?;
    let contents = store.contents(0).await?;
    for chunk in &contents.chunks {
        store.get_chunk(&chunk.digest, 64 * 1024 * 1024).await?;
    }
    for name in &staged {
        let digest = deploy_types::Digest::from_hex(name.split('#').next().unwrap_or_default())?;
        match store.get_chunk(&digest, 64 * 1024 * 1024).await {
            Ok(data) => assert_eq!(deploy_artifact::digest_of(&data), digest),
            Err(deploy_artifact::StoreError::Missing { .. }) => {}
            Err(e) => panic!("a half-written chunk is visible: {e}"),
        }
    }

    // The lease expires and the other worker's attempt stores a whole artifact.
    let done = wait_final(&client, &b.id).await?;
    assert_eq!(done.state().name(), "SUCCEEDED", "{done:?}");
    assert_eq!(done.attempts, 2);
    assert_ne!(done.worker, running.worker);
    let key = deploy_artifact::KeyPair::load(&c.dir().join("keys").join("build.key"))?;
    let keys = deploy_artifact::TrustedKeys::parse(&[key.public_hex()])?;
    let artifact = deploy_types::Digest::parse(&done.artifact_digest)?;
    let m = store.get_trusted_manifest(&artifact, &keys).await?;
    assert_eq!(m.size, done.artifact_size);
    for ch in &m.chunks {
        store.get_chunk(&ch.digest, m.chunk_size).await?;
    }
    // Garbage collection removes what the killed writer left staged, and nothing else.
    let gc = client.collect_garbage(false).await?;
    assert!(gc.stores.iter().any(|s| s.staging_files >= 1), "{gc:?}");
    assert!(
        staging_files(&store_dir).is_empty(),
        "{:?}",
        staging_files(&store_dir)
    );
    store.get_trusted_manifest(&artifact, &keys).await?;
    Ok(())
}

/// Complete chunk objects in a store directory.
fn complete_chunks(store_dir: &std::path::Path) -> usize {
    std::fs::read_dir(store_dir.join("chunks"))
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().contains('#'))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_resumes_after_kill9_of_the_global_leader_without_recopying(
) -> anyhow::Result<()> {
    let _heavy = one_at_a_time().await;
    let spec = Spec::new(3)
        .region("east", 1)
        .region("west", 1)
        .worker("wk", "east")
        .chunk_bytes(8 * 1024 * 1024);
    let mut c = ProcessCluster::start_spec(spec)?;
    let repo = GitRepo::init(&c.dir().join("repo"))?;
    // 16 chunks of 8 MiB.
    let script = "mkdir -p out\nhead -c 134217728 /dev/urandom > out/big\n";
    let sha = repo.commit("big", &[("deploy.toml", RECIPE), ("build.sh", script)])?;
    let client = c.client()?;
    let leader = wait_until(T, "a global leader", || async {
        ClusterStatusView(client.cluster_status().await.ok()?).leader("global")
    })
    .await?;
    let west = c.dir().join("stores").join("west");
    let b = client.submit_build("big", &repo.url(), &sha).await?;

    // Kill the leader once replication to west is under way but far from done.
    let deadline = std::time::Instant::now() + T;
    loop {
        let n = complete_chunks(&west);
        if (2..=10).contains(&n) && !west.join("manifests").exists() {
            break;
        }
        anyhow::ensure!(
            n <= 10,
            "replication finished before it could be interrupted ({n} chunks)"
        );
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "replication never started"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let before = complete_chunks(&west);
    c.kill9(&leader)?;

    let survivors: Vec<String> = c.names().into_iter().filter(|n| *n != leader).collect();
    let client = Client::new(survivors.iter().map(|n| c.addr(n).unwrap_or_default()))?;
    let done = wait_final(&client, &b.id).await?;
    assert_eq!(done.state().name(), "SUCCEEDED", "{done:?}");
    let west_copy = done
        .replication
        .iter()
        .find(|r| r.region == "west")
        .ok_or_else(|| anyhow::anyhow!("no west replication in {done:?}"))?;
    assert_eq!(west_copy.state().name(), "DONE");
    // The new leader copied only what the old one had not verified into place.
    let chunk = 8 * 1024 * 1024;
    assert!(
        west_copy.bytes_copied <= done.artifact_size - before as u64 * chunk,
        "re-copied verified chunks: {} bytes copied of {}, {before} chunks were already there",
        west_copy.bytes_copied,
        done.artifact_size
    );
    assert!(west_copy.bytes_copied > 0);
    Ok(())
}
