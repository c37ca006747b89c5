//! Scenarios: what happens to the simulated site, and when (virtual seconds).
//!
//! Built in by name (`gpu-surge`, `cooling-trip`, `meter-silent`, `miner-ignores-sleep`,
//! `restart-mid-curtail`, `inference-day`, `steady`, `demo`) or read from a TOML file of
//! the same shape:
//!
//! ```toml
//! name = "my-surge"
//! gpu_profile = "training"   # baseline GPU load: idle, training, inference
//! tenant_limit_w = 600       # per-GPU limit the tenant runs at from the start
//! [[events]]
//! at_s = 120
//! kind = "gpu_limits"        # the tenant raises its GPUs' limits
//! feed = "feed-a"            # or racks = ["gpu-a1"]
//! limit_w = 1200
//! ```

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
}

fn yes() -> bool {
    true
}

/// A whole scenario.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// Baseline GPU load: `idle`, `training`, `inference`.
    #[serde(default = "training")]
    pub gpu_profile: String,
    /// Per-GPU limit the tenant runs at from the start (None: the GPUs' default).
    #[serde(default)]
    pub tenant_limit_w: Option<f64>,
    /// Length of a simulated inference day, seconds.
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
    "demo",
];

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
            "inference-day" => Scenario {
                name: name.to_owned(),
                gpu_profile: "inference".into(),
                tenant_limit_w: Some(500.0),
                day_s: Some(1440.0),
                // An inference fleet's autoscaler moves the GPU limits with demand:
                // night trough, morning ramp, day peak, evening, night.
                events: [
                    (0.0, 500.0),
                    (360.0, 900.0),
                    (600.0, 1200.0),
                    (1020.0, 800.0),
                    (1260.0, 500.0),
                ]
                .iter()
                .flat_map(|&(t, w)| [ev(t, limits("feed-a", w)), ev(t, limits("feed-b", w))])
                .collect(),
            },
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
        s.events.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        Ok(s)
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
        }
        assert!(Scenario::load("nope").is_err());
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
