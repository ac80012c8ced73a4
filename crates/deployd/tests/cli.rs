//! `deployd` refuses bad configs and ids with clear errors before starting anything.

use std::process::Command;

fn deployd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_deployd"))
}

#[test]
fn invalid_config_lists_every_problem_and_exits_1() {
    let dir = tempfile::TempDir::new().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[cluster]\nname = \"t\"\n[[nodes]]\nid = \"a\"\naddr = \"nowhere\"\n[[nodes]]\nid = \"a\"\naddr = \"127.0.0.1:1\"\n[global]\nvoters = []\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = deployd()
        .args(["node", "--id", "a", "--config"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in ["declared twice", "no voters", "\"nowhere\""] {
        assert!(err.contains(expected), "missing {expected:?} in: {err}");
    }
}

#[test]
fn unknown_node_id_is_refused() {
    let dir = tempfile::TempDir::new().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("one.toml");
    std::fs::write(
        &path,
        "[cluster]\nname = \"t\"\n[[nodes]]\nid = \"a\"\naddr = \"127.0.0.1:1\"\n[global]\nvoters = [\"a\"]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = deployd()
        .args(["node", "--id", "zz", "--config"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("zz"));
}
