//! Fuzz target: the state file, read back at start-up. Bytes are parsed the way the
//! runtime does (`serde_json` into `rackwarden::runtime::agent::Persisted`); a state that
//! parses is carried over to a small site (`seeds/state_file.site.toml`, the ids of the
//! seeds; `ControlState::for_site` drops ids that do not match) at the resumed clock, and decided on, fast and slow, with no readings
//! yet (a restart). Nothing may panic, and a restart never wakes a miner or lifts a cap.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rackwarden::control::{decide, ControlState, Lever, Snapshot, Tick, Topology};
use rackwarden::runtime::agent::Persisted;
use rackwarden_config::Site;

fn site() -> &'static (Site, Topology) {
    static SITE: OnceLock<(Site, Topology)> = OnceLock::new();
    SITE.get_or_init(|| {
        let text = include_str!("../seeds/state_file.site.toml");
        let site = rackwarden_config::load_str(text, Path::new("site.toml"), Path::new("."))
            .expect("the seed site validates");
        let topo = Topology::new(&site);
        (site, topo)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(p) = serde_json::from_slice::<Persisted>(data) else {
        return;
    };
    let (site, topo) = site();
    // The runtime's clock resumes after the persisted instant (`Clock::resume`).
    let now = p.last_now.saturating_add(1).max(1_800_000_000_000);
    let state = ControlState::for_site(site, &p.control, now);
    let snap = Snapshot::empty(site);
    let mut st = state;
    for (k, tick) in [Tick::Slow, Tick::Fast, Tick::Slow].into_iter().enumerate() {
        let t = now.saturating_add(1000 * k as u64);
        let plan = decide(site, topo, &snap, &st, t, tick);
        for a in &plan.actions {
            assert!(
                !matches!(a.lever, Lever::Wake | Lever::OutletOn | Lever::PowerTargetRaise | Lever::GpuCapLift),
                "a restart restored {} ({})",
                a.device_id,
                a.lever.name()
            );
        }
        st = plan.state;
    }
});
