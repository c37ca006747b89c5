//! `rackwarden check-config`: the same load and validation the agent runs at start-up,
//! then a one-screen summary.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use rackwarden_config::{GpuSource, NodeKind, RackKind, Redundancy, Site};

use super::EX_CONFIG;

pub fn run(path: &Path) -> ExitCode {
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
pub fn summary(site: &Site) -> String {
    let mut s = String::new();
    let count = |k: NodeKind| site.nodes.iter().filter(|n| n.kind == k).count();
    let _ = writeln!(
        s,
        "site {} ({}): valid",
        site.id,
        site.name.as_deref().unwrap_or("unnamed")
    );
    let _ = writeln!(
        s,
        "  budget      {:.1} kW (site), derate {:.2}",
        site.site_budget_kw(),
        site.derate
    );
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
    let _ = writeln!(
        s,
        "  feeds       {}: {}{more}",
        feeds.len(),
        feeds[..shown].join("; ")
    );
    let _ = writeln!(s, "  rows        {}", count(NodeKind::Row));
    let _ = writeln!(
        s,
        "  racks       {} gpu, {} mining, {} mixed",
        count(NodeKind::Rack(RackKind::Gpu)),
        count(NodeKind::Rack(RackKind::Mining)),
        count(NodeKind::Rack(RackKind::Mixed))
    );
    let units: usize = site.zones.iter().map(|z| z.units.len()).sum();
    let no_red = site
        .zones
        .iter()
        .filter(|z| z.redundancy == Redundancy::None)
        .count();
    let _ = writeln!(
        s,
        "  zones       {} ({} cooling units, {} without redundancy)",
        site.zones.len(),
        units,
        no_red
    );
    let control = site.modbus_devices.iter().filter(|d| d.control).count();
    let _ = writeln!(
        s,
        "  devices     {} Modbus ({} with control = true)",
        site.modbus_devices.len(),
        control
    );
    let mut fw: Vec<(&str, usize)> = Vec::new();
    for m in &site.miners {
        match fw.iter_mut().find(|(n, _)| *n == m.firmware.name()) {
            Some(e) => e.1 += 1,
            None => fw.push((m.firmware.name(), 1)),
        }
    }
    let nominal_kw: f64 = site.miners.iter().map(|m| m.nominal_w).sum::<f64>() / 1000.0;
    let fw: Vec<String> = fw.iter().map(|(n, c)| format!("{n} {c}")).collect();
    let _ = writeln!(
        s,
        "  miners      {} ({:.1} kW nominal): {}",
        site.miners.len(),
        nominal_kw,
        fw.join(", ")
    );
    let gpus: u32 = site.gpu_nodes.iter().map(|g| g.gpus).sum();
    let remote = site
        .gpu_nodes
        .iter()
        .filter(|g| g.source == GpuSource::Remote)
        .count();
    let gpu_kw: f64 = site.nodes.iter().filter_map(|n| n.rated_max_kw).sum();
    let _ = writeln!(
        s,
        "  gpus        {} on {} hosts ({} remote), {:.1} kW rated max",
        gpus,
        site.gpu_nodes.len(),
        remote,
        gpu_kw
    );
    match &site.ha {
        Some(h) => {
            let _ = writeln!(
                s,
                "  ha          node `{}`, {} etcd endpoint(s), lease {} s, keys under {}",
                h.node,
                h.etcd_endpoints.len(),
                h.lease_ttl_s,
                h.prefix
            );
        }
        None => {
            let _ = writeln!(s, "  ha          none: this agent runs alone");
        }
    }
    s
}
