//! The packaging files (issue 8): the systemd unit says what the operator guide promises,
//! the packaged site file is the example site with absolute state paths, and the .deb
//! metadata installs the binary, the unit, the config and the docs.

use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn unit_is_notify_with_watchdog_check_config_and_reload() {
    let unit = read("packaging/rackwarden.service");
    let has = |line: &str| unit.lines().any(|l| l.trim() == line);
    assert!(has("Type=notify"));
    assert!(unit.lines().any(|l| l.starts_with("WatchdogSec=")));
    assert!(has(
        "ExecStartPre=/usr/bin/rackwarden check-config --config /etc/rackwarden/site.toml"
    ));
    assert!(has(
        "ExecStart=/usr/bin/rackwarden run --config /etc/rackwarden/site.toml"
    ));
    assert!(has("ExecReload=/bin/kill -HUP $MAINPID"));
    assert!(has("StateDirectory=rackwarden"));
    // NVML needs /dev/nvidia*: no device sandboxing.
    assert!(!unit
        .lines()
        .any(|l| l.starts_with("PrivateDevices") || l.starts_with("DevicePolicy")));
    // Exit 78 (bad config) must not loop.
    assert!(has("RestartPreventExitStatus=78"));
}

#[test]
fn packaged_site_is_the_example_with_absolute_state_paths() {
    let example = read("examples/site.toml");
    let packaged = read("packaging/site.toml");
    let body = |s: &str| -> Vec<String> {
        s.lines()
            .skip_while(|l| !l.starts_with("[site]"))
            .filter(|l| !l.starts_with("state_file") && !l.starts_with("journal_file"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        body(&example),
        body(&packaged),
        "packaging/site.toml drifted from examples/site.toml"
    );
    assert!(packaged.contains("state_file = \"/var/lib/rackwarden/state.json\""));
    assert!(packaged.contains("journal_file = \"/var/lib/rackwarden/journal.jsonl\""));
    let site = rackwarden_config::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/site.toml"),
    )
    .unwrap();
    assert_eq!(site.agent.state_file, "/var/lib/rackwarden/state.json");
}

#[test]
fn deb_metadata_lists_binary_unit_config_and_docs() {
    let manifest: toml::Table = read("agent/Cargo.toml").parse().unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    let assets: Vec<(String, String)> = deb["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_array().unwrap();
            (
                a[0].as_str().unwrap().to_owned(),
                a[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let to = |dest: &str| {
        assets
            .iter()
            .find(|(_, d)| d == dest)
            .map(|(s, _)| s.clone())
    };
    assert_eq!(to("usr/bin/").as_deref(), Some("target/release/rackwarden"));
    assert_eq!(
        to("etc/rackwarden/site.toml").as_deref(),
        Some("../packaging/site.toml")
    );
    assert!(to("usr/share/doc/rackwarden/").is_some());
    // Every source asset exists (the docs glob aside, which must match something).
    for (src, _) in &assets {
        if src.starts_with("target/") {
            continue;
        }
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(src);
        if src.contains('*') {
            let dir = p.parent().unwrap();
            assert!(std::fs::read_dir(dir).unwrap().count() > 0, "{src}");
        } else {
            assert!(p.is_file(), "asset {src} missing");
        }
    }
    let units = &deb["systemd-units"];
    assert_eq!(units["unit-name"].as_str(), Some("rackwarden"));
    let dir = units["unit-scripts"].as_str().unwrap();
    assert!(Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(dir)
        .join("rackwarden.service")
        .is_file());
    let conf: Vec<&str> = deb["conf-files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(conf.contains(&"/etc/rackwarden/site.toml"));
}
