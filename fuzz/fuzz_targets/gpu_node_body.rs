//! Fuzz target: bodies of the GPU node API, as the site agent reads them off a node
//! (`GET /v1/readings` -> `GpuNodeReading`, `POST /v1/power-limit` -> `PowerLimitResponse`
//! or an `ErrorBody`) and as the node reads a command (`PowerLimitRequest`). A parsed
//! reading then goes through everything the agent derives from it (reserve, cap lever,
//! power, constraints, drift against commanded caps). Nothing may panic, and a reading
//! must survive its own round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rackwarden_protocols::gpu::node::{ErrorBody, PowerLimitRequest, PowerLimitResponse};
use rackwarden_protocols::gpu::{cap_drift, limit_matches, GpuNodeReading};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<GpuNodeReading>(data) {
        let _ = r.reserve_w();
        let _ = r.cap_lever_available();
        let _ = r.power_w();
        for g in &r.gpus {
            let _ = g.constraints_w();
            if let Some(w) = g.enforced_limit_w {
                let _ = limit_matches(w, w);
            }
        }
        let commanded: Vec<(u32, f64)> = r.gpus.iter().map(|g| (g.index, 500.0)).collect();
        let _ = cap_drift(&commanded, &r);
        // What the agent re-serialises (status, journal) must parse back.
        let text = serde_json::to_string(&r).expect("a parsed reading serialises");
        let back: GpuNodeReading = serde_json::from_str(&text).expect("and parses back");
        assert_eq!(back.gpus.len(), r.gpus.len());
    }
    if let Ok(resp) = serde_json::from_slice::<PowerLimitResponse>(data) {
        let _ = serde_json::to_string(&resp);
    }
    let _ = serde_json::from_slice::<ErrorBody>(data);
    let _ = serde_json::from_slice::<PowerLimitRequest>(data);
});
