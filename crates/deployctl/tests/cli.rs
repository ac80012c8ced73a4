//! `deployctl` as a user meets it: exit codes and one-line errors.

use std::process::Command;

fn deployctl() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_deployctl"));
    c.env_remove("DEPLOY_ENDPOINT");
    c
}

#[test]
fn unreachable_endpoint_is_one_line_and_exit_code_2() {
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(1);
    let out = deployctl()
        .args([
            "--endpoint",
            &format!("http://127.0.0.1:{port}"),
            "cluster",
            "status",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run deployctl: {e}"));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "expected one line: {err}"
    );
    assert!(
        err.contains(&format!("127.0.0.1:{port}")),
        "names the endpoint: {err}"
    );
    assert!(err.contains("cannot reach"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn endpoint_comes_from_the_environment_too() {
    let out = deployctl()
        .env("DEPLOY_ENDPOINT", "http://127.0.0.1:1")
        .args(["cluster", "status", "--output", "json"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run deployctl: {e}"));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1"));
}

#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    let out = deployctl()
        .args(["cluster", "frobnicate"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let out = deployctl()
        .args(["--output", "yaml", "cluster", "status"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let out = deployctl()
        .args(["--help"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cluster"));
}

#[test]
fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = deployctl().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        for word in ["deployctl", "release", "rollback", "hosts"] {
            assert!(text.contains(word), "{shell}: no {word}");
        }
    }
    let out = deployctl().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}
