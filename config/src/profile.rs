//! Device profiles: register maps as data.
//!
//! Field names follow Telegraf's Modbus input so that operators recognise them:
//! `register`, `address` (0-based wire address), `type`, `byte_order`, `scale`, `offset`,
//! `unit`, `writable`. A `role` ties a point to what the controller needs (inlet power,
//! outlet switch, unit running...). `count` and `stride` repeat a point for outlets or
//! phases: instance `i` (1-based) sits at `address + (i - 1) x stride`.
//!
//! Built-in profiles live in `config/profiles/*.toml` and are compiled in; a site can
//! also name a profile file of its own.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One register map.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    pub kind: DeviceKind,
    /// Where the map comes from (vendor document, section).
    #[serde(default)]
    pub source: Option<String>,
    /// False until someone has checked the map against real hardware.
    #[serde(default)]
    pub verified: bool,
    /// A device-specific cap below the protocol's 125 registers per read.
    #[serde(default)]
    pub max_read_registers: Option<u32>,
    #[serde(default)]
    pub points: Vec<Point>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    Pdu,
    Meter,
    Cooling,
}

/// The Modbus table a point lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterKind {
    Holding,
    Input,
    Coil,
    Discrete,
}

impl RegisterKind {
    pub fn is_bit(self) -> bool {
        matches!(self, RegisterKind::Coil | RegisterKind::Discrete)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    U16,
    I16,
    U32,
    I32,
    U64,
    F32,
    F64,
    Bool,
}

impl DataType {
    /// 16-bit registers the type spans (1 for bit tables).
    pub fn words(self) -> u32 {
        match self {
            DataType::U16 | DataType::I16 | DataType::Bool => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::F64 => 4,
        }
    }
}

/// Byte order of a multi-register value, as Telegraf spells it: `ABCD` is big-endian with
/// the high word first, `CDAB` swaps words, `BADC` swaps bytes, `DCBA` is little-endian.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum ByteOrder {
    #[default]
    #[serde(rename = "ABCD")]
    Abcd,
    #[serde(rename = "CDAB")]
    Cdab,
    #[serde(rename = "BADC")]
    Badc,
    #[serde(rename = "DCBA")]
    Dcba,
}

/// What a point means to the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    InletPowerKw,
    EnergyKwh,
    PhaseCurrentA,
    PhaseVoltageV,
    OutletPowerKw,
    OutletState,
    OutletSwitch,
    UnitRunning,
    UnitAlarm,
    UnitMaintenance,
    UnitOnOff,
    CapacityKw,
    OutputKw,
    SupplyTempC,
    ReturnTempC,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::InletPowerKw => "inlet_power_kw",
            Role::EnergyKwh => "energy_kwh",
            Role::PhaseCurrentA => "phase_current_a",
            Role::PhaseVoltageV => "phase_voltage_v",
            Role::OutletPowerKw => "outlet_power_kw",
            Role::OutletState => "outlet_state",
            Role::OutletSwitch => "outlet_switch",
            Role::UnitRunning => "unit_running",
            Role::UnitAlarm => "unit_alarm",
            Role::UnitMaintenance => "unit_maintenance",
            Role::UnitOnOff => "unit_on_off",
            Role::CapacityKw => "capacity_kw",
            Role::OutputKw => "output_kw",
            Role::SupplyTempC => "supply_temp_c",
            Role::ReturnTempC => "return_temp_c",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One point (or `count` repeated points) of a register map.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Point {
    pub name: String,
    #[serde(default)]
    pub role: Option<Role>,
    pub register: RegisterKind,
    /// 0-based wire address (Modicon 40001 is address 0).
    pub address: u32,
    #[serde(rename = "type")]
    pub data_type: DataType,
    #[serde(default)]
    pub byte_order: ByteOrder,
    /// Engineering value = raw x scale + offset.
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub writable: bool,
    /// Repeat count (outlets, phases); 1 when absent.
    #[serde(default = "one_u32")]
    pub count: u32,
    /// Address step between repeats; the type's width when absent.
    #[serde(default)]
    pub stride: Option<u32>,
    /// Enumerated states read as a flag: when not empty, the point reads 1 when the raw
    /// value (integer register or bit) is one of these and 0 otherwise; scale and offset
    /// do not apply. E.g. Liebert "System Status" `true_when = [16, 32]` is the alarm
    /// flag; STULZ "BMS stop" `true_when = [0]` reads 1 while the unit may run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub true_when: Vec<i64>,
}

fn one() -> f64 {
    1.0
}

fn one_u32() -> u32 {
    1
}

impl Point {
    /// Address step between instances.
    pub fn stride(&self) -> u32 {
        self.stride.unwrap_or_else(|| self.data_type.words())
    }

    /// Wire address of instance `index` (1-based), if it exists.
    pub fn address_of(&self, index: u32) -> Option<u32> {
        if index == 0 || index > self.count {
            return None;
        }
        Some(self.address + (index - 1) * self.stride())
    }

    /// One past the last register the point (with all its repeats) touches.
    pub fn end_address(&self) -> u64 {
        let last = u64::from(self.address)
            + u64::from(self.count.saturating_sub(1)) * u64::from(self.stride());
        let width = if self.register.is_bit() {
            1
        } else {
            u64::from(self.data_type.words())
        };
        last + width
    }
}

impl Profile {
    /// Finds a point by its name or its role.
    pub fn point(&self, name_or_role: &str) -> Option<&Point> {
        self.points
            .iter()
            .find(|p| p.name == name_or_role)
            .or_else(|| {
                self.points
                    .iter()
                    .find(|p| p.role.map(Role::name) == Some(name_or_role))
            })
    }

    /// Finds the point that plays `role`.
    pub fn role(&self, role: Role) -> Option<&Point> {
        self.points.iter().find(|p| p.role == Some(role))
    }

    /// Registers one read may span on this device.
    pub fn max_read(&self) -> u32 {
        self.max_read_registers.unwrap_or(125).min(125)
    }

    /// Parses a profile file's text.
    pub fn from_toml(text: &str) -> Result<Profile, toml::de::Error> {
        toml::from_str(text)
    }

    /// Structural checks: address ranges, types that fit their table, repeats.
    /// Returns `(path within the profile, message)` pairs.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, p) in self.points.iter().enumerate() {
            let path = format!("points[{i}]");
            if !seen.insert(p.name.as_str()) {
                errors.push((
                    format!("{path}.name"),
                    format!("duplicate point name `{}`", p.name),
                ));
            }
            if p.end_address() > 65_536 {
                errors.push((
                    format!("{path}.address"),
                    format!(
                        "register range {}..{} of `{}` is beyond the last Modbus address 65535",
                        p.address,
                        p.end_address(),
                        p.name
                    ),
                ));
            }
            if p.register.is_bit() != (p.data_type == DataType::Bool) {
                errors.push((
                    format!("{path}.type"),
                    format!(
                        "type {:?} does not fit the {:?} table (bool goes with coil/discrete)",
                        p.data_type, p.register
                    ),
                ));
            }
            if p.writable && matches!(p.register, RegisterKind::Input | RegisterKind::Discrete) {
                errors.push((
                    format!("{path}.writable"),
                    format!("{:?} registers are read-only in Modbus", p.register),
                ));
            }
            if p.count == 0 {
                errors.push((
                    format!("{path}.count"),
                    "count must be at least 1".to_owned(),
                ));
            }
            if !p.true_when.is_empty() && matches!(p.data_type, DataType::F32 | DataType::F64) {
                errors.push((
                    format!("{path}.true_when"),
                    "true_when needs an integer or bit point, not a float".to_owned(),
                ));
            }
            if !p.scale.is_finite() || p.scale == 0.0 || !p.offset.is_finite() {
                errors.push((
                    format!("{path}.scale"),
                    "scale must be finite and non-zero, offset finite".to_owned(),
                ));
            }
        }
        if self.max_read_registers == Some(0) {
            errors.push((
                "max_read_registers".to_owned(),
                "must be at least 1".to_owned(),
            ));
        }
        errors
    }
}

/// Built-in profiles, compiled from `config/profiles/`.
pub const BUILTIN: &[(&str, &str)] = &[
    ("generic-pdu", include_str!("../profiles/generic-pdu.toml")),
    (
        "generic-meter",
        include_str!("../profiles/generic-meter.toml"),
    ),
    (
        "generic-cooling",
        include_str!("../profiles/generic-cooling.toml"),
    ),
    (
        "raritan-xerus-pdu",
        include_str!("../profiles/raritan-xerus-pdu.toml"),
    ),
    (
        "liebert-intellislot-ds",
        include_str!("../profiles/liebert-intellislot-ds.toml"),
    ),
    (
        "liebert-intellislot-xdc",
        include_str!("../profiles/liebert-intellislot-xdc.toml"),
    ),
    (
        "apc-inrow-rc",
        include_str!("../profiles/apc-inrow-rc.toml"),
    ),
    ("stulz-c7000", include_str!("../profiles/stulz-c7000.toml")),
    (
        "vertiv-liebert-dcd",
        include_str!("../profiles/vertiv-liebert-dcd.toml"),
    ),
];

/// Parses a built-in profile by name.
pub fn builtin(name: &str) -> Option<Profile> {
    BUILTIN
        .iter()
        .find(|(n, _)| *n == name)
        .and_then(|(_, text)| Profile::from_toml(text).ok())
}

/// Names of the built-in profiles.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|(n, _)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_profile_parses_and_checks_clean() {
        for (name, text) in BUILTIN {
            let p = Profile::from_toml(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&p.name, name);
            assert!(p.check().is_empty(), "{name}: {:?}", p.check());
        }
    }

    #[test]
    fn repeated_points_address_and_range() {
        let p = builtin("generic-pdu").unwrap();
        let sw = p.role(Role::OutletSwitch).unwrap();
        assert_eq!(sw.address_of(1), Some(sw.address));
        assert_eq!(sw.address_of(3), Some(sw.address + 2));
        assert_eq!(sw.address_of(0), None);
        assert_eq!(sw.address_of(sw.count + 1), None);
        assert!(p.point("inlet_power_kw").is_some());
        assert!(p.point("nope").is_none());
    }

    #[test]
    fn true_when_only_on_integer_points() {
        let text = r#"
name = "flags"
kind = "cooling"
[[points]]
name = "status"
role = "unit_alarm"
register = "input"
address = 101
type = "u16"
true_when = [16, 32]
[[points]]
name = "temp"
register = "input"
address = 102
type = "f32"
true_when = [1]
"#;
        let p = Profile::from_toml(text).unwrap();
        assert_eq!(p.points[0].true_when, vec![16, 32]);
        let errs = p.check();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].0, "points[1].true_when");
    }

    #[test]
    fn check_flags_addresses_past_65535() {
        let text = r#"
name = "bad"
kind = "pdu"
[[points]]
name = "x"
register = "holding"
address = 65535
type = "u32"
"#;
        let p = Profile::from_toml(text).unwrap();
        let errs = p.check();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].0, "points[0].address");
    }
}
