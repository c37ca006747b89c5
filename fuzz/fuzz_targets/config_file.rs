//! Fuzz target: the site file. Any text goes through the operator's pipeline
//! (`rackwarden_config::load_str`: TOML parse, raw model, validation with every error
//! placed at its line). Nothing may panic; an error list is never empty and names a
//! place; a site that validates builds its control topology and initial state.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use rackwarden::control::{ControlState, Topology};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match rackwarden_config::load_str(text, Path::new("fuzz.toml"), Path::new(".")) {
        Ok(site) => {
            let topo = Topology::new(&site);
            let _ = ControlState::new(&site, 0);
            // Every node of the tree is visited once, deepest first.
            assert_eq!(topo.bottom_up.len(), site.nodes.len());
        }
        Err(e) => {
            assert!(!e.errors.is_empty());
            let _ = e.to_string();
        }
    }
});
