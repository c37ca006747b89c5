//! Property tests: the thirteen invariants of docs/control.md (CONTROL.md), one named test
//! each, over random small sites (generated TOML, loaded like an operator's file), random
//! traces (GPU limits, GPU swings at 0.2-3 Hz between idle and the cap, other load,
//! cooling units tripping, miners ignoring commands) and random staleness.

// Helpers outside #[test] functions: a panic is the failure report; trace values are
// small floats turned into indices.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]

mod control_support;

use control_support::invariants::{
    inv10_n_plus_1, inv11_ceiling, inv12_excursion, inv13_slow_out_of_trough, inv1_budget,
    inv2_priority, inv3_restore_order, inv4_hysteresis, inv5_stale, inv6_escalation, inv7_range,
    inv8_determinism, inv9_no_nvml, Memory,
};
use control_support::{gen_site, load, Sim, Step};
use proptest::prelude::*;
use rackwarden::control::{Device, UnitState};

/// One change of the world at a time.
#[derive(Debug, Clone)]
struct Ev {
    t_s: u64,
    kind: u8,
    idx: u32,
    x: f64,
}

fn events() -> impl Strategy<Value = Vec<Ev>> {
    prop::collection::vec(
        (0u64..400, any::<u8>(), any::<u32>(), 0.0f64..1.0).prop_map(|(t_s, kind, idx, x)| Ev {
            t_s,
            kind,
            idx,
            x,
        }),
        0..40,
    )
}

fn pick(len: usize, idx: u32) -> Option<usize> {
    (len > 0).then(|| usize::try_from(idx).unwrap() % len)
}

fn apply(sim: &mut Sim, e: &Ev) {
    match e.kind % 10 {
        // The tenant moves a GPU node's limit anywhere in its range.
        0 => {
            if let Some(g) = pick(sim.gpus.len(), e.idx) {
                let l = &mut sim.gpus[g].limits;
                l.enforced_w = (l.min_w + e.x * (l.max_w - l.min_w)).round();
            }
        }
        // GPU swings between idle and the cap at 0.2-3 Hz, or steady.
        1 => {
            if let Some(g) = pick(sim.gpus.len(), e.idx) {
                sim.gpus[g].swing_hz = if e.x < 0.2 { 0.0 } else { 0.2 + 2.8 * e.x };
                sim.gpus[g].util = e.x;
            }
        }
        // Inputs go stale or come back.
        2 => {
            if let Some(n) = pick(sim.stale.meters.len(), e.idx) {
                sim.stale.meters[n] = e.x < 0.5;
            }
        }
        3 => {
            if let Some(m) = pick(sim.stale.miners.len(), e.idx) {
                sim.stale.miners[m] = e.x < 0.5;
            }
        }
        4 => {
            if let Some(g) = pick(sim.stale.gpus.len(), e.idx) {
                sim.stale.gpus[g] = e.x < 0.5;
            }
        }
        // Cooling units trip, go to maintenance, come back; or go stale.
        5 => {
            if let Some(z) = pick(sim.units.len(), e.idx) {
                if let Some(u) = pick(sim.units[z].len(), e.idx / 7) {
                    sim.units[z][u] = match (e.x * 4.0) as u32 {
                        0 => UnitState::Alarmed,
                        1 => UnitState::Offline,
                        2 => UnitState::Maintenance,
                        _ => UnitState::Running,
                    };
                    sim.stale.units[z][u] = e.x > 0.9;
                }
            }
        }
        // A miner starts or stops ignoring its API.
        6 => {
            if let Some(m) = pick(sim.miners.len(), e.idx) {
                sim.miners[m].ignores = e.x < 0.5;
            }
        }
        // Other load appears in a rack.
        7 => {
            let racks: Vec<usize> = (0..sim.site.nodes.len())
                .filter(|&i| sim.site.nodes[i].is_rack())
                .collect();
            if let Some(r) = pick(racks.len(), e.idx) {
                sim.other_kw[racks[r]] = if e.x < 0.5 { 0.0 } else { e.x * 10.0 };
            }
        }
        // A miner turns slow (its firmware takes 40 s to shed) or fast again.
        8 => {
            if let Some(m) = pick(sim.miners.len(), e.idx) {
                sim.miner_latency_ms[m] = (e.x < 0.6).then_some(40_000);
            }
        }
        // All GPUs to their maximum (a surge).
        _ => {
            for g in &mut sim.gpus {
                g.limits.enforced_w = g.limits.max_w;
            }
        }
    }
}

/// Runs a random site through a random trace, checking `check` after every decision.
fn simulate(
    seed: u64,
    evs: &[Ev],
    no_nvml: bool,
    secs: u64,
    mut check: impl FnMut(&Sim, &Step) -> Result<(), String>,
) -> Result<Sim, TestCaseError> {
    let site = load(&gen_site(seed));
    let mut sim = Sim::new(site, no_nvml);
    sim.keep_steps = false;
    let mut evs = evs.to_vec();
    evs.sort_by_key(|e| e.t_s);
    let mut k = 0;
    while sim.now < secs * 1000 {
        while k < evs.len() && evs[k].t_s * 1000 <= sim.now {
            apply(&mut sim, &evs[k]);
            k += 1;
        }
        sim.tick();
        let step = sim.steps.last().unwrap();
        if let Err(msg) = check(&sim, step) {
            let acts: Vec<String> = step
                .plan
                .actions
                .iter()
                .map(|a| {
                    format!(
                        "{} {} {:?} {:.0}->{:.0} em={} @{}",
                        a.device_id,
                        a.lever.name(),
                        a.reason,
                        a.from_w,
                        a.to_w,
                        a.emergency,
                        a.constraint
                    )
                })
                .collect();
            return Err(TestCaseError::fail(format!(
                "t={} ms ({:?}): {msg}\nactions: {acts:#?}\nsite seed {seed}",
                step.now, step.tick
            )));
        }
    }
    Ok(sim)
}

const SECS: u64 = 480;

/// A fixed seed: CI runs the same cases every time, so a red run is reproducible. Set
/// `PROPTEST_RNG_SEED` to explore others. Invariant 5 passes on seeds 1 to 8; seeds 2, 3,
/// 5 and 6 (and the random case kept below as a regression test) used to break it: a
/// miner gone stale in a GPU or mixed rack made the rack ignore what its fresh meter
/// showed beside the miners, so the stale decision shed less than its worst case. The
/// whole file passes on seeds 1-4 and 6-8; seed 5 still finds an invariant-1 case
/// (t=284 s, the site projected over B with no shed while a miner's command is in
/// flight), older than that fix and not fixed yet.
fn config() -> ProptestConfig {
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    ProptestConfig {
        cases: 12,
        max_shrink_iters: 50,
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// 1. After each decision P_proj(node) <= B(node) wherever controllable mining is left.
    #[test]
    fn invariant_01_budget(seed in any::<u64>(), evs in events()) {
        simulate(seed, &evs, false, SECS, inv1_budget)?;
    }

    /// 2. No GPU cap is lowered while a controllable miner on the same path draws above idle.
    #[test]
    fn invariant_02_priority(seed in any::<u64>(), evs in events()) {
        simulate(seed, &evs, false, SECS, inv2_priority)?;
    }

    /// 3. GPU caps are back to default before any miner on that path is restored: no
    ///    miner comes back under a constraint (node or zone) that capped a GPU still capped.
    #[test]
    fn invariant_03_restore_order(seed in any::<u64>(), evs in events()) {
        simulate(seed, &evs, false, SECS, inv3_restore_order)?;
    }

    /// 4. Hysteresis: restores only after the 80% condition held 60 s, at most 5% of B per
    ///    30 s per node; min on/off times and cycle limits (emergencies excepted).
    #[test]
    fn invariant_04_hysteresis(seed in any::<u64>(), evs in events()) {
        let mut mem = Memory::default();
        simulate(seed, &evs, false, SECS, |sim, step| inv4_hysteresis(sim, step, &mut mem))?;
    }

    /// 5. A decision with stale input never adds load through it, and sheds at least as
    ///    much as the same decision with fresh worst-case readings in place of the stale ones.
    #[test]
    fn invariant_05_stale_is_conservative(seed in any::<u64>(), evs in events()) {
        simulate(seed, &evs, false, SECS, |sim, step| inv5_stale(sim, step).map(|_| ()))?;
    }

    /// 6. Escalation is monotone: lever k+1 only after lever k was tried, or in an emergency.
    #[test]
    fn invariant_06_escalation_monotone(seed in any::<u64>(), evs in events()) {
        simulate(seed, &evs, false, SECS, inv6_escalation)?;
    }

    /// 7. GPU limits inside their constraints; miner targets inside the firmware's range.
    #[test]
    fn invariant_07_commands_in_range(seed in any::<u64>(), evs in events()) {
        simulate(seed, &evs, false, SECS, inv7_range)?;
    }

    /// 8. Determinism: same state and inputs, same plan; also after the state went
    ///    through its persisted form.
    #[test]
    fn invariant_08_determinism(seed in any::<u64>(), evs in events()) {
        simulate(seed, &evs, false, 120, inv8_determinism)?;
    }

    /// 9. No NVML: the agent runs, meters GPUs at the PDU, reserves racks at their rated
    ///    maximum, never caps, and says so once per GPU node.
    #[test]
    fn invariant_09_no_nvml(seed in any::<u64>(), evs in events()) {
        let mut said = std::collections::HashMap::<String, usize>::new();
        let mut heard = std::collections::HashSet::<String>::new();
        let mut mem = Memory::default();
        let sim = simulate(seed, &evs, true, SECS, |sim, step| {
            for (g, gn) in sim.site.gpu_nodes.iter().enumerate() {
                if step.snap.gpu(g).is_some() {
                    heard.insert(gn.id.clone());
                }
            }
            for a in step.plan.alerts.iter().filter(|a| a.name() == "telemetry.nvml.unavailable") {
                *said.entry(a.device.clone().unwrap()).or_default() += 1;
            }
            inv9_no_nvml(sim, step, &mut mem)?;
            if let Some(a) = step.plan.actions.iter().find(|a| matches!(a.device, Device::GpuNode(_))) {
                return Err(format!("GPU lever used without NVML: {}", a.device_id));
            }
            // With no NVML anywhere, every GPU rack is reserved at its rated maximum,
            // whether its host answered or not.
            for (n, node) in sim.site.nodes.iter().enumerate() {
                if !sim.topo.rack_gpus[n].is_empty() {
                    let want = node.rated_max_kw.unwrap();
                    if (step.plan.nodes[n].gpu_reserve_kw - want).abs() > 1e-9 {
                        return Err(format!("`{}` reserves {} kW, rated maximum {want}", node.id, step.plan.nodes[n].gpu_reserve_kw));
                    }
                }
            }
            Ok(())
        })?;
        for g in &sim.site.gpu_nodes {
            // Said once by every node that ever answered (a node never heard from cannot say).
            let want = usize::from(heard.contains(&g.id));
            prop_assert_eq!(said.get(&g.id).copied().unwrap_or(0), want, "NVML unavailable said once for {}", g.id);
        }
    }

    /// 10. N+1: while a zone lacks redundancy, no restores in it, and shedding goes on
    ///     until redundancy is back or no mining is left.
    #[test]
    fn invariant_10_n_plus_1(seed in any::<u64>(), evs in events()) {
        simulate(seed, &evs, false, SECS, inv10_n_plus_1)?;
    }

    /// 11. Ceiling: after each decision P_worst <= H wherever mining is left to shed; no
    ///     restore or trough fill takes a node above H.
    #[test]
    fn invariant_11_ceiling(seed in any::<u64>(), evs in events()) {
        simulate(seed, &evs, false, SECS, inv11_ceiling)?;
    }

    /// 12. Excursion: a node measured above B with fast mining above idle under it gets a
    ///     shed in the same decision.
    #[test]
    fn invariant_12_excursion(seed in any::<u64>(), evs in events()) {
        simulate(seed, &evs, false, SECS, inv12_excursion)?;
    }

    /// 13. Slow miners (learned p99 shed time above fast_shed_s) never hold trough
    ///     headroom: their mining fits in B - sum(X) - other.
    #[test]
    fn invariant_13_slow_out_of_trough(seed in any::<u64>(), evs in events()) {
        simulate(seed, &evs, false, SECS, inv13_slow_out_of_trough)?;
    }
}

/// Regression: a case a random run found on 2026-12-05 (CI of commit 9959c6c). At t=107 s
/// a miner stale since t=30 s and 8.3 kW of new "other" load in its rack made the
/// decision with the stale input see 5.9 kW less worst case at the site than the one with
/// worst-case readings in its place, so it shed nothing where the other shed 7.6 kW: a
/// stale miner made its rack drop the meter's reading (the non-GPU and other load it
/// shows) instead of counting the miner at nameplate beside it (`load.rs`, `ai_reading`).
#[test]
// Long on purpose: the case's trace, one event per entry.
#[allow(clippy::too_many_lines)]
fn invariant_05_regression_stale_miner_hid_other_load_seed_9966529388217560104() {
    let evs = vec![
        Ev {
            t_s: 15,
            kind: 182,
            idx: 3405837382,
            x: 0.8151754748967969,
        },
        Ev {
            t_s: 24,
            kind: 69,
            idx: 679640399,
            x: 0.1940993275368586,
        },
        Ev {
            t_s: 385,
            kind: 13,
            idx: 226844759,
            x: 0.8498697788642958,
        },
        Ev {
            t_s: 310,
            kind: 83,
            idx: 1866593972,
            x: 0.9294193116560799,
        },
        Ev {
            t_s: 242,
            kind: 101,
            idx: 2508902180,
            x: 0.260946408717519,
        },
        Ev {
            t_s: 304,
            kind: 146,
            idx: 3334648569,
            x: 0.6491694390167995,
        },
        Ev {
            t_s: 269,
            kind: 107,
            idx: 1234799763,
            x: 0.15435252852950798,
        },
        Ev {
            t_s: 281,
            kind: 118,
            idx: 1233954112,
            x: 0.020619572389840152,
        },
        Ev {
            t_s: 75,
            kind: 181,
            idx: 3526436979,
            x: 0.7422371196548212,
        },
        Ev {
            t_s: 282,
            kind: 150,
            idx: 2216441981,
            x: 0.7630834463386376,
        },
        Ev {
            t_s: 30,
            kind: 193,
            idx: 2226501528,
            x: 0.46860441933555885,
        },
        Ev {
            t_s: 338,
            kind: 186,
            idx: 4032487303,
            x: 0.17472188157054772,
        },
        Ev {
            t_s: 212,
            kind: 180,
            idx: 2249395733,
            x: 0.6963595562904993,
        },
        Ev {
            t_s: 202,
            kind: 37,
            idx: 2476014768,
            x: 0.24973608682792972,
        },
        Ev {
            t_s: 106,
            kind: 247,
            idx: 3989248198,
            x: 0.8296912176225206,
        },
        Ev {
            t_s: 260,
            kind: 23,
            idx: 1136126024,
            x: 0.8215855663065171,
        },
        Ev {
            t_s: 320,
            kind: 5,
            idx: 2860608602,
            x: 0.8091943737464938,
        },
        Ev {
            t_s: 280,
            kind: 64,
            idx: 1439483897,
            x: 0.7564917994991374,
        },
        Ev {
            t_s: 362,
            kind: 159,
            idx: 2084360677,
            x: 0.9240163207950791,
        },
        Ev {
            t_s: 140,
            kind: 172,
            idx: 3340024697,
            x: 0.30784476646667247,
        },
        Ev {
            t_s: 237,
            kind: 70,
            idx: 729431017,
            x: 0.8282166667096801,
        },
        Ev {
            t_s: 131,
            kind: 163,
            idx: 606915754,
            x: 0.5975332021192697,
        },
        Ev {
            t_s: 83,
            kind: 9,
            idx: 2723651198,
            x: 0.896267411308528,
        },
        Ev {
            t_s: 225,
            kind: 222,
            idx: 2219167833,
            x: 0.19437720689546026,
        },
        Ev {
            t_s: 14,
            kind: 238,
            idx: 3834021552,
            x: 0.6578112557292366,
        },
    ];
    simulate(9966529388217560104, &evs, false, SECS, |sim, step| {
        inv5_stale(sim, step).map(|_| ())
    })
    .unwrap();
}
