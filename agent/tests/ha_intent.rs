//! The control intent the HA leader stores in etcd (issue 11) fits etcd's request limit
//! at the scale of the largest site we plan for (examples/site-100mw.toml: 30,000
//! miners), with a busy history, and comes back exactly as it was stored.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};

use rackwarden::control::{ControlState, Intent};
use rackwarden::ha::{decode_intent, encode_intent, MAX_INTENT_BYTES};
use rackwarden::runtime::agent::Persisted;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn a_100_mw_intent_fits_in_etcd_and_round_trips() {
    let site = rackwarden_config::load(&repo().join("examples/site-100mw.toml")).unwrap();
    let now = 1_795_000_000_000;
    let mut st = ControlState::new(&site, now);
    // Half the miners curtailed in assorted ways, each with a day of cycle history: more
    // varied (less compressible) than any real afternoon.
    for (i, m) in st.miners.iter_mut().enumerate() {
        let i64_ = u64::try_from(i).unwrap();
        match i % 4 {
            0 => m.intent = Intent::Sleep,
            1 => {
                m.intent = Intent::Target {
                    w: 1800.0 + f64::from(u32::try_from(i % 977).unwrap()),
                }
            }
            _ => continue,
        }
        m.since = now - 1_000 * i64_;
        m.slept_at = Some(now - 7_000 * i64_);
        m.sleep_cycles = vec![now - 3_600_000 + i64_, now - 1_800_000 + 3 * i64_];
        m.power_cycles = vec![now - 80_000_000 + 7 * i64_];
    }
    let json = serde_json::to_vec(&serde_json::json!({ "last_now": now, "control": st })).unwrap();
    let stored = encode_intent(&json).unwrap();
    println!(
        "intent of {} miners: {} bytes JSON, {} bytes stored ({:.1}x), limit {} bytes",
        st.miners.len(),
        json.len(),
        stored.len(),
        json.len() as f64 / stored.len() as f64,
        MAX_INTENT_BYTES
    );
    assert!(
        json.len() > MAX_INTENT_BYTES,
        "plain JSON would not fit: the reason to compress"
    );
    assert!(stored.len() < MAX_INTENT_BYTES, "{} bytes", stored.len());
    let back: Persisted = serde_json::from_slice(&decode_intent(&stored).unwrap()).unwrap();
    assert_eq!(back.last_now, now);
    assert_eq!(back.control.miners, st.miners);
    // Plain JSON (an operator's hand-made value) reads too; garbage is an error, not a panic.
    assert_eq!(decode_intent(b"{\"a\":1}").unwrap(), b"{\"a\":1}");
    assert!(decode_intent(&[0x1f, 0x8b, 0, 1, 2, 3]).is_err());
}
