//! Modbus polling benchmark: N simulated devices (generic-pdu, on loopback) polled once
//! per second for S seconds by rackwarden's `ModbusPool`, then the same load through
//! pymodbus's async client (`bench/pymodbus_peer.py`) in the same run, against the same
//! simulator. Reports reads/s, CPU seconds per read and peak RSS of each client process.
//!
//! ```text
//! cargo run --release -p rackwarden-protocols --example modbus_bench -- \
//!     --devices 1000 --seconds 10
//! ```
//!
//! The simulator runs in a child process (this binary with `serve`) so that each
//! client's CPU figure is its own. Every device has its own TCP connection (as distinct
//! Modbus TCP devices do); units are spread over listeners, 200 unit ids per port. Linux
//! only (CPU and RSS come from /proc). Needs about 2 x N file descriptors per process.
//! `--current-thread` runs the client on a current-thread Tokio runtime. By default every
//! device is read at the same instant each second (the worst burst); `--spread` starts
//! the collectors spread over the first second instead. Both clients do the same.

use std::io::{BufRead, Read};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rackwarden_config::profile::builtin;
use rackwarden_config::{ModbusDevice, ModbusLink};
use rackwarden_protocols::modbus::{ModbusError, ModbusPool, PoolOptions};
use rackwarden_sim::modbus::{Framing, Simulator};

struct Args {
    serve: bool,
    devices: usize,
    seconds: u64,
    units_per_port: usize,
    python: String,
    current_thread: bool,
    skip_python: bool,
    spread: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        serve: false,
        devices: 1000,
        seconds: 10,
        units_per_port: 200,
        python: "python3".into(),
        current_thread: false,
        skip_python: false,
        spread: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "serve" => a.serve = true,
            "--devices" => {
                a.devices = val("--devices")?
                    .parse()
                    .map_err(|e| format!("--devices: {e}"))?
            }
            "--seconds" => {
                a.seconds = val("--seconds")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?
            }
            "--units-per-port" => {
                a.units_per_port = val("--units-per-port")?
                    .parse()
                    .map_err(|e| format!("--units-per-port: {e}"))?;
            }
            "--python" => a.python = val("--python")?,
            "--current-thread" => a.current_thread = true,
            "--skip-python" => a.skip_python = true,
            "--spread" => a.spread = true,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if a.units_per_port == 0 || a.units_per_port > 247 {
        return Err("--units-per-port must be in 1..=247".into());
    }
    Ok(a)
}

/// ((user, system) CPU seconds, peak RSS in KiB) of this process, from /proc.
fn cpu_and_rss() -> ((f64, f64), u64) {
    let ticks = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // After "(comm)": index 0 is field 3 (state); utime is field 14, stime 15.
    let cpu = (field(11) / ticks, field(12) / ticks);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (cpu, rss)
}

async fn serve(a: &Args) -> Result<(), String> {
    let profile = builtin("generic-pdu").ok_or("generic-pdu profile missing")?;
    let ports = a.devices.div_ceil(a.units_per_port);
    let mut sims = Vec::new();
    for _ in 0..ports {
        let units = (1..=a.units_per_port)
            .map(|u| (u8::try_from(u).unwrap_or(1), profile.clone()))
            .collect();
        let sim = Simulator::start(
            "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?,
            Framing::Tcp,
            units,
        )
        .await
        .map_err(|e| e.to_string())?;
        for u in 1..=a.units_per_port {
            let u = u8::try_from(u).unwrap_or(1);
            sim.set(u, "inlet_power", 1, 12.5)
                .map_err(|e| e.to_string())?;
            sim.set(u, "phase_current", 2, 16.25)
                .map_err(|e| e.to_string())?;
            sim.set(u, "outlet_state", 3, 1.0)
                .map_err(|e| e.to_string())?;
        }
        sims.push(sim);
    }
    let list: Vec<String> = sims
        .iter()
        .map(|s| s.local_addr().port().to_string())
        .collect();
    println!("PORTS {}", list.join(","));
    // Serve until the parent closes our stdin.
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        std::io::stdin().read_to_string(&mut sink).ok();
    })
    .await
    .map_err(|e| e.to_string())?;
    let total: u64 = sims.iter().map(Simulator::requests).sum();
    eprintln!("simulator served {total} requests");
    for s in sims {
        s.shutdown().await;
    }
    Ok(())
}

struct Outcome {
    name: String,
    reads: u64,
    errors: u64,
    wall_s: f64,
    cpu_s: f64,
    sys_s: f64,
    rss_kib: u64,
    /// 99th percentile of one device read (request to decoded values), ms.
    p99_ms: f64,
}

async fn rust_client(a: &Args, ports: &[u16]) -> Outcome {
    let profile = builtin("generic-pdu").unwrap_or_else(|| unreachable!("built-in profile"));
    let devices: Vec<ModbusDevice> = (0..a.devices)
        .map(|d| ModbusDevice {
            id: format!("pdu-{d}"),
            link: ModbusLink::Tcp {
                addr: format!("127.0.0.1:{}", ports[d / a.units_per_port]),
                unit_id: u8::try_from(1 + d % a.units_per_port).unwrap_or(1),
            },
            profile: profile.clone(),
            timeout_ms: 1000,
            pause_after_connect_ms: 0,
            max_read_registers: 125,
            poll_interval_ms: Some(1000),
            control: false,
            write_points: vec![],
        })
        .collect();
    let pool = Arc::new(ModbusPool::from_devices(devices, PoolOptions::default()));
    // Connect every device first, outside the measurement, as the pymodbus run does
    // (1,000 simultaneous loopback connects can take longer than one timeout).
    for _ in 0..5 {
        let mut warm = tokio::task::JoinSet::new();
        for d in 0..a.devices {
            let pool = pool.clone();
            warm.spawn(async move { pool.read_device(d).await.is_ok() });
        }
        let mut all = true;
        while let Some(ok) = warm.join_next().await {
            all &= ok.unwrap_or(false);
        }
        if all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (cpu0, _) = cpu_and_rss();
    let t0 = tokio::time::Instant::now();
    // One collector task per device with its own 1 s interval, as the runtime runs them.
    let start = tokio::time::Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for d in 0..a.devices {
        let pool = pool.clone();
        let rounds = a.seconds;
        let devices = a.devices;
        let spread = a.spread;
        set.spawn(async move {
            // With --spread, collectors start spread over the first second (jittered
            // collectors); by default all tick together, the worst burst.
            let offset = if spread {
                Duration::from_secs(1).mul_f64(d as f64 / devices as f64)
            } else {
                Duration::ZERO
            };
            let mut tick = tokio::time::interval_at(start + offset, Duration::from_secs(1));
            let (mut ok, mut bad) = (0u64, Vec::<String>::new());
            let mut lat = Vec::with_capacity(usize::try_from(rounds).unwrap_or(0));
            for round in 0..rounds {
                tick.tick().await;
                let t = std::time::Instant::now();
                let r = pool.read_device(d).await;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                match r {
                    Ok(r) if r.values.len() == 152 && r.get("inlet_power", 1) == Some(12.5) => {
                        ok += 1;
                    }
                    Ok(_) => bad.push(format!("round {round}: wrong values")),
                    Err(e) => bad.push(format!("round {round}: {}", kind(&e))),
                }
            }
            (ok, bad, lat)
        });
    }
    let (mut reads, mut errors) = (0, 0);
    let mut lat_all: Vec<f64> = Vec::new();
    let mut kinds: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    while let Some(r) = set.join_next().await {
        let (ok, bad, lat) = r.unwrap_or_else(|_| (0, vec!["task failed".into()], vec![]));
        lat_all.extend(lat);
        reads += ok;
        errors += bad.len() as u64;
        for b in bad {
            *kinds.entry(b).or_default() += 1;
        }
    }
    if !kinds.is_empty() {
        println!("rackwarden errors by round and kind: {kinds:?}");
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let (cpu1, rss_kib) = cpu_and_rss();
    drop(pool);
    Outcome {
        name: "rackwarden ModbusPool".into(),
        reads,
        errors,
        wall_s,
        cpu_s: (cpu1.0 + cpu1.1) - (cpu0.0 + cpu0.1),
        sys_s: cpu1.1 - cpu0.1,
        rss_kib,
        p99_ms: p99(lat_all),
    }
}

/// Nearest-rank 99th percentile.
fn p99(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1) * 99 / 100]
}

fn python_client(a: &Args, ports: &[u16]) -> Result<Outcome, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/pymodbus_peer.py");
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    let out = Command::new(&a.python)
        .arg(script)
        .args(["--ports", &list.join(",")])
        .args(["--units-per-port", &a.units_per_port.to_string()])
        .args(["--devices", &a.devices.to_string()])
        .args(["--seconds", &a.seconds.to_string()])
        .args(if a.spread { &["--spread"][..] } else { &[][..] })
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", a.python))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("pymodbus peer said {text:?}: {e}"))?;
    if let Some(e) = v.get("error") {
        return Err(format!("pymodbus peer: {e}"));
    }
    let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
    let int = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    Ok(Outcome {
        name: format!(
            "pymodbus {} async",
            v.get("pymodbus").and_then(|s| s.as_str()).unwrap_or("?")
        ),
        reads: int("reads"),
        errors: int("errors"),
        wall_s: num("wall_s"),
        cpu_s: num("cpu_s"),
        sys_s: num("sys_s"),
        rss_kib: int("rss_kb"),
        p99_ms: num("p99_ms"),
    })
}

fn kind(e: &ModbusError) -> String {
    match e {
        ModbusError::Timeout { .. } => "timeout".into(),
        ModbusError::Connect { source, .. } => format!("connect ({source})"),
        ModbusError::Backoff { .. } => "backoff".into(),
        ModbusError::Transport { source, .. } => format!("transport ({source})"),
        ModbusError::Exception { code, .. } => format!("exception {code}"),
        _ => "other".into(),
    }
}

// Counts below 2^53: exact in f64.
#[allow(clippy::cast_precision_loss)]
fn per_read(o: &Outcome) -> f64 {
    o.cpu_s / o.reads.max(1) as f64
}

/// Reads per second over the polling window (at least `seconds`: the cadence is 1 s).
#[allow(clippy::cast_precision_loss)]
fn report(rows: &[Outcome], seconds: u64) {
    println!(
        "{:<26} {:>7} {:>6} {:>9} {:>8} {:>8} {:>12} {:>8} {:>13}",
        "client",
        "reads",
        "errors",
        "reads/s",
        "cpu_s",
        "(sys_s)",
        "cpu_us/read",
        "p99_ms",
        "peak_rss_MiB"
    );
    for o in rows {
        println!(
            "{:<26} {:>7} {:>6} {:>9.1} {:>8.3} {:>8.3} {:>12.1} {:>8.2} {:>13.1}",
            o.name,
            o.reads,
            o.errors,
            o.reads as f64 / o.wall_s.max(seconds as f64).max(1e-9),
            o.cpu_s,
            o.sys_s,
            per_read(o) * 1e6,
            o.p99_ms,
            o.rss_kib as f64 / 1024.0
        );
    }
    // One machine-readable line per client (bench/run.py reads them).
    for o in rows {
        println!(
            "{}",
            serde_json::json!({
                "client": o.name,
                "reads": o.reads,
                "errors": o.errors,
                "wall_s": o.wall_s,
                "reads_per_s": o.reads as f64 / o.wall_s.max(seconds as f64).max(1e-9),
                "cpu_s": o.cpu_s,
                "cpu_us_per_read": per_read(o) * 1e6,
                "core_fraction": o.cpu_s / o.wall_s.max(seconds as f64).max(1e-9),
                "p99_ms": o.p99_ms,
                "rss_kib": o.rss_kib,
            })
        );
    }
}

async fn run(a: Args) -> Result<(), String> {
    if a.serve {
        return serve(&a).await;
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args([
            "serve",
            "--current-thread",
            "--devices",
            &a.devices.to_string(),
        ])
        .args(["--units-per-port", &a.units_per_port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the simulator: {e}"))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
    }
    let ports: Vec<u16> = line
        .trim()
        .strip_prefix("PORTS ")
        .ok_or(format!("simulator said {line:?}"))?
        .split(',')
        .map(|p| p.parse().map_err(|e| format!("port {p}: {e}")))
        .collect::<Result<_, _>>()?;
    println!(
        "{} simulated generic-pdu devices on {} loopback ports, polled once per second for {} s ({} runtime, {})",
        a.devices,
        ports.len(),
        a.seconds,
        if a.current_thread { "current-thread" } else { "multi-thread" },
        if a.spread { "reads spread over each second" } else { "all devices read together each second" }
    );
    let mut rows = vec![rust_client(&a, &ports).await];
    let py = if a.skip_python {
        Err("skipped (--skip-python)".to_owned())
    } else {
        python_client(&a, &ports)
    };
    drop(child.stdin.take());
    child.wait().ok();
    match py {
        Ok(o) => rows.push(o),
        Err(e) => println!("pymodbus run failed: {e}"),
    }
    report(&rows, a.seconds);
    if let [r, p] = rows.as_slice() {
        println!(
            "CPU per read: pymodbus / rackwarden = {:.1}x",
            per_read(p) / per_read(r).max(1e-12)
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("modbus_bench: {e}");
            return ExitCode::from(64);
        }
    };
    let rt = if args.current_thread {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Runtime::new()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("modbus_bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("modbus_bench: {e}");
            ExitCode::FAILURE
        }
    }
}
