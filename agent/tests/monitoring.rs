//! The pieces that plug the agent into the monitoring stack operators already run
//! (issue 18): the Prometheus alerting rules (`packaging/prometheus/rackwarden-rules.yml`,
//! unit-tested by `rackwarden-rules.test.yml` beside it) and the Grafana dashboard
//! (`packaging/grafana/rackwarden.json`).
//!
//! - `promtool check rules` and `promtool test rules` pass, and promtool parses every
//!   dashboard query. promtool comes from Debian's `prometheus` package (`bash
//!   tools/deps.sh --test`); without it these tests fail and say so, unless
//!   `RACKWARDEN_SKIP_PEERS=1`.
//! - Every metric the rules and the dashboard query is one the agent exports, with the
//!   labels they match on: checked against `GET /metrics` on the agent's router after a
//!   real decision (the example site with feed A above its budget and a CDU offline),
//!   recorded the way the runtime records it.
//! - Every catalogue alert a rule or a panel matches on (`alert="..."`) is in
//!   docs/alerts.md; every rule has a unit test that fires it and one that keeps it quiet.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use rackwarden::control::{
    self, ControlState, GpuLimits, MinerMode, Snapshot, Tick, Topology, UnitState,
};
use rackwarden::http::{router, HttpState};
use rackwarden::metrics::PollClass;
use rackwarden::status::{OverrideSet, StatusHub};
use serde_json::Value;
use tower::ServiceExt;

const RULES: &str = "packaging/prometheus/rackwarden-rules.yml";
const RULES_TEST: &str = "packaging/prometheus/rackwarden-rules.test.yml";
const DASHBOARD: &str = "packaging/grafana/rackwarden.json";
/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn skip_peers() -> bool {
    std::env::var("RACKWARDEN_SKIP_PEERS").is_ok_and(|v| v == "1")
}

/// Runs `promtool ARGS` in the repository root; None (after saying why) when promtool is
/// absent and peers may be skipped.
fn promtool(args: &[&str]) -> Option<std::process::Output> {
    match Command::new("promtool")
        .args(args)
        .current_dir(root())
        .output()
    {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let msg = "promtool not found: install Debian's `prometheus` package \
                       (`bash tools/deps.sh --test`, or `apt-get install prometheus`), \
                       or set RACKWARDEN_SKIP_PEERS=1 to skip the tests that need outside peers";
            assert!(skip_peers(), "{msg}");
            eprintln!("skipping: {msg}");
            None
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    }
}

fn show(out: &std::process::Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn promtool_checks_the_rules() {
    let Some(out) = promtool(&["check", "rules", RULES]) else {
        return;
    };
    assert!(out.status.success(), "promtool check rules: {}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SUCCESS"), "{}", show(&out));
}

#[test]
fn promtool_unit_tests_of_the_rules_pass() {
    let Some(out) = promtool(&["test", "rules", RULES_TEST]) else {
        return;
    };
    assert!(out.status.success(), "promtool test rules: {}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SUCCESS"), "{}", show(&out));
}

/// The alert names the rules file defines.
fn rule_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_owned())
        .collect()
}

#[test]
fn every_rule_has_a_test_that_fires_it_and_one_that_keeps_it_quiet() {
    let names = rule_names(&read(RULES));
    assert!(names.len() >= 9, "only {} rules: {names:?}", names.len());
    let tests = read(RULES_TEST);
    // Each `alertname:` entry is followed by its `exp_alerts:` (empty: `[]`).
    let mut fired: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    let mut current: Option<String> = None;
    for l in tests.lines().map(str::trim) {
        if let Some(n) = l
            .strip_prefix("- alertname:")
            .or(l.strip_prefix("alertname:"))
        {
            current = Some(n.trim().to_owned());
        } else if let Some(rest) = l.strip_prefix("exp_alerts:") {
            let n = current.take().expect("exp_alerts without an alertname");
            let e = fired.entry(n).or_default();
            if rest.trim() == "[]" {
                e.1 += 1;
            } else {
                e.0 += 1;
            }
        }
    }
    for n in &names {
        let (fire, quiet) = fired.get(n).copied().unwrap_or_default();
        assert!(fire > 0, "no unit test makes {n} fire");
        assert!(quiet > 0, "no unit test keeps {n} quiet");
    }
    for n in fired.keys() {
        assert!(
            names.contains(n),
            "the unit tests check {n}, which no rule defines"
        );
    }
}

/// `/metrics` after one real decision on the example site, recorded as the runtime
/// records it: feed A measured above its budget (sheds, alerts), a CDU offline (N+1 lost),
/// polls of each class (one failed), an HA role, overrides, the host figures.
async fn exposition() -> String {
    let p = root().join("examples/site.toml");
    let site = Arc::new(rackwarden_config::load(&p).unwrap());
    let now = 120_000;
    let mut snap = Snapshot::empty(&site);
    for (i, n) in site.nodes.iter().enumerate() {
        if !n.meters.is_empty() {
            let share = if n.id == "feed-a" { 1.03 } else { 0.5 };
            snap.set_meter(i, n.budget_kw * share, now);
        }
    }
    for (i, m) in site.miners.iter().enumerate() {
        snap.set_miner(i, m.nominal_w, MinerMode::Mining, now);
        if m.outlet.is_some() {
            snap.set_outlet(i, true, now);
        }
    }
    let lim = GpuLimits {
        enforced_w: 700.0,
        min_w: 200.0,
        max_w: 700.0,
        default_w: 700.0,
    };
    for (i, g) in site.gpu_nodes.iter().enumerate() {
        snap.set_gpu_node(i, 4000.0, g.gpus as usize, lim, true, now);
    }
    for (z, zone) in site.zones.iter().enumerate() {
        for (u, unit) in zone.units.iter().enumerate() {
            if unit.device.is_some() {
                let st = if unit.id == "cdu-1" {
                    UnitState::Offline
                } else {
                    UnitState::Running
                };
                snap.set_unit(z, u, st, now);
            }
        }
    }

    let hub = StatusHub::new();
    hub.set_site(site.clone(), false, Duration::from_secs(1));
    hub.load_overrides(OverrideSet::default());
    hub.set_role(Some("leader"));
    let topo = Topology::new(&site);
    let state = ControlState::new(&site, 0);
    let plan = control::decide(&site, &topo, &snap, &state, now, Tick::Slow);
    hub.record_decision(
        now,
        Tick::Slow,
        &snap,
        &plan.state,
        &plan.nodes,
        &plan.zones,
    );
    assert!(!plan.actions.is_empty(), "feed A above B sheds nothing");
    for a in &plan.actions {
        hub.report_action(now, a, false);
    }
    assert!(!plan.alerts.is_empty(), "the decision raised no alert");
    for a in &plan.alerts {
        hub.raise(now, a);
    }
    for (class, ok) in [
        (PollClass::Modbus, true),
        (PollClass::Miner, false),
        (PollClass::Gpu, true),
    ] {
        hub.poll(class, Duration::from_millis(4), ok);
    }
    // Served as a scrape gets it: GET /metrics on the agent's router.
    let r = router(HttpState {
        hub,
        token: None,
        journal: None,
        overrides_file: None,
    });
    let req = Request::builder()
        .uri("/metrics")
        .body(Body::empty())
        .unwrap();
    let resp = r.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    String::from_utf8(body.to_vec()).unwrap()
}

/// Label names of `k="v",k2="v2"` (values may hold escaped quotes and commas).
fn label_names(inner: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        let name: String = chars
            .by_ref()
            .skip_while(|c| *c == ',' || c.is_whitespace())
            .take_while(|c| *c != '=')
            .collect();
        if name.is_empty() {
            return names;
        }
        names.push(name.trim().to_owned());
        // The value: `"`, then up to the closing unescaped `"`.
        let _ = chars.by_ref().find(|c| *c == '"');
        let mut escaped = false;
        for c in chars.by_ref() {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => break,
                _ => escaped = false,
            }
        }
    }
}

/// What the agent exports: each series name with the label names seen on its samples
/// (none for a family without samples), and the histogram families (from `# TYPE`).
struct Exported {
    series: BTreeMap<String, Option<BTreeSet<String>>>,
    histograms: BTreeSet<String>,
}

fn exported(text: &str) -> Exported {
    let mut series: BTreeMap<String, Option<BTreeSet<String>>> = BTreeMap::new();
    let mut histograms = BTreeSet::new();
    for l in text.lines() {
        // A family registered but without samples here (the host's disks in a
        // container) is still exported: its `# TYPE` line names its series.
        if let Some(t) = l.strip_prefix("# TYPE ") {
            let mut it = t.split_whitespace();
            let (Some(name), Some(kind)) = (it.next(), it.next()) else {
                continue;
            };
            let names = match kind {
                "counter" => vec![format!("{name}_total")],
                "histogram" => {
                    histograms.insert(name.to_owned());
                    ["_bucket", "_sum", "_count"]
                        .iter()
                        .map(|s| format!("{name}{s}"))
                        .collect()
                }
                _ => vec![name.to_owned()],
            };
            for n in names {
                series.entry(n).or_default();
            }
            continue;
        }
        if l.starts_with('#') || l.trim().is_empty() {
            continue;
        }
        let end = l.find(['{', ' ']).unwrap_or(l.len());
        let name = l[..end].to_owned();
        let labels = if l[end..].starts_with('{') {
            let close = l.rfind('}').expect("unclosed label set");
            label_names(&l[end + 1..close])
        } else {
            Vec::new()
        };
        series
            .entry(name)
            .or_default()
            .get_or_insert_with(BTreeSet::new)
            .extend(labels);
    }
    Exported { series, histograms }
}

/// Every `rackwarden_*` metric a query text names, with the label names of the matchers
/// written right after it (`name{label="..."}`).
fn referenced(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let b = text.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while let Some(k) = text[i..].find("rackwarden_") {
        let start = i + k;
        let mut end = start;
        while end < b.len() && ident(b[end]) {
            end += 1;
        }
        i = end;
        if start > 0 && (ident(b[start - 1]) || b[start - 1] == b'.' || b[start - 1] == b'-') {
            continue;
        }
        let e = out.entry(text[start..end].to_owned()).or_default();
        if b.get(end) == Some(&b'{') {
            let close = text[end..].find('}').map(|c| end + c).expect("unclosed {");
            for m in text[end + 1..close].split(',') {
                let name: String = m
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    e.insert(name);
                }
            }
        }
    }
    out
}

/// The family a referenced name belongs to: histogram samples by their family.
fn family<'a>(name: &'a str, ex: &Exported) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if ex.histograms.contains(base) {
                return base;
            }
        }
    }
    name
}

/// The query texts of the dashboard: every target's `expr`, every variable's `query` and
/// `definition`.
fn dashboard_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::Object(q)) => {
                        if let Some(Value::String(s)) = q.get("query") {
                            out.push(s.clone());
                        }
                    }
                    _ => dashboard_queries(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| dashboard_queries(x, out)),
        _ => {}
    }
}

#[tokio::test]
async fn every_metric_the_rules_and_the_dashboard_query_is_exported() {
    let text = exposition().await;
    let ex = exported(&text);
    // The exposition holds the families the rules rely on, with samples.
    for f in [
        "rackwarden_ready",
        "rackwarden_alerts_total",
        "rackwarden_node_measured_watts",
        "rackwarden_zone_redundant",
        "rackwarden_inputs",
        "rackwarden_poll_duration_seconds_bucket",
    ] {
        assert!(ex.series.contains_key(f), "{f} has no sample:\n{text}");
    }
    let rules = read(RULES);
    let dash: Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard is JSON");
    let mut queries = Vec::new();
    dashboard_queries(&dash, &mut queries);
    assert!(
        queries.len() >= 20,
        "only {} dashboard queries",
        queries.len()
    );
    for (what, body, min) in [(RULES, rules, 8), (DASHBOARD, queries.join("\n"), 25)] {
        let refs = referenced(&body);
        assert!(
            refs.len() >= min,
            "{what} names only {} metrics: {refs:?}",
            refs.len()
        );
        for (name, labels) in &refs {
            assert!(
                !ex.histograms.contains(name),
                "{what} queries the histogram `{name}` without `_bucket`, `_sum` or `_count`"
            );
            let fam = family(name, &ex);
            let seen: Vec<&Option<BTreeSet<String>>> = ex
                .series
                .iter()
                .filter(|(s, _)| family(s, &ex) == fam)
                .map(|(_, l)| l)
                .collect();
            assert!(
                !seen.is_empty(),
                "{what} queries `{name}`, which the agent does not export; it exports: {:?}",
                ex.series.keys().collect::<Vec<_>>()
            );
            if seen.iter().all(|l| l.is_none()) {
                // Registered, without samples on this machine: its labels are unseen.
                continue;
            }
            let have: BTreeSet<&str> = seen
                .iter()
                .copied()
                .flatten()
                .flat_map(|l| l.iter().map(String::as_str))
                .chain(TARGET_LABELS)
                .collect();
            for l in labels {
                assert!(
                    have.contains(l.as_str()),
                    "{what} matches `{name}` on label `{l}`, which it does not carry ({have:?})"
                );
            }
        }
    }
}

/// The values of `alert="..."` / `alert=~"a|b"` matchers in a text.
fn alert_matchers(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (k, _) in text.match_indices("alert") {
        let rest = &text[k + "alert".len()..];
        let rest = rest.trim_start_matches(['!', '=', '~']);
        if rest.len() == text.len() - k - "alert".len() {
            continue; // not a matcher
        }
        let rest = rest.trim_start_matches('\\');
        let Some(rest) = rest.strip_prefix('"') else {
            continue;
        };
        let end = rest.find(['"', '\\']).unwrap_or(rest.len());
        out.extend(rest[..end].split('|').map(str::to_owned));
    }
    out
}

#[test]
fn every_alert_the_rules_and_the_dashboard_match_is_in_the_catalogue() {
    let catalogue = read("docs/alerts.md");
    let mut n = 0;
    for what in [RULES, DASHBOARD, RULES_TEST] {
        for a in alert_matchers(&read(what)) {
            if what == RULES_TEST && !a.contains('.') {
                continue; // the test file's `alertname:` lines
            }
            n += 1;
            assert!(
                catalogue.contains(&format!("| `{a}` |")),
                "{what} matches alert `{a}`, which docs/alerts.md does not list"
            );
        }
    }
    assert!(n >= 5, "only {n} alert matchers");
}

#[test]
fn the_dashboard_imports_with_a_prometheus_input() {
    let dash: Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard is JSON");
    let inputs = dash["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "no DS_PROMETHEUS input: {inputs:?}"
    );
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dash["uid"].as_str().is_some_and(|t| !t.is_empty()));
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut rows = Vec::new();
    for p in panels {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        assert!(
            p["gridPos"]["w"].as_u64().is_some(),
            "panel {id}: no gridPos"
        );
        if p["type"] == "row" {
            rows.push(p["title"].as_str().unwrap_or_default().to_lowercase());
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {id} ({}) not on the Prometheus input",
            p["title"]
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {id}: no query");
        for t in targets {
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()));
        }
    }
    for want in [
        "site", "feeds", "zones", "miners", "gpu", "alerts", "host", "shed",
    ] {
        assert!(
            rows.iter().any(|r| r.contains(want)),
            "no row about {want}: {rows:?}"
        );
    }
}

/// A dashboard query as PromQL: variables replaced by what matches anything, a
/// `label_values(selector, label)` by its selector.
fn as_promql(q: &str) -> String {
    let mut q = q.trim().to_owned();
    if let Some(inner) = q.strip_prefix("label_values(") {
        let inner = inner.strip_suffix(')').expect("label_values(...)");
        q = match inner.rfind(',') {
            Some(c) => inner[..c].to_owned(),
            None => inner.to_owned(),
        };
    }
    for v in ["$job", "$instance", "$feed", "$zone"] {
        q = q.replace(v, ".*");
    }
    q.replace("$__rate_interval", "5m")
}

#[test]
fn promtool_parses_every_dashboard_query() {
    let dash: Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard is JSON");
    let mut queries = Vec::new();
    dashboard_queries(&dash, &mut queries);
    queries.sort();
    queries.dedup();
    // Each query as a recording rule: `promtool check rules` parses its expression.
    let mut yml = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        let expr = serde_json::to_string(&as_promql(q)).unwrap();
        yml.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {expr}\n"
        ));
    }
    let dir = std::env::temp_dir().join(format!("rackwarden-monitoring-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("dashboard-queries.yml");
    std::fs::write(&file, yml).unwrap();
    let out = promtool(&["check", "rules", file.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).ok();
    let Some(out) = out else {
        return;
    };
    assert!(
        out.status.success(),
        "a dashboard query does not parse: {}",
        show(&out)
    );
}
