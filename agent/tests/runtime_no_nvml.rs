//! The agent starts and keeps deciding on a host without libnvidia-ml (CI is one): the
//! GPU rack is reserved at its rated maximum, the GPU-cap lever is off, and the absence
//! is said once (CONTROL.md, invariant 9).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::time::Duration;

use rackwarden::runtime::agent::{run, AgentEvent, RunOptions};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_runs_without_nvml_and_reserves_the_rack_at_rated_max() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    // minimal.toml has one GPU host with `source = "nvml"` on this machine; its Modbus
    // devices are not served, so every meter is silent too (worst case everywhere).
    let site = rackwarden_config::load(&repo.join("config/tests/data/valid/minimal.toml")).unwrap();
    let gpu_rack = site.node_index("gpu-1").unwrap();
    let dir = std::env::temp_dir().join(format!("rw-no-nvml-{}", std::process::id()));
    let opts = RunOptions {
        dry_run: true,
        speed: 20.0,
        state_file: dir.join("state.json"),
        journal_file: dir.join("journal.jsonl"),
        database_file: dir.join("rackwarden.db"),
    };
    let (tx, mut rx) = broadcast::channel(4096);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run(site, opts, tx, cancel.clone()));
    let mut decisions = 0;
    let mut reserve = None;
    let mut nvml_alerts = 0;
    let end = tokio::time::Instant::now() + Duration::from_secs(8);
    while tokio::time::Instant::now() < end && decisions < 20 {
        match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            Ok(Ok(AgentEvent::Decision { nodes, .. })) => {
                decisions += 1;
                reserve = Some(nodes[gpu_rack].gpu_reserve_kw);
            }
            Ok(Ok(AgentEvent::Alert { alert, .. }))
                if alert.name() == "telemetry.nvml.unavailable" =>
            {
                nvml_alerts += 1;
            }
            _ => {}
        }
    }
    cancel.cancel();
    let state = task.await.unwrap().unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        decisions >= 5,
        "only {decisions} decisions: the agent stalled"
    );
    assert_eq!(
        reserve,
        Some(132.0),
        "GPU rack not reserved at its rated maximum"
    );
    assert_eq!(nvml_alerts, 1, "NVML absence must be said once");
    assert!(
        state.gpus.iter().all(|g| g.cap_w.is_none()),
        "a GPU cap without NVML"
    );
}
