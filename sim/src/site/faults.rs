//! The fault matrix's events, applied to the running site simulator: Modbus wire faults
//! per device, a single-connection device taken by another client, a gateway reboot,
//! misbehaving miners, and GPU nodes that hang (accept a request, never answer).
//!
//! Durations the scenario gives in virtual seconds are turned into real time with the
//! simulator's speed; wire delays (`late_ms`) are real already, as the agent's Modbus
//! timeouts are.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::gpu::SimGpus;
use crate::miner as msim;
use crate::modbus::Fault as MbFault;
use rackwarden_protocols::gpu::{AppliedCap, GpuFuture, GpuNodeReading, GpuSource, GpuTarget};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::scenario::{EventKind, MinerFaultKind, ModbusFaultKind};
use super::{lock, Model};

/// A simulated GPU host that can be made to hang: while the switch is on, every request
/// waits (until the switch goes off, or the simulator stops) before it is answered.
pub(super) struct Hangable {
    pub inner: Arc<SimGpus>,
    pub hang: Arc<AtomicBool>,
    pub cancel: CancellationToken,
}

impl Hangable {
    async fn wait_while_hung(&self) {
        while self.hang.load(Ordering::SeqCst) {
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
}

impl GpuSource for Hangable {
    fn read(&self) -> GpuFuture<'_, GpuNodeReading> {
        Box::pin(async move {
            self.wait_while_hung().await;
            self.inner.read().await
        })
    }

    fn set_power_limit(&self, target: GpuTarget, limit_w: f64) -> GpuFuture<'_, Vec<AppliedCap>> {
        Box::pin(async move {
            self.wait_while_hung().await;
            self.inner.set_power_limit(target, limit_w).await
        })
    }
}

fn real(virtual_s: f64, speed: f64) -> Duration {
    Duration::from_secs_f64((virtual_s / speed).max(0.0))
}

/// Applies a fault event; `false` when `kind` is not one.
pub(super) fn apply(model: &Arc<std::sync::Mutex<Model>>, kind: &EventKind, speed: f64) -> bool {
    let m = lock(model);
    let device_at = |device: &str| {
        let at = m
            .site
            .modbus_devices
            .iter()
            .position(|d| d.id == device)
            .and_then(|d| m.dev_at[d]);
        if at.is_none() {
            warn!(device = %device, "scenario: no such simulated modbus device");
        }
        at
    };
    match kind {
        EventKind::ModbusFault {
            device,
            fault,
            late_ms,
            code,
            ..
        } => {
            let Some(at) = device_at(device) else {
                return true;
            };
            let f = match fault {
                ModbusFaultKind::Timeout => MbFault::NoAnswer,
                ModbusFaultKind::Late => {
                    MbFault::Late(Duration::from_millis(late_ms.unwrap_or(1500)))
                }
                ModbusFaultKind::Reset => MbFault::Reset,
                ModbusFaultKind::Exception => MbFault::Exception(code.unwrap_or(4)),
                ModbusFaultKind::Garbage => MbFault::Garbage,
            };
            m.servers[at.server].inject(at.unit, f, u32::MAX);
        }
        EventKind::ModbusClear { device } => {
            let Some(at) = device_at(device) else {
                return true;
            };
            m.servers[at.server].clear_fault(at.unit);
            m.servers[at.server].release();
        }
        EventKind::ModbusTaken { device, .. } => {
            let Some(at) = device_at(device) else {
                return true;
            };
            if let Err(e) = m.servers[at.server].take() {
                warn!(device = %device, error = %e, "scenario: could not take the device's connection");
            }
        }
        EventKind::GatewayReboot { device, down_s } => {
            let Some(at) = device_at(device) else {
                return true;
            };
            m.servers[at.server].reboot(real(*down_s, speed));
        }
        EventKind::MinerFault {
            prefix,
            fault,
            period_s,
            ..
        } => {
            let f = match fault {
                MinerFaultKind::Garbage => msim::Fault::Garbage,
                MinerFaultKind::Hang => msim::Fault::NoAnswer,
                MinerFaultKind::CloseEarly => msim::Fault::CloseEarly,
                MinerFaultKind::Flap => msim::Fault::Flap(real(period_s.unwrap_or(20.0), speed)),
                MinerFaultKind::None => msim::Fault::None,
            };
            let mut n = 0;
            for mi in m
                .miners
                .iter()
                .flatten()
                .filter(|x| x.spec.id.starts_with(prefix.as_str()))
            {
                mi.set_fault(f);
                n += 1;
            }
            if n == 0 {
                warn!(prefix = %prefix, "scenario: no simulated miner has this prefix");
            }
        }
        EventKind::GpuNodeHang { host, .. } | EventKind::GpuNodeBack { host } => {
            match m.gpu_hang.get(host) {
                Some(h) => h.store(
                    matches!(kind, EventKind::GpuNodeHang { .. }),
                    Ordering::SeqCst,
                ),
                None => warn!(host = %host, "scenario: no such simulated gpu node"),
            }
        }
        _ => return false,
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{LoadProfile, SimSpec};

    #[tokio::test]
    async fn a_hung_gpu_host_answers_only_when_let_go() {
        let spec = SimSpec {
            gpus: 2,
            idle_w: 80.0,
            min_limit_w: 200.0,
            max_limit_w: 700.0,
            default_limit_w: 700.0,
            day_s: 600.0,
            seed: 1,
        };
        let h = Arc::new(Hangable {
            inner: Arc::new(SimGpus::with_clock(
                String::from("g"),
                LoadProfile::Idle,
                spec,
                || 0.0,
            )),
            hang: Arc::new(AtomicBool::new(true)),
            cancel: CancellationToken::new(),
        });
        let pending = tokio::time::timeout(Duration::from_millis(300), h.read()).await;
        assert!(pending.is_err(), "a hung host answered");
        let h2 = h.clone();
        let read = tokio::spawn(async move { h2.read().await.map(|r| r.gpus.len()) });
        tokio::time::sleep(Duration::from_millis(100)).await;
        h.hang.store(false, Ordering::SeqCst);
        let n = tokio::time::timeout(Duration::from_secs(2), read)
            .await
            .expect("still hung after the switch went off")
            .unwrap()
            .unwrap();
        assert_eq!(n, 2);
        // Shutdown ends a hang too (the node server drains its requests on shutdown).
        h.hang.store(true, Ordering::SeqCst);
        h.cancel.cancel();
        assert!(tokio::time::timeout(Duration::from_secs(2), h.read())
            .await
            .is_ok());
    }
}
