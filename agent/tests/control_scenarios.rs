//! Control scenarios as tables: at a time, readings change; over the window that follows,
//! the listed actions and alerts must (or must not) appear.
//!
//! Site: `tests/data/control-scenarios.toml` (two independent feeds of 200 kW budget,
//! each with an 80-GPU rack held at 500 W per GPU = 40 kW reserve, and a mining rack of
//! 15 Braiins + 10 stock Antminers = 81.25 kW; one N+1 zone of 3 x 100 kW per feed).
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
            // never moves a miner (the projection counts limits, not swings).
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
            // gn-a's limit goes 500 -> 1250 W: feed-a projects 181 kW of 200 (90.6%).
            Row {
                at: 100,
                event: surge_a,
                until: 106,
                expect: &[
                    Alert("power.budget.shed"),
                    Act(Lever::PowerTarget, "mine-a-braiins-"),
                    Act(Lever::Sleep, "mine-a-antminer-"),
                    Quiet("mine-b"),
                    Quiet("gn-"),
                    Because(Reason::Shed),
                ],
            },
            // Shed to 85%: the hold band; nothing moves while the surge lasts.
            Row {
                at: 106,
                event: nothing,
                until: 300,
                expect: &[Quiet("")],
            },
            // Surge ends: no restore before the 80% condition held 60 s...
            Row {
                at: 300,
                event: surge_a_ends,
                until: 359,
                expect: &[Alert("power.budget.restored"), Quiet("")],
            },
            // ...then a ramp, and no shed while it ramps.
            Row {
                at: 359,
                event: nothing,
                until: 900,
                expect: &[
                    Act(Lever::PowerTargetRaise, "mine-a-braiins-"),
                    Act(Lever::Wake, "mine-a-antminer-"),
                    NoShed,
                    Quiet("mine-b"),
                ],
            },
        ],
    );
    // Ramp: at most 5% of mine-a's budget (128 kW -> 6.4 kW) per 30 s, and never a
    // wake before the 5 min minimum off time.
    let rack_b = sim.site.nodes[sim.node("mine-a")].budget_kw;
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
        assert!(
            window <= 0.05 * rack_b + 1e-6,
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
                event: surge_a,
                until: 105,
                expect: &[
                    Act(Lever::Sleep, "mine-a-antminer-"),
                    NoAlert("action.unconfirmed"),
                ],
            },
            // 10 s without a reading that confirms the sleep: escalate to the outlet.
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
