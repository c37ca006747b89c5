//! A miner whose driver cannot be built (here: its password's environment variable is
//! unset) gets no API command from the running agent, ever: the runtime marks it in the
//! snapshot (`Snapshot::undriveable`), so the decision counts it at nameplate and sheds
//! it through its PDU outlet, its only lever. Live (not a dry run), against the site
//! simulator on loopback: the simulated miner itself says what reached it.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::time::Duration;

use rackwarden::control::Lever;
use rackwarden::runtime::agent::{run, AgentEvent, RunOptions};
use rackwarden_sim::site::{Scenario, SiteSim};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

const SPEED: f64 = 20.0;

/// One feed, one mining rack (rating 3 kW: B = 2.4 kW, H = 2.85 kW) metered and switched
/// by its PDU, two 3.25 kW miners: a LuxOS one the agent can drive, and a Whatsminer whose
/// credentials name an environment variable that is not set. Both at full power put the
/// rack far above H: an emergency that needs both of them off.
fn site_text(net: u32, missing_var: &str) -> String {
    format!(
        r#"[site]
id = "no-driver"

[[feeds]]
id = "feed-a"
rating_kw = 100

[[racks]]
id = "mine-1"
kind = "mining"
parents = ["feed-a"]
rating_kw = 3
meters = [{{ device = "pdu-mine-1" }}]

[[modbus_devices]]
id = "pdu-mine-1"
transport = "tcp"
host = "127.{net}.250.1"
port = 15301
profile = "generic-pdu"
timeout_ms = 500
control = true
write_points = ["outlet_switch"]

[[miners]]
id = "m-driven"
address = "127.{net}.1.1"
firmware = "luxos"
rack = "mine-1"
nominal_w = 3250
outlet = {{ device = "pdu-mine-1", outlet = 1 }}

[[miners]]
id = "m-nodriver"
address = "127.{net}.1.2"
firmware = "whatsminer"
rack = "mine-1"
nominal_w = 3250
credentials = {{ password_env = "{missing_var}" }}
outlet = {{ device = "pdu-mine-1", outlet = 2 }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miner_without_credentials_gets_no_api_command_and_counts_at_nameplate() {
    let net = 2 + std::process::id() % 250;
    let missing = format!("RACKWARDEN_TEST_UNSET_PASSWORD_{}", std::process::id());
    assert!(std::env::var_os(&missing).is_none());
    let site = rackwarden_config::load_str(
        &site_text(net, &missing),
        Path::new("no-driver.toml"),
        Path::new("."),
    )
    .unwrap();
    let rack = site.node_index("mine-1").unwrap();
    let sim = SiteSim::start(&site, Scenario::builtin("steady").unwrap(), SPEED)
        .await
        .unwrap();

    let dir = std::env::temp_dir().join(format!("rw-no-driver-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    let opts = RunOptions {
        dry_run: false,
        speed: SPEED,
        state_file: dir.join("state.json"),
        journal_file: dir.join("journal.jsonl"),
        database_file: dir.join("rackwarden.db"),
    };
    let (tx, mut rx) = broadcast::channel(4096);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run(site.clone(), opts, tx, cancel.clone()));

    let mut first_mining_kw = None;
    let mut actions: Vec<(String, Lever)> = Vec::new();
    let mut alerts: Vec<(String, Option<String>)> = Vec::new();
    // 4 s real: 80 s virtual, time for the shed, the outlet and its read-back.
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < until {
        match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            Ok(Ok(AgentEvent::Decision { nodes, .. })) => {
                first_mining_kw.get_or_insert(nodes[rack].mining_kw);
            }
            Ok(Ok(AgentEvent::Action { action, .. })) => {
                actions.push((action.device_id, action.lever));
            }
            Ok(Ok(AgentEvent::Alert { alert, .. })) => {
                alerts.push((alert.name().to_owned(), alert.device));
            }
            _ => {}
        }
    }
    let rack_kw = sim.node_kw("mine-1").unwrap();
    let commands = sim.miner_commands();
    let writes = sim.modbus_writes();
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    sim.shutdown().await;
    std::fs::remove_dir_all(&dir).ok();

    // Counted at nameplate (never read, never polled): both miners in the first decision.
    let first = first_mining_kw.expect("no decision");
    assert!(
        (first - 6.5).abs() < 0.05,
        "the rack's mining in the first decision: {first} kW, want both miners at 3.25 kW"
    );
    // Nothing but its outlet for the miner without a driver, and the outlet went off.
    let nodriver: Vec<Lever> = actions
        .iter()
        .filter(|(d, _)| d == "m-nodriver")
        .map(|(_, l)| *l)
        .collect();
    assert!(
        nodriver
            .iter()
            .all(|l| matches!(l, Lever::OutletOff | Lever::OutletOn)),
        "an API command was planned for the miner without a driver: {nodriver:?}"
    );
    assert!(
        nodriver.contains(&Lever::OutletOff),
        "its outlet, its only lever, was not used: {actions:?}"
    );
    assert!(
        writes
            .iter()
            .any(|(d, w)| d == "pdu-mine-1" && w.index == 2 && w.value < 0.5),
        "no outlet switched off on the PDU: {writes:?}"
    );
    // The miner itself heard nothing; the driven one was slept through its API.
    assert!(
        commands.iter().all(|(id, _)| id != "m-nodriver"),
        "the miner without a driver received commands: {commands:?}"
    );
    assert!(
        actions
            .iter()
            .any(|(d, l)| d == "m-driven" && *l == Lever::Sleep),
        "the driven miner was not slept: {actions:?}"
    );
    // Said once, and not taken for a stale miner.
    let said = |name: &str| {
        alerts
            .iter()
            .filter(|(n, d)| n == name && d.as_deref() == Some("m-nodriver"))
            .count()
    };
    assert_eq!(said("miner.no_driver"), 1, "{alerts:?}");
    assert_eq!(said("telemetry.stale"), 0, "{alerts:?}");
    assert_eq!(said("action.unconfirmed"), 0, "{alerts:?}");
    assert!(rack_kw < 2.4, "the rack is still at {rack_kw} kW");
}
