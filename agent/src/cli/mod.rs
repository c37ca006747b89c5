//! The command line: `check-config`, and the commands of the runtime.
//!
//! Exit codes follow sysexits, as operators' scripts expect: 0 ok, 64 usage, 78 bad
//! config, 1 any other failure.

mod check;
pub mod demo;
pub mod energy;
mod gpu_node;
pub mod journal;
mod probe;
pub mod run;
pub mod scan;
pub mod sim;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use rackwarden_config::LogFormat;

/// Exit code for a bad command line (sysexits EX_USAGE).
pub const EX_USAGE: u8 = 64;
/// Exit code for an invalid config (sysexits EX_CONFIG).
pub const EX_CONFIG: u8 = 78;

#[derive(Debug, Parser)]
#[command(
    name = "rackwarden",
    version,
    about = "Keeps GPU racks inside their power and cooling budgets by shedding mining load first"
)]
pub struct Cli {
    /// Log format (overrides the config's agent.log_format).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(v: LogFormatArg) -> Self {
        match v {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a site file and print a one-screen summary.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Serve this GPU host's GPUs (NVML, or simulated) to the site agent.
    GpuNode(gpu_node::GpuNodeArgs),
    /// Poll every Modbus device of a site once and print what it reads (never writes).
    Probe {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the agent on a site (live, or --dry-run to decide and log without writing).
    Run(run::RunArgs),
    /// Serve a site's devices on loopback with a physics model and a scenario.
    Sim(sim::SimArgs),
    /// The agent against its own simulated example site, with a summary at the end.
    Demo(demo::DemoArgs),
    /// Energy per tenant, for mining and at the site meter, from the agent's database.
    Energy(energy::EnergyArgs),
    /// The commands the agent sent (or would have, dry), from its database.
    Journal(journal::JournalArgs),
    /// The control intent in force: curtailed miners, levers, since when, why.
    State(journal::StateArgs),
    /// Find miners on networks and print them as site-file TOML (`[[miners]]`).
    Scan(scan::ScanArgs),
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EX_USAGE } else { 0 };
            e.print().ok();
            return ExitCode::from(code);
        }
    };
    // `run` logs in the site file's format unless the command line says otherwise; the
    // demo logs to a file unless `--verbose` (its terminal holds the timeline).
    let explicit = cli.log_format.is_some();
    if !matches!(cli.command, Command::Run(_) | Command::Demo(_)) || explicit {
        crate::logging::init(cli.log_format.map_or(LogFormat::Text, Into::into));
    }
    match cli.command {
        Command::CheckConfig { config } => check::run(&config),
        Command::GpuNode(args) => gpu_node::run(args),
        Command::Probe { config } => probe::run(&config),
        Command::Run(args) => run::run(args, explicit),
        Command::Sim(args) => sim::run(args),
        Command::Demo(args) => demo::run(args, explicit),
        Command::Energy(args) => energy::run(&args),
        Command::Journal(args) => journal::run_journal(&args),
        Command::State(args) => journal::run_state(&args),
        Command::Scan(args) => scan::run(&args),
    }
}
