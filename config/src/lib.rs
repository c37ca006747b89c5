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
pub use policy::{AgentSettings, LogFormat, Policy};
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
    load_str(&text, file, &base)
}

fn first_line(s: &str) -> String {
    s.trim().lines().next().unwrap_or_default().to_owned()
}
