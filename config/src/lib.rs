//! The rackwarden site model.
//!
//! A site file (TOML) describes the power tree (site -> feeds -> rows/RPPs -> racks),
//! the cooling zones, the Modbus devices with their register maps, the miners, the GPU
//! hosts, the control policy and the agent's own settings. The pipeline is
//! [`raw::RawConfig`] (serde, unknown fields refused) -> [`validate::validate`] (every
//! error at once, each with its field path) -> [`Site`], the only type the runtime
//! accepts. [`load`] runs the pipeline on a file and places each error at its line.

pub mod locate;
pub mod model;
pub mod policy;
pub mod profile;
pub mod raw;
pub mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use model::*;
pub use policy::{AgentSettings, GpuReserve, HaSettings, LogFormat, Policy};
pub use raw::RawConfig;
pub use validate::Issue;

/// One config error, placed in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Field path, e.g. `racks[5].budget_kw` (empty for whole-file problems).
    pub path: String,
    pub message: String,
    /// 1-based line and column, where the file gives them.
    pub line: Option<usize>,
    pub col: Option<usize>,
}

/// Every error of a config file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    /// One error per line: `FILE:LINE:COL: field.path: message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match (e.line, e.col) {
                (Some(l), Some(c)) => write!(f, "{file}:{l}:{c}: ")?,
                _ => write!(f, "{file}: ")?,
            }
            if !e.path.is_empty() {
                write!(f, "{}: ", e.path)?;
            }
            write!(f, "{}", e.message)?;
        }
        Ok(())
    }
}

/// Parses and validates a site file's text. `file` names it in errors; `base` is where
/// relative paths in it resolve.
pub fn load_str(text: &str, file: &Path, base: &Path) -> Result<Site, ConfigErrors> {
    let fail = |errors| ConfigErrors {
        file: file.to_path_buf(),
        errors,
    };
    let doc = match toml_edit::Document::parse(text.to_owned()) {
        Ok(d) => d,
        Err(e) => {
            let (line, col) = e
                .span()
                .map(|s| locate::line_col(text, s.start))
                .map_or((None, None), |(l, c)| (Some(l), Some(c)));
            return Err(fail(vec![ConfigError {
                path: String::new(),
                message: first_line(e.message()),
                line,
                col,
            }]));
        }
    };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let (path, line, col) = match e.span() {
                Some(s) => {
                    let (l, c) = locate::line_col(text, s.start);
                    (locate::path_at(&doc, s.start), Some(l), Some(c))
                }
                None => (String::new(), None, None),
            };
            return Err(fail(vec![ConfigError {
                path,
                message: first_line(e.message()),
                line,
                col,
            }]));
        }
    };
    validate::validate(&raw, base).map_err(|issues| {
        fail(
            issues
                .into_iter()
                .map(|i| {
                    let pos = locate::offset_of(&doc, &i.path).map(|o| locate::line_col(text, o));
                    ConfigError {
                        line: pos.map(|p| p.0),
                        col: pos.map(|p| p.1),
                        path: i.path,
                        message: i.message,
                    }
                })
                .collect(),
        )
    })
}

/// Reads, parses and validates a site file.
pub fn load(file: &Path) -> Result<Site, ConfigErrors> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigErrors {
        file: file.to_path_buf(),
        errors: vec![ConfigError {
            path: String::new(),
            message: format!("cannot read the site file: {e}"),
            line: None,
            col: None,
        }],
    })?;
    let base = file
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let site = load_str(&text, file, &base)?;
    for e in exposed_files(file, &site, &base) {
        tracing::warn!(
            path = %e.path.display(),
            what = e.what,
            mode = format!("{:o}", e.mode),
            "file is readable by group or others; chmod 600 it"
        );
    }
    Ok(site)
}

/// A secret file the agent reads that others on the host can read too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposure {
    pub path: PathBuf,
    /// `miner password file`, `gpu node token file`, `http token file`, `alert webhook
    /// token file`, `etcd password file`, `etcd client key file`.
    pub what: &'static str,
    /// Permission bits (`0o644`).
    pub mode: u32,
}

/// Every secret file the site file names (miner password files, GPU node token files,
/// the HTTP override token file, the etcd password file and client key) that group or
/// others may read. The site file itself
/// holds no secret (credentials are only ever named, by environment variable or file),
/// so its own mode is the operator's choice and is not warned about. Files that cannot
/// be read are left to the code that reads them (it reports them as errors). [`load`]
/// logs each as a warning; `check-config` and start-up both go through it.
pub fn exposed_files(_file: &Path, site: &Site, base: &Path) -> Vec<Exposure> {
    let mut files: Vec<(PathBuf, &'static str)> = Vec::new();
    for m in &site.miners {
        if let Some(p) = m
            .credentials
            .as_ref()
            .and_then(|c| c.password_file.as_ref())
        {
            // Already resolved against the site file's directory by validation.
            files.push((PathBuf::from(p), "miner password file"));
        }
    }
    for g in &site.gpu_nodes {
        if let Some(p) = &g.token_file {
            files.push((p.clone(), "gpu node token file"));
        }
    }
    if let Some(p) = site
        .alerts
        .as_ref()
        .and_then(|a| a.webhook_token_file.as_ref())
    {
        files.push((p.clone(), "alert webhook token file"));
    }
    if let Some(o) = &site.grid.openadr {
        files.push((o.client_secret_file.clone(), "openadr client secret file"));
    }
    if let Some(ha) = &site.ha {
        if let Some(a) = &ha.auth {
            files.push((a.password_file.clone(), "etcd password file"));
        }
        if let Some((_, key)) = ha.tls.as_ref().and_then(|t| t.client.as_ref()) {
            files.push((key.clone(), "etcd client key file"));
        }
    }
    if let Some(p) = &site.agent.http_token_file {
        files.push((validate::resolve(base, p), "http token file"));
    }
    // Miner groups and GPU nodes share files: one warning each.
    files.sort();
    files.dedup_by(|a, b| a.0 == b.0);
    files
        .into_iter()
        .filter_map(|(path, what)| {
            let mode = shared_mode(&path)?;
            Some(Exposure { path, what, mode })
        })
        .collect()
}

/// The permission bits of a file readable (or writable) by group or others.
#[cfg(unix)]
fn shared_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn shared_mode(_: &Path) -> Option<u32> {
    None
}

fn first_line(s: &str) -> String {
    s.trim().lines().next().unwrap_or_default().to_owned()
}
