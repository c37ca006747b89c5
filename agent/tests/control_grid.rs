//! Grid signals in the control core (issue 19, docs/grid.md): a site import limit shed
//! with the ordinary levers, never a GPU cap unless allowed, the shortfall reported; the
//! stricter of a grid limit and a breaker budget wins; a price spike sleeps the least
//! efficient miners first and they come back when it passes.
//!
//! Site: `tests/data/control-scenarios.toml` (two feeds of 220 kW rating, B 176 kW; per
//! feed an 80-GPU rack held at 500 W per GPU and a mining rack of 15 Braiins at 29.5
//! J/TH with a power target lever and 10 stock Antminers at 34 J/TH; 3.25 kW each).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod control_support;

use control_support::Sim;
use rackwarden::control::{Device, GridInput, Intent, Lever, Reason};

fn site() -> Sim {
    let text = include_str!("data/control-scenarios.toml");
    let mut sim = Sim::new(control_support::load(text), false);
    for g in 0..sim.gpus.len() {
        sim.gpus[g].limits.enforced_w = 500.0;
        sim.gpus[g].util = 1.0; // the GPUs draw their limits: 40 kW per feed
    }
    sim
}

fn limit(sim: &mut Sim, kw: Option<f64>) {
    sim.snap.grid.limit_kw = kw;
    sim.snap.grid.limit_from = "api:test".to_owned();
}

/// The site's effective load as the last decision saw it, kW.
fn site_kw(sim: &Sim) -> f64 {
    sim.steps.last().unwrap().plan.nodes[0].eff_kw
}

fn acts(sim: &Sim, from_s: u64, to_s: u64) -> Vec<rackwarden::control::Action> {
    sim.actions(from_s, to_s).into_iter().cloned().collect()
}

#[test]
fn a_grid_limit_sheds_mining_gentlest_lever_first_and_holds_restores_under_it() {
    let mut sim = site();
    sim.run_until(120);
    let before = site_kw(&sim);
    assert!(before > 230.0, "the whole site mines: {before:.1} kW");
    assert!(acts(&sim, 90, 120).is_empty());

    limit(&mut sim, Some(200.0));
    sim.run_until(122);
    let first = acts(&sim, 120, 122);
    assert!(!first.is_empty(), "the limit is shed at its first decision");
    assert!(first.iter().all(|a| a.reason == Reason::Grid), "{first:?}");
    // Gentlest lever first: the Braiins targets go down before anything sleeps.
    assert!(first
        .iter()
        .any(|a| a.lever == Lever::PowerTarget && a.device_id.contains("braiins")));
    let alerts = sim.alerts(120, 122);
    assert!(alerts.contains(&"grid.target.active"), "{alerts:?}");

    sim.run_until(180);
    let all = acts(&sim, 120, 180);
    assert!(
        all.iter().all(|a| a.lever != Lever::GpuCap),
        "no GPU cap for a grid event"
    );
    // Sleeps (when targets were not enough) go least efficient first: Antminers (34 J/TH)
    // before any Braiins (29.5 J/TH).
    let sleeps: Vec<&str> = all
        .iter()
        .filter(|a| a.lever == Lever::Sleep)
        .map(|a| a.device_id.as_str())
        .collect();
    // 42 kW to shed: the Braiins targets give 43.5 kW, the rest sleeps Antminers.
    assert!(
        sleeps.iter().all(|d| d.contains("antminer")),
        "least efficient sleep first: {sleeps:?}"
    );
    let after = site_kw(&sim);
    assert!(
        (200.0 * 0.90..=200.0 * 0.98 + 1e-6).contains(&after),
        "site under the limit, not far under it: {after:.1} kW"
    );
    assert_eq!(sim.steps.last().unwrap().plan.grid_shortfall_kw, 0.0);

    // While it holds: nothing restored above the fill line (3 margins under L).
    sim.run_until(600);
    for s in sim.steps.iter().filter(|s| s.now > 180_000) {
        assert!(
            s.plan.nodes[0].eff_kw <= 200.0 * 0.98 + 1e-6,
            "t={} site at {:.1} kW under a 200 kW limit",
            s.now,
            s.plan.nodes[0].eff_kw
        );
    }

    // The event ends: restores resume (targets raised, sleepers woken) under the
    // ordinary hysteresis, and the end is alerted.
    limit(&mut sim, None);
    sim.run_until(1_500);
    assert!(sim.alerts(600, 602).contains(&"grid.target.ended"));
    let back = acts(&sim, 600, 1_500);
    assert!(
        back.iter()
            .any(|a| matches!(a.lever, Lever::PowerTargetRaise | Lever::Wake)),
        "mining comes back after the event"
    );
    assert!(back.iter().all(|a| a.reason != Reason::Grid));
    assert!(site_kw(&sim) > 230.0, "{:.1}", site_kw(&sim));
}

#[test]
fn a_limit_mining_cannot_meet_is_reported_and_never_caps_a_gpu_unless_allowed() {
    let mut sim = site();
    sim.run_until(120);
    // 60 kW: under the 80 kW the GPUs alone draw.
    limit(&mut sim, Some(60.0));
    sim.run_until(200);
    let all = acts(&sim, 120, 200);
    assert!(all.iter().all(|a| a.lever != Lever::GpuCap));
    assert!(all.iter().any(|a| a.reason == Reason::Grid));
    let alerts = sim.alerts(120, 200);
    assert_eq!(
        alerts.iter().filter(|a| **a == "grid.target.unmet").count(),
        1,
        "said once: {alerts:?}"
    );
    let short = sim.steps.last().unwrap().plan.grid_shortfall_kw;
    assert!(
        (15.0..=30.0).contains(&short),
        "GPUs 80 kW + idle miners over a 60 kW limit: shortfall {short:.1} kW"
    );
    // Every miner with a sleep lever is asleep; the GPUs are untouched.
    for g in &sim.gpus {
        assert_eq!(g.limits.enforced_w, 500.0);
    }

    // With `allow_gpu_caps` the same event caps GPUs once mining is gone.
    let mut sim = site();
    sim.site.grid.allow_gpu_caps = true;
    sim.run_until(120);
    limit(&mut sim, Some(60.0));
    sim.run_until(200);
    let all = acts(&sim, 120, 200);
    let first_cap = all.iter().position(|a| a.lever == Lever::GpuCap);
    assert!(first_cap.is_some(), "allowed: GPUs capped for the event");
    assert!(all
        .iter()
        .all(|a| a.reason == Reason::Grid || !a.lever.is_shed()));
}

fn surge_a(sim: &mut Sim) {
    let g = sim.gpu("gn-a");
    sim.gpus[g].limits.enforced_w = 1250.0; // 40 -> 100 kW of limits on feed-a
}

#[test]
fn during_a_gpu_surge_the_stricter_of_the_grid_limit_and_the_budget_wins() {
    // A lax grid limit: the feed's budget is the stricter, and the grid sheds nothing.
    let mut sim = site();
    sim.run_until(120);
    limit(&mut sim, Some(400.0));
    surge_a(&mut sim);
    sim.run_until(200);
    let all = acts(&sim, 120, 200);
    assert!(all.iter().any(|a| a.lever.is_shed()));
    assert!(all.iter().all(|a| a.reason != Reason::Grid), "{all:?}");
    assert!(all.iter().all(|a| a.device_id.starts_with("mine-a")));

    // A strict one during the surge: the feed has shed for its budget, then the site
    // sheds on for the grid, and both hold.
    let mut sim = site();
    sim.run_until(120);
    surge_a(&mut sim);
    sim.run_until(180);
    let feed = acts(&sim, 120, 180);
    assert!(feed
        .iter()
        .any(|a| matches!(a.reason, Reason::Excursion | Reason::Shed | Reason::Ceiling)));
    assert!(site_kw(&sim) > 240.0, "{:.1}", site_kw(&sim));
    limit(&mut sim, Some(220.0));
    sim.run_until(300);
    let all = acts(&sim, 180, 300);
    assert!(all.iter().any(|a| a.reason == Reason::Grid));
    assert!(all.iter().all(|a| a.lever != Lever::GpuCap));
    let last = &sim.steps.last().unwrap().plan;
    let feed_a = sim.node("feed-a");
    assert!(last.nodes[feed_a].eff_kw <= sim.site.nodes[feed_a].budget_kw + 1e-6);
    assert!(last.nodes[0].eff_kw <= 220.0, "{:.1}", last.nodes[0].eff_kw);
    assert_eq!(last.grid_shortfall_kw, 0.0);
}

fn price(sim: &mut Sim, p: Option<f64>) {
    sim.snap.grid = GridInput {
        price_usd_per_mwh: p,
        ..sim.snap.grid.clone()
    };
}

#[test]
fn a_price_spike_sleeps_the_least_efficient_first_and_wakes_them_when_it_passes() {
    let mut sim = site();
    // 0.05 USD/TH/day: breakeven 70.6 USD/MWh at 29.5 J/TH, 61.3 at 34 J/TH.
    sim.site.grid.hashprice_usd_per_th_day = Some(0.05);
    sim.run_until(900); // past the minimum on time of the start
    price(&mut sim, Some(65.0));
    sim.run_until(960);
    let all = acts(&sim, 900, 960);
    let slept: Vec<&str> = all
        .iter()
        .filter(|a| a.lever == Lever::Sleep)
        .map(|a| a.device_id.as_str())
        .collect();
    assert_eq!(slept.len(), 20, "every Antminer, no Braiins: {slept:?}");
    assert!(slept.iter().all(|d| d.contains("antminer")));
    assert!(all.iter().all(|a| a.reason == Reason::Price));
    assert_eq!(sim.steps.last().unwrap().plan.price_curtailed, 20);

    // The price falls, but not below the hysteresis (61.3 x 0.95 = 58.2): they stay.
    price(&mut sim, Some(60.0));
    sim.run_until(1_500);
    assert!(acts(&sim, 960, 1_500)
        .iter()
        .all(|a| a.lever != Lever::Wake));

    // Then well under: they wake (after the minimum off time, within the ramp).
    price(&mut sim, Some(40.0));
    sim.run_until(2_400);
    let woke: Vec<String> = acts(&sim, 1_500, 2_400)
        .iter()
        .filter(|a| a.lever == Lever::Wake)
        .map(|a| a.device_id.clone())
        .collect();
    assert_eq!(woke.len(), 20, "{woke:?}");
    let st = &sim.steps.last().unwrap().plan.state;
    for (i, m) in st.miners.iter().enumerate() {
        assert!(
            matches!(m.intent, Intent::Normal | Intent::Target { .. }),
            "{} still {:?}",
            sim.site.miners[i].id,
            m.intent
        );
    }
    // A spike above every breakeven sleeps the Braiins as well, least efficient
    // (Antminers) first in the same decision.
    price(&mut sim, Some(500.0));
    sim.run_until(3_600);
    let order: Vec<String> = acts(&sim, 2_400, 3_600)
        .iter()
        .filter(|a| a.lever == Lever::Sleep && matches!(a.device, Device::Miner(_)))
        .map(|a| a.device_id.clone())
        .collect();
    assert!(order.iter().any(|d| d.contains("braiins")), "{order:?}");
}

mod property {
    //! Over random small sites and random grid limits: a grid event never caps a GPU
    //! (without `allow_gpu_caps`) and never adds load: the restores of a decision under
    //! a limit add no more than the same decision's without it (which miners they are
    //! may differ: a smaller one can fit where the policy's first pick did not).

    use super::control_support::{gen_site, load, Sim};
    use proptest::prelude::*;
    use rackwarden::control::{decide, GridInput, Lever, Reason};

    proptest! {
        #![proptest_config(ProptestConfig { cases: 10, max_shrink_iters: 30, rng_seed: proptest::test_runner::RngSeed::Fixed(0x6772_6964), ..ProptestConfig::default() })]

        #[test]
        fn a_grid_limit_never_caps_a_gpu_nor_adds_a_restore(
            seed in any::<u64>(),
            windows in prop::collection::vec((0u64..400, 10u64..200, 0.2f64..1.2), 1..5),
        ) {
            let mut sim = Sim::new(load(&gen_site(seed)), false);
            sim.keep_steps = false;
            for g in 0..sim.gpus.len() {
                sim.gpus[g].util = 0.6;
            }
            let budget = sim.site.nodes[0].budget_kw;
            while sim.now < 480_000 {
                let t = sim.now / 1000;
                let limit = windows
                    .iter()
                    .filter(|(start, len, _)| t >= *start && t < start + len)
                    .map(|(_, _, f)| f * budget)
                    .fold(None, |m: Option<f64>, l| Some(m.map_or(l, |m| m.min(l))));
                sim.snap.grid = GridInput {
                    limit_kw: limit,
                    limit_from: "test".into(),
                    price_usd_per_mwh: None,
                };
                sim.tick();
                let step = sim.steps.last().unwrap();
                for a in &step.plan.actions {
                    prop_assert!(
                        !(a.lever == Lever::GpuCap && a.reason == Reason::Grid),
                        "t={t}: GPU capped for the grid: {a:?}"
                    );
                }
                if limit.is_none() {
                    continue;
                }
                let mut free = step.snap.clone();
                free.grid = GridInput::default();
                let without = decide(&sim.site, &sim.topo, &free, &step.pre, step.now, step.tick);
                let added = |acts: &[rackwarden::control::Action]| -> f64 {
                    acts.iter()
                        .filter(|a| !a.lever.is_shed() && a.lever != Lever::GpuCapLift)
                        .map(|a| (a.to_w - a.from_w).max(0.0))
                        .sum()
                };
                let with_kw = added(&step.plan.actions);
                let without_kw = added(&without.actions);
                prop_assert!(
                    with_kw <= without_kw + 1e-6,
                    "t={t}: restores add {with_kw:.0} W under the limit, {without_kw:.0} W without it\nwith {:?}\nwithout {:?}",
                    step.plan.actions,
                    without.actions
                );
            }
        }
    }
}
