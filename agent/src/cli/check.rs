//! `rackwarden check-config`: the same load and validation the agent runs at start-up,
//! then a one-screen summary: counts, and per feed and row the two limits with the
//! mining they leave at the rated GPU reserves, and warnings for GPU racks the limits
//! cannot hold (docs/config.md, "What check-config prints").

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use rackwarden_config::{GpuReserve, GpuSource, NodeIdx, NodeKind, RackKind, Redundancy, Site};

use super::EX_CONFIG;
use crate::control::load::uplift_kw;

pub(super) fn run(path: &Path) -> ExitCode {
    match rackwarden_config::load(path) {
        Ok(site) => {
            tracing::info!(
                event = "config.valid",
                site = %site.id,
                nodes = site.nodes.len(),
                zones = site.zones.len(),
                devices = site.modbus_devices.len(),
                miners = site.miners.len(),
                gpu_nodes = site.gpu_nodes.len(),
                budget_kw = site.site_budget_kw(),
                "site file is valid"
            );
            print!("{}", summary(&site));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}: {} error(s); the agent will not start with this file",
                path.display(),
                errors.errors.len()
            );
            ExitCode::from(EX_CONFIG)
        }
    }
}

/// The summary printed for a valid site.
pub(super) fn summary(site: &Site) -> String {
    let mut s = String::new();
    let count = |k: NodeKind| site.nodes.iter().filter(|n| n.kind == k).count();
    writeln!(
        s,
        "site {} ({}): valid",
        site.id,
        site.name.as_deref().unwrap_or("unnamed")
    )
    .ok();
    writeln!(
        s,
        "  budget      {:.1} kW (site), derate {:.2}",
        site.site_budget_kw(),
        site.derate
    )
    .ok();
    let feeds: Vec<String> = site
        .nodes
        .iter()
        .filter(|n| n.kind == NodeKind::Feed)
        .map(|n| {
            let pair = n
                .pair
                .map(|p| format!(", pair {}", site.nodes[p].id))
                .unwrap_or_default();
            format!("{} {:.0}/{:.0} kW{pair}", n.id, n.budget_kw, n.rating_kw)
        })
        .collect();
    let shown = feeds.len().min(4);
    let more = if feeds.len() > shown {
        format!("; and {} more", feeds.len() - shown)
    } else {
        String::new()
    };
    writeln!(
        s,
        "  feeds       {}: {}{more}",
        feeds.len(),
        feeds[..shown].join("; ")
    )
    .ok();
    writeln!(s, "  rows        {}", count(NodeKind::Row)).ok();
    writeln!(
        s,
        "  racks       {} gpu, {} mining, {} mixed",
        count(NodeKind::Rack(RackKind::Gpu)),
        count(NodeKind::Rack(RackKind::Mining)),
        count(NodeKind::Rack(RackKind::Mixed))
    )
    .ok();
    if !site.tenants.is_empty() {
        let t: Vec<String> = site
            .tenants
            .iter()
            .map(|t| format!("{} ({} racks)", t.id, t.racks.len()))
            .collect();
        writeln!(s, "  tenants     {}: {}", t.len(), t.join(", ")).ok();
    }
    let units: usize = site.zones.iter().map(|z| z.units.len()).sum();
    let no_red = site
        .zones
        .iter()
        .filter(|z| z.redundancy == Redundancy::None)
        .count();
    writeln!(
        s,
        "  zones       {} ({} cooling units, {} without redundancy)",
        site.zones.len(),
        units,
        no_red
    )
    .ok();
    let control = site.modbus_devices.iter().filter(|d| d.control).count();
    writeln!(
        s,
        "  devices     {} Modbus ({} with control = true)",
        site.modbus_devices.len(),
        control
    )
    .ok();
    let mut fw: Vec<(&str, usize)> = Vec::new();
    for m in &site.miners {
        match fw.iter_mut().find(|(n, _)| *n == m.firmware.name()) {
            Some(e) => e.1 += 1,
            None => fw.push((m.firmware.name(), 1)),
        }
    }
    let nominal_kw = site.miners.iter().fold(0.0, |w, m| w + m.nominal_w) / 1000.0;
    let fw: Vec<String> = fw.iter().map(|(n, c)| format!("{n} {c}")).collect();
    writeln!(
        s,
        "  miners      {} ({:.1} kW nominal): {}",
        site.miners.len(),
        nominal_kw,
        fw.join(", ")
    )
    .ok();
    let gpus: u32 = site.gpu_nodes.iter().map(|g| g.gpus).sum();
    let remote = site
        .gpu_nodes
        .iter()
        .filter(|g| g.source == GpuSource::Remote)
        .count();
    // Folded from +0.0: an empty f64 `sum()` is -0.0, printed "-0.0 kW" for a site
    // without GPU racks.
    let gpu_kw: f64 = site
        .nodes
        .iter()
        .filter_map(|n| n.rated_max_kw)
        .fold(0.0, |a, k| a + k);
    writeln!(
        s,
        "  gpus        {} on {} hosts ({} remote), {:.1} kW rated max",
        gpus,
        site.gpu_nodes.len(),
        remote,
        gpu_kw
    )
    .ok();
    limits(&mut s, site);
    let warnings = warnings(site);
    match &site.ha {
        Some(h) => {
            writeln!(
                s,
                "  ha          node `{}`, {} etcd endpoint(s), lease {} s, keys under {}",
                h.node,
                h.etcd_endpoints.len(),
                h.lease_ttl_s,
                h.prefix
            )
            .ok();
        }
        None => {
            writeln!(s, "  ha          none: this agent runs alone").ok();
        }
    }
    alerts_line(&mut s, site);
    grid_line(&mut s, site);
    for line in warnings {
        writeln!(s, "{line}").ok();
    }
    s
}

/// `[alerts]` (issue 18): where alerts go beyond the log.
fn alerts_line(s: &mut String, site: &Site) {
    let Some(a) = &site.alerts else {
        writeln!(s, "  alerts      log only (no [alerts] receiver)").ok();
        return;
    };
    let mut to = Vec::new();
    if let Some(u) = &a.alertmanager_url {
        to.push(format!("alertmanager {u}/api/v2/alerts"));
    }
    if let Some(u) = &a.webhook_url {
        let auth = if a.webhook_token_file.is_some() {
            " (bearer token)"
        } else {
            ""
        };
        to.push(format!("webhook {u}{auth}"));
    }
    writeln!(
        s,
        "  alerts      {}; {} and above, re-sent every {} s, queue {}, timeout {} s",
        to.join(", "),
        a.min_severity.name(),
        a.resend_interval_s,
        a.queue_capacity,
        a.timeout_s
    )
    .ok();
}

/// `[grid]` (issue 19): where grid targets come from, and price curtailment.
fn grid_line(s: &mut String, site: &Site) {
    let g = &site.grid;
    let mut from = vec!["api (with agent.http_token_file)".to_owned()];
    if let Some(o) = &g.openadr {
        from.push(format!(
            "openadr {} as VEN `{}`, polled every {} s",
            o.vtn_url, o.ven_name, o.poll_interval_s
        ));
    }
    let price = match g.hashprice_usd_per_th_day {
        Some(h) => format!(
            "price curtailment at hashprice {h} USD/TH/day (breakeven {:.0} USD/MWh at 30 J/TH)",
            crate::control::decide::grid::breakeven_usd_per_mwh(h, 30.0)
        ),
        None => "no price curtailment".to_owned(),
    };
    writeln!(
        s,
        "  grid        targets from {}; margin {:.0}%, GPU caps {}; {price}",
        from.join(", "),
        g.margin_fraction * 100.0,
        if g.allow_gpu_caps { "allowed" } else { "never" }
    )
    .ok();
}

/// A GPU or mixed rack's worst-case reserve X at its rated figures, kW: the larger of
/// its `rated_max_kw` (what the agent reserves without GPU telemetry) and its GPU hosts'
/// `gpus x gpu_max_w` (the limits NVML may be set to), since either can apply at run time.
fn rated_x_kw(site: &Site, rack: NodeIdx) -> f64 {
    let rated = site.nodes[rack].rated_max_kw.unwrap_or(0.0);
    rated.max(hosts_max_kw(site, rack))
}

/// The most a rack's GPU hosts can be set to draw, `sum(gpus x gpu_max_w)`, kW.
fn hosts_max_kw(site: &Site, rack: NodeIdx) -> f64 {
    site.gpu_nodes
        .iter()
        .filter(|g| g.rack == rack)
        .fold(0.0, |kw, g| {
            kw + f64::from(g.gpus) * g.gpu_max_w.unwrap_or(0.0) / 1000.0
        })
}

/// One node's limits and the mining they leave at the rated GPU reserves, kW.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct RatedLimits {
    /// Sustained budget B.
    pub budget_kw: f64,
    /// Never-trip ceiling H.
    pub ceiling_kw: f64,
    /// `sum(X)` of the GPU and mixed racks under the node, at their rated figures.
    pub gpu_x_kw: f64,
    /// `max(0, B - sum(X))`: what mining keeps whatever the GPUs do.
    pub guaranteed_kw: f64,
    /// The most the trough can add above it for fast miners (GPUs idle):
    /// `max(0, max(0, min(F - sum(S_min), H - sum(X))) - guaranteed)`, with the fill line
    /// `F = restore_fraction x B` and each rack's smallest sustained reserve
    /// `S_min = min(X, uplift)` (`X` for racks reserved at their limits).
    pub trough_kw: f64,
}

/// [`RatedLimits`] of node `n` on its own (the node above it may allow less).
pub(super) fn rated_limits(site: &Site, n: NodeIdx) -> RatedLimits {
    let node = &site.nodes[n];
    let (mut x, mut s_min) = (0.0, 0.0);
    for r in site.racks_under(n) {
        let rack = &site.nodes[r];
        if !matches!(rack.rack_kind(), Some(RackKind::Gpu | RackKind::Mixed)) {
            continue;
        }
        let xr = rated_x_kw(site, r);
        x += xr;
        s_min += match rack.reserve {
            GpuReserve::Limits => xr,
            GpuReserve::Measured => xr.min(uplift_kw(xr)),
        };
    }
    let (b, h) = (node.budget_kw, node.ceiling_kw);
    let fill = site.policy.restore_fraction * b;
    let guaranteed = (b - x).max(0.0);
    let allowance = (fill - s_min).min(h - x).max(0.0);
    RatedLimits {
        budget_kw: b,
        ceiling_kw: h,
        gpu_x_kw: x,
        guaranteed_kw: guaranteed,
        trough_kw: (allowance - guaranteed).max(0.0),
    }
}

/// The limits table: the site, its feeds and rows.
fn limits(s: &mut String, site: &Site) {
    let shown: Vec<NodeIdx> = (0..site.nodes.len())
        .filter(|&i| {
            matches!(
                site.nodes[i].kind,
                NodeKind::Site | NodeKind::Feed | NodeKind::Row
            )
        })
        .collect();
    let w = shown
        .iter()
        .map(|&i| site.nodes[i].id.len())
        .max()
        .unwrap_or(4)
        .max(4);
    writeln!(
        s,
        "  limits      kW at the rated GPU reserves X; mining: guaranteed = B - X, trough = what fast miners may add"
    ).ok();
    writeln!(
        s,
        "              {:<w$} {:>8} {:>8} {:>8} {:>10} {:>8}",
        "node", "B", "H", "GPU X", "guaranteed", "trough"
    )
    .ok();
    for &i in &shown {
        let l = rated_limits(site, i);
        writeln!(
            s,
            "              {:<w$} {:>8.1} {:>8.1} {:>8.1} {:>10.1} {:>8.1}",
            site.nodes[i].id, l.budget_kw, l.ceiling_kw, l.gpu_x_kw, l.guaranteed_kw, l.trough_kw
        )
        .ok();
    }
}

/// `warning:` lines: GPU racks whose rated maximum reaches their own budget, and nodes
/// whose GPU racks' rated maxima exceed the ceiling H.
pub(super) fn warnings(site: &Site) -> Vec<String> {
    let mut out = Vec::new();
    for (i, n) in site.nodes.iter().enumerate() {
        if matches!(n.rack_kind(), Some(RackKind::Gpu | RackKind::Mixed)) {
            let x = rated_x_kw(site, i);
            if x >= n.budget_kw {
                let what = if hosts_max_kw(site, i) > n.rated_max_kw.unwrap_or(0.0) {
                    "its GPU hosts' gpus x gpu_max_w"
                } else {
                    "rated_max_kw"
                };
                out.push(format!(
                    "warning: rack `{}`: its rated GPU maximum {x:.1} kW ({what}) reaches its budget B {:.1} kW: reserved at it (no GPU telemetry, or reserve = \"limits\") the rack alone is always over budget",
                    n.id, n.budget_kw
                ));
            }
        }
        let l = rated_limits(site, i);
        if l.gpu_x_kw > l.ceiling_kw {
            out.push(format!(
                "warning: {} `{}`: the rated GPU maxima under it ({:.1} kW) exceed its ceiling H {:.1} kW: with every GPU at its maximum no mining shed keeps the breaker under H, only GPU caps can",
                n.kind.name(),
                n.id,
                l.gpu_x_kw,
                l.ceiling_kw
            ));
        }
    }
    out
}
