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

#[test]
fn certs_init_makes_a_ca_and_token_and_issue_a_certificate_for_a_process_of_the_config() {
    let dir = tempfile::TempDir::new().unwrap_or_else(|e| panic!("{e}"));
    let certs = dir.path().join("certs");
    let out = deployd()
        .args(["certs", "init", "--dir"])
        .arg(&certs)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("[security]") && printed.contains("admin_token_sha256"),
        "{printed}"
    );
    for f in ["ca.pem", "ca.key", "admin.token"] {
        assert!(certs.join(f).is_file(), "{f} missing");
    }
    // Never over an existing CA.
    let again = deployd()
        .args(["certs", "init", "--dir"])
        .arg(&certs)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let local = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../cluster-config/local.toml"
    );
    let issue = |id: &str| {
        deployd()
            .args(["certs", "issue", "--dir"])
            .arg(&certs)
            .args(["--id", id, "--config", local, "--host", "node-1.example"])
            .output()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let out = issue("g1");
    assert!(out.status.success(), "{out:?}");
    assert!(certs.join("g1.pem").is_file() && certs.join("g1.key").is_file());
    let out = issue("nobody");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node, worker, relay or host"));
}
