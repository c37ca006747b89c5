//! `rackwarden check-config` as an operator runs it: the binary, a file, an exit code and
//! the messages on stderr. One invalid file per validation rule lives in
//! config/tests/data/invalid/; each names the field path it must be reported at, and marks
//! the line with `<- error`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn check_config(file: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rackwarden"))
        .arg("check-config")
        .arg("--config")
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_invalid_file_exits_78_with_its_path_and_line() {
    let dir = repo().join("config/tests/data/invalid");
    let mut checked = 0;
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let Some(path) = text.lines().find_map(|l| l.strip_prefix("# expect-path: ")) else {
            continue; // a helper file (a profile), not a site
        };
        let line = text
            .lines()
            .position(|l| l.contains("# <- error"))
            .map(|i| i + 1)
            .unwrap_or_else(|| panic!("{}: no `<- error` marker", file.display()));
        let (code, stdout, stderr) = check_config(&file);
        assert_eq!(code, 78, "{}: exit code; stderr:\n{stderr}", file.display());
        assert!(stdout.is_empty(), "{}: printed a summary", file.display());
        let prefix = format!("{}:{line}:", file.display());
        let hit = stderr
            .lines()
            .any(|l| l.starts_with(&prefix) && l.contains(&format!(": {path}: ")));
        assert!(
            hit,
            "{}: expected a line `{prefix}COL: {path}: ...`, got:\n{stderr}",
            file.display()
        );
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} invalid files checked");
}

#[test]
fn all_errors_are_reported_at_once() {
    let base =
        std::fs::read_to_string(repo().join("config/tests/data/valid/minimal.toml")).unwrap();
    let broken = base
        .replace("rating_kw = 500", "rating_kw = -1")
        .replace("unit_id = 3", "unit_id = 0")
        .replace(r#"rack = "mine-1""#, r#"rack = "nowhere""#);
    let dir = std::env::temp_dir().join(format!("rw-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("three-errors.toml");
    std::fs::write(&file, broken).unwrap();
    let (code, _, stderr) = check_config(&file);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(code, 78);
    for path in [
        "feeds[0].rating_kw",
        "modbus_devices[1].unit_id",
        "miners[0].rack",
    ] {
        assert!(
            stderr.contains(&format!(": {path}: ")),
            "{path} missing:\n{stderr}"
        );
    }
}

#[test]
fn valid_files_print_the_summary() {
    let (code, stdout, stderr) = check_config(&repo().join("examples/site.toml"));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("site example-site"), "{stdout}");
    assert!(
        stdout.contains("racks       4 gpu, 8 mining, 0 mixed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("zones       2 (7 cooling units"),
        "{stdout}"
    );
    assert!(stdout.contains("budget      1200.0 kW"), "{stdout}");
    let (code, stdout, _) = check_config(&repo().join("config/tests/data/valid/minimal.toml"));
    assert_eq!(code, 0);
    assert!(
        stdout.contains("miners      1 (3.2 kW nominal): braiins 1"),
        "{stdout}"
    );
    assert!(stdout.contains("ha          none"), "{stdout}");
}

#[test]
fn an_ha_section_is_summarised_with_its_defaults() {
    let dir = std::env::temp_dir().join(format!("rw-check-ha-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text =
        std::fs::read_to_string(repo().join("config/tests/data/valid/minimal.toml")).unwrap();
    let file = dir.join("site.toml");
    std::fs::write(
        &file,
        format!("{text}\n[ha]\netcd_endpoints = [\"http://10.0.0.11:2379\", \"http://10.0.0.12:2379\"]\nnode = \"mgmt-b\"\n"),
    )
    .unwrap();
    let (code, stdout, stderr) = check_config(&file);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, 0, "{stderr}");
    let site_id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("site "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_default()
        .to_owned();
    assert!(
        stdout.contains(&format!(
            "ha          node `mgmt-b`, 2 etcd endpoint(s), lease 10 s, keys under /rackwarden/{site_id}"
        )),
        "{stdout}"
    );
}

#[test]
fn missing_file_is_a_config_error_and_bad_usage_is_64() {
    let (code, _, stderr) = check_config(Path::new("/nonexistent/site.toml"));
    assert_eq!(code, 78);
    assert!(
        stderr.contains("/nonexistent/site.toml: cannot read the site file"),
        "{stderr}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_rackwarden"))
        .args(["check-config", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(env!("CARGO_BIN_EXE_rackwarden"))
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "missing --config");
}

#[test]
fn json_logs_are_one_object_per_line_with_stable_fields() {
    let out = Command::new(env!("CARGO_BIN_EXE_rackwarden"))
        .args(["--log-format", "json", "check-config", "--config"])
        .arg(repo().join("examples/site.toml"))
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut events = 0;
    for line in stderr.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
        assert!(v["timestamp"].is_string(), "{line}");
        assert!(v["level"].is_string(), "{line}");
        assert!(v["target"].is_string(), "{line}");
        if v["fields"]["event"] == "config.valid" {
            assert_eq!(v["fields"]["site"], "example-site");
            assert_eq!(v["fields"]["miners"], 188);
            assert_eq!(v["fields"]["message"], "site file is valid");
            events += 1;
        }
    }
    assert_eq!(events, 1, "{stderr}");
}
