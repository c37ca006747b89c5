//! `rackwarden run`: the agent on a real (or simulated) site until SIGTERM.
//!
//! SIGTERM / SIGINT: stop the loops, persist the control intent, exit 0 (devices keep the
//! state last commanded: curtailed miners stay curtailed). SIGHUP: validate the file
//! again; if valid, restart the agent on it (the intent carries over through the state
//! file); if not, log `config.reload.failed` and keep running on the old one.
//!
//! HTTP (metrics, health, status, site page, overrides) listens on `agent.http_listen`
//! from start to exit, across reloads (a reload keeps the address and token it started
//! with). Under systemd (`Type=notify`) the agent says READY once the port is bound and
//! the loop started, pings the watchdog while the control loop decides, and says
//! RELOADING / STOPPING around a reload and at exit.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use rackwarden_config::Site;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::alerts;
use crate::catalogue::AlertKind;
use crate::control::{Alert, Severity};
use crate::http::{self, HttpState};
use crate::runtime::agent::{self, RunOptions};
use crate::status::StatusHub;

#[derive(Debug, Args)]
pub struct RunArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// Decide and log every action as what would have been done; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Run the agent's clock this many times faster than real time (simulation only).
    #[arg(long, default_value_t = 1.0, hide = true)]
    pub speed: f64,
}

/// The state and journal paths of a site, resolved against the site file's directory.
pub fn run_options(site: &Site, config: &Path, dry_run: bool, speed: f64) -> RunOptions {
    let base = config.parent().unwrap_or(Path::new("."));
    RunOptions {
        dry_run,
        speed,
        state_file: rackwarden_config::validate::resolve(base, &site.agent.state_file),
        journal_file: rackwarden_config::validate::resolve(base, &site.agent.journal_file),
        database_file: crate::energy::database_path(site, base),
    }
}

pub fn run(args: RunArgs, log_override: bool) -> ExitCode {
    let site = match rackwarden_config::load(&args.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(super::EX_CONFIG);
        }
    };
    if !log_override {
        crate::logging::init(site.agent.log_format);
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(serve(site, args))
}

async fn serve(mut site: Site, args: RunArgs) -> ExitCode {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        error!("cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    // ---- issue 8: HTTP and systemd, bound before the agent starts ----
    let hub = StatusHub::new();
    let http_cancel = CancellationToken::new();
    let _stop_http = http_cancel.clone().drop_guard();
    let _http_task = match start_http(&site, &args, &hub, &http_cancel).await {
        Ok(t) => t,
        Err(e) => {
            error!(error = %e, source = ?std::error::Error::source(&e), "cannot start http");
            return ExitCode::FAILURE;
        }
    };
    spawn_watchdog(&hub, &http_cancel);
    // ---- issue 18: alert delivery lives across reloads too (the alerts it holds active
    // stay so); a changed `[alerts]` section takes a restart.
    let mut alert_delivery = match &site.alerts {
        Some(cfg) => match alerts::deliver::start(cfg, &site.id, &hub.metrics) {
            Ok(d) => Some(d),
            Err(e) => {
                error!(error = %e, "cannot start alert delivery");
                return ExitCode::from(super::EX_CONFIG);
            }
        },
        None => None,
    };
    // ---- issue 19: the OpenADR VEN lives across reloads too (the events it handed over
    // stay in the hub's inbox); a changed `[grid.openadr]` section takes a restart.
    let ven_cancel = CancellationToken::new();
    let _stop_ven = ven_cancel.clone().drop_guard();
    let mut ven_task = start_ven(&site, args.speed, &hub, &ven_cancel);
    // ---- issue 11: the election lives across reloads (a reload is no reason to hand
    // the site over); a changed `[ha]` section takes a restart.
    let ha_cancel = CancellationToken::new();
    let mut ha_task = None;
    let overrides_file = run_options(&site, &args.config, args.dry_run, args.speed)
        .state_file
        .with_file_name("overrides.json");
    let ha = site.ha.clone().map(|cfg| {
        let (h, t) = crate::ha::Ha::start(cfg, hub.clone(), overrides_file, ha_cancel.clone());
        ha_task = Some(t);
        h
    });
    // Ends the term (if leading) and gives the lease back so the other agent takes over
    // at once rather than after the TTL. Bounded: etcd may be what failed.
    let stop_ha = || async {
        ha_cancel.cancel();
        if let Some(t) = ha_task {
            tokio::time::timeout(std::time::Duration::from_secs(5), t)
                .await
                .ok();
        }
    };
    loop {
        let cancel = CancellationToken::new();
        let (events, _) = broadcast::channel(1024);
        let opts = run_options(&site, &args.config, args.dry_run, args.speed);
        let mut task = tokio::spawn(agent::run_with_ha(
            site.clone(),
            opts,
            events,
            cancel.clone(),
            hub.clone(),
            ha.clone(),
        ));
        // READY after the port is bound and the loop started; again after each reload.
        sd_notify::notify(&[sd_notify::NotifyState::Ready]).ok();
        // Wait for a signal (or the agent's own end) while this instance runs.
        let next = loop {
            tokio::select! {
                _ = term.recv() => break None,
                _ = int.recv() => break None,
                r = &mut task => {
                    let code = finished(r);
                    stop_ha().await;
                    stop_ven(&ven_cancel, ven_task.take()).await;
                    finish_alerts(alert_delivery.take()).await;
                    return code;
                }
                _ = hup.recv() => match rackwarden_config::load(&args.config) {
                    Ok(new) => {
                        let mut st = vec![sd_notify::NotifyState::Reloading];
                        if let Ok(t) = sd_notify::NotifyState::monotonic_usec_now() {
                            st.push(t);
                        }
                        sd_notify::notify(&st).ok();
                        break Some(new);
                    }
                    Err(e) => hub.raise(
                        hub.last_now(),
                        &Alert::new(
                            AlertKind::ConfigReloadFailed,
                            Severity::Warning,
                            format!(
                                "kept the running config: {}",
                                e.to_string().replace('\n', "; ")
                            ),
                        ),
                    ),
                },
            }
        };
        cancel.cancel();
        let r = task.await;
        match next {
            Some(new) => {
                hub.raise(
                    hub.last_now(),
                    &Alert::new(
                        AlertKind::ConfigReloaded,
                        Severity::Info,
                        format!("{} reloaded", args.config.display()),
                    ),
                );
                warn_restart_sections(&site, &new);
                site = new;
            }
            None => {
                sd_notify::notify(&[sd_notify::NotifyState::Stopping]).ok();
                info!(
                    event = "agent.stopped",
                    "stopped on signal; control intent persisted"
                );
                let code = finished(r);
                stop_ha().await;
                stop_ven(&ven_cancel, ven_task.take()).await;
                finish_alerts(alert_delivery.take()).await;
                return code;
            }
        }
    }
}

/// Pings systemd's watchdog at half its period, and only while the loop decides: a
/// wedged loop gets the process restarted by systemd.
fn spawn_watchdog(hub: &std::sync::Arc<StatusHub>, cancel: &CancellationToken) {
    let Some(every) = sd_notify::watchdog_enabled() else {
        return;
    };
    let (hub, cancel) = (hub.clone(), cancel.clone());
    tokio::spawn(async move {
        let mut iv = tokio::time::interval(every / 2);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = iv.tick() => {}
            }
            if hub.loop_alive() {
                sd_notify::notify(&[sd_notify::NotifyState::Watchdog]).ok();
            }
        }
    });
}

/// Starts the OpenADR VEN when `[grid.openadr]` is set.
fn start_ven(
    site: &Site,
    speed: f64,
    hub: &StatusHub,
    cancel: &CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let cfg = site.grid.openadr.clone()?;
    if (speed - 1.0).abs() > f64::EPSILON {
        warn!(
            event = "grid.openadr.speed",
            speed,
            "the OpenADR VEN takes the VTN's wall-clock times as the agent's: at speed {speed} its events land elsewhere on the agent's timeline"
        );
    }
    Some(crate::grid::openadr::start(
        cfg,
        hub.grid.clone(),
        cancel.clone(),
    ))
}

/// A reload keeps alert delivery, the VEN and the election running as they are: says
/// which of their sections changed (they take a restart).
fn warn_restart_sections(old: &Site, new: &Site) {
    if new.alerts != old.alerts {
        warn!(
            event = "config.reload.alerts_ignored",
            "the [alerts] section changed: it takes effect at the next restart"
        );
    }
    if new.grid.openadr != old.grid.openadr {
        warn!(
            event = "config.reload.openadr_ignored",
            "the [grid.openadr] section changed: it takes effect at the next restart"
        );
    }
    if new.ha != old.ha {
        warn!(
            event = "config.reload.ha_ignored",
            "the [ha] section changed: it takes effect at the next restart"
        );
    }
}

/// Stops the OpenADR VEN (bounded: a request to the VTN in flight is dropped).
async fn stop_ven(cancel: &CancellationToken, task: Option<tokio::task::JoinHandle<()>>) {
    cancel.cancel();
    if let Some(t) = task {
        tokio::time::timeout(std::time::Duration::from_secs(2), t)
            .await
            .ok();
    }
}

/// At exit, a last bounded send of the alerts waiting for delivery (`[alerts]`).
async fn finish_alerts(d: Option<alerts::deliver::Delivery>) {
    if let Some(d) = d {
        d.finish(std::time::Duration::from_secs(2)).await;
    }
}

/// Binds `agent.http_listen` and serves the HTTP layer until `cancel` fires.
async fn start_http(
    site: &Site,
    args: &RunArgs,
    hub: &std::sync::Arc<StatusHub>,
    cancel: &CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, http::HttpError> {
    let base = args.config.parent().unwrap_or(Path::new("."));
    let token_file = site
        .agent
        .http_token_file
        .as_ref()
        .map(|f| rackwarden_config::validate::resolve(base, f));
    let opts = run_options(site, &args.config, args.dry_run, args.speed);
    let overrides_file = opts.state_file.with_file_name("overrides.json");
    let state = HttpState::new(
        hub.clone(),
        token_file.as_deref(),
        &opts.journal_file,
        &overrides_file,
    )?;
    // Validated by check-config; a parse failure here is a config error all the same.
    let addr: std::net::SocketAddr =
        site.agent
            .http_listen
            .parse()
            .map_err(|e| http::HttpError::Bind {
                addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            })?;
    let listener = http::bind(addr).await?;
    let cancel = cancel.clone();
    Ok(tokio::spawn(async move {
        if let Err(e) = http::serve(listener, state, cancel).await {
            error!(error = %e, "http server stopped");
        }
    }))
}

fn finished(
    r: Result<anyhow::Result<crate::control::ControlState>, tokio::task::JoinError>,
) -> ExitCode {
    match r {
        Ok(Ok(_)) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            error!(error = %e, "agent failed");
            ExitCode::FAILURE
        }
        Err(e) => {
            error!(error = %e, "agent task failed");
            ExitCode::FAILURE
        }
    }
}
