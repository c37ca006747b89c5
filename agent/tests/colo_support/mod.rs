//! The colocation site (examples/site-colo.toml: GPU racks seen through their PDUs only)
//! and its simulator with feed A's tenant racks surging, as the runtime tests use them
//! (`runtime_urgent_shed.rs`, `runtime_stop_waits.rs`).

use std::path::{Path, PathBuf};

use rackwarden::runtime::agent::RunOptions;
use rackwarden_config::Site;
use rackwarden_sim::site::{Scenario, SiteSim, SIM_MINER_PASSWORD};

/// The site moved to loopback addresses `127.k.*` of the calling test (the example's may
/// be taken by another simulator on a shared machine), with `policy` added to its
/// `[policy]` section, in a fresh temporary directory named after `tag`; the simulated
/// miners' password set where the site reads it from.
pub(crate) fn colo_site(tag: &str, k: u32, policy: &str) -> (Site, PathBuf) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let text = std::fs::read_to_string(repo.join("examples/site-colo.toml")).unwrap();
    let text = text
        .replace("\"127.0.0.1", &format!("\"127.{k}.0.1"))
        .replace("\"127.2.", &format!("\"127.{k}."))
        .replace("[policy]\n", &format!("[policy]\n{policy}"));
    let dir = std::env::temp_dir().join(format!("rw-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    let site = rackwarden_config::load_str(&text, &dir.join("site.toml"), &dir).unwrap();
    for m in &site.miners {
        if let Some(var) = m.credentials.as_ref().and_then(|c| c.password_env.as_ref()) {
            std::env::set_var(var, SIM_MINER_PASSWORD);
        }
    }
    (site, dir)
}

/// The site's simulator at `speed`, feed A's tenant racks at their rated maximum from
/// `surge_s` (virtual s).
pub(crate) async fn surge_sim(site: &Site, dir: &Path, surge_s: f64, speed: f64) -> SiteSim {
    let scenario = dir.join("surge.toml");
    std::fs::write(
        &scenario,
        format!(
            "name = \"surge\"\ngpu_profile = \"inference-day\"\nday_s = 1440\n\
             [[events]]\nat_s = {surge_s}\nkind = \"rack_load\"\nprefix = \"gpu-a\"\nfraction = 1.0\n"
        ),
    )
    .unwrap();
    SiteSim::start(
        site,
        Scenario::load(scenario.to_str().unwrap()).unwrap(),
        speed,
    )
    .await
    .unwrap()
}

/// Run options at `speed`, the agent's files in `dir`.
pub(crate) fn options(dir: &Path, dry_run: bool, speed: f64) -> RunOptions {
    RunOptions {
        dry_run,
        speed,
        state_file: dir.join("state.json"),
        journal_file: dir.join("journal.jsonl"),
        database_file: dir.join("rackwarden.db"),
    }
}
