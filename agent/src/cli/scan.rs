//! `rackwarden scan CIDR...`: finds miners on the given networks and prints them as
//! `[[miners]]` (or, with `--groups`, `[[miner_groups]]`) TOML to paste into a site file.
//! The identification is `rackwarden_protocols::miner::scan`'s; this file reads the
//! command line and writes the TOML.
//!
//! Each entry's `rack` is left to the operator: the placeholder [`RACK_PLACEHOLDER`] is
//! no rack of any site, so a site file with one left in fails validation by name. A miner
//! whose power could not be read gets `nominal_w = 0`, which fails the same way.
//! Addresses that answered but are none of the six firmwares are listed as comments,
//! with the reason.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use rackwarden_protocols::miner::scan::{
    expand, scan, Identified, Outcome, PowerSource, Probe, ScanOptions,
};

use super::EX_USAGE;

/// The `rack` every entry gets until the operator sets it.
pub const RACK_PLACEHOLDER: &str = "RACK?";

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Networks to scan: CIDR (10.0.1.0/24) or single addresses.
    #[arg(required = true, value_name = "CIDR")]
    pub networks: Vec<String>,
    /// The miners' API port.
    #[arg(long, default_value_t = 4028)]
    pub port: u16,
    /// Addresses probed at once.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
    /// Limit of each request to an address (connect, then reply), ms. An address gets at
    /// most six requests.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub timeout_ms: u64,
    /// Print `[[miner_groups]]` for runs of consecutive addresses with the same
    /// firmware and model, instead of one `[[miners]]` each.
    #[arg(long)]
    pub groups: bool,
    /// Refuse to scan more addresses than this.
    #[arg(long, default_value_t = 65_536)]
    pub max_addresses: u64,
}

/// Exit codes: 0 the scan ran (whatever it found), 64 bad networks or too many
/// addresses, 1 some addresses could not be probed (a local error, listed).
pub fn run(args: &ScanArgs) -> ExitCode {
    let addrs = match expand(&args.networks, args.max_addresses) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rackwarden scan: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let opts = ScanOptions {
        port: args.port,
        concurrency: usize::try_from(args.concurrency).unwrap_or(256),
        timeout: Duration::from_millis(args.timeout_ms),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rackwarden scan: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let t0 = Instant::now();
    let probes = rt.block_on(scan(&addrs, opts));
    let took = t0.elapsed();
    let report = Report::new(&args.networks, addrs.len(), &probes);
    print!("{}", report.render(args.groups));
    eprintln!(
        "rackwarden scan: {} addresses in {:.1} s: {} miners, {} answered but not identified, {} not probed",
        addrs.len(),
        took.as_secs_f64(),
        report.miners.len(),
        report.unidentified.len(),
        report.not_probed.len()
    );
    if report.not_probed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A finished scan, sorted for printing.
#[derive(Debug)]
pub struct Report<'a> {
    networks: &'a [String],
    addresses: usize,
    miners: Vec<(SocketAddr, &'a Identified)>,
    unidentified: Vec<(SocketAddr, &'a str)>,
    not_probed: Vec<(SocketAddr, &'a str)>,
}

impl<'a> Report<'a> {
    pub fn new(networks: &'a [String], addresses: usize, probes: &'a [Probe]) -> Self {
        let mut r = Report {
            networks,
            addresses,
            miners: Vec::new(),
            unidentified: Vec::new(),
            not_probed: Vec::new(),
        };
        for p in probes {
            match &p.outcome {
                Outcome::Silent => {}
                Outcome::Miner(m) => r.miners.push((p.addr, m)),
                Outcome::Unidentified { reason } => r.unidentified.push((p.addr, reason)),
                Outcome::NotProbed { reason } => r.not_probed.push((p.addr, reason)),
            }
        }
        r
    }

    /// The TOML: a header, the entries, then what answered but was not identified.
    pub fn render(&self, groups: bool) -> String {
        let mut s = String::new();
        writeln!(
            s,
            "# rackwarden scan {}: {} addresses, {} miners found, {} answered but not identified{}.",
            comment(&self.networks.join(" ")),
            self.addresses,
            self.miners.len(),
            self.unidentified.len(),
            if self.not_probed.is_empty() {
                String::new()
            } else {
                format!(", {} not probed", self.not_probed.len())
            }
        ).ok();
        writeln!(
            s,
            "# Set each `rack` (a mining or mixed rack of the site): `{RACK_PLACEHOLDER}` fails validation until then."
        ).ok();
        writeln!(
            s,
            "# braiins, vnish and antminer_stock also use the web interface: add `http_port` if it is not 80."
        ).ok();
        writeln!(
            s,
            "# whatsminer, vnish and antminer_stock with a changed password need `credentials` (docs/config.md)."
        ).ok();
        if groups {
            for run in runs(&self.miners) {
                render_group(&mut s, run);
            }
        } else {
            for (addr, m) in &self.miners {
                render_miner(&mut s, *addr, m);
            }
        }
        if !self.unidentified.is_empty() {
            writeln!(s, "\n# Answered, but not identified:").ok();
            for (addr, why) in &self.unidentified {
                writeln!(s, "#   {addr}: {}", comment(why)).ok();
            }
        }
        if !self.not_probed.is_empty() {
            writeln!(s, "\n# Not probed (an error on this host):").ok();
            for (addr, why) in &self.not_probed {
                writeln!(s, "#   {addr}: {}", comment(why)).ok();
            }
        }
        s
    }
}

/// Text from a miner made safe for one TOML comment line: no line breaks or other
/// control characters (a reply must not be able to add lines to the site file).
pub fn comment(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > 200 {
        let cut = (0..=200)
            .rev()
            .find(|i| out.is_char_boundary(*i))
            .unwrap_or(0);
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

fn id_part(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => v4
            .octets()
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join("-"),
        IpAddr::V6(v6) => v6
            .segments()
            .iter()
            .map(|s| format!("{s:x}"))
            .collect::<Vec<_>>()
            .join("-"),
    };
    if addr.port() == 4028 {
        ip
    } else {
        format!("{ip}-p{}", addr.port())
    }
}

fn nominal_w(m: &Identified) -> (f64, String) {
    match m.nominal_w {
        Some((w, src)) => (
            w.round(),
            match src {
                PowerSource::Limit => "the power limit the firmware holds".into(),
                PowerSource::Profile => "the watts of its active power profile".into(),
                PowerSource::Measured => "its own reading while hashing".into(),
                PowerSource::Estimated { ths, j_th } => {
                    format!("estimated, {ths:.1} TH/s x {j_th} J/TH: check the nameplate")
                }
            },
        ),
        None => (
            0.0,
            "UNKNOWN (the miner reports no power and no hashrate): set it".into(),
        ),
    }
}

/// One comment line about a miner: `model: ...; firmware: ...; mac: ...; hashrate: ...`
/// (fields it did not give are left out; the model always appears).
fn about(m: &Identified) -> String {
    let mut parts = Vec::new();
    parts.push(format!(
        "model: {}",
        m.model.as_deref().unwrap_or("unknown").replace(';', ",")
    ));
    if let Some(v) = &m.firmware_version {
        parts.push(format!("firmware: {}", v.replace(';', ",")));
    }
    if let Some(mac) = &m.mac {
        parts.push(format!("mac: {mac}"));
    }
    if let Some(h) = m.hashrate_ths {
        parts.push(format!("hashrate: {h:.1} TH/s"));
    }
    comment(&parts.join("; "))
}

fn render_miner(s: &mut String, addr: SocketAddr, m: &Identified) {
    let fw = m.firmware.name();
    let (w, why) = nominal_w(m);
    writeln!(s, "\n[[miners]]").ok();
    writeln!(s, "# {}", about(m)).ok();
    for n in &m.notes {
        writeln!(s, "# note: {}", comment(n)).ok();
    }
    writeln!(s, "id = \"{fw}-{}\"", id_part(addr)).ok();
    writeln!(s, "address = \"{addr}\"").ok();
    writeln!(s, "firmware = \"{fw}\"").ok();
    writeln!(s, "rack = \"{RACK_PLACEHOLDER}\" # the operator's to set").ok();
    writeln!(s, "nominal_w = {w:.0} # {why}").ok();
}

/// Runs of consecutive IPv4 addresses (same port) with the same firmware and model and
/// a known power figure; everything else is a run of one.
fn runs<'a, 'b>(
    miners: &'b [(SocketAddr, &'a Identified)],
) -> Vec<&'b [(SocketAddr, &'a Identified)]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=miners.len() {
        let joins = i < miners.len() && {
            let (pa, a) = miners[i - 1];
            let (pb, b) = miners[i];
            let next = match (pa.ip(), pb.ip()) {
                (IpAddr::V4(x), IpAddr::V4(y)) => u32::from(x).checked_add(1) == Some(u32::from(y)),
                _ => false,
            };
            next && pa.port() == pb.port()
                && a.firmware == b.firmware
                && a.model == b.model
                && a.nominal_w.is_some()
                && b.nominal_w.is_some()
        };
        if !joins {
            out.push(&miners[start..i]);
            start = i;
        }
    }
    out
}

fn render_group(s: &mut String, run: &[(SocketAddr, &Identified)]) {
    let Some(&(first, m)) = run.first() else {
        return;
    };
    if run.len() == 1 {
        render_miner(s, first, m);
        return;
    }
    let fw = m.firmware.name();
    // The group's figure is its largest member's: the budget must hold every one.
    let (w, why) = run
        .iter()
        .map(|(_, x)| nominal_w(x))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap_or_else(|| nominal_w(m));
    writeln!(s, "\n[[miner_groups]]").ok();
    writeln!(
        s,
        "# {} miners, {}",
        run.len(),
        comment(m.model.as_deref().unwrap_or("model unknown"))
    )
    .ok();
    for (addr, x) in run {
        writeln!(s, "#   {addr}: {}", about(x)).ok();
        for n in &x.notes {
            writeln!(s, "#     note: {}", comment(n)).ok();
        }
    }
    writeln!(s, "id_prefix = \"{fw}-{}-\"", id_part(first)).ok();
    writeln!(s, "count = {}", run.len()).ok();
    writeln!(s, "first_address = \"{first}\"").ok();
    writeln!(s, "firmware = \"{fw}\"").ok();
    writeln!(s, "rack = \"{RACK_PLACEHOLDER}\" # the operator's to set").ok();
    writeln!(s, "nominal_w = {w:.0} # the group's largest: {why}").ok();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rackwarden_config::Firmware;

    fn miner(fw: Firmware, model: &str, w: Option<f64>) -> Identified {
        Identified {
            firmware: fw,
            model: Some(model.into()),
            firmware_version: None,
            mac: Some("02:00:00:00:00:01".into()),
            hashrate_ths: Some(100.0),
            nominal_w: w.map(|w| (w, PowerSource::Limit)),
            notes: vec![],
        }
    }

    fn probe(addr: &str, outcome: Outcome) -> Probe {
        Probe {
            addr: addr.parse().unwrap(),
            outcome,
        }
    }

    fn sample() -> Vec<Probe> {
        vec![
            probe(
                "10.0.0.1:4028",
                Outcome::Miner(miner(Firmware::Braiins, "Antminer S19", Some(3250.0))),
            ),
            probe(
                "10.0.0.2:4028",
                Outcome::Miner(miner(Firmware::Braiins, "Antminer S19", Some(3300.0))),
            ),
            probe(
                "10.0.0.3:4028",
                Outcome::Miner(miner(Firmware::Luxos, "Antminer S19", Some(3000.0))),
            ),
            probe("10.0.0.4:4028", Outcome::Silent),
            probe(
                "10.0.0.5:4028",
                Outcome::Unidentified {
                    reason: "evil\n[[miners]]\nid = \"x\"".into(),
                },
            ),
            probe(
                "10.0.0.6:4028",
                Outcome::Miner(miner(Firmware::Braiins, "Antminer S19", None)),
            ),
        ]
    }

    #[test]
    fn miners_toml_parses_and_keeps_the_placeholder() {
        let probes = sample();
        let nets = vec!["10.0.0.0/29".to_owned()];
        let text = Report::new(&nets, 6, &probes).render(false);
        let v: toml::Table = toml::from_str(&text).unwrap();
        let ms = v["miners"].as_array().unwrap();
        assert_eq!(ms.len(), 4);
        assert_eq!(ms[0]["address"].as_str(), Some("10.0.0.1:4028"));
        assert_eq!(ms[0]["id"].as_str(), Some("braiins-10-0-0-1"));
        assert_eq!(ms[0]["rack"].as_str(), Some(RACK_PLACEHOLDER));
        assert_eq!(ms[1]["nominal_w"].as_integer(), Some(3300));
        assert_eq!(ms[3]["nominal_w"].as_integer(), Some(0));
        // The reply's line breaks stayed inside one comment line.
        assert!(text.contains("#   10.0.0.5:4028: evil [[miners]] id = \"x\""));
    }

    #[test]
    fn groups_join_runs_of_one_firmware_and_model() {
        let probes = sample();
        let nets = vec!["10.0.0.0/29".to_owned()];
        let text = Report::new(&nets, 6, &probes).render(true);
        let v: toml::Table = toml::from_str(&text).unwrap();
        let gs = v["miner_groups"].as_array().unwrap();
        assert_eq!(gs.len(), 1);
        assert_eq!(gs[0]["count"].as_integer(), Some(2));
        assert_eq!(gs[0]["first_address"].as_str(), Some("10.0.0.1:4028"));
        // The largest member's power.
        assert_eq!(gs[0]["nominal_w"].as_integer(), Some(3300));
        // The LuxOS miner and the one without a power figure stand alone.
        let ms = v["miners"].as_array().unwrap();
        assert_eq!(ms.len(), 2);
        assert_eq!(ms[0]["firmware"].as_str(), Some("luxos"));
    }

    #[test]
    fn comments_are_one_line() {
        assert_eq!(comment("a\r\nb\tc"), "a  b c");
        assert!(comment(&"é".repeat(300)).ends_with("..."));
    }
}
