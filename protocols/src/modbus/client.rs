//! The Modbus client: one actor task per connection, a queue in front of it, timeouts,
//! reconnects with backoff, busy retries, and the write guard.
//!
//! Devices that share a connection ([`ModbusLink::connection_key`]: a serial bus, or an
//! RTU-over-TCP gateway with many unit ids) share one actor, so one request at a time is
//! on that wire. Every call runs under `tokio::time::timeout`. After any transport error
//! or timeout the connection is dropped and the next request opens a new one: a late
//! reply on the old socket can then never be taken for the answer to a later request
//! (tokio-modbus issue #324). Exception responses are well-formed, in-sync answers, so
//! they keep the connection; exceptions 5 (acknowledge) and 6 (server busy) are retried.
//! Consecutive failures back off exponentially (the first reconnects at once); while
//! backing off, requests fail at once with [`ModbusError::Backoff`] instead of queueing
//! behind a dead device. On a shared bus the count is the connection's: any unit's
//! failure adds to it, any unit's answer resets it.
//!
//! [`ModbusPool::new`] spawns the actors, so it must run inside a Tokio runtime;
//! dropping the pool ends them and closes their connections.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use rackwarden_config::profile::{RegisterKind, Role};
use rackwarden_config::{ModbusDevice, ModbusLink, Parity, Site};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, Instant};
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::slave::{Slave, SlaveContext};
use tokio_modbus::ExceptionCode;

use super::decode::{self, DecodeError};
use super::plan::{self, Block, BlockData, PointValue};

/// Everything that can go wrong talking to a Modbus device. Each variant names the
/// device id and unit id, and the point where one is involved.
#[derive(Debug, thiserror::Error)]
pub enum ModbusError {
    #[error("no modbus device with index {index}")]
    NoSuchDevice { index: usize },
    #[error("device `{device}` (unit {unit}): profile `{profile}` has no point or role `{point}`")]
    NoSuchPoint {
        device: String,
        unit: u8,
        profile: String,
        point: String,
    },
    #[error("device `{device}` (unit {unit}) point `{point}`: no instance {index} (1..={count})")]
    NoSuchInstance {
        device: String,
        unit: u8,
        point: String,
        index: u32,
        count: u32,
    },
    #[error(
        "device `{device}` (unit {unit}) point `{point}`: write refused before the wire: {reason}"
    )]
    WriteRefused {
        device: String,
        unit: u8,
        point: String,
        reason: String,
    },
    #[error("device `{device}` (unit {unit}) point `{point}`: cannot encode {value}")]
    Encode {
        device: String,
        unit: u8,
        point: String,
        value: f64,
        #[source]
        source: DecodeError,
    },
    #[error("device `{device}` (unit {unit}) at {endpoint}: cannot connect (reading {point})")]
    Connect {
        device: String,
        unit: u8,
        endpoint: String,
        point: String,
        #[source]
        source: io::Error,
    },
    #[error("device `{device}` (unit {unit}) at {endpoint}: backing off after {failures} failures, next attempt in {retry_in_ms} ms (reading {point})")]
    Backoff {
        device: String,
        unit: u8,
        endpoint: String,
        point: String,
        failures: u32,
        retry_in_ms: u64,
    },
    #[error("device `{device}` (unit {unit}) point {point}: no answer within {timeout_ms} ms")]
    Timeout {
        device: String,
        unit: u8,
        point: String,
        timeout_ms: u64,
    },
    #[error("device `{device}` (unit {unit}) point {point}: transport error")]
    Transport {
        device: String,
        unit: u8,
        point: String,
        #[source]
        source: tokio_modbus::Error,
    },
    #[error("device `{device}` (unit {unit}) point {point}: modbus exception {code} ({exception}) after {attempts} attempt(s)")]
    Exception {
        device: String,
        unit: u8,
        point: String,
        code: u8,
        exception: ExceptionCode,
        attempts: u32,
    },
    #[error("device `{device}` (unit {unit}) point {point}: answer has {got} values, asked for {expected}")]
    ShortAnswer {
        device: String,
        unit: u8,
        point: String,
        expected: usize,
        got: usize,
    },
    #[error("device `{device}` (unit {unit}): its connection task has stopped")]
    Stopped { device: String, unit: u8 },
}

impl ModbusError {
    /// True when the device did not answer usefully (the reading is missing), as opposed
    /// to a request refused locally.
    pub fn is_device_failure(&self) -> bool {
        !matches!(
            self,
            ModbusError::NoSuchDevice { .. }
                | ModbusError::NoSuchPoint { .. }
                | ModbusError::NoSuchInstance { .. }
                | ModbusError::WriteRefused { .. }
                | ModbusError::Encode { .. }
        )
    }
}

/// Tuning of the connection actors. Defaults suit PDUs and cooling units on a LAN.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Backoff after the second consecutive failure; doubles up to `backoff_max`. The
    /// first failure reconnects at once (a single timeout says little about the device).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Retries of a request answered with exception 5 or 6.
    pub busy_retries: u32,
    pub busy_delay: Duration,
    /// Requests that may wait in one connection's queue.
    pub queue_depth: usize,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            busy_retries: 3,
            busy_delay: Duration::from_millis(100),
            queue_depth: 64,
        }
    }
}

/// One reading of a whole device.
#[derive(Debug, Clone)]
pub struct DeviceReading {
    /// Index in `Site::modbus_devices`.
    pub device: usize,
    pub device_id: String,
    pub unit_id: u8,
    /// When the last answer arrived.
    pub taken_at: Instant,
    /// From the first request sent to the last answer (queueing excluded).
    pub latency: Duration,
    pub values: Vec<PointValue>,
}

impl DeviceReading {
    /// The value of a point (by name or role) at `index` (1-based). `None` when the point
    /// is absent or the device gave no valid number (NaN): treat it as missing data.
    pub fn get(&self, name_or_role: &str, index: u32) -> Option<f64> {
        let by_name = self
            .values
            .iter()
            .find(|v| &*v.point == name_or_role && v.index == index);
        let found = by_name.or_else(|| {
            self.values
                .iter()
                .find(|v| v.role.map(Role::name) == Some(name_or_role) && v.index == index)
        });
        found.and_then(|v| v.value.as_ref().ok().copied())
    }

    /// Every instance's value for `role`, in index order (`None` where missing).
    pub fn role(&self, role: Role) -> Vec<(u32, Option<f64>)> {
        let mut out: Vec<_> = self
            .values
            .iter()
            .filter(|v| v.role == Some(role))
            .map(|v| (v.index, v.value.as_ref().ok().copied()))
            .collect();
        out.sort_by_key(|(i, _)| *i);
        out.dedup_by_key(|(i, _)| *i);
        out
    }
}

/// What a connection actor is asked to do.
enum Op {
    Read(Arc<Vec<Block>>),
    WriteCoil {
        address: u16,
        on: bool,
        point: String,
    },
    WriteRegisters {
        address: u16,
        words: Vec<u16>,
        point: String,
    },
}

enum Done {
    Read {
        blocks: Vec<BlockData>,
        latency: Duration,
    },
    Written,
}

struct Job {
    device: usize,
    op: Op,
    reply: oneshot::Sender<Result<Done, ModbusError>>,
}

struct Shared {
    devices: Vec<ModbusDevice>,
    plans: Vec<Arc<Vec<Block>>>,
    labels: Vec<plan::Labels>,
    options: PoolOptions,
}

/// The site's Modbus devices behind their connection actors.
pub struct ModbusPool {
    shared: Arc<Shared>,
    /// Device index -> its connection's queue.
    queues: Vec<mpsc::Sender<Job>>,
}

impl std::fmt::Debug for ModbusPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModbusPool")
            .field("devices", &self.shared.devices.len())
            .field("connections", &self.queues.len())
            .finish_non_exhaustive()
    }
}

impl ModbusPool {
    /// One actor per distinct connection of the site's devices. Must be called within a
    /// Tokio runtime; connections open on first use.
    pub fn new(site: &Site) -> ModbusPool {
        ModbusPool::from_devices(site.modbus_devices.clone(), PoolOptions::default())
    }

    /// As [`ModbusPool::new`], from a device list and explicit options.
    pub fn from_devices(devices: Vec<ModbusDevice>, options: PoolOptions) -> ModbusPool {
        let plans = devices
            .iter()
            .map(|d| Arc::new(plan::plan_reads(&d.profile, d.max_read_registers)))
            .collect();
        let labels = devices
            .iter()
            .map(|d| plan::Labels::new(&d.profile))
            .collect();
        let depth = options.queue_depth.max(1);
        let shared = Arc::new(Shared {
            devices,
            plans,
            labels,
            options,
        });
        let mut by_key: HashMap<String, mpsc::Sender<Job>> = HashMap::new();
        let mut queues = Vec::with_capacity(shared.devices.len());
        for d in &shared.devices {
            let tx = by_key
                .entry(d.link.connection_key())
                .or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(depth);
                    tokio::spawn(run_connection(shared.clone(), d.link.clone(), rx));
                    tx
                })
                .clone();
            queues.push(tx);
        }
        ModbusPool { shared, queues }
    }

    pub fn devices(&self) -> &[ModbusDevice] {
        &self.shared.devices
    }

    /// Number of connection actors (distinct connections).
    pub fn connection_count(&self) -> usize {
        let mut keys: Vec<String> = self
            .shared
            .devices
            .iter()
            .map(|d| d.link.connection_key())
            .collect();
        keys.sort();
        keys.dedup();
        keys.len()
    }

    fn device(&self, index: usize) -> Result<&ModbusDevice, ModbusError> {
        self.shared
            .devices
            .get(index)
            .ok_or(ModbusError::NoSuchDevice { index })
    }

    async fn submit(&self, device: usize, op: Op) -> Result<Done, ModbusError> {
        let d = self.device(device)?;
        let stopped = || ModbusError::Stopped {
            device: d.id.clone(),
            unit: d.link.unit_id(),
        };
        let queue = self.queues.get(device).ok_or_else(stopped)?;
        let (reply, rx) = oneshot::channel();
        queue
            .send(Job { device, op, reply })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Reads every point of device `device` (index in `Site::modbus_devices`).
    pub async fn read_device(&self, device: usize) -> Result<DeviceReading, ModbusError> {
        let d = self.device(device)?;
        let plan = self.shared.plans[device].clone();
        let Done::Read { blocks, latency } = self.submit(device, Op::Read(plan.clone())).await?
        else {
            return Err(ModbusError::Stopped {
                device: d.id.clone(),
                unit: d.link.unit_id(),
            });
        };
        let labels = &self.shared.labels[device];
        let mut values = Vec::with_capacity(plan::instance_count(&plan));
        for (b, data) in plan.iter().zip(&blocks) {
            plan::extract_into(&d.profile, labels, b, data, &mut values);
        }
        Ok(DeviceReading {
            device,
            device_id: d.id.clone(),
            unit_id: d.link.unit_id(),
            taken_at: Instant::now(),
            latency,
            values,
        })
    }

    /// Writes `value` (engineering units; 0/1 for coils) to instance `index` (1-based) of
    /// `point` (a name or role). Refused before the wire unless the device has
    /// `control = true`, the point (by name or role) is in its `write_points`, and the
    /// profile marks it writable. The caller confirms by reading back.
    pub async fn write_point(
        &self,
        device: usize,
        point: &str,
        index: u32,
        value: f64,
    ) -> Result<(), ModbusError> {
        let d = self.device(device)?;
        let unit = d.link.unit_id();
        let op = prepare_write(d, point, index, value)?;
        tracing::info!(device = %d.id, unit, point, index, value, "modbus write");
        self.submit(device, op).await.map(|_| ())
    }
}

/// Checks a write against the device's permissions and encodes it.
fn prepare_write(d: &ModbusDevice, point: &str, index: u32, value: f64) -> Result<Op, ModbusError> {
    let unit = d.link.unit_id();
    let p = d
        .profile
        .point(point)
        .ok_or_else(|| ModbusError::NoSuchPoint {
            device: d.id.clone(),
            unit,
            profile: d.profile.name.clone(),
            point: point.to_owned(),
        })?;
    let refuse = |reason: String| ModbusError::WriteRefused {
        device: d.id.clone(),
        unit,
        point: p.name.clone(),
        reason,
    };
    if !d.control {
        return Err(refuse(
            "the device is not configured with control = true".into(),
        ));
    }
    if !p.writable {
        return Err(refuse(format!(
            "profile `{}` does not mark the point writable",
            d.profile.name
        )));
    }
    let listed = d.may_write(&p.name) || p.role.is_some_and(|r| d.may_write(r.name()));
    if !listed {
        return Err(refuse(
            "the point is not in the device's write_points".into(),
        ));
    }
    let address = p
        .address_of(index)
        .and_then(|a| u16::try_from(a).ok())
        .ok_or_else(|| ModbusError::NoSuchInstance {
            device: d.id.clone(),
            unit,
            point: p.name.clone(),
            index,
            count: p.count,
        })?;
    let label = if p.count > 1 {
        format!("{}[{index}]", p.name)
    } else {
        p.name.clone()
    };
    let encode_err = |source| ModbusError::Encode {
        device: d.id.clone(),
        unit,
        point: label.clone(),
        value,
        source,
    };
    match p.register {
        RegisterKind::Coil => Ok(Op::WriteCoil {
            address,
            on: decode::encode_bit_point(value, p).map_err(encode_err)?,
            point: label.clone(),
        }),
        RegisterKind::Holding => Ok(Op::WriteRegisters {
            address,
            words: decode::encode_point(value, p).map_err(encode_err)?,
            point: label.clone(),
        }),
        RegisterKind::Input | RegisterKind::Discrete => {
            Err(refuse(format!("{:?} registers are read-only", p.register)))
        }
    }
}

/// Per-connection state kept by the actor.
struct Conn {
    link: ModbusLink,
    ctx: Option<Context>,
    failures: u32,
    retry_at: Option<Instant>,
}

fn endpoint(link: &ModbusLink) -> String {
    match link {
        ModbusLink::Tcp { addr, .. } => format!("tcp://{addr}"),
        ModbusLink::RtuOverTcp { addr, .. } => format!("rtu+tcp://{addr}"),
        ModbusLink::Rtu { serial_path, .. } => format!("rtu://{serial_path}"),
    }
}

async fn run_connection(shared: Arc<Shared>, link: ModbusLink, mut rx: mpsc::Receiver<Job>) {
    let mut conn = Conn {
        link,
        ctx: None,
        failures: 0,
        retry_at: None,
    };
    while let Some(job) = rx.recv().await {
        let Some(d) = shared.devices.get(job.device) else {
            continue;
        };
        let result = conn
            .run(d, &shared.options, &job.op, &shared, job.device)
            .await;
        match &result {
            // An exception is a well-formed answer: the device is there, the link in sync.
            Ok(_) | Err(ModbusError::Exception { .. }) => {
                conn.failures = 0;
                conn.retry_at = None;
            }
            Err(ModbusError::Backoff { .. }) => {}
            Err(e) => {
                // Drop the connection: whatever the old socket still delivers must
                // never be read as the answer to a later request.
                conn.ctx = None;
                conn.failures = conn.failures.saturating_add(1);
                let delay = backoff(&shared.options, conn.failures);
                conn.retry_at = (!delay.is_zero()).then(|| Instant::now() + delay);
                tracing::debug!(device = %d.id, unit = d.link.unit_id(), error = %e, failures = conn.failures, "modbus request failed, connection dropped");
            }
        }
        // The caller may have gone away (its own timeout); nothing to do then.
        job.reply.send(result).ok();
    }
    if let Some(mut ctx) = conn.ctx.take() {
        timeout(
            Duration::from_millis(100),
            tokio_modbus::client::Client::disconnect(&mut ctx),
        )
        .await
        .ok();
    }
}

fn backoff(o: &PoolOptions, failures: u32) -> Duration {
    if failures <= 1 {
        return Duration::ZERO;
    }
    let exp = (failures - 2).min(16);
    o.backoff_min.saturating_mul(1u32 << exp).min(o.backoff_max)
}

impl Conn {
    async fn connect(
        &mut self,
        d: &ModbusDevice,
        what: &(dyn Fn() -> String + Sync),
    ) -> Result<(), ModbusError> {
        let unit = d.link.unit_id();
        let t = Duration::from_millis(d.timeout_ms);
        let connect_err = |source: io::Error| ModbusError::Connect {
            device: d.id.clone(),
            unit,
            endpoint: endpoint(&self.link),
            point: what(),
            source,
        };
        let slave = Slave(unit);
        let ctx = match &self.link {
            ModbusLink::Tcp { addr, .. } | ModbusLink::RtuOverTcp { addr, .. } => {
                let stream = timeout(t, TcpStream::connect(addr.as_str()))
                    .await
                    .map_err(|_| {
                        connect_err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
                    })?
                    .map_err(connect_err)?;
                // Small request/response frames: do not wait for Nagle.
                stream.set_nodelay(true).map_err(connect_err)?;
                if matches!(self.link, ModbusLink::Tcp { .. }) {
                    tokio_modbus::client::tcp::attach_slave(stream, slave)
                } else {
                    tokio_modbus::client::rtu::attach_slave(stream, slave)
                }
            }
            ModbusLink::Rtu {
                serial_path,
                baud,
                parity,
                data_bits,
                stop_bits,
                ..
            } => {
                use tokio_serial::SerialPortBuilderExt;
                let builder = tokio_serial::new(serial_path.as_str(), *baud)
                    .parity(match parity {
                        Parity::None => tokio_serial::Parity::None,
                        Parity::Even => tokio_serial::Parity::Even,
                        Parity::Odd => tokio_serial::Parity::Odd,
                    })
                    .data_bits(if *data_bits == 7 {
                        tokio_serial::DataBits::Seven
                    } else {
                        tokio_serial::DataBits::Eight
                    })
                    .stop_bits(if *stop_bits == 2 {
                        tokio_serial::StopBits::Two
                    } else {
                        tokio_serial::StopBits::One
                    });
                let port = builder
                    .open_native_async()
                    .map_err(|e| connect_err(io::Error::other(e)))?;
                tokio_modbus::client::rtu::attach_slave(port, slave)
            }
        };
        if d.pause_after_connect_ms > 0 {
            // Some gateways drop the first request sent right after the handshake.
            tokio::time::sleep(Duration::from_millis(d.pause_after_connect_ms)).await;
        }
        self.ctx = Some(ctx);
        Ok(())
    }

    async fn run(
        &mut self,
        d: &ModbusDevice,
        o: &PoolOptions,
        op: &Op,
        shared: &Shared,
        device: usize,
    ) -> Result<Done, ModbusError> {
        let profile = &shared.devices[device].profile;
        // Descriptions are built only for errors: the happy path allocates nothing here.
        let first_point = || match op {
            Op::Read(blocks) => blocks
                .first()
                .map(|b| plan::describe(profile, b))
                .unwrap_or_default(),
            Op::WriteCoil { point, .. } | Op::WriteRegisters { point, .. } => point.clone(),
        };
        if let Some(at) = self.retry_at {
            let now = Instant::now();
            if now < at {
                let ms = u64::try_from((at - now).as_millis()).unwrap_or(u64::MAX);
                return Err(ModbusError::Backoff {
                    device: d.id.clone(),
                    unit: d.link.unit_id(),
                    endpoint: endpoint(&self.link),
                    point: first_point(),
                    failures: self.failures,
                    retry_in_ms: ms,
                });
            }
        }
        if self.ctx.is_none() {
            self.connect(d, &first_point).await?;
        }
        let start = Instant::now();
        match op {
            Op::Read(blocks) => {
                let mut out = Vec::with_capacity(blocks.len());
                for b in blocks.iter() {
                    let what = || plan::describe(profile, b);
                    let data = self
                        .with_retries(d, o, &what, |ctx| read_block(ctx, b))
                        .await?;
                    let got = match &data {
                        BlockData::Words(w) => w.len(),
                        BlockData::Bits(bits) => bits.len(),
                    };
                    // tokio-modbus pads bit answers to whole bytes; fewer is a bad frame.
                    if got < usize::from(b.count) {
                        return Err(ModbusError::ShortAnswer {
                            device: d.id.clone(),
                            unit: d.link.unit_id(),
                            point: what(),
                            expected: usize::from(b.count),
                            got,
                        });
                    }
                    out.push(data);
                }
                Ok(Done::Read {
                    blocks: out,
                    latency: start.elapsed(),
                })
            }
            Op::WriteCoil { address, on, point } => {
                let (a, v) = (*address, *on);
                self.with_retries(d, o, &|| point.clone(), move |ctx| {
                    Box::pin(async move { ctx.write_single_coil(a, v).await })
                })
                .await?;
                Ok(Done::Written)
            }
            Op::WriteRegisters {
                address,
                words,
                point,
            } => {
                let a = *address;
                self.with_retries(d, o, &|| point.clone(), |ctx| {
                    let words = words.clone();
                    Box::pin(async move {
                        if words.len() == 1 {
                            ctx.write_single_register(a, words[0]).await
                        } else {
                            ctx.write_multiple_registers(a, &words).await
                        }
                    })
                })
                .await?;
                Ok(Done::Written)
            }
        }
    }

    /// Runs one request with the timeout, retrying on exceptions 5 and 6.
    async fn with_retries<T, F>(
        &mut self,
        d: &ModbusDevice,
        o: &PoolOptions,
        what: &(dyn Fn() -> String + Sync),
        mut call: F,
    ) -> Result<T, ModbusError>
    where
        F: for<'c> FnMut(&'c mut Context) -> CallFuture<'c, T>,
    {
        let unit = d.link.unit_id();
        let t = Duration::from_millis(d.timeout_ms);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let Some(ctx) = self.ctx.as_mut() else {
                return Err(ModbusError::Stopped {
                    device: d.id.clone(),
                    unit,
                });
            };
            ctx.set_slave(Slave(unit));
            let outcome = timeout(t, call(ctx)).await;
            match outcome {
                Err(_) => {
                    return Err(ModbusError::Timeout {
                        device: d.id.clone(),
                        unit,
                        point: what(),
                        timeout_ms: d.timeout_ms,
                    })
                }
                Ok(Err(source)) => {
                    return Err(ModbusError::Transport {
                        device: d.id.clone(),
                        unit,
                        point: what(),
                        source,
                    })
                }
                Ok(Ok(Ok(v))) => return Ok(v),
                Ok(Ok(Err(exception))) => {
                    let busy = matches!(
                        exception,
                        ExceptionCode::Acknowledge | ExceptionCode::ServerDeviceBusy
                    );
                    if busy && attempts <= o.busy_retries {
                        tokio::time::sleep(o.busy_delay).await;
                        continue;
                    }
                    return Err(ModbusError::Exception {
                        device: d.id.clone(),
                        unit,
                        point: what(),
                        code: u8::from(exception),
                        exception,
                        attempts,
                    });
                }
            }
        }
    }
}

type CallFuture<'c, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = tokio_modbus::Result<T>> + Send + 'c>>;

fn read_block<'c>(ctx: &'c mut Context, b: &Block) -> CallFuture<'c, BlockData> {
    let (start, count, kind) = (b.start, b.count, b.register);
    Box::pin(async move {
        let r = match kind {
            RegisterKind::Holding => ctx
                .read_holding_registers(start, count)
                .await
                .map(|r| r.map(BlockData::Words)),
            RegisterKind::Input => ctx
                .read_input_registers(start, count)
                .await
                .map(|r| r.map(BlockData::Words)),
            RegisterKind::Coil => ctx
                .read_coils(start, count)
                .await
                .map(|r| r.map(BlockData::Bits)),
            RegisterKind::Discrete => ctx
                .read_discrete_inputs(start, count)
                .await
                .map(|r| r.map(BlockData::Bits)),
        };
        r
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_after_the_second_failure_and_is_capped() {
        let o = PoolOptions::default();
        assert_eq!(backoff(&o, 0), Duration::ZERO);
        assert_eq!(backoff(&o, 1), Duration::ZERO);
        assert_eq!(backoff(&o, 2), o.backoff_min);
        assert_eq!(backoff(&o, 3), o.backoff_min * 2);
        assert_eq!(backoff(&o, 6), o.backoff_min * 16);
        assert_eq!(backoff(&o, 40), o.backoff_max);
        assert_eq!(backoff(&o, u32::MAX), o.backoff_max);
    }

    #[test]
    fn write_guard_resolves_roles_and_instances() {
        let mut d = ModbusDevice {
            id: "pdu".into(),
            link: ModbusLink::Tcp {
                addr: "127.0.0.1:1".into(),
                unit_id: 4,
            },
            profile: rackwarden_config::profile::builtin("generic-pdu").unwrap(),
            timeout_ms: 100,
            pause_after_connect_ms: 0,
            max_read_registers: 125,
            poll_interval_ms: None,
            control: true,
            write_points: vec!["outlet_switch".into()],
        };
        // Listed by role name, asked by point name (they coincide here) and by role.
        assert!(matches!(
            prepare_write(&d, "outlet_switch", 48, 1.0),
            Ok(Op::WriteCoil {
                address: 47,
                on: true,
                ..
            })
        ));
        d.control = false;
        let e = prepare_write(&d, "outlet_switch", 1, 1.0).err().unwrap();
        let msg = e.to_string();
        assert!(
            msg.contains("`pdu`") && msg.contains("unit 4") && msg.contains("control = true"),
            "{msg}"
        );
    }
}
