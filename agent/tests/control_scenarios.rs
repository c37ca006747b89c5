//! Control scenarios as tables: at a time, readings change; over the window that follows,
//! the listed actions and alerts must (or must not) appear.
//!
//! Site: `tests/data/control-scenarios.toml` (two independent feeds of 220 kW rating:
//! budget B 176 kW, fill line 170.7 kW, ceiling H 209 kW; each with an 80-GPU rack held
//! at 500 W per GPU = 40 kW of limits, and a mining rack of 15 Braiins + 10 stock
//! Antminers = 81.25 kW; one N+1 zone of 3 x 100 kW per feed). The GPUs swing between
//! idle and their limit every half second, so the measured peak is the limit: S = X.
//! Every device answers within a second; miners act 3 s after a command.

mod control_support;

use control_support::Sim;
use rackwarden::control::{Device, Lever, Reason, UnitState};

fn site() -> Sim {
    let text = include_str!("data/control-scenarios.toml");
    let mut sim = Sim::new(control_support::load(text), false);
    for g in 0..sim.gpus.len() {
        sim.gpus[g].limits.enforced_w = 500.0;
        sim.gpus[g].swing_hz = 2.0; // training-style swings, idle <-> cap
    }
    sim
}

/// What a window must contain.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// At least one action with this lever on a device whose id starts with the prefix.
    Act(Lever, &'static str),
    /// No action at all on devices whose id starts with the prefix.
    Quiet(&'static str),
    /// No shed action anywhere.
    NoShed,
    /// An action with this reason.
    Because(Reason),
    Alert(&'static str),
    NoAlert(&'static str),
}

type Event = fn(&mut Sim);

/// One row: at `at` seconds apply `event`, then over `(at, until]` expect `expect`.
struct Row {
    at: u64,
    event: Event,
    until: u64,
    expect: &'static [Expect],
}

fn nothing(_: &mut Sim) {}

fn run(mut sim: Sim, table: &[Row]) -> Sim {
    for (k, row) in table.iter().enumerate() {
        sim.run_until(row.at);
        (row.event)(&mut sim);
        sim.run_until(row.until);
        let acts = sim.actions(row.at, row.until);
        let alerts = sim.alerts(row.at, row.until);
        let show = || {
            let a: Vec<String> = acts
                .iter()
                .map(|a| {
                    format!(
                        "{} {} {:?} {:.0}->{:.0}",
                        a.device_id,
                        a.lever.name(),
                        a.reason,
                        a.from_w,
                        a.to_w
                    )
                })
                .collect();
            format!(
                "row {k} (t {}..{}): actions {a:#?}\nalerts {alerts:?}",
                row.at, row.until
            )
        };
        for e in row.expect {
            let ok = match *e {
                Expect::Act(lever, prefix) => acts
                    .iter()
                    .any(|a| a.lever == lever && a.device_id.starts_with(prefix)),
                Expect::Quiet(prefix) => !acts.iter().any(|a| a.device_id.starts_with(prefix)),
                Expect::NoShed => !acts.iter().any(|a| a.lever.is_shed()),
                Expect::Because(r) => acts.iter().any(|a| a.reason == r),
                Expect::Alert(name) => alerts.contains(&name),
                Expect::NoAlert(name) => !alerts.contains(&name),
            };
            assert!(ok, "expected {e:?}\n{}", show());
        }
    }
    sim
}

fn surge_a(sim: &mut Sim) {
    let g = sim.gpu("gn-a");
    sim.gpus[g].limits.enforced_w = 1250.0; // tenant lifts the limit: reserve 40 -> 100 kW
}

fn surge_a_ends(sim: &mut Sim) {
    let g = sim.gpu("gn-a");
    sim.gpus[g].limits.enforced_w = 500.0;
}

#[test]
fn gpu_surge_on_a_feed_sheds_that_feed_only_then_restores_without_cycling() {
    use Expect::*;
    let sim = run(
        site(),
        &[
            // Start: all fresh; GPUs swing at 2 Hz between idle and their limit, which
            // never moves a miner (S is the rolling peak, the limit here).
            Row {
                at: 0,
                event: nothing,
                until: 90,
                expect: &[
                    Alert("control.startup.hold"),
                    Alert("control.startup.released"),
                    Quiet(""),
                ],
            },
            // gn-a's limit goes 500 -> 1250 W: feed-a projects 181 kW, over its 176 kW
            // budget: shed in the same decision toward 97% of B, power targets first
            // (10.5 kW is within what the Braiins targets give: nothing sleeps).
            Row {
                at: 100,
                event: surge_a,
                until: 106,
                expect: &[
                    Alert("power.budget.shed"),
                    Act(Lever::PowerTarget, "mine-a-braiins-"),
                    Quiet("mine-a-antminer-"),
                    Quiet("mine-b"),
                    Quiet("gn-"),
                    Because(Reason::Excursion),
                ],
            },
            // Shed to 97%: the hold band; nothing moves while the surge lasts.
            Row {
                at: 106,
                event: nothing,
                until: 300,
                expect: &[Quiet("")],
            },
            // Surge ends: the limits are a hard bound, so the room is back at once, and
            // the restore condition held through the hold band: targets go back up,
            // no shed while they do.
            Row {
                at: 300,
                event: surge_a_ends,
                until: 900,
                expect: &[
                    Act(Lever::PowerTargetRaise, "mine-a-braiins-"),
                    NoShed,
                    Quiet("mine-b"),
                ],
            },
        ],
    );
    // Ramp: at most 5% of feed-a's budget (176 kW -> 8.8 kW) per 30 s, beyond the first
    // miner of a step, and never a wake before the 5 min minimum off time.
    let feed_b = sim.site.nodes[sim.node("feed-a")].budget_kw;
    let restores: Vec<(u64, f64)> = sim
        .steps
        .iter()
        .flat_map(|s| s.plan.actions.iter().map(move |a| (s.now, a)))
        .filter(|(_, a)| !a.lever.is_shed())
        .map(|(t, a)| (t, (a.to_w - a.from_w) / 1000.0))
        .collect();
    assert!(!restores.is_empty());
    for &(t, _) in &restores {
        let window: f64 = restores
            .iter()
            .filter(|(u, _)| *u <= t && t - *u < 30_000)
            .map(|(_, d)| d)
            .sum();
        let largest = restores
            .iter()
            .filter(|(u, _)| *u <= t && t - *u < 30_000)
            .map(|(_, d)| *d)
            .fold(0.0, f64::max);
        assert!(
            window <= 0.05 * feed_b + largest + 1e-6,
            "ramp {window} kW in 30 s at t={t}"
        );
    }
    for s in &sim.steps {
        for a in &s.plan.actions {
            if a.lever == Lever::Wake {
                let Device::Miner(i) = a.device else { panic!() };
                let slept = s.pre.miners[i].slept_at.unwrap();
                assert!(
                    s.now - slept >= 300_000,
                    "woke {} after {} ms",
                    a.device_id,
                    s.now - slept
                );
            }
        }
    }
    // Every miner is mining normally again at the end.
    assert!(sim
        .state
        .miners
        .iter()
        .all(|m| m.intent == rackwarden::control::Intent::Normal));
}

fn trip_a2(sim: &mut Sim) {
    sim.units[0][1] = UnitState::Alarmed;
}

fn fix_a2(sim: &mut Sim) {
    sim.units[0][1] = UnitState::Running;
}

#[test]
fn cooling_unit_trips_n_plus_1_lost_then_restored() {
    use Expect::*;
    let sim = run(
        site(),
        &[
            Row {
                at: 0,
                event: nothing,
                until: 100,
                expect: &[Quiet(""), NoAlert("cooling.redundancy.lost")],
            },
            // crah-a2 alarms: 200 kW available, 100 kW after losing the largest, below
            // 121 kW x 1.1 of heat: N+1 lost, zone-a's miners shed (no GPU cap).
            Row {
                at: 100,
                event: trip_a2,
                until: 106,
                expect: &[
                    Alert("cooling.redundancy.lost"),
                    Because(Reason::CoolingRedundancy),
                    Act(Lever::Sleep, "mine-a-antminer-"),
                    Quiet("mine-b"),
                    Quiet("gn-"),
                ],
            },
            // Shed far enough, N+1 holds again at the lower load; nothing restores while
            // the unit is down beyond what N+1 allows (the zone stays within it).
            Row {
                at: 106,
                event: nothing,
                until: 200,
                expect: &[Alert("cooling.redundancy.restored"), NoShed],
            },
            // The unit comes back: after the hold, mining ramps back.
            Row {
                at: 200,
                event: fix_a2,
                until: 700,
                expect: &[
                    Act(Lever::Wake, "mine-a-antminer-"),
                    NoShed,
                    NoAlert("cooling.redundancy.lost"),
                ],
            },
        ],
    );
    // While a unit was down, the zone's heat never exceeded N+1 after the first shed.
    for s in sim
        .steps
        .iter()
        .filter(|s| s.now > 110_000 && !s.plan.zones.is_empty())
    {
        assert!(s.plan.zones[0].n_plus_1, "N+1 lost again at {}", s.now);
    }
}

fn feed_b_silent(sim: &mut Sim) {
    let n = sim.node("feed-b");
    sim.stale.meters[n] = true;
}

fn gpu_b_silent(sim: &mut Sim) {
    let n = sim.node("gpu-b");
    sim.stale.meters[n] = true;
    let g = sim.gpu("gn-b");
    sim.stale.gpus[g] = true;
}

#[test]
fn feed_meter_goes_silent() {
    use Expect::*;
    run(
        site(),
        &[
            Row {
                at: 0,
                event: nothing,
                until: 100,
                expect: &[Quiet("")],
            },
            // Feed meter silent: alert, restores frozen; the racks' meters still bound
            // the feed, so nothing is shed.
            Row {
                at: 100,
                event: feed_b_silent,
                until: 200,
                expect: &[
                    Alert("telemetry.stale"),
                    NoAlert("telemetry.meter.silent"),
                    Quiet(""),
                ],
            },
            // The GPU rack's PDU and its GPU node go silent too: no device-level bound
            // left. The GPU rack reads as its rated maximum (100 kW) once its limits are
            // stale (30 s), and feed-b's miners are brought to 0.8 x 200 - 100 = 60 kW.
            Row {
                at: 200,
                event: gpu_b_silent,
                until: 250,
                expect: &[
                    Alert("telemetry.meter.silent"),
                    Act(Lever::Sleep, "mine-b-antminer-"),
                    Quiet("mine-a"),
                ],
            },
        ],
    );
}

/// gn-a at 1250 W and 45 kW of other load on mine-a (its fans, a heater): feed-a
/// measures 226 kW, above its 209 kW ceiling: an emergency.
fn surge_a_emergency(sim: &mut Sim) {
    surge_a(sim);
    let n = sim.node("mine-a");
    sim.other_kw[n] = 45.0;
}

fn antminers_a_ignore(sim: &mut Sim) {
    for i in 0..sim.miners.len() {
        if sim.site.miners[i].id.starts_with("mine-a-antminer-") {
            sim.miners[i].ignores = true;
        }
    }
}

#[test]
fn miner_ignores_sleep_and_its_outlet_is_switched_off() {
    use Expect::*;
    run(
        site(),
        &[
            Row {
                at: 0,
                event: antminers_a_ignore,
                until: 100,
                expect: &[Quiet("")],
            },
            Row {
                at: 100,
                event: surge_a_emergency,
                until: 105,
                expect: &[
                    Alert("power.budget.emergency"),
                    Act(Lever::Sleep, "mine-a-antminer-"),
                    NoAlert("action.unconfirmed"),
                ],
            },
            // 10 s (an emergency sleep's deadline) without a reading that confirms the
            // sleep: escalate to the outlet.
            Row {
                at: 105,
                event: nothing,
                until: 125,
                expect: &[
                    Alert("action.unconfirmed"),
                    Act(Lever::OutletOff, "mine-a-antminer-"),
                    Because(Reason::Escalation),
                    Quiet("mine-b"),
                ],
            },
            Row {
                at: 125,
                event: nothing,
                until: 200,
                expect: &[NoAlert("action.unconfirmed"), Quiet("")],
            },
        ],
    );
}

// ---- Trough filling (issue 15): the two-limit model in tables ----------------------

/// `examples/site-colo.toml`: per feed two PDU-only GPU racks (no GPU nodes, rated
/// maximum 40 kW each) and 20 miners of 3 kW (B 120 kW, H 142.5 kW per feed).
fn colo() -> Sim {
    let text = include_str!("../../examples/site-colo.toml");
    let mut sim = Sim::new(control_support::load(text), false);
    for r in ["gpu-a1", "gpu-a2", "gpu-b1", "gpu-b2"] {
        let n = sim.node(r);
        sim.other_kw[n] = 12.0; // a night trough: 30% of the rated maximum
    }
    sim
}

fn colo_surge_a(sim: &mut Sim) {
    for r in ["gpu-a1", "gpu-a2"] {
        let n = sim.node(r);
        sim.other_kw[n] = 40.0;
    }
}

fn colo_surge_a_ends(sim: &mut Sim) {
    for r in ["gpu-a1", "gpu-a2"] {
        let n = sim.node(r);
        sim.other_kw[n] = 12.0;
    }
}

fn all_mining(sim: &Sim, prefix: &str) -> bool {
    sim.site
        .miners
        .iter()
        .zip(&sim.state.miners)
        .filter(|(m, _)| m.id.starts_with(prefix))
        .all(|(_, s)| s.intent == rackwarden::control::Intent::Normal && s.pending.is_none())
}

#[test]
fn colo_rack_surge_sheds_only_its_feed_and_every_miner_comes_back() {
    use Expect::*;
    let mut sim = run(
        colo(),
        &[
            // Reserved at their rated maxima the GPU racks and all mining (140 kW) fit
            // under H: nothing is curtailed at start-up, though the rated maxima fill B.
            Row {
                at: 0,
                event: nothing,
                until: 600,
                expect: &[Quiet(""), NoAlert("power.ceiling.shed")],
            },
            // Feed A's tenant racks jump to their rated maximum: 140 kW measured, over
            // B: shed in the decision that sees it, power targets first; feed B quiet.
            Row {
                at: 600,
                event: colo_surge_a,
                until: 605,
                expect: &[
                    Act(Lever::PowerTarget, "mine-a"),
                    Because(Reason::Excursion),
                    Quiet("mine-b"),
                    NoAlert("power.budget.emergency"),
                ],
            },
            Row {
                at: 605,
                event: nothing,
                until: 900,
                expect: &[Quiet("mine-b"), NoAlert("power.excursion.long")],
            },
            // The surge ends.
            Row {
                at: 900,
                event: colo_surge_a_ends,
                until: 960,
                expect: &[Quiet("mine-b"), NoShed],
            },
        ],
    );
    // Every miner comes back; the time it takes is the peak window holding the surge's
    // peak (30 min) and its bounded decay: recorded, and bounded here.
    let mut back_at = None;
    while sim.now < 6_000_000 {
        sim.tick();
        if all_mining(&sim, "mine-a") {
            back_at = Some(sim.now / 1000);
            break;
        }
    }
    let back = back_at.expect("feed A's miners never all came back");
    println!(
        "colo surge: every feed-A miner mining again {} s after the surge ended",
        back - 900
    );
    let p = &sim.site.policy;
    assert!(
        back - 900 <= p.reserve_window_s + 1_200,
        "miners back only {} s after the surge",
        back - 900
    );
    // The feed never measured at its ceiling, and no breaker rating was ever reached.
    let feed = sim.node("feed-a");
    for s in &sim.steps {
        if let Some(m) = s.snap.meter(feed) {
            assert!(
                m.kw < sim.site.nodes[feed].ceiling_kw,
                "feed-a at {} kW",
                m.kw
            );
        }
    }
}

/// A feed of 200 kW rating (B 160, H 190) with an 80 kW GPU rack under NVML and a
/// mining rack of 30 LuxOS miners (90 kW): the guaranteed allocation B - X is 80 kW,
/// trough filling gives the last 10 kW; 10-minute peak window.
fn trough_site(slow_antminers: bool) -> Sim {
    let text = include_str!("data/trough-scenarios.toml");
    let text = if slow_antminers {
        text.replace("fast_shed_s = 30", "fast_shed_s = 20")
    } else {
        text.to_owned()
    };
    let mut sim = Sim::new(control_support::load(&text), false);
    let g = sim.gpu("gn-t");
    sim.gpus[g].util = 1.0; // a training job at its cap
    sim
}

fn job_ends(sim: &mut Sim) {
    let g = sim.gpu("gn-t");
    sim.gpus[g].util = 0.2;
}

fn job_starts(sim: &mut Sim) {
    let g = sim.gpu("gn-t");
    sim.gpus[g].util = 1.0;
}

#[test]
fn trough_fill_then_job_start_gives_the_fill_back_within_the_excursion_bound() {
    use Expect::*;
    let sim = run(
        trough_site(false),
        &[
            // The job at its cap: mining beyond the guaranteed allocation is shed.
            Row {
                at: 0,
                event: nothing,
                until: 60,
                expect: &[Act(Lever::PowerTarget, "mine-t")],
            },
            Row {
                at: 60,
                event: nothing,
                until: 300,
                expect: &[NoAlert("power.excursion.long")],
            },
            // The job ends: the peak window (10 min) must pass before the trough is
            // taken, then mining fills it (reason `fill`).
            Row {
                at: 300,
                event: job_ends,
                until: 899,
                expect: &[NoShed],
            },
            Row {
                at: 899,
                event: nothing,
                until: 1_500,
                expect: &[Because(Reason::Fill), NoShed],
            },
            // A new job jumps to its cap in a second: the feed goes above B; the fill is
            // shed in the same decision and the excursion ends within seconds.
            Row {
                at: 1_500,
                event: job_starts,
                until: 1_530,
                expect: &[
                    Because(Reason::Excursion),
                    Alert("power.excursion"),
                    NoAlert("power.excursion.long"),
                    NoAlert("power.budget.emergency"),
                    Quiet("gn-"),
                ],
            },
        ],
    );
    // Nothing took the trough before the peak window had passed.
    for s in sim.steps.iter().filter(|s| s.now < 900_000) {
        assert!(
            !s.plan.actions.iter().any(|a| a.reason == Reason::Fill),
            "a fill at {} ms, inside the peak window",
            s.now
        );
    }
    // Measured above B only briefly, never at H.
    let feed = sim.node("feed-t");
    let (b, h) = (
        sim.site.nodes[feed].budget_kw,
        sim.site.nodes[feed].ceiling_kw,
    );
    let mut longest = 0u64;
    let mut since = None;
    for s in &sim.steps {
        let Some(m) = s.snap.meter(feed) else {
            continue;
        };
        assert!(m.kw < h, "feed at {} kW, ceiling {h}", m.kw);
        if m.kw > b {
            let t0 = *since.get_or_insert(s.now);
            longest = longest.max(s.now - t0);
        } else {
            since = None;
        }
    }
    assert!(
        longest <= sim.site.policy.excursion_max_s * 1000,
        "an excursion lasted {longest} ms"
    );
    println!("trough fill: longest excursion above B {longest} ms");
}

#[test]
fn slow_firmware_is_kept_out_of_the_trough() {
    use Expect::*;
    // fast_shed_s 20 s: the stock Antminers' default shed time (25 s) makes them slow.
    let sim = run(
        trough_site(true),
        &[
            Row {
                at: 0,
                event: nothing,
                until: 300,
                expect: &[Alert("miner.slow")],
            },
            Row {
                at: 300,
                event: job_ends,
                until: 1_500,
                expect: &[Because(Reason::Fill)],
            },
        ],
    );
    // No slow miner was ever restored into the trough, and their mining always fits
    // in the guaranteed allocation.
    for s in &sim.steps {
        for a in &s.plan.actions {
            if a.reason == Reason::Fill {
                assert!(
                    !a.device_id.contains("antminer"),
                    "slow miner {} filled the trough",
                    a.device_id
                );
            }
        }
    }
    let loads =
        rackwarden::control::Loads::compute(&sim.site, &sim.topo, &sim.snap, &sim.state, sim.now);
    let feed = sim.node("feed-t");
    assert!(
        loads.slow_kw[feed] <= loads.guaranteed_kw(&sim.site, feed) + 1e-6,
        "slow mining {} kW over the guaranteed {} kW",
        loads.slow_kw[feed],
        loads.guaranteed_kw(&sim.site, feed)
    );
}

fn rack_spike(sim: &mut Sim) {
    let n = sim.node("mine-s");
    sim.other_kw[n] = 25.0; // a heater on the rack's PDU
}

fn rack_spike_ends(sim: &mut Sim) {
    let n = sim.node("mine-s");
    sim.other_kw[n] = 0.0;
}

#[test]
fn small_rack_gets_every_miner_back_though_one_miner_exceeds_its_step() {
    use Expect::*;
    let text = include_str!("data/trough-scenarios.toml");
    let mut sim = run(
        Sim::new(control_support::load(text), false),
        &[
            Row {
                at: 0,
                event: nothing,
                until: 100,
                expect: &[Quiet("mine-s")],
            },
            // 30 kW of miners + 25 kW on a 48 kW rack budget: sleep/targets now.
            Row {
                at: 100,
                event: rack_spike,
                until: 105,
                expect: &[Act(Lever::Sleep, "mine-s")],
            },
            Row {
                at: 200,
                event: rack_spike_ends,
                until: 260,
                expect: &[NoShed],
            },
        ],
    );
    // A miner (3 kW) is more than 5% of the rack budget (2.4 kW): it must come back all
    // the same, within 10 minutes of the minimum off time.
    let limit = 200 + sim.site.policy.min_off_s + 600;
    while sim.now < limit * 1000 && !all_mining(&sim, "mine-s") {
        sim.tick();
    }
    assert!(
        all_mining(&sim, "mine-s"),
        "mine-s not back by {limit} s: {:?}",
        sim.state
            .miners
            .iter()
            .map(|m| m.intent)
            .collect::<Vec<_>>()
    );
    println!(
        "small rack: every miner back {} s after the spike ended",
        sim.now / 1000 - 200
    );
}
