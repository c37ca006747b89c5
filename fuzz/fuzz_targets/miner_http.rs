//! Fuzz the miners' HTTP bodies and Whatsminer's encrypted answers
//! (`rackwarden_protocols::miner::bodies`): a web API body (Braiins and Vnish REST, stock
//! Antminer CGI) through JSON, the REST login token, the Vnish summary and presets with
//! the preset choice, the Antminer configuration round trip; the same bytes as an HTTP
//! digest challenge; as a Whatsminer `get_token` answer and as an encrypted write answer
//! (base64 payload and JSON envelope). Nothing may panic; a chosen preset is one of the
//! listed ones; a configuration posted back keeps what the miner sent and sets the mode;
//! whatever JSON is sealed opens to the same JSON.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rackwarden_config::Firmware;
use rackwarden_protocols::miner::bodies;
use rackwarden_protocols::miner::telemetry::{self as tm, MinerTelemetry};
use rackwarden_protocols::miner::wmcrypto::TokenKeys;
use serde_json::{json, Value};

/// Session keys derived once (md5-crypt is slow on purpose).
fn keys() -> &'static TokenKeys {
    static KEYS: OnceLock<TokenKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        TokenKeys::derive("admin", "BQ5hoXV9", "jbzkfQls", "3604").expect("fixed salts derive")
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    // A web API body.
    if let Ok(v) = bodies::json_body(&text) {
        let _ = bodies::rest_token(&v);
        let mut t = MinerTelemetry::empty("fuzz", Firmware::Vnish);
        if tm::apply_vnish_summary(&mut t, &v) {
            t.estimate_power(30.0, 25.0);
        }
        let presets = bodies::vnish_presets(&v);
        for watts in [0.0, 1500.0, 3000.0, f64::NAN, f64::INFINITY] {
            match bodies::pick_within(&presets, watts) {
                Some(pick) => assert!(presets.contains(&pick)),
                None => assert!(presets.is_empty()),
            }
        }
        let _ = bodies::antminer_set_accepted(&v);
        if let Ok(conf) = bodies::antminer_conf_with_mode(v.clone(), 1) {
            assert_eq!(conf["miner-mode"], json!(1));
            let (old, new) = (v.as_object().expect("was an object"), conf.as_object().expect("is"));
            assert!(old.keys().all(|k| new.contains_key(k)));
            // What is posted back must serialise and parse back.
            let posted = conf.to_string();
            let back: Value = serde_json::from_str(&posted).expect("posted conf parses");
            assert_eq!(back["miner-mode"], json!(1));
        }
        // As a Whatsminer `get_token` Msg (salts from the miner go into md5-crypt) and
        // as the envelope of an encrypted write's answer.
        if v.get("salt").is_some() {
            let _ = bodies::whatsminer_token(&v, "admin");
        }
        let _ = bodies::whatsminer_answer(keys(), &v);
    }

    // An HTTP digest challenge (WWW-Authenticate), for a GET and a POST with a body.
    let _ = bodies::digest_authorization(&text, "root", "root", "GET", "/cgi-bin/get_miner_conf.cgi", None);
    let _ = bodies::digest_authorization(&text, "root", "root", "POST", "/cgi-bin/set_miner_conf.cgi", Some(data));

    // A Whatsminer encrypted payload as it comes in `{"enc": "..."}`.
    let _ = keys().open(&text);
    let _ = bodies::whatsminer_answer(keys(), &json!({ "enc": text }));

    // Seal then open: JSON without trailing NULs (zero padding would eat them) comes back.
    let end = data.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    if let Ok(v) = serde_json::from_slice::<Value>(&data[..end]) {
        let opened = keys().open(&keys().seal(&data[..end])).expect("sealed json opens");
        assert_eq!(opened, v);
    }
});
