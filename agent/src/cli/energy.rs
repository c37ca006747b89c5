//! `rackwarden energy`: energy per tenant, for mining and at the site meter, per hour,
//! day or month, from the agent's database (docs/energy.md).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::EX_CONFIG;
use crate::energy::report::{self, By, Query};
use crate::energy::{self, store::Store};

#[derive(Debug, Args)]
pub struct EnergyArgs {
    /// The site file (tenants, racks, where the database is).
    #[arg(long)]
    pub config: PathBuf,
    /// One account: a tenant id, `mining` or `site` (default: every account).
    #[arg(long)]
    pub tenant: Option<String>,
    /// From this date or time (`2026-12-01`, `2026-12-01T06:00:00Z`), UTC; default: the
    /// first slot recorded.
    #[arg(long)]
    pub from: Option<String>,
    /// Up to (not including) this date or time, UTC; default: now.
    #[arg(long)]
    pub to: Option<String>,
    /// The period rows are summed over.
    #[arg(long, value_enum, default_value = "day")]
    pub by: By,
    /// CSV (for billing spreadsheets).
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
    /// JSON (an array of rows).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &EnergyArgs) -> ExitCode {
    let site = match rackwarden_config::load(&args.config) {
        Ok(s) => s,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let base = args.config.parent().unwrap_or(Path::new("."));
    let db = energy::database_path(&site, base);
    if !db.exists() {
        eprintln!(
            "no database at {}: the agent has not recorded any energy yet (agent.database_file)",
            db.display()
        );
        return ExitCode::FAILURE;
    }
    match rows(args, &site, &db) {
        Ok(rows) => {
            if args.json {
                match serde_json::to_string_pretty(&rows) {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else if args.csv {
                print!("{}", report::csv(&rows));
            } else {
                print!("{}", report::table(&rows));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(super::EX_USAGE)
        }
    }
}

fn rows(
    args: &EnergyArgs,
    site: &rackwarden_config::Site,
    db: &Path,
) -> Result<Vec<report::Row>, String> {
    let store = Store::open_read_only(db).map_err(|e| e.to_string())?;
    let from = match &args.from {
        Some(s) => report::parse_time(s)?,
        None => store.first_slot().map_err(|e| e.to_string())?.unwrap_or(0),
    };
    let to = match &args.to {
        Some(s) => report::parse_time(s)?,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(u64::MAX / 2, |d| {
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)
            })
            // A slot still filling is shown up to now.
            .saturating_add(crate::energy::meter::SLOT_MS),
    };
    if to <= from {
        return Err(format!(
            "--to ({}) is not after --from ({})",
            report::rfc3339(to),
            report::rfc3339(from)
        ));
    }
    let q = Query {
        account: args.tenant.clone(),
        from,
        to,
        by: args.by,
    };
    report::report(&store, site, &q).map_err(|e| e.to_string())
}
