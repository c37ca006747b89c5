//! Builds a journal of `days` days (`per_day` commands a day, on `miners` miner ids of the
//! example site's shape, up to now) in a new database at `<db>`, through the agent's own
//! commit path, for `bench/run.py` to time `rackwarden journal --since 1h` on.
//!
//! `cargo run --release --example bench_journal -- <db> [days] [per_day]`; prints one
//! line: `rows=N build_s=S db_mib=M`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark tool: a panic is the report

use std::time::Instant;

use rackwarden::store::journal::JournalRow;
use rackwarden::store::Store;

const LEVERS: &[&str] = &[
    "power_target",
    "sleep",
    "power_target_raise",
    "wake",
    "outlet_off",
];
const NODES: &[&str] = &["feed-a", "feed-b", "row-a1", "row-b1", "zone-mining"];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let db = args
        .get(1)
        .expect("usage: bench_journal <db> [days] [per_day]");
    let days: u64 = args.get(2).map_or(90, |s| s.parse().unwrap());
    let per_day: u64 = args.get(3).map_or(5_000, |s| s.parse().unwrap());
    let now = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let total = days * per_day;
    let step = 86_400_000 / per_day.max(1);
    let start = now - days * 86_400_000;
    let t0 = Instant::now();
    let mut store = Store::open(std::path::Path::new(db)).unwrap();
    let state = rackwarden::control::ControlState {
        site_id: "bench".into(),
        ..empty_state()
    };
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..total {
        let at = start + i * step;
        #[allow(clippy::cast_possible_truncation)]
        let k = i as usize;
        batch.push(JournalRow {
            time: String::new(),
            now_ms: at,
            node: NODES[k % NODES.len()].to_owned(),
            device: format!("mine-{:03}", k % 188),
            lever: LEVERS[k % LEVERS.len()].to_owned(),
            from_w: 3_250.0,
            to_w: 2_600.0,
            reason: "shed".to_owned(),
            confirmed: false,
            dry_run: false,
            result: Some("sent".to_owned()),
        });
        if batch.len() == 10_000 {
            store.commit_intent(None, &state, at, &batch, true).unwrap();
            batch.clear();
        }
    }
    store
        .commit_intent(None, &state, now, &batch, true)
        .unwrap();
    drop(store);
    #[allow(clippy::cast_precision_loss)]
    let mib = std::fs::metadata(db).map_or(0, |m| m.len()) as f64 / 1_048_576.0;
    println!(
        "rows={total} build_s={:.1} db_mib={mib:.1}",
        t0.elapsed().as_secs_f64()
    );
}

fn empty_state() -> rackwarden::control::ControlState {
    use rackwarden::control::state::Ids;
    use std::sync::Arc;
    rackwarden::control::ControlState {
        site_id: String::new(),
        started_at: 0,
        fresh_since: None,
        startup_done: true,
        startup_alerted: false,
        node_ids: Ids(Arc::new(Vec::new())),
        miner_ids: Ids(Arc::new(Vec::new())),
        gpu_ids: Ids(Arc::new(Vec::new())),
        zone_ids: Ids(Arc::new(Vec::new())),
        nodes: Vec::new(),
        miners: Vec::new(),
        gpus: Vec::new(),
        zones: Vec::new(),
    }
}
