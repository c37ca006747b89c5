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
    std::fs::remove_dir_all(&dir).ok();
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
fn an_alerts_section_is_summarised_with_its_defaults() {
    let dir = std::env::temp_dir().join(format!("rw-check-alerts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text =
        std::fs::read_to_string(repo().join("config/tests/data/valid/minimal.toml")).unwrap();
    let (code, stdout, _) = check_config(&repo().join("config/tests/data/valid/minimal.toml"));
    assert_eq!(code, 0);
    assert!(
        stdout.contains("alerts      log only (no [alerts] receiver)"),
        "{stdout}"
    );
    std::fs::write(dir.join("hook.token"), "t0ken\n").unwrap();
    let file = dir.join("site.toml");
    std::fs::write(
        &file,
        format!("{text}\n[alerts]\nalertmanager_url = \"http://127.0.0.1:9093/\"\nwebhook_url = \"http://127.0.0.1:8080/hook\"\nwebhook_token_file = \"hook.token\"\n"),
    )
    .unwrap();
    let (code, stdout, stderr) = check_config(&file);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(
            "alerts      alertmanager http://127.0.0.1:9093/api/v2/alerts, webhook http://127.0.0.1:8080/hook (bearer token); warning and above, re-sent every 60 s, queue 1024, timeout 5 s"
        ),
        "{stdout}"
    );
}

#[test]
fn a_grid_section_is_summarised() {
    let dir = std::env::temp_dir().join(format!("rw-check-grid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text =
        std::fs::read_to_string(repo().join("config/tests/data/valid/minimal.toml")).unwrap();
    let (_, stdout, _) = check_config(&repo().join("config/tests/data/valid/minimal.toml"));
    assert!(
        stdout.contains("grid        targets from api (with agent.http_token_file); margin 2%, GPU caps never; no price curtailment"),
        "{stdout}"
    );
    std::fs::write(dir.join("vtn.secret"), "s3cret\n").unwrap();
    let file = dir.join("site.toml");
    std::fs::write(
        &file,
        format!("{text}\n[grid]\nhashprice_usd_per_th_day = 0.05\nallow_gpu_caps = true\n[grid.openadr]\nvtn_url = \"https://vtn.utility.example/openadr3/\"\nclient_id = \"site-7\"\nclient_secret_file = \"vtn.secret\"\n"),
    )
    .unwrap();
    let (code, stdout, stderr) = check_config(&file);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("grid        targets from api (with agent.http_token_file), openadr https://vtn.utility.example/openadr3 as VEN `mini`, polled every 10 s; margin 2%, GPU caps allowed; price curtailment at hashprice 0.05 USD/TH/day (breakeven 69 USD/MWh at 30 J/TH)"),
        "{stdout}"
    );
}

#[test]
fn a_site_without_gpus_prints_zero_not_minus_zero_kw() {
    let dir = std::env::temp_dir().join(format!("rw-check-nogpu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text =
        std::fs::read_to_string(repo().join("config/tests/data/valid/minimal.toml")).unwrap();
    // The minimal site less its GPU rack and host: mining only.
    let gpu_rack = "[[racks]]\nid = \"gpu-1\"\nkind = \"gpu\"\nparents = [\"row-1\"]\nrating_kw = 165\nrated_max_kw = 132\n";
    assert!(text.contains(gpu_rack));
    let host = &text[text.find("[[gpu_nodes]]").unwrap()..];
    let mining = text
        .replace(gpu_rack, "")
        .replace(host, "")
        .replace("racks = [\"gpu-1\", \"mine-1\"]", "racks = [\"mine-1\"]");
    let file = dir.join("site.toml");
    std::fs::write(&file, mining).unwrap();
    let (code, stdout, stderr) = check_config(&file);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("gpus        0 on 0 hosts (0 remote), 0.0 kW rated max"),
        "{stdout}"
    );
    assert!(!stdout.contains("-0.0"), "{stdout}");
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

/// The limits table as the operator reads it: one line per node with B, H, the rated GPU
/// reserve X, the guaranteed mining allocation and the trough headroom.
fn limits_line(stdout: &str, id: &str) -> Vec<f64> {
    stdout
        .lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(id)).then(|| it.map(|v| v.parse::<f64>().unwrap()).collect())
        })
        .unwrap_or_else(|| panic!("no limits line for {id}:\n{stdout}"))
}

#[test]
fn limits_per_feed_and_row_and_warnings_for_racks_the_limits_cannot_hold() {
    let file = repo().join("agent/tests/data/check-limits.toml");
    let (code, stdout, stderr) = check_config(&file);
    assert_eq!(code, 0, "warnings are not errors: {stderr}");
    assert!(
        stdout.contains("node                B        H    GPU X guaranteed   trough"),
        "{stdout}"
    );
    // [B, H, sum X, guaranteed = max(0, B - X), trough = max(0, min(0.97 B - sum S_min,
    // H - X) - guaranteed)], worked out by hand in the file's comments.
    for (id, want) in [
        ("check-limits", [240.0, 285.0, 201.0, 39.0, 45.0]),
        ("feed-a", [160.0, 190.0, 100.0, 60.0, 30.0]),
        ("feed-b", [80.0, 95.0, 101.0, 0.0, 0.0]),
        ("r-gpu", [120.0, 142.5, 100.0, 20.0, 22.5]),
        ("r-mine-a", [80.0, 95.0, 0.0, 80.0, 0.0]),
        ("r-b", [80.0, 95.0, 101.0, 0.0, 0.0]),
    ] {
        assert_eq!(limits_line(&stdout, id), want, "{id}:\n{stdout}");
    }
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    let warned = |what: &str| warnings.iter().any(|w| w.starts_with(what));
    assert!(
        warned("warning: rack `gpu-3`: its rated GPU maximum 45.0 kW (rated_max_kw) reaches its budget B 40.0 kW"),
        "{warnings:#?}"
    );
    assert!(
        warned("warning: rack `gpu-4`: its rated GPU maximum 56.0 kW (its GPU hosts' gpus x gpu_max_w)"),
        "{warnings:#?}"
    );
    assert!(
        warned("warning: row `r-b`: the rated GPU maxima under it (101.0 kW) exceed its ceiling H 95.0 kW"),
        "{warnings:#?}"
    );
    assert!(
        warned("warning: feed `feed-b`: the rated GPU maxima under it (101.0 kW) exceed its ceiling H 95.0 kW"),
        "{warnings:#?}"
    );
    assert_eq!(
        warnings.len(),
        4,
        "nothing else is warned about: {warnings:#?}"
    );
}

#[test]
fn the_example_sites_pass_with_their_limits_and_no_warning() {
    for name in ["site.toml", "site-colo.toml"] {
        let (code, stdout, stderr) = check_config(&repo().join("examples").join(name));
        assert_eq!(code, 0, "{name}: {stderr}");
        assert!(
            stdout.contains("  limits      kW at the rated GPU reserves"),
            "{stdout}"
        );
        assert!(
            !stdout.lines().any(|l| l.starts_with("warning:")),
            "{name}:\n{stdout}"
        );
        for feed in ["feed-a", "feed-b"] {
            let [b, h, x, g, t] = limits_line(&stdout, feed)[..] else {
                panic!("{name}: {feed}: five figures");
            };
            assert!(h > b && x < h, "{name}: {feed}: {stdout}");
            assert!((g - (b - x).max(0.0)).abs() < 0.11, "{name}: {feed}");
            assert!(t > 0.0 && t <= h - b + 0.11, "{name}: {feed}: trough {t}");
        }
    }
}
