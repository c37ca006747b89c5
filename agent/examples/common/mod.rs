//! What the benchmarks that run the example site live share (`bench_reaction`,
//! `bench_grid`): their arguments, the site moved to loopback addresses of their own,
//! percentiles. Included with `#[path = "common/mod.rs"] mod common;`.

use std::path::{Path, PathBuf};

use rackwarden_config::Site;
use rackwarden_sim::site::SIM_MINER_PASSWORD;

/// `<site.toml> [--key value]... [--flag]...`
pub(crate) struct Args(Vec<String>);

impl Args {
    pub(crate) fn from_env() -> Args {
        Args(std::env::args().skip(1).collect())
    }

    /// The site file: the first argument unless it is an option, else the example site.
    pub(crate) fn site_path(&self) -> PathBuf {
        self.0
            .first()
            .filter(|a| !a.starts_with("--"))
            .map_or_else(|| PathBuf::from("examples/site.toml"), PathBuf::from)
    }

    /// The value after `key`, if given.
    pub(crate) fn opt(&self, key: &str) -> Option<String> {
        self.0
            .iter()
            .position(|a| a == key)
            .and_then(|i| self.0.get(i + 1))
            .cloned()
    }

    /// The value after `key` parsed, or `default`.
    pub(crate) fn parsed<T: std::str::FromStr>(&self, key: &str, default: T) -> T {
        self.opt(key)
            .and_then(|t| t.parse().ok())
            .unwrap_or(default)
    }

    pub(crate) fn flag(&self, key: &str) -> bool {
        self.0.iter().any(|a| a == key)
    }
}

/// The site file moved to loopback addresses of its own (127.0.0.1 -> 127.0.`a`.1,
/// 127.1.x.y -> 127.`b`.x.y), so a benchmark never collides with a demo or a test
/// serving the example site at the same time; its token files are copied beside it, and
/// the simulated miners' password is set where the site reads it from the environment.
pub(crate) fn private_copy(path: &Path, dir: &Path, (a, b): (u8, u8)) -> Result<Site, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = text
        .replace("127.0.0.1", &format!("127.0.{a}.1"))
        .replace("\"127.1.", &format!("\"127.{b}."));
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    for entry in std::fs::read_dir(base)
        .map_err(|e| e.to_string())?
        .flatten()
    {
        let p = entry.path();
        if p.extension().is_some_and(|x| x == "token") {
            if let Some(name) = p.file_name() {
                std::fs::copy(&p, dir.join(name)).map_err(|e| format!("{}: {e}", p.display()))?;
            }
        }
    }
    let site = rackwarden_config::load_str(&text, &dir.join("site.toml"), dir)
        .map_err(|e| e.to_string())?;
    for m in &site.miners {
        if let Some(var) = m.credentials.as_ref().and_then(|c| c.password_env.as_ref()) {
            if std::env::var_os(var).is_none() {
                std::env::set_var(var, SIM_MINER_PASSWORD);
            }
        }
    }
    Ok(site)
}

/// The value at `per_mille` of `sorted` (NaN when empty).
pub(crate) fn percentile(sorted: &[f64], per_mille: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(sorted.len() - 1) * per_mille / 1000]
}
