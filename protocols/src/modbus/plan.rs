//! Read planning: which requests read a whole register map, and how their answers become
//! point values. Pure functions, no I/O, so the fuzz target and tests drive them directly.
//!
//! Points (with their `count` repeats) are grouped by table and sorted by address;
//! contiguous or overlapping ones share one request, and a request never spans more than
//! the device's `max_read_registers` (at most 125, the protocol's limit for registers) or
//! 2000 bits (the limit for coils and discrete inputs). Gaps are never read through: some
//! devices (APC InRow) answer a read that touches an undefined register with an exception.
//! A single value is never split across requests.

use std::sync::Arc;

use rackwarden_config::profile::{Profile, RegisterKind, Role};

use super::decode::{self, DecodeError};

/// The protocol's cap on bits per read (FC01/FC02).
pub const MAX_READ_BITS: u32 = 2000;
/// The protocol's cap on registers per read (FC03/FC04).
pub const MAX_READ_REGISTERS: u32 = 125;

/// One point instance inside a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Index into `Profile::points`.
    pub point: usize,
    /// 1-based repeat index.
    pub index: u32,
    /// Wire address of the instance.
    pub address: u16,
    /// Registers (or bits) it spans.
    pub width: u16,
}

/// One read request: `count` registers or bits of `register` from `start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub register: RegisterKind,
    pub start: u16,
    pub count: u16,
    pub items: Vec<Item>,
}

/// The answer to a block read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockData {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

/// One decoded point instance. Names and units are shared with the device's label
/// table (`Arc<str>`): a reading of 150 points then costs no string allocation.
#[derive(Debug, Clone, PartialEq)]
pub struct PointValue {
    pub point: Arc<str>,
    pub role: Option<Role>,
    /// 1-based repeat index (1 for points without repeats).
    pub index: u32,
    /// The engineering value, or why there is none (a NaN from the device, a short
    /// answer). Never a made-up zero.
    pub value: Result<f64, DecodeError>,
    pub unit: Option<Arc<str>>,
}

impl PointValue {
    /// `name` or `name[index]` for repeated points.
    pub fn label(&self, repeated: bool) -> String {
        if repeated {
            format!("{}[{}]", self.point, self.index)
        } else {
            self.point.to_string()
        }
    }
}

/// Point names and units of a profile, shared by every reading of a device.
#[derive(Debug, Clone)]
pub struct Labels {
    names: Vec<Arc<str>>,
    units: Vec<Option<Arc<str>>>,
}

impl Labels {
    pub fn new(profile: &Profile) -> Labels {
        Labels {
            names: profile
                .points
                .iter()
                .map(|p| Arc::from(p.name.as_str()))
                .collect(),
            units: profile
                .points
                .iter()
                .map(|p| p.unit.as_deref().map(Arc::from))
                .collect(),
        }
    }
}

/// Point instances a plan reads (the capacity a reading needs).
pub fn instance_count(blocks: &[Block]) -> usize {
    blocks.iter().map(|b| b.items.len()).sum()
}

/// Plans the reads of every point of `profile`. Points outside the 16-bit address space
/// (which `Profile::check` refuses) are skipped.
pub fn plan_reads(profile: &Profile, max_read_registers: u32) -> Vec<Block> {
    let reg_limit = max_read_registers.clamp(1, MAX_READ_REGISTERS);
    let mut items: Vec<(RegisterKind, Item)> = Vec::new();
    for (pi, p) in profile.points.iter().enumerate() {
        let width = if p.register.is_bit() {
            1
        } else {
            p.data_type.words()
        };
        for index in 1..=p.count {
            let Some(addr) = p.address_of(index) else {
                continue;
            };
            let (Ok(address), Ok(w)) = (u16::try_from(addr), u16::try_from(width)) else {
                continue;
            };
            if u32::from(address) + u32::from(w) > 65_536 {
                continue;
            }
            items.push((
                p.register,
                Item {
                    point: pi,
                    index,
                    address,
                    width: w,
                },
            ));
        }
    }
    items.sort_by_key(|(k, it)| (table_rank(*k), it.address, it.width));
    let mut blocks: Vec<Block> = Vec::new();
    for (kind, item) in items {
        let limit = if kind.is_bit() {
            MAX_READ_BITS
        } else {
            reg_limit
        };
        let item_end = u32::from(item.address) + u32::from(item.width);
        if let Some(b) = blocks.last_mut() {
            let start = u32::from(b.start);
            let end = start + u32::from(b.count);
            let new_end = end.max(item_end);
            if b.register == kind && u32::from(item.address) <= end && new_end - start <= limit {
                // new_end - start <= limit <= 2000, so it fits in u16.
                b.count = u16::try_from(new_end - start).unwrap_or(b.count);
                b.items.push(item);
                continue;
            }
        }
        blocks.push(Block {
            register: kind,
            start: item.address,
            count: item.width,
            items: vec![item],
        });
    }
    blocks
}

fn table_rank(k: RegisterKind) -> u8 {
    match k {
        RegisterKind::Holding => 0,
        RegisterKind::Input => 1,
        RegisterKind::Coil => 2,
        RegisterKind::Discrete => 3,
    }
}

/// Turns a block's answer into point values. A short or mismatched answer yields errors
/// for the points it does not cover, never a panic.
pub fn extract(profile: &Profile, block: &Block, data: &BlockData) -> Vec<PointValue> {
    let mut out = Vec::with_capacity(block.items.len());
    extract_into(profile, &Labels::new(profile), block, data, &mut out);
    out
}

/// [`extract`] appending to `out`, with the device's shared labels.
pub fn extract_into(
    profile: &Profile,
    labels: &Labels,
    block: &Block,
    data: &BlockData,
    out: &mut Vec<PointValue>,
) {
    out.extend(block.items.iter().filter_map(|it| {
        let p = profile.points.get(it.point)?;
        let off = usize::from(it.address.checked_sub(block.start)?);
        let width = usize::from(it.width);
        let value = match data {
            BlockData::Bits(bits) => match bits.get(off) {
                Some(b) => Ok(decode::decode_bit_point(*b, p)),
                None => Err(DecodeError::WrongLength {
                    data_type: p.data_type,
                    expected: off + 1,
                    got: bits.len(),
                }),
            },
            BlockData::Words(words) => match words.get(off..off + width) {
                Some(w) => decode::decode_point(w, p),
                None => Err(DecodeError::WrongLength {
                    data_type: p.data_type,
                    expected: off + width,
                    got: words.len(),
                }),
            },
        };
        Some(PointValue {
            point: labels.names.get(it.point)?.clone(),
            role: p.role,
            index: it.index,
            value,
            unit: labels.units.get(it.point)?.clone(),
        })
    }));
}

/// A short description of a block for error messages: its first point and range.
pub fn describe(profile: &Profile, block: &Block) -> String {
    let first = block
        .items
        .first()
        .and_then(|it| profile.points.get(it.point).map(|p| (p, it.index)));
    let name = match first {
        Some((p, i)) if p.count > 1 => format!("{}[{i}]", p.name),
        Some((p, _)) => p.name.clone(),
        None => "?".to_owned(),
    };
    let more = block.items.len().saturating_sub(1);
    let table = format!("{:?}", block.register).to_lowercase();
    let end = u32::from(block.start) + u32::from(block.count) - 1;
    if more > 0 {
        format!("{name} (+{more} more, {table} {}..={end})", block.start)
    } else {
        format!("{name} ({table} {}..={end})", block.start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rackwarden_config::profile::builtin;

    #[test]
    fn generic_pdu_coalesces_and_splits() {
        let p = builtin("generic-pdu").unwrap();
        let blocks = plan_reads(&p, 125);
        // holding 0..10 (inlet, energy, 3 currents, 3 voltages), holding 100..148, coils.
        let summary: Vec<_> = blocks
            .iter()
            .map(|b| (b.register, b.start, b.count))
            .collect();
        assert_eq!(
            summary,
            vec![
                (RegisterKind::Holding, 0, 10),
                (RegisterKind::Holding, 100, 48),
                (RegisterKind::Coil, 0, 48),
            ]
        );
        // A lower device maximum splits the outlet block without splitting a value.
        let blocks = plan_reads(&p, 20);
        let hold: Vec<_> = blocks
            .iter()
            .filter(|b| b.register == RegisterKind::Holding)
            .map(|b| (b.start, b.count))
            .collect();
        assert_eq!(hold, vec![(0, 10), (100, 20), (120, 20), (140, 8)]);
        // u32 values with a limit of 3: blocks of whole values only.
        let blocks = plan_reads(&p, 3);
        assert!(blocks
            .iter()
            .filter(|b| !b.register.is_bit())
            .all(|b| b.count <= 3));
        assert_eq!((blocks[0].start, blocks[0].count), (0, 2));
        assert_eq!((blocks[1].start, blocks[1].count), (2, 3));
    }

    #[test]
    fn gaps_are_not_read_through() {
        let p = builtin("generic-cooling").unwrap();
        let blocks = plan_reads(&p, 125);
        assert!(blocks
            .iter()
            .any(|b| b.register == RegisterKind::Input && b.start == 0 && b.count == 4));
        assert!(blocks
            .iter()
            .any(|b| b.register == RegisterKind::Discrete && b.count == 3));
    }

    #[test]
    fn extract_decodes_and_reports_short_answers() {
        let p = builtin("generic-pdu").unwrap();
        let blocks = plan_reads(&p, 125);
        let mut words = vec![0u16; 10];
        words[1] = 12_345; // inlet power 12.345 kW
        words[4] = 1_600; // phase current 16.00 A
        let vals = extract(&p, &blocks[0], &BlockData::Words(words));
        let inlet = vals.iter().find(|v| &*v.point == "inlet_power").unwrap();
        assert!((inlet.value.clone().unwrap() - 12.345).abs() < 1e-9);
        let cur = vals
            .iter()
            .find(|v| &*v.point == "phase_current" && v.index == 1)
            .unwrap();
        assert!((cur.value.clone().unwrap() - 16.0).abs() < 1e-9);
        let short = extract(&p, &blocks[0], &BlockData::Words(vec![0; 3]));
        assert!(short.iter().any(|v| v.value.is_err()));
        assert!(short
            .iter()
            .find(|v| &*v.point == "inlet_power")
            .unwrap()
            .value
            .is_ok());
        assert!(describe(&p, &blocks[0]).contains("inlet_power"));
    }
}
