//! `rackwarden sim`: serve a site file's devices on loopback with a scenario, until
//! SIGTERM / SIGINT or `--duration-s` of virtual time.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tracing::{error, info};

use rackwarden_sim::site::{Scenario, SiteSim};

#[derive(Debug, Args)]
pub struct SimArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// A built-in scenario (steady, gpu-surge, cooling-trip, meter-silent,
    /// miner-ignores-sleep, restart-mid-curtail, inference-day, training-swings, colo,
    /// colo-surge, demo) or a TOML file.
    #[arg(long, default_value = "steady")]
    pub scenario: String,
    /// Virtual time runs this many times faster than real time.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Stop after this many virtual seconds (default: run until signalled).
    #[arg(long)]
    pub duration_s: Option<f64>,
}

pub fn run(args: SimArgs) -> ExitCode {
    let site = match rackwarden_config::load(&args.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(super::EX_CONFIG);
        }
    };
    let scenario = match Scenario::load(&args.scenario) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(super::EX_USAGE);
        }
    };
    let Ok(rt) = tokio::runtime::Runtime::new() else {
        return ExitCode::FAILURE;
    };
    rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let sim = match SiteSim::start(&site, scenario, args.speed).await {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "simulator failed to start");
                return ExitCode::FAILURE;
            }
        };
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return ExitCode::FAILURE;
        };
        let limit = args
            .duration_s
            .map(|d| Duration::from_secs_f64((d / args.speed.max(1e-3)).max(0.0)));
        let end = async {
            match limit {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            () = end => {}
        }
        let writes = sim.modbus_writes().len();
        let commanded = sim.miner_commands().len();
        info!(
            event = "sim.stopped",
            modbus_writes = writes,
            miners_commanded = commanded,
            "simulator stopped"
        );
        // A line for scripts (the hil-tests read it).
        println!("sim summary: modbus_writes={writes} miners_commanded={commanded}");
        sim.shutdown().await;
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Debug, Parser)]
    struct Wrap {
        #[command(flatten)]
        args: SimArgs,
    }

    /// `--help` lists every built-in scenario (the list grows with the simulator).
    #[test]
    fn scenario_help_lists_every_builtin() {
        let help = Wrap::command().render_long_help().to_string();
        // Whole words only: `colo` must be listed on its own, not as part of `colo-surge`.
        let words: Vec<&str> = help
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .collect();
        for name in rackwarden_sim::site::scenario::BUILTIN {
            assert!(
                words.contains(name),
                "--scenario help misses {name}: {help}"
            );
        }
    }
}
