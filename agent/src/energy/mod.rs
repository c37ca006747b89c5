//! Energy accounting (issue 20): what each tenant's racks and the site's mining drew,
//! slot by slot, from the PDUs' own energy counters (docs/energy.md).
//!
//! - [`meter`]: one meter's counter (wraps, resets, jumps, gaps) or power integral, in
//!   15-minute slots;
//! - [`EnergyBook`]: every metered node of a site, fed by the runtime's Modbus readings;
//! - [`store`]: the agent's SQLite database the slots are committed to;
//! - [`report`]: accounts (tenants, `mining`, the site), periods, peak demand, the
//!   `rackwarden energy` command and `/api/v1/energy`.

pub mod meter;
pub mod mining;
pub mod recorder;
pub mod report;
pub mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rackwarden_config::profile::{DataType, Role};
use rackwarden_config::Site;

use crate::control::Millis;
use meter::{LastReading, MeterBook, MeterSpec, Slot};

/// Where the agent's database is: `agent.database_file`, else `rackwarden.db` beside the
/// state file. `base` is the site file's directory.
pub fn database_path(site: &Site, base: &Path) -> PathBuf {
    match &site.agent.database_file {
        Some(p) => rackwarden_config::validate::resolve(base, p),
        None => rackwarden_config::validate::resolve(base, &site.agent.state_file)
            .with_file_name("rackwarden.db"),
    }
}

/// Readings further apart than this are a gap (flagged where a counter bridges it,
/// missing where power alone was read).
pub const GAP_MS: Millis = 60_000;

/// The largest value a counter register holds, times its scale: where it wraps.
fn wrap_of(t: DataType, scale: f64) -> Option<f64> {
    #[allow(clippy::cast_precision_loss)]
    let top = match t {
        DataType::U16 => f64::from(u16::MAX) + 1.0,
        DataType::U32 => f64::from(u32::MAX) + 1.0,
        DataType::U64 => u64::MAX as f64,
        DataType::I16 => f64::from(i16::MAX) + 1.0,
        DataType::I32 => f64::from(i32::MAX) + 1.0,
        // A float counter does not wrap; it has no top short of its own range.
        DataType::F32 => f64::from(f32::MAX),
        DataType::F64 => f64::MAX,
        DataType::Bool => return None,
    };
    Some(top * scale.abs())
}

/// One meter of one node.
#[derive(Debug)]
struct Meter {
    node: usize,
    k: u32,
    device: usize,
    /// The point giving kW (the node's meter binding).
    power_point: String,
    /// The device's energy counter point, if its profile has one.
    energy_point: Option<String>,
    book: MeterBook,
}

/// Every metered node's energy, fed by the Modbus readings as they come.
#[derive(Debug)]
pub struct EnergyBook {
    node_ids: Vec<String>,
    meters: Vec<Meter>,
    /// Meters by device index.
    by_device: Vec<Vec<usize>>,
}

impl EnergyBook {
    /// The book of `site`, resuming from `last` (the database's last readings, by node
    /// id and meter index) so a counter bridges the agent's downtime.
    pub fn new(site: &Site, last: &HashMap<(String, u32), LastReading>) -> EnergyBook {
        let mut meters = Vec::new();
        let mut by_device = vec![Vec::new(); site.modbus_devices.len()];
        for (n, node) in site.nodes.iter().enumerate() {
            for (k, mr) in node.meters.iter().enumerate() {
                let k = u32::try_from(k).unwrap_or(u32::MAX);
                let profile = &site.modbus_devices[mr.device].profile;
                let energy = profile.role(Role::EnergyKwh);
                let spec = MeterSpec {
                    wrap_kwh: energy.and_then(|p| wrap_of(p.data_type, p.scale)),
                    max_kw: node.rating_kw,
                    // A few missed polls are not a gap: a minute, or three stale limits.
                    stale_ms: site.policy.meter_stale_ms.saturating_mul(3).max(GAP_MS),
                };
                by_device[mr.device].push(meters.len());
                meters.push(Meter {
                    node: n,
                    k,
                    device: mr.device,
                    power_point: mr.point.clone(),
                    energy_point: energy.map(|p| p.name.clone()),
                    book: MeterBook::new(spec, last.get(&(node.id.clone(), k)).copied()),
                });
            }
        }
        EnergyBook {
            node_ids: site.nodes.iter().map(|n| n.id.clone()).collect(),
            meters,
            by_device,
        }
    }

    /// Takes a reading of Modbus device `device` at `t`: `get(point, index)` reads a
    /// point of it (`None`: it did not read).
    pub fn observe_device(
        &mut self,
        device: usize,
        t: Millis,
        get: impl Fn(&str, u32) -> Option<f64>,
    ) {
        let Some(list) = self.by_device.get(device) else {
            return;
        };
        for &m in list {
            let meter = &mut self.meters[m];
            debug_assert_eq!(meter.device, device);
            let kw = get(&meter.power_point, 1);
            let counter = meter.energy_point.as_deref().and_then(|p| get(p, 1));
            meter.book.observe(t, kw, counter);
        }
    }

    /// What the book accumulated since the last call, summed per node, and each meter's
    /// last reading: what [`store::Store::commit`] takes.
    pub fn take(&mut self) -> (Vec<store::SlotRow>, Vec<(String, u32, LastReading)>) {
        let mut per: HashMap<(usize, Millis), Slot> = HashMap::new();
        let mut last = Vec::new();
        for m in &mut self.meters {
            for (start, s) in m.book.take() {
                per.entry((m.node, start)).or_default().add(&s);
            }
            if let Some(l) = m.book.last() {
                last.push((self.node_ids[m.node].clone(), m.k, l));
            }
        }
        let mut slots: Vec<store::SlotRow> = per
            .into_iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|((n, start), s)| (self.node_ids[n].clone(), start, s))
            .collect();
        slots.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        (slots, last)
    }

    /// Whether any node has a meter (a site without meters has nothing to account).
    pub fn is_empty(&self) -> bool {
        self.meters.is_empty()
    }
}
