//! `rackwarden gpu-node`: runs on each GPU host and serves that host's GPUs (NVML, or
//! simulated ones with `--simulate`) to the site agent over HTTP+JSON, authenticated by
//! the shared token in `--token-file`.
//!
//! Without NVML on the host it still starts and serves `nvml_available = false`, so the
//! site agent reserves the rack's rated maximum instead of losing the host.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use rackwarden_protocols::gpu::node::{serve_with_shutdown, Token};
use rackwarden_protocols::gpu::nvml::NvmlSource;
use rackwarden_protocols::gpu::{GpuError, GpuSource};
use rackwarden_sim::gpu::{LoadProfile, SimGpus, SimSpec};

use super::EX_CONFIG;

/// The id this node's own log lines and errors carry.
const NODE_ID: &str = "gpu-node";

#[derive(Debug, Clone, clap::Args)]
pub struct GpuNodeArgs {
    /// Address to serve on, e.g. 0.0.0.0:17001.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// File holding the token the site agent must present (the same file as the site
    /// config's `token_file`); chmod 600.
    #[arg(long, value_name = "FILE")]
    pub token_file: PathBuf,
    /// Serve simulated GPUs instead of NVML: idle, training, inference, inference-day,
    /// training-swings, job-start or job-start@SECONDS.
    #[arg(long, value_name = "PROFILE")]
    pub simulate: Option<LoadProfile>,
    /// Number of simulated GPUs.
    #[arg(long, default_value_t = 8, requires = "simulate",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub gpus: u32,
    /// Seed of the simulated load (same seed, same load).
    #[arg(long, default_value_t = 0, requires = "simulate")]
    pub seed: u64,
}

/// Runs the node until SIGTERM or SIGINT. Exit codes: 0 after a signal, 78 for an
/// unusable token file, 1 when the runtime or the listener cannot start.
pub(super) fn run(args: GpuNodeArgs) -> ExitCode {
    // Validate before binding any port (STYLE.md, 9).
    let token = match Token::from_file(NODE_ID, &args.token_file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}", error_chain(&e));
            return ExitCode::from(EX_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gpu-node: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(listen = %args.listen, error = %e, "gpu-node cannot listen");
                return ExitCode::FAILURE;
            }
        };
        match serve(&args, listener, token, shutdown_signal()).await {
            Ok(()) => {
                tracing::info!("gpu-node stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(listen = %args.listen, error = %e, "gpu-node server failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// The GPU source the arguments ask for.
pub(super) fn source(args: &GpuNodeArgs) -> Arc<dyn GpuSource> {
    match args.simulate {
        Some(profile) => Arc::new(SimGpus::new(
            NODE_ID,
            profile,
            SimSpec::h100(args.gpus, args.seed),
        )),
        None => Arc::new(NvmlSource::load(NODE_ID)),
    }
}

/// Serves on an already bound listener until `shutdown` completes.
pub(super) async fn serve(
    args: &GpuNodeArgs,
    listener: tokio::net::TcpListener,
    token: Token,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let source = source(args);
    let addr = listener.local_addr()?;
    tracing::info!(
        listen = %addr,
        simulate = ?args.simulate,
        gpus = args.simulate.map(|_| args.gpus),
        "gpu-node serving"
    );
    serve_with_shutdown(listener, source, token, shutdown).await
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops gpu-node");
                tokio::signal::ctrl_c().await.ok();
            }
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.ok();
    }
}

fn error_chain(e: &GpuError) -> String {
    let mut s = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;
    use rackwarden_protocols::gpu::node::GpuNodeClient;
    use rackwarden_protocols::gpu::GpuTarget;

    use super::*;

    #[derive(Debug, Parser)]
    struct Wrap {
        #[command(flatten)]
        args: GpuNodeArgs,
    }

    fn parse(argv: &[&str]) -> Result<GpuNodeArgs, clap::Error> {
        Wrap::try_parse_from(std::iter::once("gpu-node").chain(argv.iter().copied()))
            .map(|w| w.args)
    }

    fn token_file(name: &str, contents: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rw-gpu-node-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("token");
        std::fs::write(&p, contents).unwrap();
        p
    }

    /// `--help` names every load profile `--simulate` accepts, and each one it names parses.
    #[test]
    fn simulate_help_names_every_profile() {
        use clap::CommandFactory;
        let help = Wrap::command().render_long_help().to_string();
        for name in [
            "idle",
            "training",
            "inference",
            "inference-day",
            "training-swings",
            "job-start",
        ] {
            assert!(help.contains(name), "--simulate help misses {name}: {help}");
            assert!(name.parse::<LoadProfile>().is_ok(), "{name}");
        }
    }

    #[test]
    fn arguments_parse_and_bad_ones_are_refused() {
        let a = parse(&[
            "--listen",
            "127.0.0.1:17001",
            "--token-file",
            "t",
            "--simulate",
            "training",
            "--gpus",
            "72",
        ])
        .unwrap();
        assert_eq!(a.simulate, Some(LoadProfile::Training));
        assert_eq!(a.gpus, 72);
        assert!(parse(&["--listen", "nowhere", "--token-file", "t"]).is_err());
        assert!(parse(&[
            "--listen",
            "127.0.0.1:1",
            "--token-file",
            "t",
            "--simulate",
            "mining"
        ])
        .is_err());
        assert!(parse(&[
            "--listen",
            "127.0.0.1:1",
            "--token-file",
            "t",
            "--gpus",
            "4"
        ])
        .is_err());
        assert!(parse(&[
            "--listen",
            "127.0.0.1:1",
            "--token-file",
            "t",
            "--simulate",
            "idle",
            "--gpus",
            "0"
        ])
        .is_err());
        assert!(parse(&["--token-file", "t"]).is_err());
    }

    #[test]
    fn unusable_token_file_exits_78_before_binding() {
        let empty = token_file("empty", "\n");
        let args = parse(&[
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            empty.to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!(run(args), ExitCode::from(EX_CONFIG));
        std::fs::remove_dir_all(empty.parent().unwrap()).unwrap();
        let args = parse(&[
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            "/nonexistent/rackwarden/token",
        ])
        .unwrap();
        assert_eq!(run(args), ExitCode::from(EX_CONFIG));
    }

    /// Serves with `extra` arguments, reads once and, when `cap` is true, sends a 400 W
    /// cap to every GPU (never on real NVML: it would cap the host's GPUs).
    async fn serve_and_read(
        extra: &[&str],
        name: &str,
        cap: bool,
    ) -> (bool, usize, Option<GpuError>) {
        let path = token_file(name, "node-secret\n");
        let mut argv = vec![
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            path.to_str().unwrap(),
        ];
        argv.extend_from_slice(extra);
        let args = parse(&argv).unwrap();
        let token = Token::from_file(NODE_ID, &args.token_file).unwrap();
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
        let listener = tokio::net::TcpListener::bind(args.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            serve(&args, listener, token, async move {
                stopped.await.ok();
            })
            .await
        });
        let client = GpuNodeClient::new(
            "gpunode-test",
            addr,
            Token::new("node-secret"),
            Duration::from_secs(5),
        )
        .unwrap();
        let reading = client.read().await.unwrap();
        let cap = if cap {
            client.set_power_limit(GpuTarget::All, 400.0).await.err()
        } else {
            None
        };
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        (reading.nvml_available, reading.gpus.len(), cap)
    }

    #[tokio::test]
    async fn simulated_node_serves_its_gpus_and_takes_caps() {
        let (available, gpus, cap) =
            serve_and_read(&["--simulate", "training", "--gpus", "4"], "sim", true).await;
        assert!(available);
        assert_eq!(gpus, 4);
        assert!(cap.is_none(), "{cap:?}");
    }

    #[tokio::test]
    async fn node_starts_and_serves_without_libnvidia_ml() {
        // On CI (no NVIDIA driver) this is the no-NVML path: the node still starts and
        // says so, and a cap is refused rather than pretended.
        let nvml_here = NvmlSource::load("probe").available();
        let (available, gpus, cap) = serve_and_read(&[], "nvml", !nvml_here).await;
        assert_eq!(available, nvml_here);
        if !nvml_here {
            assert_eq!(gpus, 0);
            assert!(
                matches!(cap, Some(GpuError::NvmlUnavailable { .. })),
                "{cap:?}"
            );
        }
    }
}
