//! Tests of the HTTP layer through its router (no socket): readiness, status, metrics
//! exposition, overrides and their token.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use rackwarden_config::Site;
use tower::ServiceExt;

use super::*;
use crate::catalogue::AlertKind;
use crate::control::{
    self, ControlState, GpuLimits, MinerMode, Snapshot, Tick, Topology, UnitState,
};

fn site() -> Site {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/site.toml");
    rackwarden_config::load(&p).unwrap()
}

/// A snapshot where every input the site names was read at `at`.
fn full_snapshot(site: &Site, at: u64) -> Snapshot {
    let mut s = Snapshot::empty(site);
    for (i, n) in site.nodes.iter().enumerate() {
        if !n.meters.is_empty() {
            s.set_meter(i, n.budget_kw * 0.5, at);
        }
    }
    for (i, m) in site.miners.iter().enumerate() {
        s.set_miner(i, m.nominal_w, MinerMode::Mining, at);
        if m.outlet.is_some() {
            s.set_outlet(i, true, at);
        }
    }
    for (i, g) in site.gpu_nodes.iter().enumerate() {
        let lim = GpuLimits {
            enforced_w: 700.0,
            min_w: 200.0,
            max_w: 700.0,
            default_w: 700.0,
        };
        s.set_gpu_node(i, 4000.0, g.gpus as usize, lim, true, at);
    }
    for (z, zone) in site.zones.iter().enumerate() {
        for (u, unit) in zone.units.iter().enumerate() {
            if unit.device.is_some() {
                s.set_unit(z, u, UnitState::Running, at);
            }
        }
    }
    s
}

/// Runs one real decision on `snap` and records it in `hub`.
fn decide_into(hub: &StatusHub, site: &Site, snap: &Snapshot, now: u64, tick: Tick) {
    let topo = Topology::new(site);
    let state = ControlState::new(site, 0);
    let plan = control::decide(site, &topo, snap, &state, now, tick);
    hub.record_decision(now, tick, snap, &plan.state, &plan.nodes, &plan.zones);
}

async fn call(
    r: &axum::Router,
    method: Method,
    uri: &str,
    auth: Option<&str>,
) -> (StatusCode, String) {
    send(r, method, uri, auth, None).await
}

/// One request through the router; `json`: a JSON body.
async fn send(
    r: &axum::Router,
    method: Method,
    uri: &str,
    auth: Option<&str>,
    json: Option<&str>,
) -> (StatusCode, String) {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    let body = match json {
        Some(j) => {
            b = b.header("content-type", "application/json");
            Body::from(j.to_owned())
        }
        None => Body::empty(),
    };
    let resp = r.clone().oneshot(b.body(body).unwrap()).await.unwrap();
    let code = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    (code, String::from_utf8(body.to_vec()).unwrap())
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rackwarden-http-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn state_without_token(hub: Arc<StatusHub>) -> HttpState {
    HttpState {
        hub,
        token: None,
        journal: None,
        overrides_file: None,
    }
}

#[tokio::test]
async fn healthz_answers_and_page_is_served() {
    let r = router(state_without_token(StatusHub::new()));
    assert_eq!(
        call(&r, Method::GET, "/healthz", None).await.0,
        StatusCode::OK
    );
    let (c, html) = call(&r, Method::GET, "/", None).await;
    assert_eq!(c, StatusCode::OK);
    assert!(html.contains("/page.js") && html.contains("id=\"tree\""));
    let (c, js) = call(&r, Method::GET, "/page.js", None).await;
    assert_eq!(c, StatusCode::OK);
    assert!(js.contains("/api/v1/status"));
}

#[tokio::test(start_paused = true)]
async fn readyz_waits_for_fresh_data_from_every_collector() {
    let site = site();
    let hub = StatusHub::new();
    let r = router(state_without_token(hub.clone()));
    // No site yet.
    let (c, body) = call(&r, Method::GET, "/readyz", None).await;
    assert_eq!(c, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    hub.set_site(Arc::new(site.clone()), true, Duration::from_secs(1));
    let (c, body) = call(&r, Method::GET, "/readyz", None).await;
    assert_eq!(c, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("no decision yet"), "{body}");

    // A decision on an empty snapshot: every collector is named as not fresh.
    decide_into(&hub, &site, &Snapshot::empty(&site), 10_000, Tick::Slow);
    let (c, body) = call(&r, Method::GET, "/readyz", None).await;
    assert_eq!(c, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("miners: no fresh reading"), "{body}");
    assert!(body.contains("gpu node"), "{body}");
    assert!(body.contains("modbus device"), "{body}");

    // Everything read, but long ago: still not ready.
    decide_into(
        &hub,
        &site,
        &full_snapshot(&site, 1_000),
        120_000,
        Tick::Slow,
    );
    assert_eq!(
        call(&r, Method::GET, "/readyz", None).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // Everything fresh: ready.
    decide_into(
        &hub,
        &site,
        &full_snapshot(&site, 130_000),
        130_500,
        Tick::Slow,
    );
    let (c, body) = call(&r, Method::GET, "/readyz", None).await;
    assert_eq!(c, StatusCode::OK, "{body}");
    assert!(hub.loop_alive());

    // The loop goes silent: not ready again once its deadline passes.
    tokio::time::advance(Duration::from_secs(6)).await;
    let (c, body) = call(&r, Method::GET, "/readyz", None).await;
    assert_eq!(c, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("control loop silent"), "{body}");
    assert!(!hub.loop_alive());
}

#[tokio::test]
async fn status_shows_the_tree_zones_and_frames_by_time() {
    let site = site();
    let hub = StatusHub::new();
    hub.set_site(Arc::new(site.clone()), false, Duration::from_secs(1));
    let r = router(state_without_token(hub.clone()));
    decide_into(&hub, &site, &full_snapshot(&site, 5_000), 5_000, Tick::Slow);
    decide_into(&hub, &site, &full_snapshot(&site, 6_000), 6_000, Tick::Fast);
    let (c, body) = call(&r, Method::GET, "/api/v1/status", None).await;
    assert_eq!(c, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["site"], site.id.as_str());
    assert_eq!(v["frame"]["now_ms"], 6_000);
    let nodes = v["frame"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), site.nodes.len());
    for (n, row) in site.nodes.iter().zip(nodes) {
        assert_eq!(row["id"], n.id.as_str());
        assert_eq!(
            row["budget_kw"].as_f64().unwrap(),
            (n.budget_kw * 10.0).round() / 10.0
        );
    }
    // GPU power lands on GPU racks and their ancestors; the site carries all of it.
    let gpu_total: f64 = site.gpu_nodes.len() as f64 * 4.0;
    assert!((nodes[0]["gpu_kw"].as_f64().unwrap() - gpu_total).abs() < 0.11);
    // Zones come from the slow tick and are carried by the fast one.
    let zones = v["frame"]["zones"].as_array().unwrap();
    assert_eq!(zones.len(), site.zones.len());
    assert!(zones.iter().all(|z| z["units"].as_array().is_some()));
    // An older frame by its time; an unknown one is 404.
    let (c, body) = call(&r, Method::GET, "/api/v1/status?at_ms=5000", None).await;
    assert_eq!(c, StatusCode::OK);
    assert!(body.contains("\"now_ms\":5000"));
    assert_eq!(
        call(&r, Method::GET, "/api/v1/status?at_ms=4999", None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

/// The two-limit figures (B, H, `P_proj`, `P_worst`, sum S, sum X, `M_n`, the guaranteed
/// allocation) and the learned shed and restore times reach `/api/v1/status` and
/// `/metrics` from a real decision: one that confirms a fast and a slow sleep.
#[tokio::test]
async fn status_and_metrics_show_both_limits_and_the_learned_times() {
    let site = site();
    let hub = StatusHub::new();
    hub.set_site(Arc::new(site.clone()), false, Duration::from_secs(1));
    let r = router(state_without_token(hub.clone()));
    let topo = Topology::new(&site);
    let now = 50_000;
    let luxos: Vec<usize> = (0..site.miners.len())
        .filter(|&i| site.miners[i].firmware == rackwarden_config::Firmware::Luxos)
        .take(2)
        .collect();
    let (slow, fast) = (luxos[0], luxos[1]);
    // Two sleeps in flight, each with two earlier samples: the slow one confirms 45 s
    // after its command, the fast one 4 s after.
    let mut state = ControlState::new(&site, 0);
    let mut snap = full_snapshot(&site, now);
    for (i, took, earlier) in [(slow, 45_000, 40_000), (fast, 4_000, 4_000)] {
        let ms = &mut state.miners[i];
        ms.intent = control::Intent::Sleep;
        ms.times.shed_ms = vec![earlier, earlier];
        ms.pending = Some(control::Pending {
            lever: control::Lever::Sleep,
            issued_at: now - took,
            deadline: now + 10_000,
            from_w: site.miners[i].nominal_w,
            to_w: site.miners[i].idle_w,
            emergency: false,
        });
        snap.set_miner(i, site.miners[i].idle_w, MinerMode::Sleeping, now);
    }
    let plan = control::decide(&site, &topo, &snap, &state, now, Tick::Slow);
    hub.record_decision(
        now,
        Tick::Slow,
        &snap,
        &plan.state,
        &plan.nodes,
        &plan.zones,
    );

    let (c, body) = call(&r, Method::GET, "/api/v1/status", None).await;
    assert_eq!(c, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v.get("miners").is_none(), "per-miner rows only on request");
    let r1 = |x: f64| (x * 10.0).round() / 10.0;
    let num = |row: &serde_json::Value, k: &str| row[k].as_f64().unwrap_or(f64::NAN);
    let rows = v["frame"]["nodes"].as_array().unwrap();
    let mut gpu_racks = 0;
    for (i, (n, row)) in site.nodes.iter().zip(rows).enumerate() {
        let view = &plan.nodes[i];
        assert_eq!(num(row, "budget_kw"), r1(n.budget_kw), "{}", n.id);
        assert_eq!(num(row, "ceiling_kw"), r1(n.ceiling_kw), "{}", n.id);
        for (k, want) in [
            ("projected_kw", view.proj_kw),
            ("worst_kw", view.worst_kw),
            ("gpu_reserve_kw", view.gpu_reserve_kw),
            ("gpu_sustained_kw", view.gpu_sustained_kw),
            ("mining_allowance_kw", view.mining_allowance_kw),
            ("guaranteed_kw", view.guaranteed_kw),
            ("mining_committed_kw", view.mining_kw),
            (
                "trough_kw",
                (view.mining_allowance_kw - view.guaranteed_kw).max(0.0),
            ),
        ] {
            assert_eq!(num(row, k), r1(want), "{}.{k}", n.id);
        }
        if n.rack_kind() == Some(rackwarden_config::RackKind::Gpu) {
            // Measured well below its limits: S under X, the worst case above the
            // projection by as much, and a trough for fast miners above the guarantee.
            gpu_racks += 1;
            assert!(
                view.gpu_sustained_kw < view.gpu_reserve_kw - 1.0,
                "{}: S {} X {}",
                n.id,
                view.gpu_sustained_kw,
                view.gpu_reserve_kw
            );
            let gap =
                (view.worst_kw - view.proj_kw) - (view.gpu_reserve_kw - view.gpu_sustained_kw);
            assert!(gap.abs() < 1e-6, "{}: P_worst - P_proj != X - S", n.id);
            assert!(num(row, "trough_kw") > 0.0, "{}: no trough", n.id);
        }
    }
    assert!(gpu_racks > 0);
    // H = ceiling_fraction x rating (0.95 by default).
    let feed = site.node_index("feed-a").unwrap();
    let h = site.policy.ceiling_fraction * site.nodes[feed].rating_kw;
    assert!(h > site.nodes[feed].budget_kw);
    assert_eq!(num(&rows[feed], "ceiling_kw"), r1(h));

    // Per firmware: the slow LuxOS miner is out of the trough.
    let fw = v["miner_times"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["firmware"] == "luxos")
        .unwrap();
    assert_eq!(fw["shed_p99_max_ms"], 45_000);
    assert_eq!(fw["slow"], 1, "{fw}");
    assert_eq!(fw["learned"], 2, "{fw}");
    assert_eq!(fw["default_shed_ms"], 5_000);
    let luxos_n = site
        .miners
        .iter()
        .filter(|m| m.firmware == rackwarden_config::Firmware::Luxos)
        .count();
    assert_eq!(fw["miners"], luxos_n);

    // Per miner, on request.
    let (c, body) = call(&r, Method::GET, "/api/v1/status?miners=true", None).await;
    assert_eq!(c, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let miners = v["miners"].as_array().unwrap();
    assert_eq!(miners.len(), site.miners.len());
    let row = |i: usize| {
        miners
            .iter()
            .find(|m| m["id"] == site.miners[i].id.as_str())
            .unwrap()
    };
    for (i, p99, fast_) in [(slow, 45_000, false), (fast, 4_000, true)] {
        let m = row(i);
        assert_eq!(m["shed"]["samples"], 3, "{m}");
        assert_eq!(m["shed"]["p99_ms"], p99, "{m}");
        assert_eq!(m["fast"], fast_, "{m}");
        assert_eq!(m["driver"], true, "{m}");
        assert_eq!(m["restore"]["samples"], 0, "{m}");
        assert_eq!(m["restore"]["p99_ms"], 10_000, "{m}");
    }

    // The same figures in /metrics.
    let (_, text) = call(&r, Method::GET, "/metrics", None).await;
    let has = |line: &str| text.lines().any(|l| l == line);
    assert!(has(
        "rackwarden_miner_shed_p99_max_seconds{firmware=\"luxos\"} 45.0"
    ));
    assert!(has("rackwarden_miners_slow{firmware=\"luxos\"} 1.0"));
    assert!(has("rackwarden_miners_no_driver{firmware=\"luxos\"} 0.0"));
    let view = &plan.nodes[feed];
    for (name, kw) in [
        ("rackwarden_node_ceiling_watts", site.nodes[feed].ceiling_kw),
        ("rackwarden_node_worst_case_watts", view.worst_kw),
        ("rackwarden_node_gpu_reserve_watts", view.gpu_reserve_kw),
        ("rackwarden_node_gpu_sustained_watts", view.gpu_sustained_kw),
        (
            "rackwarden_node_mining_allowance_watts",
            view.mining_allowance_kw,
        ),
        (
            "rackwarden_node_mining_guaranteed_watts",
            view.guaranteed_kw,
        ),
    ] {
        let got: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{{node=\"feed-a\",kind=\"feed\"}} ")))
            .unwrap_or_else(|| panic!("no {name} for feed-a"))
            .parse()
            .unwrap();
        assert!((got - kw * 1000.0).abs() < 1e-3, "{name}: {got} vs {kw} kW");
    }
}

#[tokio::test]
async fn metrics_exposition_parses_and_holds_the_documented_series() {
    let site = site();
    let hub = StatusHub::new();
    hub.set_site(Arc::new(site.clone()), false, Duration::from_secs(1));
    let r = router(state_without_token(hub.clone()));
    decide_into(&hub, &site, &full_snapshot(&site, 5_000), 5_000, Tick::Slow);
    hub.poll(
        crate::metrics::PollClass::Modbus,
        Duration::from_millis(4),
        true,
    );
    hub.poll(
        crate::metrics::PollClass::Miner,
        Duration::from_millis(9),
        false,
    );
    let (c, text) = call(&r, Method::GET, "/metrics", None).await;
    assert_eq!(c, StatusCode::OK);

    // Every line is a comment or a sample an independent parser accepts.
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        assert!(
            matches!(
                prometheus_parse::LineInfo::parse(line),
                prometheus_parse::LineInfo::Sample { .. }
            ),
            "not a sample: {line}"
        );
    }
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let find = |name: &str, label: (&str, &str)| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
            .map(|s| s.value.clone())
    };
    for n in &site.nodes {
        let Some(prometheus_parse::Value::Gauge(b)) =
            find("rackwarden_node_budget_watts", ("node", &n.id))
        else {
            panic!("no budget for {}", n.id);
        };
        assert!((b - n.budget_kw * 1000.0).abs() < 1e-6);
        assert!(find("rackwarden_node_utilization_ratio", ("node", &n.id)).is_some());
        assert!(find("rackwarden_node_projected_watts", ("node", &n.id)).is_some());
    }
    for z in &site.zones {
        assert!(find("rackwarden_zone_redundant", ("zone", &z.id)).is_some());
        assert!(find("rackwarden_zone_capacity_watts", ("zone", &z.id)).is_some());
        assert!(find("rackwarden_zone_heat_load_watts", ("zone", &z.id)).is_some());
    }
    for g in &site.gpu_nodes {
        assert_eq!(
            find("rackwarden_gpu_node_power_watts", ("gpu_node", &g.id)),
            Some(prometheus_parse::Value::Gauge(4000.0))
        );
        assert_eq!(
            find("rackwarden_gpu_power_limit_watts", ("gpu_node", &g.id)),
            Some(prometheus_parse::Value::Gauge(700.0))
        );
    }
    assert_eq!(
        find("rackwarden_miners", ("state", "normal")).map(|_| scrape
            .samples
            .iter()
            .filter(|s| s.metric == "rackwarden_miners")
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) => v,
                _ => 0.0,
            })
            .sum::<f64>()),
        Some(site.miners.len() as f64)
    );
    assert_eq!(
        find("rackwarden_poll_errors_total", ("class", "miner")),
        Some(prometheus_parse::Value::Untyped(1.0)),
        "OpenMetrics counters: TYPE names the family, the sample ends in _total"
    );
    assert!(find("rackwarden_poll_duration_seconds", ("class", "modbus")).is_some());
    assert!(find("rackwarden_decisions_total", ("tick", "slow")).is_some());
    assert!(text.contains("rackwarden_host_memory_total_bytes "));
    assert!(text.contains("rackwarden_host_cpu_usage_ratio "));
}

/// State with a token and a journal in `dir`.
fn state_with_token(hub: Arc<StatusHub>, dir: &Path) -> HttpState {
    let tf = dir.join("http.token");
    std::fs::write(&tf, "s3cret-operator-token\n").unwrap();
    HttpState::new(
        hub,
        Some(&tf),
        &dir.join("journal.jsonl"),
        &dir.join("overrides.json"),
    )
    .unwrap()
}

#[tokio::test]
async fn overrides_need_the_token_and_are_journaled_and_alerted() {
    let site = site();
    let miner = site.miners[0].id.clone();
    let rack = site.nodes[site.miners[0].rack].id.clone();
    let unit = site.zones[0].units[0].id.clone();
    let hub = StatusHub::new();
    hub.set_site(Arc::new(site.clone()), false, Duration::from_secs(1));
    let dir = temp_dir("overrides");
    let journal = dir.join("journal.jsonl");

    // Without a token file, overrides are off.
    let off = router(state_without_token(hub.clone()));
    let uri = format!("/api/v1/overrides/miner/{miner}");
    assert_eq!(
        call(&off, Method::PUT, &uri, Some("Bearer x")).await.0,
        StatusCode::FORBIDDEN
    );

    let r = router(state_with_token(hub.clone(), &dir));
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer s3cret-operator-token-and-more"),
        Some("Bearer "),
        Some("Basic s3cret-operator-token"),
        Some("s3cret-operator-token"),
    ] {
        let (c, _) = call(&r, Method::PUT, &uri, auth).await;
        assert_eq!(c, StatusCode::UNAUTHORIZED, "auth {auth:?}");
    }
    assert_eq!(hub.override_set(), OverrideSet::default());
    assert!(std::fs::read_to_string(&journal)
        .unwrap_or_default()
        .is_empty());

    let ok = Some("Bearer s3cret-operator-token");
    assert_eq!(call(&r, Method::PUT, &uri, ok).await.0, StatusCode::OK);
    let (c, _) = call(
        &r,
        Method::PUT,
        &format!("/api/v1/overrides/rack/{rack}"),
        ok,
    )
    .await;
    assert_eq!(c, StatusCode::OK);
    let (c, _) = call(
        &r,
        Method::PUT,
        &format!("/api/v1/overrides/unit/{unit}"),
        ok,
    )
    .await;
    assert_eq!(c, StatusCode::OK);
    // Unknown targets and kinds are refused.
    assert_eq!(
        call(&r, Method::PUT, "/api/v1/overrides/miner/no-such-miner", ok)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(
            &r,
            Method::PUT,
            &format!("/api/v1/overrides/feed/{rack}"),
            ok
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );

    // The loop gets them as indices.
    let o = hub.overrides_for(&site);
    assert!(o.curtailed_miners.contains(&0));
    assert!(o.curtailed_racks.contains(&site.miners[0].rack));
    assert!(o.units_in_maintenance.contains(&(0, 0)));

    // Journaled, one line each.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&journal)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["event"], "override.set");
    assert_eq!(lines[0]["kind"], "miner");
    assert_eq!(lines[0]["device"], miner.as_str());
    assert_eq!(lines[2]["kind"], "unit");

    // Release: journaled and alerted too; a repeat changes nothing and journals nothing.
    assert_eq!(call(&r, Method::DELETE, &uri, ok).await.0, StatusCode::OK);
    let (c, body) = call(&r, Method::DELETE, &uri, ok).await;
    assert_eq!(c, StatusCode::OK);
    assert!(body.contains("\"changed\":false"));
    let text = std::fs::read_to_string(&journal).unwrap();
    assert_eq!(text.lines().count(), 4);
    assert!(text.lines().last().unwrap().contains("override.cleared"));
    assert!(!hub.overrides_for(&site).curtailed_miners.contains(&0));

    // Kept across a restart: a new hub reads the file.
    let again = StatusHub::new();
    let _ = state_with_token(again.clone(), &dir);
    assert_eq!(again.override_set(), hub.override_set());
    assert!(again.override_set().racks.contains(&rack));
    assert!(!again.override_set().miners.contains(&miner));

    // Alerts reach the status document and the counters.
    decide_into(&hub, &site, &full_snapshot(&site, 1_000), 1_000, Tick::Slow);
    let st = hub.status(None).unwrap();
    let names: Vec<&str> = st.alerts.iter().map(|a| a.name).collect();
    assert_eq!(
        names
            .iter()
            .filter(|n| **n == AlertKind::OperatorOverrideSet.name())
            .count(),
        3
    );
    assert!(names.contains(&AlertKind::OperatorOverrideCleared.name()));
    assert!(hub.metrics.encode().contains(
        "rackwarden_alerts_total{alert=\"operator.override.set\",severity=\"warning\"} 3"
    ));
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn an_override_holds_a_rack_curtailed_in_the_decision() {
    // The loop copies the overrides into the snapshot; decide then sheds the rack's
    // miners with reason `operator`, and the status says so.
    let site = site();
    let hub = StatusHub::new();
    hub.set_site(Arc::new(site.clone()), false, Duration::from_secs(1));
    let rack = site.miners[0].rack;
    assert!(hub.set_override(OverrideKind::Rack, &site.nodes[rack].id, true));
    let topo = Topology::new(&site);
    let mut state = ControlState::new(&site, 0);
    let mut now = 0;
    let mut operator_actions = 0;
    for k in 0..5u64 {
        now = 100_000 + k * 5_000;
        let mut snap = full_snapshot(&site, now);
        snap.overrides = hub.overrides_for(&site);
        let plan = control::decide(&site, &topo, &snap, &state, now, Tick::Slow);
        for a in &plan.actions {
            hub.report_action(now, a, true);
            if a.reason == control::Reason::Operator {
                operator_actions += 1;
            }
        }
        hub.record_decision(
            now,
            Tick::Slow,
            &snap,
            &plan.state,
            &plan.nodes,
            &plan.zones,
        );
        state = plan.state;
    }
    let in_rack = site.miners.iter().filter(|m| m.rack == rack).count();
    assert!(
        operator_actions >= in_rack,
        "{operator_actions} < {in_rack}"
    );
    let st = hub.status(None).unwrap();
    let held: Vec<_> = st.curtailed.iter().filter(|c| c.operator).collect();
    assert_eq!(held.len(), in_rack, "now {now}");
    assert!(held.iter().all(|c| c.rack == site.nodes[rack].id));
}

#[test]
fn token_comparison_is_exact() {
    let t = Token::new("abc\n");
    assert!(t.matches("abc"));
    assert!(!t.matches("abd"));
    assert!(!t.matches("ab"));
    assert!(!t.matches(""));
    let dir = temp_dir("token");
    let p = dir.join("empty");
    std::fs::write(&p, "  \n").unwrap();
    assert!(matches!(
        Token::from_file(&p),
        Err(HttpError::TokenEmpty { .. })
    ));
    assert!(matches!(
        Token::from_file(&dir.join("missing")),
        Err(HttpError::TokenFile { .. })
    ));
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn energy_api_reports_tenants_by_period_and_names_bad_queries() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    // The example site's tenants: acme holds gpu-a1 and gpu-a2.
    let site = rackwarden_config::load(&examples.join("site.toml")).unwrap();
    assert_eq!(site.tenants[0].id, "acme");
    let dir = std::env::temp_dir().join(format!("rw-http-energy-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    let db = dir.join("rackwarden.db");
    let hub = StatusHub::new();
    let r = router(state_without_token(hub.clone()));
    // Accounting off: said so, not an empty list.
    let (c, body) = call(&r, Method::GET, "/api/v1/energy", None).await;
    assert_eq!(c, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    // 2026-12-01T00:00Z and the next slot: acme's two racks, a mining rack.
    let t0 = crate::energy::report::parse_time("2026-12-01").unwrap();
    let slot = |kwh: f64, resets: u32| crate::energy::meter::Slot {
        measured_kwh: kwh,
        resets,
        ..Default::default()
    };
    crate::energy::store::Store::open(&db)
        .unwrap()
        .commit(
            &[
                ("gpu-a1".into(), t0, slot(25.0, 0)),
                ("gpu-a2".into(), t0, slot(20.0, 1)),
                ("gpu-a1".into(), t0 + 900_000, slot(30.0, 0)),
                ("mine-a1".into(), t0, slot(24.0, 0)),
            ],
            &[],
        )
        .unwrap();
    hub.set_energy_db(db, Arc::new(site));
    let (c, body) = call(
        &r,
        Method::GET,
        "/api/v1/energy?from=2026-12-01&to=2026-12-02&by=hour",
        None,
    )
    .await;
    assert_eq!(c, StatusCode::OK, "{body}");
    let rows: serde_json::Value = serde_json::from_str(&body).unwrap();
    let acme = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["account"] == "acme")
        .unwrap();
    assert_eq!(acme["period"], "2026-12-01T00:00:00Z");
    assert_eq!(acme["kwh"], 75.0);
    assert_eq!(acme["resets"], 1);
    // The busiest slot: 45 kWh in 15 minutes.
    assert_eq!(acme["peak_kw"], 180.0);
    let mining = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["account"] == "mining")
        .unwrap();
    assert_eq!(mining["kwh"], 24.0);
    let (c, body) = call(&r, Method::GET, "/api/v1/energy?tenant=nobody", None).await;
    assert_eq!(c, StatusCode::NOT_FOUND);
    assert!(body.contains("`acme`"), "{body}");
    let (c, body) = call(&r, Method::GET, "/api/v1/energy?from=soon", None).await;
    assert_eq!(c, StatusCode::BAD_REQUEST);
    assert!(body.contains("soon"), "{body}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `/api/v1/history`: one sample per 10 s of site time from real decisions, with the
/// same figures as the status rows at that decision; the page and uPlot are served;
/// a bad window is 400.
#[tokio::test]
async fn history_samples_the_status_figures_and_serves_the_charts() {
    let site = site();
    let hub = StatusHub::new();
    hub.set_site(Arc::new(site.clone()), false, Duration::from_secs(1));
    let r = router(state_without_token(hub.clone()));
    // 95 s of decisions, one a second.
    for s in 0..95u64 {
        let now = 1_000_000 + s * 1000;
        decide_into(&hub, &site, &full_snapshot(&site, now), now, Tick::Fast);
    }
    let (c, body) = call(&r, Method::GET, "/api/v1/history?minutes=60", None).await;
    assert_eq!(c, StatusCode::OK, "{body}");
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    let t: Vec<u64> = h["t_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(t.len(), 10, "{t:?}");
    assert!(t.windows(2).all(|w| w[1] - w[0] == 10_000));
    // The site, each feed and each row, in site order.
    let followed: Vec<&str> = site
        .nodes
        .iter()
        .filter(|n| !matches!(n.kind, rackwarden_config::NodeKind::Rack(_)))
        .map(|n| n.id.as_str())
        .collect();
    let ids: Vec<&str> = h["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, followed);
    // The last sample holds the status figures of its decision.
    let last = *t.last().unwrap();
    let (_, st) = call(
        &r,
        Method::GET,
        &format!("/api/v1/status?at_ms={last}"),
        None,
    )
    .await;
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    for n in h["nodes"].as_array().unwrap() {
        let row = st["frame"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == n["id"])
            .unwrap();
        for f in [
            "measured_kw",
            "projected_kw",
            "budget_kw",
            "ceiling_kw",
            "gpu_kw",
            "mining_kw",
        ] {
            assert_eq!(n[f][9], row[f], "{} {f}", n["id"]);
        }
    }
    // A window ending earlier.
    let (_, early) = call(
        &r,
        Method::GET,
        &format!("/api/v1/history?minutes=1&to_ms={}", t[4]),
        None,
    )
    .await;
    let early: serde_json::Value = serde_json::from_str(&early).unwrap();
    assert_eq!(early["t_ms"].as_array().unwrap().last().unwrap(), t[4]);
    for bad in ["minutes=0", "minutes=100000", "minutes=x"] {
        let (c, _) = call(&r, Method::GET, &format!("/api/v1/history?{bad}"), None).await;
        assert_eq!(c, StatusCode::BAD_REQUEST, "{bad}");
    }
    // The page loads uPlot from the agent itself, and uPlot is served with its type.
    let (_, html) = call(&r, Method::GET, "/", None).await;
    assert!(html.contains("/vendor/uplot/uPlot.iife.min.js") && html.contains("id=\"charts\""));
    let (c, js) = call(&r, Method::GET, "/vendor/uplot/uPlot.iife.min.js", None).await;
    assert_eq!(c, StatusCode::OK);
    assert!(js.contains("uPlot"));
    let (c, _) = call(&r, Method::GET, "/vendor/uplot/uPlot.min.css", None).await;
    assert_eq!(c, StatusCode::OK);
}

async fn call_json(
    r: &axum::Router,
    method: Method,
    uri: &str,
    auth: Option<&str>,
    body: &str,
) -> (StatusCode, String) {
    send(r, method, uri, auth, Some(body)).await
}

#[tokio::test]
async fn grid_targets_need_the_token_are_checked_journaled_and_obeyed() {
    let site = site();
    let hub = StatusHub::new();
    hub.set_site(Arc::new(site.clone()), false, Duration::from_secs(1));
    let dir = temp_dir("grid");
    let journal = dir.join("journal.jsonl");
    let body = r#"{"id": "dr-1", "limit_kw": 1.5, "duration_s": 600}"#;

    let off = router(state_without_token(hub.clone()));
    let (c, _) = call_json(
        &off,
        Method::PUT,
        "/api/v1/grid/target",
        Some("Bearer x"),
        body,
    )
    .await;
    assert_eq!(c, StatusCode::FORBIDDEN);
    let r = router(state_with_token(hub.clone(), &dir));
    for auth in [None, Some("Bearer wrong")] {
        let (c, _) = call_json(&r, Method::PUT, "/api/v1/grid/target", auth, body).await;
        assert_eq!(c, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(hub.grid.resolve(0, None).0.limit_kw, None);

    let ok = Some("Bearer s3cret-operator-token");
    for (bad, says) in [
        (r#"{"limit_kw": -1}"#, "positive"),
        (r#"{"limit_kw": 5, "shed_kw": 1}"#, "one of"),
        (r#"{}"#, "one of"),
        (r#"{"limt_kw": 5}"#, "limt_kw"),
        (r#"{"limit_kw": 5, "duration_s": 0}"#, "duration_s"),
        (r#"{"limit_kw": 5, "id": "a b"}"#, "id"),
        ("not json", "body"),
    ] {
        let (c, text) = call_json(&r, Method::PUT, "/api/v1/grid/target", ok, bad).await;
        assert_eq!(c, StatusCode::BAD_REQUEST, "{bad}: {text}");
        assert!(text.contains(says), "{bad}: {text}");
    }
    let (c, text) = call_json(&r, Method::PUT, "/api/v1/grid/target", ok, body).await;
    assert_eq!(c, StatusCode::OK, "{text}");
    let j = std::fs::read_to_string(&journal).unwrap();
    assert!(
        j.contains("\"grid.event.set\"") && j.contains("dr-1"),
        "{j}"
    );

    // The loop's path: resolve into the snapshot, decide, record.
    let now = 100_000;
    let (input, view) = hub.grid.resolve(now, None);
    assert_eq!(input.limit_kw, Some(1.5));
    assert_eq!(input.limit_from, "api:dr-1");
    let mut snap = full_snapshot(&site, now);
    snap.grid = input;
    let topo = Topology::new(&site);
    let mut state = ControlState::new(&site, 0);
    state.startup_done = true;
    let plan = control::decide(&site, &topo, &snap, &state, now, Tick::Fast);
    assert!(plan
        .actions
        .iter()
        .any(|a| a.reason == control::Reason::Grid && a.lever.is_shed()));
    assert!(plan
        .actions
        .iter()
        .all(|a| a.lever != control::Lever::GpuCap));
    hub.record_decision(
        now,
        Tick::Fast,
        &snap,
        &plan.state,
        &plan.nodes,
        &plan.zones,
    );
    hub.record_grid(
        view,
        plan.nodes.first().map(|v| v.eff_kw),
        plan.grid_shortfall_kw,
        plan.price_curtailed,
    );

    let (c, text) = call(&r, Method::GET, "/api/v1/grid", None).await;
    assert_eq!(c, StatusCode::OK);
    let g: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(g["limit_kw"], 1.5);
    assert_eq!(g["source"], "api");
    assert_eq!(g["event"], "dr-1");
    assert!(
        g["shortfall_kw"].as_f64().unwrap() > 0.0,
        "GPUs alone exceed 1.5 kW: {g}"
    );
    assert_eq!(g["events"].as_array().unwrap().len(), 1);
    let (_, status) = call(&r, Method::GET, "/api/v1/status", None).await;
    assert!(status.contains("\"grid\""));
    let (_, metrics) = call(&r, Method::GET, "/metrics", None).await;
    assert!(
        metrics.contains("rackwarden_grid_limit_watts 1500"),
        "{metrics}"
    );
    assert!(metrics
        .lines()
        .any(|l| l.starts_with("rackwarden_grid_shortfall_watts ") && !l.ends_with(" 0.0")));

    // Withdrawn by id: nothing left in force, and journaled.
    let (c, text) = call(&r, Method::DELETE, "/api/v1/grid/target?id=dr-1", ok).await;
    assert_eq!(c, StatusCode::OK);
    assert!(text.contains("\"cleared\":1"), "{text}");
    assert_eq!(hub.grid.resolve(now, None).0.limit_kw, None);
    assert!(std::fs::read_to_string(&journal)
        .unwrap()
        .contains("grid.event.cleared"));

    // A price, then withdrawn: targets and prices are withdrawn apart.
    let (c, _) = call_json(
        &r,
        Method::PUT,
        "/api/v1/grid/price",
        ok,
        r#"{"usd_per_mwh": 250}"#,
    )
    .await;
    assert_eq!(c, StatusCode::OK);
    let (c, _) = call_json(
        &r,
        Method::PUT,
        "/api/v1/grid/target",
        ok,
        r#"{"shed_kw": 100}"#,
    )
    .await;
    assert_eq!(c, StatusCode::OK);
    let (input, _) = hub.grid.resolve(now, Some(500.0));
    assert_eq!(input.price_usd_per_mwh, Some(250.0));
    assert_eq!(input.limit_kw, Some(400.0));
    let (_, text) = call(&r, Method::DELETE, "/api/v1/grid/price", ok).await;
    assert!(text.contains("\"cleared\":1"));
    let (input, _) = hub.grid.resolve(now, Some(500.0));
    assert_eq!(input.price_usd_per_mwh, None);
    assert_eq!(input.limit_kw, Some(400.0));
}
