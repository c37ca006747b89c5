//! Logging set-up: `tracing` with text or JSON output.
//!
//! JSON is one object per line with stable field names (`timestamp`, `level`, `target`,
//! `fields.*`), so log shippers can route on `fields.alert`. Alerts use the target
//! `rackwarden::alert`.

use rackwarden_config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` overrides the default `info` filter.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests, reload) keeps the first subscriber.
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(false)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    }
    .ok();
}

/// Installs the global subscriber writing text logs, without colour codes, to a new file
/// at `path` (truncated). `rackwarden demo` keeps its terminal for the timeline this way.
pub fn init_file(path: &std::path::Path) -> std::io::Result<()> {
    let file = std::fs::File::create(path)?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init()
        .ok();
    Ok(())
}
