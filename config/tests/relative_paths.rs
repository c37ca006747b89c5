//! Relative file paths in a site file (miner `password_file`, GPU node `token_file`)
//! resolve against the site file's directory, so the agent reads the same files whatever
//! directory it is started from; `load_str` resolves against the base it is given.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};

fn example() -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::fs::read_to_string(repo.join("examples/site.toml")).unwrap()
}

/// The example site with the Vnish miners' password in `password_file = pw`.
fn with_password_file(pw: &str) -> String {
    let text = example();
    let from = "password_env = \"RACKWARDEN_VNISH_PASSWORD\"";
    assert!(text.contains(from), "the example site changed");
    text.replace(from, &format!("password_file = {pw:?}"))
}

fn vnish_password_files(site: &rackwarden_config::Site) -> Vec<PathBuf> {
    site.miners
        .iter()
        .filter(|m| m.firmware == rackwarden_config::Firmware::Vnish)
        .map(|m| {
            PathBuf::from(
                m.credentials
                    .as_ref()
                    .and_then(|c| c.password_file.clone())
                    .unwrap(),
            )
        })
        .collect()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("rw-cfg-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&d).ok();
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

#[test]
fn relative_secret_files_resolve_against_the_site_files_directory() {
    let tmp = TempDir::new("rel");
    let dir = tmp.0.join("etc");
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    std::fs::write(dir.join("secrets/vnish.pw"), "pw\n").unwrap();
    std::fs::write(dir.join("gpu-node.token"), "t\n").unwrap();
    let file = dir.join("site.toml");
    std::fs::write(&file, with_password_file("secrets/vnish.pw")).unwrap();

    let site = rackwarden_config::load(&file).unwrap();
    let files = vnish_password_files(&site);
    assert!(!files.is_empty());
    for f in &files {
        assert_eq!(f, &dir.join("secrets/vnish.pw"));
        // The path the driver will open is the file written next to the site file.
        assert_eq!(std::fs::read_to_string(f).unwrap(), "pw\n");
    }
    for g in site.gpu_nodes.iter().filter(|g| g.token_file.is_some()) {
        assert_eq!(g.token_file.as_deref(), Some(&*dir.join("gpu-node.token")));
    }
}

#[test]
fn absolute_secret_files_stay_as_written() {
    let tmp = TempDir::new("abs");
    let abs = tmp.0.join("elsewhere/vnish.pw");
    let file = tmp.0.join("site.toml");
    std::fs::write(&file, with_password_file(abs.to_str().unwrap())).unwrap();
    let site = rackwarden_config::load(&file).unwrap();
    assert!(vnish_password_files(&site).iter().all(|f| f == &abs));
}

#[test]
fn load_str_resolves_against_the_base_it_is_given() {
    let text = with_password_file("secrets/vnish.pw");
    // No file: the caller's base (here the working directory) is where paths resolve.
    let site =
        rackwarden_config::load_str(&text, Path::new("inline.toml"), Path::new(".")).unwrap();
    assert!(vnish_password_files(&site)
        .iter()
        .all(|f| f == Path::new("./secrets/vnish.pw")));
    let site =
        rackwarden_config::load_str(&text, Path::new("x.toml"), Path::new("/srv/site")).unwrap();
    assert!(vnish_password_files(&site)
        .iter()
        .all(|f| f == Path::new("/srv/site/secrets/vnish.pw")));
}
