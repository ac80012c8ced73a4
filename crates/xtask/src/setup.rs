//! Installing what the build needs beyond the Rust toolchain: clang and libclang for
//! RocksDB's bindings. Installs with apt-get when running as root; otherwise says what to run.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

/// clang and libclang build RocksDB's bindings; git is what build workers fetch sources with.
const PACKAGES: &[&str] = &["clang", "libclang-dev", "git"];

fn libclang_present() -> bool {
    if let Some(p) = std::env::var_os("LIBCLANG_PATH") {
        if Path::new(&p).exists() {
            return true;
        }
    }
    let Ok(dirs) = std::fs::read_dir("/usr/lib") else {
        return false;
    };
    dirs.flatten().any(|d| {
        let name = d.file_name();
        name.to_string_lossy().starts_with("llvm-")
            && std::fs::read_dir(d.path().join("lib")).is_ok_and(|files| {
                files
                    .flatten()
                    .any(|f| f.file_name().to_string_lossy().starts_with("libclang"))
            })
    })
}

fn present(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

pub fn ensure_system_packages() -> anyhow::Result<()> {
    if libclang_present() && present("clang") && present("git") {
        return Ok(());
    }
    let cmd = format!("apt-get install -y {}", PACKAGES.join(" "));
    if !is_root() {
        bail!(
            "clang and libclang are needed to build RocksDB; run as root: apt-get update && {cmd}"
        );
    }
    eprintln!(
        "xtask: installing {} (needed to build RocksDB)",
        PACKAGES.join(", ")
    );
    let ok = Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get")?;
    if !ok.success() {
        bail!("apt-get update failed ({ok})");
    }
    let ok = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(PACKAGES)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get")?;
    if !ok.success() {
        bail!("{cmd} failed ({ok})");
    }
    if !libclang_present() {
        bail!(
            "installed {} but found no libclang under /usr/lib/llvm-*",
            PACKAGES.join(", ")
        );
    }
    Ok(())
}

/// Tools only the test suite needs: moto's S3-compatible server (from PyPI), which the
/// object-store tests run against on loopback.
pub fn ensure_test_tools() -> anyhow::Result<()> {
    if present("moto_server")
        || Command::new("moto_server")
            .arg("-h")
            .output()
            .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    eprintln!("xtask: installing moto[server] from PyPI (a local S3 for the tests)");
    let ok = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "moto[server]"])
        .status()
        .context("cannot run python3 -m pip")?;
    if !ok.success() {
        bail!("pip install 'moto[server]' failed ({ok})");
    }
    Ok(())
}

/// libfaketime, which the chaos fault `skew-clock` preloads into a node to set its wall clock
/// off: Debian's `libfaketime`, installed when missing.
pub fn ensure_faketime() -> anyhow::Result<()> {
    let found = std::fs::read_dir("/usr/lib").is_ok_and(|dirs| {
        dirs.flatten()
            .any(|d| d.path().join("faketime/libfaketime.so.1").exists())
    });
    if found {
        return Ok(());
    }
    if !is_root() {
        bail!("the chaos scenario clock-skew needs libfaketime; run as root: apt-get update && apt-get install -y libfaketime");
    }
    apt_install("libfaketime", "the chaos fault skew-clock")
}

/// `apt-get update`, then installs Debian's `package` (needed for `why`).
fn apt_install(package: &str, why: &str) -> anyhow::Result<()> {
    eprintln!("xtask: installing {package} ({why})");
    for args in [
        vec!["update"],
        vec!["install", "-y", "--no-install-recommends", package],
    ] {
        let ok = Command::new("apt-get")
            .args(&args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("cannot run apt-get")?;
        if !ok.success() {
            bail!("apt-get {} failed ({ok})", args.join(" "));
        }
    }
    Ok(())
}

/// etcd, the write benchmark's baseline: Debian's `etcd-server`, installed when missing.
pub fn ensure_etcd() -> anyhow::Result<()> {
    if std::env::var_os("ETCD_BIN").is_some() || present("etcd") {
        return Ok(());
    }
    let cmd = "apt-get install -y etcd-server";
    if !is_root() {
        bail!("the write benchmark compares against etcd; run as root: apt-get update && {cmd}, or set ETCD_BIN");
    }
    apt_install("etcd-server", "the write benchmark's baseline")?;
    // Debian's package may start a system etcd on the default ports; ours use their own.
    let _ = Command::new("systemctl")
        .args(["disable", "--now", "etcd"])
        .output();
    Ok(())
}
