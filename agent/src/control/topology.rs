//! Per-site indices built once from the [`Site`] and reused every tick (the caller keeps
//! one next to the site and rebuilds it when the site file is reloaded).

use rackwarden_config::{NodeIdx, Site};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Precomputed paths and membership lists of a site.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// Per node: itself and every node above it (a dual-corded rack reaches both feeds).
    pub ancestors: Vec<Vec<NodeIdx>>,
    /// Nodes deepest first: sheds at a rack are seen by its row before the row decides.
    pub bottom_up: Vec<NodeIdx>,
    /// Per node: the miners at or below it, in shed order (least efficient first, ties
    /// in a seeded order).
    pub miners_under: Vec<Vec<usize>>,
    /// Per node: the GPU nodes at or below it.
    pub gpus_under: Vec<Vec<usize>>,
    /// Per node: the racks at or below it.
    pub racks_under: Vec<Vec<NodeIdx>>,
    /// Per rack (indexed by node): its miners and GPU nodes.
    pub rack_miners: Vec<Vec<usize>>,
    pub rack_gpus: Vec<Vec<usize>>,
    /// Per node: the cooling zone of a rack.
    pub rack_zone: Vec<Option<usize>>,
    /// Per zone: its miners in shed order, and its GPU nodes.
    pub zone_miners: Vec<Vec<usize>>,
    pub zone_gpus: Vec<Vec<usize>>,
    /// Per miner: its PDU outlet may be switched (outlet bound, policy allows it, the
    /// PDU is a control device with `outlet_switch` allowlisted).
    pub outlet_ok: Vec<bool>,
    /// Per miner: position in the site-wide shed order.
    pub shed_rank: Vec<usize>,
    /// Fingerprint of the site this was built for.
    pub sizes: (usize, usize, usize, usize),
}

impl Topology {
    pub fn new(site: &Site) -> Topology {
        let n = site.nodes.len();
        let ancestors: Vec<Vec<NodeIdx>> = (0..n).map(|i| site.ancestors(i)).collect();
        // Depth: longest path to the site.
        let mut depth = vec![0usize; n];
        for _ in 0..n {
            let mut changed = false;
            for i in 0..n {
                let d = site.nodes[i]
                    .parents
                    .iter()
                    .map(|&p| depth.get(p).copied().unwrap_or(0) + 1)
                    .max()
                    .unwrap_or(0);
                if d != depth[i] && d < n {
                    depth[i] = d;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        let mut bottom_up: Vec<NodeIdx> = (0..n).collect();
        bottom_up.sort_by(|a, b| depth[*b].cmp(&depth[*a]).then(a.cmp(b)));

        // Shed order: least efficient (highest J/TH) first; unknown efficiency counts as
        // the least efficient (nothing says it is worth keeping). Ties: seeded keys.
        let mut rng = ChaCha8Rng::seed_from_u64(site.policy.seed);
        let keys: Vec<u64> = site.miners.iter().map(|_| rng.next_u64()).collect();
        let mut order: Vec<usize> = (0..site.miners.len()).collect();
        order.sort_by(|&a, &b| {
            let ea = site.miners[a].efficiency_j_th.unwrap_or(f64::INFINITY);
            let eb = site.miners[b].efficiency_j_th.unwrap_or(f64::INFINITY);
            eb.total_cmp(&ea).then(keys[a].cmp(&keys[b]))
        });
        let mut shed_rank = vec![0; site.miners.len()];
        for (r, &m) in order.iter().enumerate() {
            shed_rank[m] = r;
        }

        let mut rack_zone = vec![None; n];
        for (z, zone) in site.zones.iter().enumerate() {
            for &r in &zone.racks {
                if let Some(slot) = rack_zone.get_mut(r) {
                    *slot = Some(z);
                }
            }
        }
        let mut miners_under = vec![Vec::new(); n];
        let mut rack_miners = vec![Vec::new(); n];
        let mut zone_miners = vec![Vec::new(); site.zones.len()];
        for &m in &order {
            let rack = site.miners[m].rack;
            if rack >= n {
                continue;
            }
            rack_miners[rack].push(m);
            for &a in &ancestors[rack] {
                miners_under[a].push(m);
            }
            if let Some(z) = rack_zone[rack] {
                zone_miners[z].push(m);
            }
        }
        let mut gpus_under = vec![Vec::new(); n];
        let mut rack_gpus = vec![Vec::new(); n];
        let mut zone_gpus = vec![Vec::new(); site.zones.len()];
        for (g, gn) in site.gpu_nodes.iter().enumerate() {
            if gn.rack >= n {
                continue;
            }
            rack_gpus[gn.rack].push(g);
            for &a in &ancestors[gn.rack] {
                gpus_under[a].push(g);
            }
            if let Some(z) = rack_zone[gn.rack] {
                zone_gpus[z].push(g);
            }
        }
        let mut racks_under = vec![Vec::new(); n];
        for (r, node) in site.nodes.iter().enumerate() {
            if node.is_rack() {
                for &a in &ancestors[r] {
                    racks_under[a].push(r);
                }
            }
        }
        let outlet_ok = site
            .miners
            .iter()
            .map(|m| {
                site.policy.allow_outlet_off
                    && m.outlet.as_ref().is_some_and(|o| {
                        site.modbus_devices
                            .get(o.device)
                            .is_some_and(|d| d.may_write("outlet_switch"))
                    })
            })
            .collect();
        Topology {
            ancestors,
            bottom_up,
            miners_under,
            gpus_under,
            racks_under,
            rack_miners,
            rack_gpus,
            rack_zone,
            zone_miners,
            zone_gpus,
            outlet_ok,
            shed_rank,
            sizes: Self::sizes_of(site),
        }
    }

    fn sizes_of(site: &Site) -> (usize, usize, usize, usize) {
        (
            site.nodes.len(),
            site.miners.len(),
            site.gpu_nodes.len(),
            site.zones.len(),
        )
    }

    /// Whether this topology was built for a site of `site`'s shape.
    pub fn fits(&self, site: &Site) -> bool {
        self.sizes == Self::sizes_of(site)
    }
}
