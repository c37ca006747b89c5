//! The inputs of one decision: the latest reading of every source, each stamped with the
//! time it was taken, plus the operator's overrides.
//!
//! Indexed like the site model ([`rackwarden_config::Site`]): `meters[i]` is node `i`'s
//! meter, `miners[i]` / `outlets[i]` miner `i`, `gpus[i]` GPU node `i`, `units[z][u]` unit
//! `u` of zone `z`. `None` means "never read"; a reading older than its class's staleness
//! limit (policy) is stale. Vectors shorter than the site are read as `None`, so a
//! partially filled snapshot is safe, never free capacity. A node with several meters
//! gets one reading: the runtime sums them (and takes the oldest `taken_at`).

use std::collections::BTreeSet;

use rackwarden_config::{NodeIdx, Site};

use super::Millis;

/// A node meter: power over the last sampling interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeterReading {
    /// Latest power in kW.
    pub kw: f64,
    /// Highest power seen since the previous tick, kW (the safety net's input).
    pub max_kw: f64,
    pub taken_at: Millis,
}

impl MeterReading {
    /// A steady reading (`max_kw = kw`).
    pub fn steady(kw: f64, taken_at: Millis) -> MeterReading {
        MeterReading {
            kw,
            max_kw: kw,
            taken_at,
        }
    }
}

/// What a miner reports it is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinerMode {
    Mining,
    Sleeping,
    Paused,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinerReading {
    pub power_w: f64,
    pub mode: MinerMode,
    /// The power target the firmware reports, where it has one.
    pub power_target_w: Option<f64>,
    pub taken_at: Millis,
}

/// The PDU outlet feeding a miner, read back from the PDU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutletReading {
    pub on: bool,
    pub taken_at: Millis,
}

/// One GPU's power limits as NVML reports them (watts).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuLimits {
    pub enforced_w: f64,
    pub min_w: f64,
    pub max_w: f64,
    pub default_w: f64,
}

/// A GPU host: its power (1 s sampling) and its GPUs' limits (10 s sampling), each with
/// its own time stamp because they go stale at different ages.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuNodeReading {
    /// Power of all its GPUs, watts.
    pub power_w: f64,
    pub power_taken_at: Millis,
    /// False when NVML is absent or the limit calls are unsupported: the rack is then
    /// reserved at its rated maximum and the GPU-cap lever is off for it.
    pub nvml_available: bool,
    pub gpus: Vec<GpuLimits>,
    pub limits_taken_at: Millis,
}

/// What a cooling unit reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitState {
    Running,
    Alarmed,
    Maintenance,
    Offline,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnitReading {
    pub state: UnitState,
    /// Capacity the unit reports; the configured capacity when `None`.
    pub capacity_kw: Option<f64>,
    pub taken_at: Millis,
}

/// Operator overrides, fed by the HTTP layer. Indices as in the site.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// Cooling units `(zone, unit)` an operator put in maintenance (not available).
    pub units_in_maintenance: BTreeSet<(usize, usize)>,
    /// Miners that must stay curtailed (slept, or outlet off); never restored. They
    /// also do not hold the start-up gate (a dead miner can be taken out this way).
    pub curtailed_miners: BTreeSet<usize>,
    /// Racks whose miners must all stay curtailed.
    pub curtailed_racks: BTreeSet<NodeIdx>,
    /// Miners exempt from the anti-cycling limits (the operator override CONTROL.md asks for).
    pub cycling_exempt: BTreeSet<usize>,
}

/// The latest reading of every source.
#[derive(Debug, Default, PartialEq)]
pub struct Snapshot {
    pub meters: Vec<Option<MeterReading>>,
    pub miners: Vec<Option<MinerReading>>,
    pub outlets: Vec<Option<OutletReading>>,
    pub gpus: Vec<Option<GpuNodeReading>>,
    pub units: Vec<Vec<Option<UnitReading>>>,
    pub overrides: Overrides,
    /// Per miner: no driver could be built for it (credentials missing, a firmware the
    /// build cannot drive). `decide` sends it no command, counts it at nameplate, and
    /// uses its outlet where one is configured. Empty: every miner has its driver.
    pub undriveable: Vec<bool>,
    /// Grid signals in force (`[grid]`): a site import limit, a power price.
    pub grid: GridInput,
}

/// The grid signals a decision obeys, resolved by the runtime from its sources (the
/// API, an OpenADR VTN): the strictest limit in force and the current price.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GridInput {
    /// Site import at most this, kW.
    pub limit_kw: Option<f64>,
    /// Where the limit comes from (`openadr:event-7`), for alerts.
    pub limit_from: String,
    /// The power price, USD per MWh.
    pub price_usd_per_mwh: Option<f64>,
}

impl Clone for Snapshot {
    fn clone(&self) -> Self {
        Snapshot {
            meters: self.meters.clone(),
            miners: self.miners.clone(),
            outlets: self.outlets.clone(),
            gpus: self.gpus.clone(),
            units: self.units.clone(),
            overrides: self.overrides.clone(),
            undriveable: self.undriveable.clone(),
            grid: self.grid.clone(),
        }
    }

    /// Field by field, so the runtime's per-tick copy reuses its buffers (30,000 miner
    /// readings at 100 MW) instead of allocating them anew every tick.
    fn clone_from(&mut self, src: &Self) {
        self.meters.clone_from(&src.meters);
        self.miners.clone_from(&src.miners);
        self.outlets.clone_from(&src.outlets);
        self.gpus.clone_from(&src.gpus);
        self.units.clone_from(&src.units);
        self.overrides.clone_from(&src.overrides);
        self.undriveable.clone_from(&src.undriveable);
        self.grid.clone_from(&src.grid);
    }
}

impl Snapshot {
    /// A snapshot sized for `site` with nothing read yet.
    pub fn empty(site: &Site) -> Snapshot {
        Snapshot {
            meters: vec![None; site.nodes.len()],
            miners: vec![None; site.miners.len()],
            outlets: vec![None; site.miners.len()],
            gpus: vec![None; site.gpu_nodes.len()],
            units: site
                .zones
                .iter()
                .map(|z| vec![None; z.units.len()])
                .collect(),
            overrides: Overrides::default(),
            undriveable: Vec::new(),
            grid: GridInput::default(),
        }
    }

    /// Whether miner `miner` has no driver (see [`Snapshot::undriveable`]).
    pub fn undriveable(&self, miner: usize) -> bool {
        self.undriveable.get(miner).copied().unwrap_or(false)
    }

    pub fn meter(&self, node: NodeIdx) -> Option<&MeterReading> {
        self.meters.get(node).and_then(Option::as_ref)
    }

    pub fn miner(&self, miner: usize) -> Option<&MinerReading> {
        self.miners.get(miner).and_then(Option::as_ref)
    }

    pub fn outlet(&self, miner: usize) -> Option<&OutletReading> {
        self.outlets.get(miner).and_then(Option::as_ref)
    }

    pub fn gpu(&self, gpu_node: usize) -> Option<&GpuNodeReading> {
        self.gpus.get(gpu_node).and_then(Option::as_ref)
    }

    pub fn unit(&self, zone: usize, unit: usize) -> Option<&UnitReading> {
        self.units
            .get(zone)
            .and_then(|z| z.get(unit))
            .and_then(Option::as_ref)
    }

    /// Sets node `node`'s meter to a steady reading.
    pub fn set_meter(&mut self, node: NodeIdx, kw: f64, taken_at: Millis) -> &mut Self {
        if let Some(slot) = self.meters.get_mut(node) {
            *slot = Some(MeterReading::steady(kw, taken_at));
        }
        self
    }

    /// Sets miner `miner`'s reading.
    pub fn set_miner(
        &mut self,
        miner: usize,
        power_w: f64,
        mode: MinerMode,
        taken_at: Millis,
    ) -> &mut Self {
        if let Some(slot) = self.miners.get_mut(miner) {
            *slot = Some(MinerReading {
                power_w,
                mode,
                power_target_w: None,
                taken_at,
            });
        }
        self
    }

    pub fn set_outlet(&mut self, miner: usize, on: bool, taken_at: Millis) -> &mut Self {
        if let Some(slot) = self.outlets.get_mut(miner) {
            *slot = Some(OutletReading { on, taken_at });
        }
        self
    }

    /// Sets GPU node `gpu_node`'s reading: `count` GPUs, all with the same limits.
    #[allow(clippy::too_many_arguments)]
    pub fn set_gpu_node(
        &mut self,
        gpu_node: usize,
        power_w: f64,
        count: usize,
        limits: GpuLimits,
        nvml_available: bool,
        taken_at: Millis,
    ) -> &mut Self {
        if let Some(slot) = self.gpus.get_mut(gpu_node) {
            *slot = Some(GpuNodeReading {
                power_w,
                power_taken_at: taken_at,
                nvml_available,
                gpus: vec![limits; count],
                limits_taken_at: taken_at,
            });
        }
        self
    }

    pub fn set_unit(
        &mut self,
        zone: usize,
        unit: usize,
        state: UnitState,
        taken_at: Millis,
    ) -> &mut Self {
        if let Some(slot) = self.units.get_mut(zone).and_then(|z| z.get_mut(unit)) {
            *slot = Some(UnitReading {
                state,
                capacity_kw: None,
                taken_at,
            });
        }
        self
    }
}
