//! The live site page in a real browser: the example site simulated on loopback, the
//! agent running live against it with its HTTP layer, and headless Chromium loading `/`.
//! The figures the page shows must be those of `/api/v1/status` for the same decision
//! (`?at_ms=` of the frame the page drew), the history charts (uPlot) must hold exactly
//! the series of `/api/v1/history` for the window they drew, and a screenshot is kept
//! under `target/hil-output/site_page/` for a human to look at.
//!
//! Needs Debian's `chromium` (installed by `.ci/run`). Without it the test fails and says
//! so, unless `RACKWARDEN_SKIP_BROWSER=1`. The simulator, agent and HTTP server run in
//! this process (the pieces `rackwarden demo` uses); Chromium is a child process with a
//! time limit. Only 127.0.0.0/8 is used.

// A test crate: an unwrap that fails is a failed test (helpers included).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rackwarden::grid::{GridEvent, GridSignal, GridSource};
use rackwarden::http::{self, HttpState};
use rackwarden::runtime::agent::{self, RunOptions};
use rackwarden::status::StatusHub;
use rackwarden_sim::site::{Scenario, SiteSim, SIM_MINER_PASSWORD};
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

// Slow enough that a loaded 2-core CI machine (Chromium, simulator and agent at once)
// keeps every reading inside its staleness limit.
const SPEED: f64 = 2.0;

/// A grid limit far above the example site's load: shown, never binding.
const GRID_LIMIT_KW: f64 = 5000.0;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH")?
                .to_str()?
                .split(':')
                .map(|d| Path::new(d).join(name))
                .find(|p| p.is_file())
        })
}

/// Runs Chromium headless with `args`, killing it after `limit`. Returns stdout.
fn run_chromium(bin: &Path, profile: &Path, args: &[String], limit: Duration) -> String {
    let out_file = profile.with_extension("stdout");
    let err_file = profile.with_extension("stderr");
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let stderr = std::fs::read_to_string(&err_file).unwrap_or_default();
            assert!(st.success(), "chromium failed ({st}): {stderr}");
            break;
        }
        if t0.elapsed() > limit {
            child.kill().ok();
            child.wait().ok();
            panic!(
                "chromium did not finish within {limit:?}: {}",
                std::fs::read_to_string(&err_file).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::read_to_string(&out_file).unwrap()
}

/// `data-<kind>="id" data-field="f">value<` triples of the dumped DOM.
fn figures(dom: &str, kind: &str) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    let pat = format!("data-{kind}=\"");
    let mut rest = dom;
    while let Some(i) = rest.find(&pat) {
        rest = &rest[i + pat.len()..];
        let Some(end) = rest.find('"') else { break };
        let id = rest[..end].to_owned();
        let after = &rest[end..];
        let Some(f) = after.strip_prefix("\" data-field=\"") else {
            continue;
        };
        let Some(fend) = f.find('"') else { break };
        let field = f[..fend].to_owned();
        let Some(gt) = f.find('>') else { break };
        let Some(lt) = f[gt..].find('<') else { break };
        out.insert((id, field), f[gt + 1..gt + lt].to_owned());
    }
    out
}

/// The energy table: account -> the kWh shown.
fn figures_energy(dom: &str) -> BTreeMap<String, String> {
    dom.split("<tr data-energy-account=\"")
        .skip(1)
        .filter_map(|row| {
            let account = row.split('"').next()?;
            let kwh = row.split("data-field=\"kwh\">").nth(1)?.split('<').next()?;
            Some((account.to_owned(), kwh.to_owned()))
        })
        .collect()
}

/// What the page's charts hold (`#chart-data`, written from each uPlot's own data).
fn chart_data(dom: &str) -> Value {
    let text = dom
        .split("id=\"chart-data\"")
        .nth(1)
        .and_then(|s| s.split_once('>'))
        .and_then(|(_, s)| s.split("</pre>").next())
        .unwrap_or_else(|| panic!("no #chart-data on the page: {dom}"));
    let text = text
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("#chart-data: {e}: {text}"))
}

/// Every chart's series equal `/api/v1/history` for the same window: a chart per feed
/// and row (measured, projected, budget, ceiling), the site's GPU against mining, and
/// the miners curtailed with the sheds and restores as marks.
fn charts_match_history(site: &rackwarden_config::Site, drawn: &Value, h: &Value) {
    let points = h["t_ms"].as_array().unwrap().len();
    assert!(points >= 3, "fewer than 3 samples in the history: {h}");
    assert_eq!(drawn["points"].as_u64(), Some(points as u64));
    let charts = drawn["charts"].as_object().unwrap();
    let nodes = h["nodes"].as_array().unwrap();
    let feeds_rows = site
        .nodes
        .iter()
        .filter(|n| {
            matches!(
                n.kind,
                rackwarden_config::NodeKind::Feed | rackwarden_config::NodeKind::Row
            )
        })
        .count();
    assert_eq!(charts.len(), feeds_rows + 2, "{:?}", charts.keys());
    let mut series = 0;
    // As numbers (JSON.stringify writes 456 where the API writes 456.0); null stays a gap.
    let nums = |v: &Value| -> Vec<Option<f64>> {
        v.as_array()
            .unwrap_or_else(|| panic!("not a series: {v}"))
            .iter()
            .map(Value::as_f64)
            .collect()
    };
    let mut same = |chart: &str, label: &str, api: &Value| {
        let on_page = &charts
            .get(chart)
            .unwrap_or_else(|| panic!("no chart {chart}"))[label];
        assert_eq!(nums(on_page), nums(api), "chart {chart}, series {label}");
        series += 1;
    };
    for n in nodes {
        let id = n["id"].as_str().unwrap();
        if n["kind"] == "site" {
            same("site:gpu-mining", "GPU", &n["gpu_kw"]);
            same("site:gpu-mining", "mining", &n["mining_kw"]);
            continue;
        }
        let chart = format!("node:{id}");
        for (label, field) in [
            ("measured", "measured_kw"),
            ("projected", "projected_kw"),
            ("budget", "budget_kw"),
            ("ceiling", "ceiling_kw"),
        ] {
            same(&chart, label, &n[field]);
        }
    }
    same("miners:curtailed", "curtailed", &h["miners_curtailed"]);
    // Marks: a count where commands went out, nothing (null) elsewhere.
    for (label, field) in [("sheds", "sheds"), ("restores", "restores")] {
        let marks: Vec<Value> = h[field]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                if v.as_u64() > Some(0) {
                    v.clone()
                } else {
                    Value::Null
                }
            })
            .collect();
        same("miners:curtailed", label, &Value::Array(marks));
    }
    assert_eq!(series, feeds_rows * 4 + 5);
    // The feeds' charts carry real readings.
    let metered = nodes
        .iter()
        .filter(|n| n["kind"] == "feed")
        .flat_map(|n| n["measured_kw"].as_array().unwrap().iter())
        .filter(|v| v.as_f64().is_some_and(|kw| kw > 10.0))
        .count();
    assert!(
        metered >= points,
        "feeds' measured series mostly empty: {h}"
    );
}

fn shown(v: &Value) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:.1}"),
        None => "—".to_owned(),
    }
}

async fn get(url: &str) -> (u16, String) {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .unwrap();
    let r = c.get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[test]
// Long on purpose: one scenario in the browser, read top to bottom.
#[allow(clippy::too_many_lines)]
fn site_page_shows_the_status_figures_in_chromium() {
    let Some(browser) = chromium() else {
        if std::env::var("RACKWARDEN_SKIP_BROWSER").as_deref() == Ok("1") {
            eprintln!("RACKWARDEN_SKIP_BROWSER=1: chromium not found, site page test skipped");
            return;
        }
        panic!(
            "chromium not found on PATH (install Debian's `chromium`: apt-get install -y chromium, \
             or set CHROMIUM=/path/to/chrome); set RACKWARDEN_SKIP_BROWSER=1 to skip this test"
        );
    };
    let out = repo().join("target/hil-output/site_page");
    std::fs::remove_dir_all(&out).ok();
    std::fs::create_dir_all(&out).unwrap();

    // The example site with a free HTTP port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The simulated devices move to loopback networks of their own (the example's fixed
    // addresses may be taken by another simulator on a shared machine).
    let pid = std::process::id();
    let (a, b) = (150 + pid % 50, 200 + pid % 50);
    let toml = std::fs::read_to_string(repo().join("examples/site.toml"))
        .unwrap()
        .replace("127.0.0.", &format!("127.{a}.0."))
        .replace("127.1.", &format!("127.{b}."))
        .replace(
            &format!("http_listen = \"127.{a}.0.1:9180\""),
            &format!("http_listen = \"127.0.0.1:{port}\""),
        );
    assert!(toml.contains(&format!(":{port}\"")));
    std::fs::write(out.join("site.toml"), &toml).unwrap();
    std::fs::copy(
        repo().join("examples/gpu-node.token"),
        out.join("gpu-node.token"),
    )
    .unwrap();
    let site = rackwarden_config::load(&out.join("site.toml")).unwrap();
    for m in &site.miners {
        if let Some(var) = m.credentials.as_ref().and_then(|c| c.password_env.as_ref()) {
            std::env::set_var(var, SIM_MINER_PASSWORD);
        }
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let (status, at_ms) = rt.block_on(async {
        let sim = SiteSim::start(&site, Scenario::load("demo").unwrap(), SPEED)
            .await
            .unwrap();
        let hub = StatusHub::new();
        let cancel = CancellationToken::new();
        let listener = http::bind(format!("127.0.0.1:{port}").parse().unwrap())
            .await
            .unwrap();
        let state = HttpState {
            hub: hub.clone(),
            token: None,
            journal: None,
            overrides_file: None,
        };
        let server = tokio::spawn(http::serve(listener, state, cancel.clone()));
        let (events, _) = broadcast::channel(1024);
        let opts = RunOptions {
            dry_run: false,
            speed: SPEED,
            state_file: out.join("state.json"),
            journal_file: out.join("journal.jsonl"),
            database_file: out.join("rackwarden.db"),
        };
        let agent = tokio::spawn(agent::run_with_hub(
            site.clone(),
            opts,
            events,
            cancel.clone(),
            Arc::clone(&hub),
        ));

        // Ready within a minute of real time (fresh data from every collector).
        let t0 = Instant::now();
        loop {
            let (code, body) = get(&format!("{base}/readyz")).await;
            if code == 200 {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "agent not ready after 60 s: {body}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // A grid limit far above the site's load (it sheds nothing) and a price, as the
        // API would set them: the page's grid box shows them.
        hub.grid.put(GridEvent {
            source: GridSource::Api,
            id: "page-test".into(),
            signal: GridSignal::LimitKw(GRID_LIMIT_KW),
            start_ms: hub.last_now(),
            end_ms: None,
        });
        hub.grid.put(GridEvent {
            source: GridSource::Api,
            id: "page-price".into(),
            signal: GridSignal::PriceUsdPerMwh(42.5),
            start_ms: hub.last_now(),
            end_ms: None,
        });
        // A few virtual minutes of the demo (the GPU surge sheds miners on feed A).
        tokio::time::sleep(Duration::from_secs(8)).await;
        // And the first energy commit (once a virtual minute): the page's energy table.
        let energy_before = loop {
            let (code, body) = get(&format!("{base}/api/v1/energy?by=day")).await;
            assert_eq!(code, 200, "{body}");
            let rows: Value = serde_json::from_str(&body).unwrap();
            if !rows.as_array().unwrap().is_empty() {
                break rows;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "no energy recorded after 120 s"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };

        // The page, rendered by Chromium (off the runtime's threads).
        let dump = {
            let (b, p, url) = (browser.clone(), out.join("profile-dom"), base.clone());
            tokio::task::spawn_blocking(move || {
                run_chromium(
                    &b,
                    &p,
                    &[
                        "--virtual-time-budget=3000".into(),
                        "--dump-dom".into(),
                        format!("{url}/"),
                    ],
                    Duration::from_secs(90),
                )
            })
            .await
            .unwrap()
        };
        std::fs::write(out.join("page.html"), &dump).unwrap();
        let shot = out.join("site-page.png");
        {
            let (b, p, url, shot) = (
                browser.clone(),
                out.join("profile-shot"),
                base.clone(),
                shot.clone(),
            );
            tokio::task::spawn_blocking(move || {
                run_chromium(
                    &b,
                    &p,
                    &[
                        "--window-size=1500,2600".into(),
                        "--virtual-time-budget=3000".into(),
                        format!("--screenshot={}", shot.display()),
                        format!("{url}/"),
                    ],
                    Duration::from_secs(90),
                )
            })
            .await
            .unwrap();
        }
        let png = std::fs::read(&shot).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 20_000,
            "screenshot too small"
        );

        // The frame the page drew, from the API.
        let now = dump
            .split("data-now-ms=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("page shows no decision time: {dump}"));
        let (code, body) = get(&format!("{base}/api/v1/status?at_ms={now}")).await;
        assert_eq!(code, 200, "{body}");
        let status: Value = serde_json::from_str(&body).unwrap();
        let (_, energy_after) = get(&format!("{base}/api/v1/energy?by=day")).await;
        let energy_after: Value = serde_json::from_str(&energy_after).unwrap();
        let (_, live) = get(&format!("{base}/api/v1/status")).await;
        let live: Value = serde_json::from_str(&live).unwrap();
        std::fs::write(out.join("status.json"), &body).unwrap();
        // The history the charts drew, by the last sample's time they hold.
        let drawn = chart_data(&dump);
        let to = drawn["to_ms"]
            .as_u64()
            .unwrap_or_else(|| panic!("the charts hold no sample: {drawn}"));
        let (code, body) = get(&format!("{base}/api/v1/history?minutes=60&to_ms={to}")).await;
        assert_eq!(code, 200, "{body}");
        std::fs::write(out.join("history.json"), &body).unwrap();
        let history: Value = serde_json::from_str(&body).unwrap();

        cancel.cancel();
        agent.await.ok();
        server.await.ok();
        sim.shutdown().await;
        (
            (status, live, dump, energy_before, energy_after),
            (now, drawn, history),
        )
    });
    let ((status, live, dump, energy_before, energy_after), (_, drawn, history)) = (status, at_ms);
    charts_match_history(&site, &drawn, &history);

    // Every node's figures as shown equal the API's for that frame.
    let nodes = figures(&dump, "node");
    let frame = &status["frame"];
    let api_nodes = frame["nodes"].as_array().unwrap();
    assert_eq!(api_nodes.len(), site.nodes.len());
    let mut compared = 0;
    for n in api_nodes {
        let id = n["id"].as_str().unwrap();
        assert!(
            dump.contains(&format!("data-node-row=\"{id}\"")),
            "node {id} not drawn"
        );
        for field in ["measured_kw", "budget_kw", "gpu_kw", "effective_kw"] {
            let on_page = nodes
                .get(&(id.to_owned(), field.to_owned()))
                .unwrap_or_else(|| panic!("{id}.{field} not on the page"));
            assert_eq!(on_page, &shown(&n[field]), "{id}.{field}");
            compared += 1;
        }
    }
    // The tree carries real figures, not placeholders: metered nodes show a reading.
    let metered: Vec<f64> = site
        .nodes
        .iter()
        .filter(|n| !n.meters.is_empty())
        .filter_map(|n| {
            nodes[&(n.id.clone(), "measured_kw".to_owned())]
                .parse()
                .ok()
        })
        .collect();
    assert!(
        metered.iter().any(|&kw| kw > 10.0),
        "no metered node shows a reading: {metered:?}"
    );

    // The grid box: the limit, its source, the price, as the API has them.
    let grid = figures(&dump, "grid");
    let g = &live["grid"];
    assert_eq!(g["limit_kw"], GRID_LIMIT_KW, "{g}");
    assert_eq!(
        grid.get(&("site".to_owned(), "limit_kw".to_owned())),
        Some(&shown(&g["limit_kw"])),
        "{grid:?}"
    );
    assert_eq!(
        grid.get(&("site".to_owned(), "price_usd_per_mwh".to_owned())),
        Some(&shown(&g["price_usd_per_mwh"]))
    );
    assert_eq!(
        grid.get(&("site".to_owned(), "shortfall_kw".to_owned()))
            .map(String::as_str),
        Some("0.0")
    );
    assert!(
        dump.contains("api:page-test"),
        "the page names the limit's source"
    );

    // Zones, with their N+1 state.
    let zones = figures(&dump, "zone");
    for z in frame["zones"].as_array().unwrap() {
        let id = z["id"].as_str().unwrap();
        for field in ["heat_kw", "available_kw", "largest_kw"] {
            assert_eq!(
                zones[&(id.to_owned(), field.to_owned())],
                shown(&z[field]),
                "{id}.{field}"
            );
            compared += 1;
        }
        let state = &zones[&(id.to_owned(), "state".to_owned())];
        let expect = if z["redundancy"] == "none" {
            if z["n"] == true {
                "N"
            } else {
                "below N"
            }
        } else if z["n_plus_1"] == true {
            "N+1"
        } else if z["n"] == true {
            "N only"
        } else {
            "below N"
        };
        assert_eq!(state, expect, "zone {id}");
    }
    assert!(compared >= site.nodes.len() * 4 + site.zones.len() * 3);

    // Curtailed miners: each listed on the page is curtailed per the API (the list is
    // current, not per frame: compare against the status fetched after the dump too).
    let listed: Vec<&str> = dump
        .split("<tr data-miner=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .collect();
    let known: Vec<&str> = status["curtailed"]
        .as_array()
        .unwrap()
        .iter()
        .chain(live["curtailed"].as_array().unwrap())
        .filter_map(|c| c["id"].as_str())
        .collect();
    for m in &listed {
        assert!(
            known.contains(m),
            "page lists {m} as curtailed, the API does not"
        );
    }
    // Energy: each tenant and mining drawn with the day's kWh, between what the API said
    // just before and just after the page was rendered (a commit may fall between).
    let shown_kwh = figures_energy(&dump);
    for account in ["acme", "borealis", "mining"] {
        let on_page: f64 = shown_kwh
            .get(account)
            .unwrap_or_else(|| panic!("no energy row for {account} on the page"))
            .parse()
            .unwrap();
        let latest = |rows: &Value| -> f64 {
            let rows = rows.as_array().unwrap();
            let last = rows
                .iter()
                .map(|r| r["period_start_ms"].as_u64().unwrap())
                .max()
                .unwrap();
            rows.iter()
                .find(|r| r["account"] == account && r["period_start_ms"].as_u64() == Some(last))
                .map_or(0.0, |r| r["kwh"].as_f64().unwrap())
        };
        let (lo, hi) = (latest(&energy_before), latest(&energy_after));
        assert!(
            on_page > 0.0 && on_page >= lo - 0.05 && on_page <= hi + 0.05,
            "{account}: page shows {on_page} kWh, the API {lo} then {hi}"
        );
    }
    eprintln!(
        "site page: {compared} figures match /api/v1/status; {} curtailed shown; screenshot {}",
        listed.len(),
        repo()
            .join("target/hil-output/site_page/site-page.png")
            .display()
    );
}
