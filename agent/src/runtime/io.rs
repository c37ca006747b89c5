//! Device access: the Modbus pool, one driver per miner, one client per GPU host, built
//! once from the site. Collectors read through it, the actuator writes through it.

use std::sync::Arc;
use std::time::Duration;

use rackwarden_config::{GpuSource as GpuSourceKind, Site};
use rackwarden_protocols::gpu::node::GpuNodeClient;
use rackwarden_protocols::gpu::{self, GpuError, GpuSource, GpuTarget};
use rackwarden_protocols::miner::{DriverFactory, DriverOptions, MinerDriver, MinerError};
use rackwarden_protocols::modbus::client::ModbusPool;
use rackwarden_protocols::modbus::ModbusError;
use tracing::warn;

use crate::control::{Action, Device, Lever, Snapshot};

/// What reading or commanding a device can fail with: the protocols' own errors, kept
/// whole (they name the device and the address), and the runtime's. Turned into text
/// only where it is printed (a log line, an observer's event).
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error(transparent)]
    Modbus(#[from] ModbusError),
    #[error(transparent)]
    Miner(#[from] MinerError),
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// A GPU host whose client could not be built (its token file, its address).
    #[error("gpu node {device} unavailable: {cause}")]
    GpuSetup {
        device: String,
        #[source]
        cause: Arc<GpuError>,
    },
    #[error("gpu node {device} has no address or token file")]
    GpuUnconfigured { device: String },
    #[error("miner {device} at {addr}: poll gave no answer within {ms} ms")]
    PollTimeout {
        device: String,
        addr: String,
        ms: u128,
    },
    #[error("{device}: no answer within {ms} ms")]
    ReadTimeout { device: String, ms: u128 },
    #[error("miner {device} has no driver")]
    NoDriver { device: String },
    #[error("miner {device} has no outlet configured")]
    NoOutlet { device: String },
    #[error("lever {lever} is not a miner lever")]
    NotAMinerLever { lever: &'static str },
    #[error("fenced: leadership ended before the command went out")]
    Fenced,
}

/// A GPU host as the agent reaches it.
enum GpuIo {
    Remote(GpuNodeClient),
    Local(Arc<dyn GpuSource>),
    /// No address or token file.
    Unconfigured,
    /// The client could not be built.
    Broken(Arc<GpuError>),
}

/// The device side: drivers, pools and clients, built once from the site.
pub struct Io {
    pub(super) modbus: ModbusPool,
    pub(super) miners: Vec<Option<Arc<dyn MinerDriver>>>,
    gpus: Vec<GpuIo>,
}

impl std::fmt::Debug for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Io")
            .field("miners", &self.miners.len())
            .field("gpus", &self.gpus.len())
            .finish_non_exhaustive()
    }
}

impl Io {
    /// Builds every driver. Problems (a missing credential, an unreadable token) are
    /// logged with the device's id; that device then reads as missing data (worst case),
    /// and a miner without a driver is marked for `decide` ([`Io::snapshot`]).
    pub fn new(site: &Site) -> Io {
        let modbus = ModbusPool::new(site);
        let factory = DriverFactory::new(DriverOptions::default());
        let miners = site
            .miners
            .iter()
            .map(|m| match &factory {
                Ok(f) => match f.build(m) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        warn!(device = %m.id, error = %e, "miner driver unavailable: no command is sent to it, it counts at nameplate, its outlet is its only lever");
                        None
                    }
                },
                Err(e) => {
                    warn!(device = %m.id, error = %e, "miner drivers unavailable");
                    None
                }
            })
            .collect();
        let gpus = site
            .gpu_nodes
            .iter()
            .map(|g| match g.source {
                GpuSourceKind::Nvml => {
                    GpuIo::Local(Arc::new(gpu::nvml::NvmlSource::load(g.id.clone())))
                }
                GpuSourceKind::Remote => {
                    let (Some(addr), Some(tf)) = (g.address, g.token_file.as_ref()) else {
                        return GpuIo::Unconfigured;
                    };
                    let client = gpu::node::Token::from_file(&g.id, tf).and_then(|t| {
                        GpuNodeClient::new(g.id.clone(), addr, t, Duration::from_secs(2))
                    });
                    match client {
                        Ok(c) => GpuIo::Remote(c),
                        Err(e) => {
                            warn!(device = %g.id, error = %e, "gpu node unreachable by configuration");
                            GpuIo::Broken(Arc::new(e))
                        }
                    }
                }
            })
            .collect();
        Io {
            modbus,
            miners,
            gpus,
        }
    }

    /// Per miner: no driver could be built for it. Empty when every miner has one (the
    /// snapshot is cloned every tick; a site without the problem carries nothing).
    pub fn undriveable(&self) -> Vec<bool> {
        if self.miners.iter().all(Option::is_some) {
            return Vec::new();
        }
        self.miners.iter().map(Option::is_none).collect()
    }

    /// An empty snapshot for `site` that tells `decide` which miners have no driver: it
    /// sends them no command, counts them at nameplate and uses only their outlet.
    pub fn snapshot(&self, site: &Site) -> Snapshot {
        Snapshot {
            undriveable: self.undriveable(),
            ..Snapshot::empty(site)
        }
    }

    /// Whether `a` needs a miner driver that could not be built: anything but an outlet
    /// switch for a miner without one. Such an action is never sent.
    pub(super) fn lacks_driver(&self, a: &Action) -> bool {
        match a.device {
            Device::Miner(i) => {
                !matches!(a.lever, Lever::OutletOff | Lever::OutletOn)
                    && self.miners.get(i).is_none_or(Option::is_none)
            }
            Device::GpuNode(_) => false,
        }
    }

    pub(super) async fn read_gpu(
        &self,
        site: &Site,
        i: usize,
    ) -> Result<gpu::GpuNodeReading, IoError> {
        match &self.gpus[i] {
            GpuIo::Remote(c) => Ok(c.read().await?),
            GpuIo::Local(s) => Ok(s.read().await?),
            GpuIo::Unconfigured => Err(unreachable_gpu(site, i, None)),
            GpuIo::Broken(c) => Err(unreachable_gpu(site, i, Some(c))),
        }
    }

    pub(super) async fn cap_gpu(&self, site: &Site, i: usize, w: f64) -> Result<(), IoError> {
        match &self.gpus[i] {
            GpuIo::Remote(c) => c.set_power_limit(GpuTarget::All, w).await?,
            GpuIo::Local(s) => s.set_power_limit(GpuTarget::All, w).await?,
            GpuIo::Unconfigured => return Err(unreachable_gpu(site, i, None)),
            GpuIo::Broken(c) => return Err(unreachable_gpu(site, i, Some(c))),
        };
        Ok(())
    }
}

/// Why GPU host `i` cannot be reached: no address or token file, or (`broken`) its
/// client could not be built.
fn unreachable_gpu(site: &Site, i: usize, broken: Option<&Arc<GpuError>>) -> IoError {
    let device = site.gpu_nodes[i].id.clone();
    match broken {
        Some(cause) => IoError::GpuSetup {
            device,
            cause: cause.clone(),
        },
        None => IoError::GpuUnconfigured { device },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control;

    /// A miner whose credentials cannot be read has no driver: the snapshot says so, and
    /// only its outlet levers may reach the actuator.
    #[tokio::test]
    async fn a_miner_without_a_driver_is_marked_and_only_its_outlet_is_driven() {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf();
        let text =
            std::fs::read_to_string(repo.join("config/tests/data/valid/minimal.toml")).unwrap();
        let var = format!("RACKWARDEN_TEST_UNSET_{}", std::process::id());
        let text = text.replace(
            "min_w = 1800\n",
            &format!("min_w = 1800\ncredentials = {{ password_env = \"{var}\" }}\n"),
        );
        let site =
            rackwarden_config::load_str(&text, std::path::Path::new("m.toml"), &repo).unwrap();
        assert!(site.miners[0].credentials.is_some());
        let io = Io::new(&site);
        let snap = io.snapshot(&site);
        assert_eq!(snap.undriveable, vec![true]);
        assert!(snap.undriveable(0));
        let action = |lever| Action {
            scope: control::Scope::Device,
            constraint: "m-1".into(),
            device: Device::Miner(0),
            device_id: "m-1".into(),
            lever,
            from_w: 3250.0,
            to_w: 0.0,
            reason: control::Reason::Shed,
            emergency: false,
        };
        for lever in [
            Lever::Sleep,
            Lever::Wake,
            Lever::PowerTarget,
            Lever::PowerTargetRaise,
        ] {
            assert!(io.lacks_driver(&action(lever)), "{lever:?}");
        }
        for lever in [Lever::OutletOff, Lever::OutletOn] {
            assert!(!io.lacks_driver(&action(lever)), "{lever:?}");
        }
        // With its driver, nothing is marked and nothing refused.
        let site =
            rackwarden_config::load(&repo.join("config/tests/data/valid/minimal.toml")).unwrap();
        let io = Io::new(&site);
        assert!(io.snapshot(&site).undriveable.is_empty());
        assert!(!io.lacks_driver(&action(Lever::Sleep)));
    }
}
