//! The fence around a build command (Landlock, Linux 5.13+): it writes only inside its
//! scratch directory, reads only the system's directories, the scratch directory and any the
//! cluster config adds (toolchains), and cannot reach into the worker (its `/proc` entries,
//! its signals). A recipe is code from a repository; the worker's keys, tokens and
//! environment are not for it.
//!
//! On a kernel without Landlock the command runs unfenced (its environment is still clean,
//! see `exec`), and the build log says so.

use std::path::{Path, PathBuf};

use landlock::{
    path_beneath_rules, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, RulesetError, Scope, ABI,
};

/// Directories every build may read and run from: the system's programs and libraries, and
/// the kernel's views a shell and its tools expect.
pub const SYSTEM_READ: &[&str] = &[
    "/bin", "/sbin", "/usr", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/proc",
    "/sys", "/dev",
];

/// Device files a build may write to.
const DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/full", "/dev/tty"];

/// The newest Landlock ABI the rules are written for; older kernels get what they support.
const ABI_WANTED: ABI = ABI::V6;

/// What a build may touch.
#[derive(Debug, Clone)]
pub struct Fence {
    /// Read, write, create and delete beneath these.
    pub writable: Vec<PathBuf>,
    /// Read and execute beneath these (besides [`SYSTEM_READ`]).
    pub readable: Vec<PathBuf>,
}

/// Whether this kernel can fence builds at all (asked once per process).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        // A ruleset over the first ABI's rights is refused only where Landlock is missing.
        Ruleset::default()
            .set_compatibility(CompatLevel::HardRequirement)
            .handle_access(AccessFs::from_all(ABI::V1))
            .and_then(|r| r.create())
            .is_ok()
    })
}

impl Fence {
    /// The ruleset for one command, made before it is spawned (opening the paths needs
    /// allocation, which a forked child must not do); the child only enforces it.
    pub fn ruleset(&self) -> Result<RulesetCreated, RulesetError> {
        let read = AccessFs::from_read(ABI_WANTED);
        let all = AccessFs::from_all(ABI_WANTED);
        let readable = SYSTEM_READ
            .iter()
            .map(PathBuf::from)
            .chain(self.readable.iter().cloned());
        Ruleset::default()
            .handle_access(all)?
            .scope(Scope::from_all(ABI_WANTED))?
            .create()?
            .add_rules(path_beneath_rules(readable, read))?
            .add_rules(path_beneath_rules(DEVICES, AccessFs::from_file(ABI_WANTED)))?
            .add_rules(path_beneath_rules(&self.writable, all))
    }
}

/// Keeps the worker's own process out of its builds' reach: not dumpable, its `/proc`
/// entries (environment, memory, open files) need `CAP_SYS_PTRACE`, which builds lack (see
/// [`enforce`]). Also keeps its keys out of core dumps.
pub fn protect_worker() {
    // SAFETY: prctl(2) with integer arguments; no memory is involved.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}

/// Drops every capability of the calling process and of what it executes, so a build run by
/// a root worker is root by name only: it cannot reach a protected worker, bypass file
/// permissions, or gain the capabilities back on exec. Not being root is no error.
fn drop_capabilities() -> std::io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    // SAFETY: prctl(2) and capset(2) with integer arguments and pointers to locals that
    // outlive the calls; nothing allocates.
    unsafe {
        for cap in 0..64 {
            // EINVAL past the kernel's last capability; EPERM when not root (nothing to drop).
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                break;
            }
        }
        let header = Header {
            version: VERSION_3,
            pid: 0,
        };
        let data = [Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Enforces `ruleset` on the calling (forked, not yet exec'd) process, and drops its
/// capabilities.
///
/// Only system calls happen here: no allocation, as `pre_exec` requires. Without Landlock
/// the process goes on unfenced; a kernel that has it but refuses the ruleset fails the spawn.
pub fn enforce(ruleset: RulesetCreated) -> std::io::Result<()> {
    drop_capabilities()?;
    match ruleset.restrict_self() {
        Ok(_) => Ok(()),
        Err(_) => Err(std::io::Error::last_os_error()),
    }
}

/// Paths under which a worker's own secrets must not lie, as they would be readable by
/// builds: the system's directories and the configured extra ones.
pub fn exposed(secret: &Path, extra: &[PathBuf]) -> bool {
    SYSTEM_READ
        .iter()
        .map(Path::new)
        .chain(extra.iter().map(PathBuf::as_path))
        .any(|dir| secret.starts_with(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Runs `script` fenced to `scratch`, with the environment a build gets.
    fn fenced(scratch: &Path, script: &str) -> std::process::Output {
        let fence = Fence {
            writable: vec![scratch.to_path_buf()],
            readable: vec![],
        };
        let mut ruleset = Some(fence.ruleset().expect("a ruleset"));
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .current_dir(scratch)
            .env_clear()
            .env("PATH", crate::exec::BUILD_PATH);
        // SAFETY: the closure only makes system calls (see `enforce`).
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || match ruleset.take() {
                Some(r) => enforce(r),
                None => Ok(()),
            });
        }
        cmd.output().expect("sh runs")
    }

    #[test]
    fn a_fenced_build_writes_only_its_scratch_and_cannot_read_its_worker() {
        assert!(
            available(),
            "this kernel has no Landlock: builds would run unfenced"
        );
        // This test process stands for the worker.
        protect_worker();
        let scratch = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.key"), "private").unwrap();
        // What a build needs still works.
        let ok = fenced(
            scratch.path(),
            "mkdir -p out && head -c 16 /dev/urandom > out/blob && cp out/blob out/copy \
             && chmod +x out/copy && ls /usr/bin >/dev/null && cat /etc/passwd >/dev/null \
             && rm out/copy && echo fine",
        );
        assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "fine", "{ok:?}");

        let out = outside.path().display();
        for (what, script) in [
            ("writes outside", format!("echo x > {out}/planted")),
            ("reads outside", format!("cat {out}/secret.key")),
            ("lists outside", format!("ls {out}")),
            (
                "writes under /tmp",
                "echo x > /tmp/deploy-sandbox-escape".to_string(),
            ),
            ("climbs out", "echo x > ../escaped".to_string()),
            // The parent is this test process: its environment, as a worker's.
            (
                "reads its parent's environment",
                "cat /proc/$PPID/environ".to_string(),
            ),
            ("signals its parent", "kill -0 $PPID".to_string()),
        ] {
            let r = fenced(scratch.path(), &script);
            assert!(!r.status.success(), "a build {what}: {r:?}");
        }
        assert!(!outside.path().join("planted").exists());
        assert!(!std::path::Path::new("/tmp/deploy-sandbox-escape").exists());
        assert!(!scratch.path().parent().unwrap().join("escaped").exists());
    }

    #[test]
    fn secrets_under_readable_directories_are_noticed() {
        assert!(exposed(Path::new("/etc/deploy/worker.key"), &[]));
        assert!(exposed(
            Path::new("/srv/tools/key"),
            &[PathBuf::from("/srv/tools")]
        ));
        assert!(!exposed(Path::new("/var/lib/deploy/worker.key"), &[]));
    }
}
