//! docs/alerts.md and the code agree: every alert name the code can emit is documented,
//! and every documented alert is one the code can emit.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn documented() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo().join("docs/alerts.md")).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect()
}

/// Alert names written as literals where an alert is raised (`alert = "..."` in a
/// tracing macro, `Alert::new("...")`), anywhere in the sources.
fn literals_in_sources() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![repo().join("agent/src"), repo().join("protocols/src")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                for pat in ["alert = \"", "Alert::new(\""] {
                    for (i, _) in text.match_indices(pat) {
                        let rest = &text[i + pat.len()..];
                        if let Some(end) = rest.find('"') {
                            out.insert(rest[..end].to_owned());
                        }
                    }
                }
            }
        }
    }
    out
}

#[test]
fn every_alert_the_code_emits_is_documented_and_back() {
    let doc = documented();
    assert!(doc.len() >= 15, "catalogue parse found only {doc:?}");
    let code: BTreeSet<String> = rackwarden::alerts::catalogue()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let missing: Vec<_> = code.difference(&doc).collect();
    assert!(
        missing.is_empty(),
        "emitted but not in docs/alerts.md: {missing:?}"
    );
    let stale: Vec<_> = doc.difference(&code).collect();
    assert!(
        stale.is_empty(),
        "in docs/alerts.md but never emitted: {stale:?}"
    );
    let literals = literals_in_sources();
    let undocumented: Vec<_> = literals.difference(&doc).collect();
    assert!(
        undocumented.is_empty(),
        "alert names written as literals but not catalogued: {undocumented:?}"
    );
}

#[test]
fn alert_names_are_dotted_lowercase() {
    for name in rackwarden::alerts::catalogue() {
        assert!(
            name.split('.').count() >= 2
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_'),
            "{name}"
        );
    }
}

/// docs/alerts.md's severity column is the one the enum gives each kind.
#[test]
fn documented_severities_are_the_catalogues() {
    let text = std::fs::read_to_string(repo().join("docs/alerts.md")).unwrap();
    let mut checked = 0;
    // The catalogue table: the rows after its header, up to the first line that is not
    // a row.
    let rows = text
        .lines()
        .skip_while(|l| !l.starts_with("| alert | severity |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'));
    for line in rows {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`');
        let kind = rackwarden::catalogue::AlertKind::from_name(name)
            .unwrap_or_else(|| panic!("{name} is documented but not an AlertKind"));
        assert_eq!(cells[2], kind.severity().name(), "severity of {name}");
        checked += 1;
    }
    assert_eq!(checked, rackwarden::catalogue::AlertKind::ALL.len());
}

/// The GPU sources (protocols/) raise two alerts by name: they are the catalogue's.
#[test]
fn the_gpu_sources_alert_names_are_catalogued() {
    use rackwarden::catalogue::AlertKind;
    assert_eq!(
        rackwarden_protocols::gpu::ALERT_NVML_UNAVAILABLE,
        AlertKind::TelemetryNvmlUnavailable.name()
    );
    assert_eq!(
        rackwarden_protocols::gpu::ALERT_NVML_UNSUPPORTED,
        AlertKind::TelemetryNvmlUnsupported.name()
    );
}
