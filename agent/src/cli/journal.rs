//! `rackwarden journal` (the commands the agent sent, from its database) and
//! `rackwarden state` (the control intent in force). Both read the database read-only,
//! beside a running agent (WAL: they never hold it back).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::EX_CONFIG;
use crate::control::Millis;
use crate::energy::report::rfc3339;
use crate::store::journal::{JournalQuery, JournalRow};
use crate::store::Store;

#[derive(Debug, Args)]
pub struct JournalArgs {
    /// The site file (where the database is).
    #[arg(long)]
    pub config: PathBuf,
    /// One device: a miner or GPU-node id.
    #[arg(long)]
    pub device: Option<String>,
    /// One node or zone: the constraint the commands served.
    #[arg(long)]
    pub node: Option<String>,
    /// Only the last span, e.g. `1h`, `30min`, `7days` (counted back from now, or from the
    /// latest row when the agent's timeline runs ahead of the clock, as in the demo).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub since: Option<std::time::Duration>,
    /// One lever: power_target, sleep, outlet_off, gpu_cap, power_target_raise, wake,
    /// outlet_on, gpu_cap_lift.
    #[arg(long)]
    pub lever: Option<String>,
    /// At most this many rows (the latest).
    #[arg(long)]
    pub limit: Option<usize>,
    /// JSON lines (the export's format), one row per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StateArgs {
    /// The site file (where the database is).
    #[arg(long)]
    pub config: PathBuf,
    /// Every miner, GPU node, node and zone, not only those curtailed, capped or out of
    /// their normal band.
    #[arg(long)]
    pub all: bool,
    /// JSON.
    #[arg(long)]
    pub json: bool,
}

const LEVERS: &[&str] = &[
    "power_target",
    "sleep",
    "outlet_off",
    "gpu_cap",
    "power_target_raise",
    "wake",
    "outlet_on",
    "gpu_cap_lift",
];

/// Opens the site's database read-only, or says why not (exit code).
fn open(config: &Path) -> Result<Store, ExitCode> {
    let site = match rackwarden_config::load(config) {
        Ok(s) => s,
        Err(errors) => {
            eprintln!("{errors}");
            return Err(ExitCode::from(EX_CONFIG));
        }
    };
    let base = config.parent().unwrap_or(Path::new("."));
    let db = crate::energy::database_path(&site, base);
    if !db.exists() {
        eprintln!(
            "no database at {} (agent.database_file): the agent has not run on this site yet",
            db.display()
        );
        return Err(ExitCode::FAILURE);
    }
    Store::open_read_only(&db).map_err(|e| {
        eprintln!("{e}");
        ExitCode::FAILURE
    })
}

fn wall_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub fn run_journal(args: &JournalArgs) -> ExitCode {
    if let Some(l) = &args.lever {
        if !LEVERS.contains(&l.as_str()) {
            eprintln!("--lever {l}: not a lever (one of {})", LEVERS.join(", "));
            return ExitCode::from(super::EX_USAGE);
        }
    }
    let store = match open(&args.config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let since_ms = match args.since {
        None => None,
        Some(d) => {
            let latest = match store.journal_last_ms() {
                Ok(t) => t.unwrap_or(0),
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let span = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            Some(wall_ms().max(latest).saturating_sub(span))
        }
    };
    let q = JournalQuery {
        device: args.device.clone(),
        node: args.node.clone(),
        lever: args.lever.clone(),
        since_ms,
        limit: args.limit,
    };
    let rows = match store.journal(&q) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        let mut out = String::new();
        for r in &rows {
            if let Ok(line) = serde_json::to_string(r) {
                out.push_str(&line);
                out.push('\n');
            }
        }
        print!("{out}");
    } else {
        print!("{}", journal_table(&rows));
    }
    ExitCode::SUCCESS
}

fn kw(w: f64) -> String {
    format!("{:.1}", w / 1000.0)
}

/// The journal as an aligned table.
pub fn journal_table(rows: &[JournalRow]) -> String {
    let mut lines = vec![[
        "time (UTC)".to_owned(),
        "device".to_owned(),
        "node".to_owned(),
        "lever".to_owned(),
        "kW".to_owned(),
        "why".to_owned(),
        "result".to_owned(),
    ]];
    for r in rows {
        let result = match (&r.result, r.confirmed) {
            (Some(x), _) => x.clone(),
            (None, true) => "confirmed".to_owned(),
            (None, false) => "escalated".to_owned(),
        };
        lines.push([
            rfc3339(r.now_ms),
            r.device.clone(),
            if r.node.is_empty() {
                "-".to_owned()
            } else {
                r.node.clone()
            },
            r.lever.clone(),
            format!("{} -> {}", kw(r.from_w), kw(r.to_w)),
            r.reason.clone(),
            result,
        ]);
    }
    let mut out = align(&lines, "");
    out.push_str(&format!("{} row(s)\n", rows.len()));
    out
}

pub fn run_state(args: &StateArgs) -> ExitCode {
    let store = match open(&args.config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let view = match store.intent_view(args.all) {
        Ok(Some(v)) => v,
        Ok(None) => {
            eprintln!(
                "{}: no control intent committed yet (the agent has not decided on this site)",
                store.path().display()
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&view) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    let mut out = format!(
        "site {}: intent as of {} ({})\n",
        view.site_id,
        rfc3339(view.last_now_ms),
        store.path().display()
    );
    let shed = view.miners.iter().filter(|m| m.intent != "normal").count();
    out.push_str(&format!(
        "\nminers: {shed} curtailed{}\n",
        if args.all {
            format!(" of {}", view.miners.len())
        } else {
            String::new()
        }
    ));
    let mut rows = vec![[
        "miner".to_owned(),
        "intent".to_owned(),
        "since (UTC)".to_owned(),
        "in flight".to_owned(),
        "why".to_owned(),
    ]];
    for m in &view.miners {
        let intent = match (m.intent.as_str(), m.target_w) {
            ("target", Some(w)) => format!("target {} kW", kw(w)),
            ("outlet_off", _) => "outlet off".to_owned(),
            (i, _) => i.to_owned(),
        };
        let why = match (&m.last_lever, &m.reason) {
            (Some(l), Some(r)) => format!(
                "{l}: {r}{}",
                m.last_node
                    .as_deref()
                    .filter(|n| !n.is_empty())
                    .map(|n| format!(" on {n}"))
                    .unwrap_or_default()
            ),
            _ => "-".to_owned(),
        };
        rows.push([
            m.id.clone(),
            intent,
            if m.since_ms == 0 {
                "-".to_owned()
            } else {
                rfc3339(m.since_ms)
            },
            m.pending.clone().unwrap_or_else(|| "-".to_owned()),
            why,
        ]);
    }
    if rows.len() > 1 {
        out.push_str(&align(&rows, "  "));
    }
    if !view.gpus.is_empty() {
        out.push_str("\nGPU nodes:\n");
        for g in &view.gpus {
            out.push_str(&format!(
                "  {}  {}{}\n",
                g.id,
                g.cap_w.map_or_else(
                    || "defaults".to_owned(),
                    |w| format!("capped at {w:.0} W per GPU")
                ),
                if g.pending {
                    " (awaiting read-back)"
                } else {
                    ""
                }
            ));
        }
    }
    if !view.nodes.is_empty() {
        out.push_str("\nnodes out of their normal band:\n");
        for (id, band) in &view.nodes {
            out.push_str(&format!("  {id}  {band}\n"));
        }
    }
    if !view.zones.is_empty() {
        out.push_str("\nzones without N+1:\n");
        for (id, n) in &view.zones {
            out.push_str(&format!(
                "  {id}  {}\n",
                if *n {
                    "capacity still covers the load"
                } else {
                    "capacity below the load"
                }
            ));
        }
    }
    print!("{out}");
    ExitCode::SUCCESS
}

/// Rows as columns padded to their widest cell, each line after `indent`.
fn align<const N: usize>(rows: &[[String; N]], indent: &str) -> String {
    let mut width = [0usize; N];
    for l in rows {
        for (w, c) in width.iter_mut().zip(l) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for l in rows {
        let cells: Vec<String> = l
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(indent);
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
