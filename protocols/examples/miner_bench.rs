//! Benchmark: one full poll of 1,000 and 10,000 simulated miners (a mix of all six
//! firmwares), reporting wall time, client CPU per miner (getrusage) and peak RSS.
//!
//! The simulator runs in a child process (this same binary with `--serve`), so the
//! figures are the client's alone. Each miner has its own loopback address
//! (127.<net>.<y>.<z>) on port 4028 (HTTP on 8080 where the firmware needs it), as real
//! miners do, which also lets pyasic (fixed to port 4028) poll the same fleet.
//!
//! ```text
//! cargo run --release -p rackwarden-protocols --example miner_bench -- [--counts 1000,10000]
//!     [--concurrency 256] [--threads 0] [--only braiins,luxos,...] [--pyasic PYTHON]
//!     [--pyasic-sample 300]
//! ```
//! Goals (issue 5): 10,000 miners in <= 1 s wall, <= 100 us CPU per miner, <= 64 MiB RSS.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use nix::sys::resource::{getrlimit, getrusage, setrlimit, Resource, UsageWho};
use rackwarden_config::Firmware;
use rackwarden_protocols::miner::{DriverFactory, DriverOptions, MinerDriver};
use rackwarden_sim::miner::{MinerSim, SimMinerSpec, SimOptions};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The fleet's firmware mix, in rotation.
const MIX: [Firmware; 6] = [
    Firmware::Braiins,
    Firmware::Luxos,
    Firmware::Whatsminer,
    Firmware::Vnish,
    Firmware::AntminerStock,
    Firmware::Avalon,
];

fn ip_of(net: u8, i: usize) -> Res<IpAddr> {
    let y = u8::try_from(i / 250)?;
    let z = u8::try_from(i % 250 + 1)?;
    Ok(IpAddr::V4(Ipv4Addr::new(127, net, y, z)))
}

fn fleet(net: u8, n: usize, mix: &[Firmware]) -> Res<Vec<SimMinerSpec>> {
    (0..n)
        .map(|i| {
            let fw = mix[i % mix.len()];
            let ip = ip_of(net, i)?;
            let http =
                (fw.needs_http() || fw == Firmware::Braiins).then_some(SocketAddr::new(ip, 8080));
            Ok(SimMinerSpec::new(
                format!("bench-{i:05}"),
                fw,
                SocketAddr::new(ip, 4028),
                http,
            ))
        })
        .collect()
}

fn raise_nofile() -> Res<u64> {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

/// Child: serve `n` miners until stdin closes.
fn serve(net: u8, n: usize, mix: &[Firmware]) -> Res<()> {
    raise_nofile()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let sim = MinerSim::start(fleet(net, n, mix)?, SimOptions::default()).await?;
        println!("READY");
        std::io::stdout().flush()?;
        // Wait for the parent to close our stdin.
        tokio::task::spawn_blocking(|| {
            let mut s = String::new();
            while std::io::stdin()
                .read_line(&mut s)
                .map(|n| n > 0)
                .unwrap_or(false)
            {}
        })
        .await?;
        sim.shutdown().await;
        Ok(())
    })
}

struct Cpu {
    cpu_s: f64,
    max_rss_kib: i64,
}

fn cpu_now() -> Res<Cpu> {
    let u = getrusage(UsageWho::RUSAGE_SELF)?;
    let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok(Cpu {
        cpu_s: tv(u.user_time()) + tv(u.system_time()),
        max_rss_kib: u.max_rss(),
    })
}

async fn poll_all(drivers: &[Arc<dyn MinerDriver>], concurrency: usize) -> (usize, Vec<String>) {
    let results: Vec<_> = stream::iter(drivers.iter().cloned())
        .map(|d| async move { d.poll().await })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut ok = 0;
    let mut errs = Vec::new();
    for r in results {
        match r {
            Ok(t) if t.power_w.is_some() && t.hashrate_ths.is_some() => ok += 1,
            Ok(t) => errs.push(format!("{}: incomplete reading", t.miner_id)),
            Err(e) => errs.push(e.to_string()),
        }
    }
    (ok, errs)
}

// Long on purpose: the benchmark's steps in the order its figures print.
#[allow(clippy::too_many_lines)]
fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    // `--only braiins,luxos`: restrict the mix (to see one firmware's cost).
    let only = arg("--only").unwrap_or_default();
    let mix: Vec<Firmware> = MIX
        .into_iter()
        .filter(|f| only.is_empty() || only.split(',').any(|o| o == f.name()))
        .collect();
    if mix.is_empty() {
        return Err(format!("--only {only}: no such firmware").into());
    }
    if let Some(n) = arg("--serve") {
        let net = arg("--net").unwrap_or_else(|| "50".into()).parse()?;
        return serve(net, n.parse()?, &mix);
    }
    let counts: Vec<usize> = arg("--counts")
        .unwrap_or_else(|| "1000,10000".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let concurrency: usize = arg("--concurrency")
        .unwrap_or_else(|| "256".into())
        .parse()?;
    let pyasic = arg("--pyasic");
    let py_sample: usize = arg("--pyasic-sample")
        .unwrap_or_else(|| "300".into())
        .parse()?;
    let nofile = raise_nofile()?;
    println!(
        "RLIMIT_NOFILE={nofile} concurrency={concurrency} mix={:?}",
        mix.iter().map(|f| f.name()).collect::<Vec<_>>()
    );

    // `--threads 0`: a current-thread runtime; N: N worker threads (default 0).
    let threads: usize = arg("--threads").unwrap_or_else(|| "0".into()).parse()?;
    let rt = if threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    println!("client runtime threads={threads} (0: current-thread)");
    for (k, &n) in counts.iter().enumerate() {
        let net = 50 + u8::try_from(k)?;
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                "--serve",
                &n.to_string(),
                "--net",
                &net.to_string(),
                "--only",
                &only,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        let out = child.stdout.take().ok_or("no child stdout")?;
        BufReader::new(out).read_line(&mut line)?;
        if line.trim() != "READY" {
            return Err(format!("simulator did not start: {line:?}").into());
        }
        let factory = DriverFactory::new(DriverOptions {
            reply_timeout: Duration::from_secs(5),
            ..DriverOptions::default()
        })?;
        let before_build = cpu_now()?;
        let drivers: Vec<Arc<dyn MinerDriver>> = rt.block_on(async {
            let sim_specs = fleet(net, n, &mix)?;
            let mut v = Vec::with_capacity(n);
            for s in sim_specs {
                let m = rackwarden_config::Miner {
                    id: s.id.clone(),
                    host: s.api_addr.ip().to_string(),
                    port: s.api_addr.port(),
                    http_port: s.http_addr.map(|a| a.port()),
                    firmware: s.firmware,
                    rack: 0,
                    nominal_w: s.nominal_w,
                    min_w: Some(s.min_w),
                    idle_w: s.idle_w,
                    efficiency_j_th: Some(s.efficiency_j_th),
                    credentials: None,
                    outlet: None,
                };
                v.push(factory.build(&m)?);
            }
            Ok::<_, Box<dyn std::error::Error>>(v)
        })?;
        let after_build = cpu_now()?;
        for round in ["cold", "warm"] {
            let c0 = cpu_now()?;
            let t0 = Instant::now();
            let (ok, errs) = rt.block_on(poll_all(&drivers, concurrency));
            let wall = t0.elapsed();
            let c1 = cpu_now()?;
            let cpu_us = (c1.cpu_s - c0.cpu_s) * 1e6 / n as f64;
            println!(
                "miners={n} poll={round} ok={ok} failed={} wall_ms={:.0} client_cpu_per_miner_us={cpu_us:.1} peak_rss_mib={:.1}",
                errs.len(),
                wall.as_secs_f64() * 1e3,
                c1.max_rss_kib as f64 / 1024.0
            );
            for e in errs.iter().take(3) {
                println!("  error: {e}");
            }
        }
        println!(
            "miners={n} driver_build_cpu_ms={:.1}",
            (after_build.cpu_s - before_build.cpu_s) * 1e3
        );
        if let Some(py) = &pyasic {
            let sample = py_sample.min(n);
            let script =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/pyasic_peer.py");
            let ips: Vec<String> = (0..sample)
                .map(|i| ip_of(net, i).map(|ip| format!("{ip}:{}", mix[i % mix.len()].name())))
                .collect::<Res<_>>()?;
            let t0 = Instant::now();
            let out = Command::new(py).arg(&script).args(&ips).output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            println!(
                "pyasic miners={sample} wall_ms={:.0} {}",
                t0.elapsed().as_secs_f64() * 1e3,
                text.trim()
            );
            if let Some(py_cpu) = text
                .split_whitespace()
                .find_map(|w| w.strip_prefix("cpu_per_miner_us="))
                .and_then(|v| v.parse::<f64>().ok())
            {
                // Ratio against this run's warm poll of the same fleet.
                let c0 = cpu_now()?;
                rt.block_on(poll_all(&drivers, concurrency));
                let ours = (cpu_now()?.cpu_s - c0.cpu_s) * 1e6 / n as f64;
                println!(
                    "pyasic_cpu_per_miner_us={py_cpu:.0} ours={ours:.1} ratio={:.0}x",
                    py_cpu / ours
                );
                for l in String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .filter(|l| l.contains("pyasic "))
                {
                    println!("{l}");
                }
            } else {
                println!(
                    "pyasic stderr: {}",
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                );
            }
        }
        drop(drivers);
        drop(child.stdin.take());
        child.wait()?;
    }
    Ok(())
}
