//! Scenarios: what happens to the simulated site, and when (virtual seconds).
//!
//! Built in by name (`gpu-surge`, `cooling-trip`, `meter-silent`, `miner-ignores-sleep`,
//! `restart-mid-curtail`, `inference-day`, `training-swings`, `colo`, `colo-surge`,
//! `steady`, `demo`) or read from a TOML file of the same shape:
//!
//! ```toml
//! name = "my-surge"
//! gpu_profile = "training"   # baseline GPU load (below)
//! tenant_limit_w = 600       # per-GPU limit the tenant runs at from the start
//! day_s = 1440               # inference profiles: the length of one simulated day
//! [[events]]
//! at_s = 120
//! kind = "gpu_limits"        # the tenant raises its GPUs' limits
//! feed = "feed-a"            # or racks = ["gpu-a1"]
//! limit_w = 1200
//! ```
//!
//! `gpu_profile` is a [`LoadProfile`] name: `idle`, `training`, `inference`,
//! `inference-day` (diurnal demand within fixed limits: night trough ~25%, afternoon
//! peak ~87.5% of full power over `day_s`), `training-swings` (0.2-3 Hz swings between
//! ~30% of full power and the cap, a 2-3 min checkpoint dip every 20 min, a job restart
//! every few hours, in real seconds), `job-start`, `job-start@S`. It drives the simulated
//! GPU hosts and also the GPU and mixed racks that have no simulated GPU host (a
//! colocation tenant's, seen through the rack PDU only): such a rack's GPU load is
//! `rated_max_kw x rack_demand_fraction(profile, t)` (each rack its own seed).
//!
//! The built-ins `inference-day` and `training-swings` keep the GPU limits where they are
//! (the GPUs' defaults) and let the load move within them, as real fleets do; `colo` is
//! `inference-day` for a site whose GPU racks have PDU meters and no GPU nodes
//! (examples/site-colo.toml), and `colo-surge` adds a surge of feed A's GPU racks to their
//! rated maximum from 120 s to 420 s.
//!
//! A PDU-only GPU rack can be pinned at a share of its `rated_max_kw`:
//!
//! ```toml
//! [[events]]
//! at_s = 120
//! kind = "rack_load"         # racks whose id starts with `prefix` (GPU or mixed, no GPU nodes)
//! prefix = "gpu-a"
//! fraction = 1.0             # of rated_max_kw; above 1: a tenant over its declared maximum
//! until_s = 420              # optional; or a `rack_load_clear` event with the same prefix
//! [[events]]
//! at_s = 600
//! kind = "rack_load_clear"   # back to the profile
//! prefix = "gpu-a"
//! ```
//!
//! Fault events (the fault matrix of the hil-tests), each optionally ended by `until_s`:
//!
//! ```toml
//! [[events]]
//! at_s = 60
//! kind = "modbus_fault"      # one device (unit id) misbehaves on the wire
//! device = "meter-feed-a"
//! fault = "late"             # timeout | late | reset | exception | garbage
//! late_ms = 1500             # late: real ms (Modbus timeouts are real time)
//! code = 4                   # exception: the code (default 4, server device failure)
//! until_s = 200
//! [[events]]
//! at_s = 60
//! kind = "modbus_taken"      # another client holds the device's only connection
//! device = "pdu-mine-a4"
//! until_s = 200
//! [[events]]
//! at_s = 90
//! kind = "gateway_reboot"    # the whole address behind `device` reboots
//! device = "dev-crah-1"
//! down_s = 40
//! [[events]]
//! at_s = 60
//! kind = "miner_fault"       # miners whose id starts with `prefix`
//! prefix = "mine-a1-"
//! fault = "flap"             # garbage | hang | close_early | flap | none
//! period_s = 20              # flap: answering, then silent, this long each
//! [[events]]
//! at_s = 60
//! kind = "gpu_node_hang"     # a GPU node accepts requests and never answers
//! host = "gpunode-gpu-b1"
//! until_s = 180
//! ```

use crate::gpu::LoadProfile;
use serde::Deserialize;

/// One scripted change. (`flatten` rules out `deny_unknown_fields` here.)
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Event {
    pub at_s: f64,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// The tenant sets its GPUs' power limits (racks by id, or every GPU rack of a feed).
    GpuLimits {
        #[serde(default)]
        racks: Vec<String>,
        #[serde(default)]
        feed: Option<String>,
        limit_w: f64,
    },
    /// A cooling unit trips (alarm) until `unit_recover`.
    UnitTrip {
        unit: String,
    },
    UnitRecover {
        unit: String,
    },
    /// A Modbus device stops answering until `meter_back`.
    MeterSilent {
        device: String,
    },
    MeterBack {
        device: String,
    },
    /// Miners whose id starts with `prefix` start or stop ignoring commands.
    MinerIgnores {
        prefix: String,
        #[serde(default = "yes")]
        ignore: bool,
    },
    /// A Modbus device (its unit id) misbehaves on every request until `until_s`.
    ModbusFault {
        device: String,
        fault: ModbusFaultKind,
        /// `late`: how late the answer comes, real milliseconds (default 1500).
        #[serde(default)]
        late_ms: Option<u64>,
        /// `exception`: the exception code (default 4).
        #[serde(default)]
        code: Option<u8>,
        #[serde(default)]
        until_s: Option<f64>,
    },
    /// The device answers normally again (ends `modbus_fault` and `modbus_taken`).
    ModbusClear {
        device: String,
    },
    /// Another client takes the device's only connection until `until_s`.
    ModbusTaken {
        device: String,
        #[serde(default)]
        until_s: Option<f64>,
    },
    /// The server at `device`'s address (an RTU-over-TCP gateway: every unit behind it)
    /// reboots: connections reset, nothing answers for `down_s`, then it is back.
    GatewayReboot {
        device: String,
        down_s: f64,
    },
    /// Miners whose id starts with `prefix` misbehave until `until_s`.
    MinerFault {
        prefix: String,
        fault: MinerFaultKind,
        /// `flap`: seconds answering, then as many silent (default 20).
        #[serde(default)]
        period_s: Option<f64>,
        #[serde(default)]
        until_s: Option<f64>,
    },
    /// A GPU node accepts requests and never answers, until `until_s` or `gpu_node_back`.
    GpuNodeHang {
        host: String,
        #[serde(default)]
        until_s: Option<f64>,
    },
    GpuNodeBack {
        host: String,
    },
    /// GPU and mixed racks without a simulated GPU host whose id starts with `prefix`
    /// draw `fraction x rated_max_kw` (not the profile) until `until_s` or
    /// `rack_load_clear`.
    RackLoad {
        prefix: String,
        fraction: f64,
        #[serde(default)]
        until_s: Option<f64>,
    },
    /// Those racks follow the scenario's profile again.
    RackLoadClear {
        prefix: String,
    },
}

/// How a Modbus device misbehaves (`modbus_fault`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModbusFaultKind {
    /// Reads the request, never answers.
    Timeout,
    /// Answers after `late_ms`.
    Late,
    /// Resets the connection (RST).
    Reset,
    /// Answers with an exception code.
    Exception,
    /// Answers bytes that are no Modbus frame.
    Garbage,
}

/// How a miner misbehaves (`miner_fault`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MinerFaultKind {
    /// Answers bytes that are not a reply.
    Garbage,
    /// Accepts the connection, never answers.
    Hang,
    /// Closes the connection half-way through its reply.
    CloseEarly,
    /// Answers, then is silent, in turn (`period_s` each).
    Flap,
    /// Behaves again.
    None,
}

impl EventKind {
    /// The event that ends this one at `until_s`, if it has an end.
    fn ending(&self) -> Option<(f64, EventKind)> {
        match self {
            EventKind::ModbusFault {
                device,
                until_s: Some(t),
                ..
            }
            | EventKind::ModbusTaken {
                device,
                until_s: Some(t),
            } => Some((
                *t,
                EventKind::ModbusClear {
                    device: device.clone(),
                },
            )),
            EventKind::MinerFault {
                prefix,
                until_s: Some(t),
                ..
            } => Some((
                *t,
                EventKind::MinerFault {
                    prefix: prefix.clone(),
                    fault: MinerFaultKind::None,
                    period_s: None,
                    until_s: None,
                },
            )),
            EventKind::GpuNodeHang {
                host,
                until_s: Some(t),
            } => Some((*t, EventKind::GpuNodeBack { host: host.clone() })),
            EventKind::RackLoad {
                prefix,
                until_s: Some(t),
                ..
            } => Some((
                *t,
                EventKind::RackLoadClear {
                    prefix: prefix.clone(),
                },
            )),
            _ => None,
        }
    }
}

fn yes() -> bool {
    true
}

/// A whole scenario.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// Baseline GPU load: a [`LoadProfile`] name (`idle`, `training`, `inference`,
    /// `inference-day`, `training-swings`, `job-start`, `job-start@S`).
    #[serde(default = "training")]
    pub gpu_profile: String,
    /// Per-GPU limit the tenant runs at from the start (None: the GPUs' default).
    #[serde(default)]
    pub tenant_limit_w: Option<f64>,
    /// Length of a simulated inference day, seconds (default 600).
    #[serde(default)]
    pub day_s: Option<f64>,
    #[serde(default)]
    pub events: Vec<Event>,
}

fn training() -> String {
    "training".to_owned()
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("unknown scenario `{0}` (built in: {1}); or give a TOML file")]
    Unknown(String, String),
    #[error("scenario file {path}: {message}")]
    File { path: String, message: String },
}

/// Names of the built-in scenarios.
pub const BUILTIN: &[&str] = &[
    "steady",
    "gpu-surge",
    "cooling-trip",
    "meter-silent",
    "miner-ignores-sleep",
    "restart-mid-curtail",
    "inference-day",
    "training-swings",
    "colo",
    "colo-surge",
    "demo",
];

/// A simulated day when a scenario gives none.
pub const DEFAULT_DAY_S: f64 = 600.0;

fn ev(at_s: f64, kind: EventKind) -> Event {
    Event { at_s, kind }
}

fn limits(feed: &str, limit_w: f64) -> EventKind {
    EventKind::GpuLimits {
        racks: vec![],
        feed: Some(feed.to_owned()),
        limit_w,
    }
}

/// A scenario whose GPU limits stay at the GPUs' defaults: the load moves within them.
fn within_limits(name: &str, profile: &str, day_s: Option<f64>, events: Vec<Event>) -> Scenario {
    Scenario {
        name: name.to_owned(),
        gpu_profile: profile.to_owned(),
        tenant_limit_w: None,
        day_s,
        events,
    }
}

impl Scenario {
    /// A built-in scenario for the example site's ids (`feed-a`, `crah-1`,
    /// `meter-feed-b`, `mine-a1-...`).
    pub fn builtin(name: &str) -> Option<Scenario> {
        let base = |events: Vec<Event>| Scenario {
            name: name.to_owned(),
            gpu_profile: "training".into(),
            tenant_limit_w: Some(600.0),
            day_s: None,
            events,
        };
        let surge = vec![
            ev(120.0, limits("feed-a", 1200.0)),
            ev(420.0, limits("feed-a", 600.0)),
        ];
        Some(match name {
            "steady" => base(vec![]),
            "gpu-surge" | "restart-mid-curtail" => base(surge),
            "cooling-trip" => base(vec![
                ev(
                    120.0,
                    EventKind::UnitTrip {
                        unit: "crah-1".into(),
                    },
                ),
                ev(
                    420.0,
                    EventKind::UnitRecover {
                        unit: "crah-1".into(),
                    },
                ),
            ]),
            "meter-silent" => base(vec![
                ev(
                    120.0,
                    EventKind::MeterSilent {
                        device: "meter-feed-b".into(),
                    },
                ),
                ev(
                    300.0,
                    EventKind::MeterBack {
                        device: "meter-feed-b".into(),
                    },
                ),
            ]),
            "miner-ignores-sleep" => {
                let mut s = base(vec![
                    ev(
                        0.0,
                        EventKind::MinerIgnores {
                            prefix: "mine-a".into(),
                            ignore: true,
                        },
                    ),
                    ev(120.0, limits("feed-a", 1200.0)),
                ]);
                s.events.push(ev(
                    600.0,
                    EventKind::MinerIgnores {
                        prefix: "mine-a".into(),
                        ignore: false,
                    },
                ));
                s
            }
            // Demand moves within fixed limits (the GPUs' defaults), as in real fleets:
            // a compressed day of 24 min, night trough to afternoon peak and back.
            "inference-day" | "colo" => within_limits(name, "inference-day", Some(1440.0), vec![]),
            "training-swings" => within_limits(name, "training-swings", None, vec![]),
            // The colocation surge: feed A's PDU-only GPU racks at their rated maximum.
            "colo-surge" => within_limits(
                name,
                "inference-day",
                Some(1440.0),
                vec![ev(
                    120.0,
                    EventKind::RackLoad {
                        prefix: "gpu-a".into(),
                        fraction: 1.0,
                        until_s: Some(420.0),
                    },
                )],
            ),
            "demo" => base(vec![
                ev(120.0, limits("feed-a", 1200.0)),
                ev(330.0, limits("feed-a", 600.0)),
                ev(
                    480.0,
                    EventKind::UnitTrip {
                        unit: "crah-1".into(),
                    },
                ),
                ev(
                    660.0,
                    EventKind::UnitRecover {
                        unit: "crah-1".into(),
                    },
                ),
            ]),
            _ => return None,
        })
        .map(|mut s| {
            s.expand_endings();
            s
        })
    }

    /// The GPU load profile `gpu_profile` names.
    pub fn load_profile(&self) -> Result<LoadProfile, String> {
        self.gpu_profile.parse()
    }

    /// The simulated day's length, seconds.
    pub fn day_len_s(&self) -> f64 {
        self.day_s
            .filter(|d| d.is_finite() && *d > 0.0)
            .unwrap_or(DEFAULT_DAY_S)
    }

    /// A built-in name or a TOML file path.
    pub fn load(name_or_file: &str) -> Result<Scenario, ScenarioError> {
        if let Some(s) = Scenario::builtin(name_or_file) {
            return Ok(s);
        }
        if !name_or_file.ends_with(".toml") {
            return Err(ScenarioError::Unknown(
                name_or_file.to_owned(),
                BUILTIN.join(", "),
            ));
        }
        let text = std::fs::read_to_string(name_or_file).map_err(|e| ScenarioError::File {
            path: name_or_file.to_owned(),
            message: e.to_string(),
        })?;
        let mut s: Scenario = toml::from_str(&text).map_err(|e| ScenarioError::File {
            path: name_or_file.to_owned(),
            message: e.message().to_owned(),
        })?;
        if let Err(message) = s.load_profile() {
            return Err(ScenarioError::File {
                path: name_or_file.to_owned(),
                message: format!("gpu_profile: {message}"),
            });
        }
        if let Some(d) = s.day_s.filter(|d| !(d.is_finite() && *d > 0.0)) {
            return Err(ScenarioError::File {
                path: name_or_file.to_owned(),
                message: format!("day_s: must be a positive number of seconds, got {d}"),
            });
        }
        s.expand_endings();
        Ok(s)
    }

    /// Adds the event that ends each fault with an `until_s`, and sorts by time (a
    /// stable sort: events at the same instant keep their order, endings after).
    pub fn expand_endings(&mut self) {
        let endings: Vec<Event> = self
            .events
            .iter()
            .filter_map(|e| e.kind.ending())
            .map(|(at_s, kind)| Event { at_s, kind })
            .collect();
        self.events.extend(endings);
        self.events.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_loads() {
        for name in BUILTIN {
            let s = Scenario::load(name).unwrap();
            assert_eq!(&s.name, name);
            assert!(s.load_profile().is_ok(), "{name}: {}", s.gpu_profile);
        }
        assert!(Scenario::load("nope").is_err());
    }

    #[test]
    fn fleet_scenarios_move_the_load_within_fixed_limits() {
        for (name, profile) in [
            ("inference-day", LoadProfile::InferenceDay),
            ("training-swings", LoadProfile::TrainingSwings),
            ("colo", LoadProfile::InferenceDay),
            ("colo-surge", LoadProfile::InferenceDay),
        ] {
            let s = Scenario::load(name).unwrap();
            assert_eq!(s.load_profile(), Ok(profile), "{name}");
            assert_eq!(
                s.tenant_limit_w, None,
                "{name}: limits stay at the defaults"
            );
            assert!(
                !s.events
                    .iter()
                    .any(|e| matches!(e.kind, EventKind::GpuLimits { .. })),
                "{name}: no limit moves"
            );
        }
        assert_eq!(Scenario::load("inference-day").unwrap().day_len_s(), 1440.0);
        assert_eq!(Scenario::load("steady").unwrap().day_len_s(), DEFAULT_DAY_S);
        // The colo surge ends by itself.
        let surge = Scenario::load("colo-surge").unwrap();
        assert_eq!(
            surge.events.last().map(|e| (e.at_s, &e.kind)),
            Some((
                420.0,
                &EventKind::RackLoadClear {
                    prefix: "gpu-a".into()
                }
            ))
        );
    }

    #[test]
    fn rack_load_events_parse_and_end() {
        let text = r#"
name = "colo"
gpu_profile = "training-swings"
[[events]]
at_s = 10
kind = "rack_load"
prefix = "gpu-b"
fraction = 0.9
until_s = 50
[[events]]
at_s = 20
kind = "rack_load"
prefix = "gpu-a1"
fraction = 1.1
[[events]]
at_s = 30
kind = "rack_load_clear"
prefix = "gpu-a1"
"#;
        let mut s: Scenario = toml::from_str(text).unwrap();
        s.expand_endings();
        assert_eq!(s.load_profile(), Ok(LoadProfile::TrainingSwings));
        let kinds: Vec<(f64, &EventKind)> = s.events.iter().map(|e| (e.at_s, &e.kind)).collect();
        assert_eq!(kinds.len(), 4);
        assert_eq!(
            kinds[0].1,
            &EventKind::RackLoad {
                prefix: "gpu-b".into(),
                fraction: 0.9,
                until_s: Some(50.0)
            }
        );
        assert_eq!(
            kinds[3],
            (
                50.0,
                &EventKind::RackLoadClear {
                    prefix: "gpu-b".into()
                }
            )
        );
    }

    #[test]
    fn a_scenario_file_with_an_unknown_profile_is_refused() {
        let dir = std::env::temp_dir().join(format!("rackwarden-scenario-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad-profile.toml");
        std::fs::write(&path, "name = \"x\"\ngpu_profile = \"inference_day\"\n").unwrap();
        let err = Scenario::load(path.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("gpu_profile") && err.contains("inference-day"),
            "{err}"
        );
        std::fs::write(&path, "name = \"x\"\ngpu_profile = \"inference-day\"\n").unwrap();
        assert!(Scenario::load(path.to_str().unwrap()).is_ok());
        std::fs::write(&path, "name = \"x\"\nday_s = 0\n").unwrap();
        assert!(Scenario::load(path.to_str().unwrap()).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn scenario_files_parse() {
        let text = r#"
name = "x"
gpu_profile = "idle"
[[events]]
at_s = 5
kind = "unit_trip"
unit = "crah-2"
[[events]]
at_s = 1
kind = "gpu_limits"
racks = ["gpu-a1"]
limit_w = 900
"#;
        let s: Scenario = toml::from_str(text).unwrap();
        assert_eq!(s.events.len(), 2);
        assert_eq!(
            s.events[1].kind,
            EventKind::GpuLimits {
                racks: vec!["gpu-a1".into()],
                feed: None,
                limit_w: 900.0
            }
        );
    }
}

#[cfg(test)]
mod fault_event_tests {
    use super::*;

    #[test]
    fn fault_events_parse_and_their_ends_are_scheduled() {
        let text = r#"
name = "faults"
[[events]]
at_s = 60
kind = "modbus_fault"
device = "meter-feed-a"
fault = "late"
late_ms = 1500
until_s = 200
[[events]]
at_s = 61
kind = "modbus_taken"
device = "pdu-mine-a4"
until_s = 150
[[events]]
at_s = 90
kind = "gateway_reboot"
device = "dev-crah-1"
down_s = 40
[[events]]
at_s = 62
kind = "miner_fault"
prefix = "mine-a1-"
fault = "close_early"
until_s = 120
[[events]]
at_s = 63
kind = "gpu_node_hang"
host = "gpunode-gpu-b1"
"#;
        let mut s: Scenario = toml::from_str(text).unwrap();
        s.expand_endings();
        let kinds: Vec<(f64, &EventKind)> = s.events.iter().map(|e| (e.at_s, &e.kind)).collect();
        assert_eq!(kinds.len(), 8, "{kinds:?}");
        assert!(matches!(
            kinds[0].1,
            EventKind::ModbusFault {
                fault: ModbusFaultKind::Late,
                late_ms: Some(1500),
                ..
            }
        ));
        // Ends, in time order: the miner at 120, the taken slot at 150, the meter at 200.
        assert_eq!(
            kinds[5],
            (
                120.0,
                &EventKind::MinerFault {
                    prefix: "mine-a1-".into(),
                    fault: MinerFaultKind::None,
                    period_s: None,
                    until_s: None
                }
            )
        );
        assert_eq!(
            kinds[6],
            (
                150.0,
                &EventKind::ModbusClear {
                    device: "pdu-mine-a4".into()
                }
            )
        );
        assert_eq!(
            kinds[7],
            (
                200.0,
                &EventKind::ModbusClear {
                    device: "meter-feed-a".into()
                }
            )
        );
        // A hang without `until_s` has no scheduled end.
        assert!(!kinds
            .iter()
            .any(|(_, k)| matches!(k, EventKind::GpuNodeBack { .. })));
    }

    #[test]
    fn an_unknown_fault_name_is_refused() {
        let text = r#"
name = "bad"
[[events]]
at_s = 1
kind = "modbus_fault"
device = "x"
fault = "melt"
"#;
        assert!(toml::from_str::<Scenario>(text).is_err());
    }
}
