//! `rackwarden probe --config FILE`: reads every Modbus device of the site once and
//! prints a table (device, point, value, unit, latency). Never writes. Use it to check a
//! register map against a real device before trusting it.

use std::path::Path;
use std::process::ExitCode;

use rackwarden_protocols::modbus::probe::{format_table, probe_site};

use super::EX_CONFIG;

/// Exit codes: 0 every device answered, 1 some did not (their rows say why), 78 bad
/// config.
pub(super) fn run(path: &Path) -> ExitCode {
    let site = match rackwarden_config::load(path) {
        Ok(s) => s,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    if site.modbus_devices.is_empty() {
        println!("{}: no Modbus devices to probe", path.display());
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rows = rt.block_on(probe_site(&site));
    print!("{}", format_table(&rows));
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| r.point.is_empty())
        .map(|r| r.device.as_str())
        .collect();
    let missing = rows
        .iter()
        .filter(|r| !r.point.is_empty() && r.value.is_err())
        .count();
    if failed.is_empty() {
        println!(
            "{} device(s) answered; {} value(s) not available",
            site.modbus_devices.len(),
            missing
        );
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "{} of {} device(s) did not answer: {}",
            failed.len(),
            site.modbus_devices.len(),
            failed.join(", ")
        );
        ExitCode::FAILURE
    }
}
