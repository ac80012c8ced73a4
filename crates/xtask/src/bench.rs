//! `cargo xtask bench [NAME [ARGS...]]`: release builds, then each benchmark writes
//! `target/bench/NAME.json`, then `docs/benchmarks.md` is made from every JSON file there.

use std::time::Instant;

use anyhow::bail;

use crate::{cargo, root, run_checked, setup};

pub const ALL: [&str; 6] = ["writes", "soak", "fanout", "scale", "failover", "e2e"];

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let (names, extra): (Vec<&str>, &[String]) = match args.first() {
        None => (ALL.to_vec(), &[]),
        Some(n) if ALL.contains(&n.as_str()) => (vec![n.as_str()], &args[1..]),
        Some(n) => bail!("no benchmark {n:?}: one of {}", ALL.join(", ")),
    };
    setup::ensure_system_packages()?;
    if names.contains(&"writes") {
        setup::ensure_etcd()?;
    }
    run_checked(cargo().args([
        "build",
        "--release",
        "-p",
        "deployd",
        "-p",
        "deployctl",
        "-p",
        "deploy-bench",
    ]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root().join(p) })
        .unwrap_or_else(|| root().join("target"));
    let bin = target.join("release").join("deploy-bench");
    let out = target.join("bench");
    let started = Instant::now();
    for name in &names {
        eprintln!("xtask: bench {name}");
        let t = Instant::now();
        run_checked(
            std::process::Command::new(&bin)
                .current_dir(root())
                .arg("--out")
                .arg(&out)
                .arg(name)
                .args(extra)
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "error,openraft=off".into()),
                ),
        )?;
        eprintln!(
            "xtask: bench {name} took {:.0} s",
            t.elapsed().as_secs_f64()
        );
    }
    run_checked(
        std::process::Command::new(&bin)
            .current_dir(root())
            .arg("--out")
            .arg(&out)
            .arg("report")
            .arg("--doc")
            .arg(root().join("docs/benchmarks.md")),
    )?;
    eprintln!(
        "xtask: benchmarks took {:.0} s; figures in {} and docs/benchmarks.md",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}
