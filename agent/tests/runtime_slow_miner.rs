//! One miner that never answers must not hold back the other miners' readings: the
//! runtime bounds each miner poll (half the staleness limit) and applies each reading as
//! it comes. (A poll round that waited for its slowest miner left every miner stale,
//! counted at nameplate, for as long as one poll hung: up to the 30 s HTTP timeout, or
//! the ~20 s a stock Antminer's CGI holds its driver during a mode change. The
//! crash-point hil-test showed it as whole-site over-shedding after restarts.)

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rackwarden::runtime::agent::{run, AgentEvent, RunOptions};
use rackwarden_config::Firmware;
use rackwarden_sim::miner::{Fault, MinerSim, SimMinerSpec, SimOptions};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Virtual seconds per real second: the 15 s miner staleness is 0.75 s real, far less
/// than the 5 s (real) the driver waits for a reply that never comes.
const SPEED: f64 = 20.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_miner_leaves_the_other_miners_fresh() {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let specs = ["m-1", "m-2", "m-3"]
        .map(|id| SimMinerSpec::new(id, Firmware::Braiins, any, None))
        .to_vec();
    let sim = MinerSim::start(specs, SimOptions { time_scale: SPEED })
        .await
        .unwrap();
    sim.miner("m-2").unwrap().set_fault(Fault::NoAnswer);

    // The minimal site (its Modbus devices are not served: meters are silent, which does
    // not matter here) with three miners pointing at the simulated ones.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let text = std::fs::read_to_string(repo.join("config/tests/data/valid/minimal.toml")).unwrap();
    let start = text.find("[[miners]]").unwrap();
    let end = text.find("[[gpu_nodes]]").unwrap();
    let miners: String = sim
        .miners()
        .iter()
        .map(|m| {
            format!(
                "[[miners]]\nid = \"{}\"\naddress = \"{}\"\nfirmware = \"braiins\"\nrack = \"mine-1\"\nnominal_w = 3250\nmin_w = 1800\n\n",
                m.spec.id, m.spec.api_addr
            )
        })
        .collect();
    let text = format!("{}{miners}{}", &text[..start], &text[end..]);
    let site = rackwarden_config::load_str(&text, Path::new("slow.toml"), Path::new(".")).unwrap();

    let dir = std::env::temp_dir().join(format!("rw-slow-miner-{}", std::process::id()));
    let opts = RunOptions {
        dry_run: true,
        speed: SPEED,
        state_file: dir.join("state.json"),
        journal_file: dir.join("journal.jsonl"),
        database_file: dir.join("rackwarden.db"),
    };
    let (tx, mut rx) = broadcast::channel(4096);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run(site, opts, tx, cancel.clone()));
    let mut stale: Vec<String> = Vec::new();
    let mut decisions = 0;
    // 3 s real: 60 s virtual, four times the staleness limit, and shorter than the reply
    // timeout, so the hanging poll is still in flight the whole time.
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            Ok(Ok(AgentEvent::Alert { alert, .. })) if alert.name() == "telemetry.stale" => {
                // Only miners: the unserved Modbus devices are stale too.
                if let Some(d) = alert.device.filter(|d| d.starts_with("m-")) {
                    stale.push(d);
                }
            }
            Ok(Ok(AgentEvent::Decision { .. })) => decisions += 1,
            _ => {}
        }
    }
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    sim.shutdown().await;
    std::fs::remove_dir_all(&dir).ok();
    assert!(decisions >= 20, "only {decisions} decisions");
    assert!(
        stale.iter().any(|d| d == "m-2"),
        "the hanging miner was not reported stale: {stale:?}"
    );
    assert!(
        stale.iter().all(|d| d == "m-2"),
        "miners that answer went stale behind the hanging one: {stale:?}"
    );
}
