//! The miners' HTTP bodies and Whatsminer's encrypted answers, read by pure functions:
//! JSON bodies of the web APIs (Braiins and Vnish REST, stock Antminer CGI), the REST
//! login tokens, Vnish presets, the Antminer configuration round trip, the HTTP digest
//! challenge, and the Whatsminer `get_token` / encrypted-answer pair. The drivers call
//! them with what came off the wire; the `miner_http` fuzz target calls them with
//! arbitrary bytes. None of them may panic, whatever a miner sends.

use serde_json::{json, Value};

use super::reply::{status_of, text, Reply};
use super::wmcrypto::{CryptoError, TokenKeys};

/// Why a miner body could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("body is not json: {detail}")]
    Json { detail: String },
    #[error("unusable digest challenge: {detail}")]
    Digest { detail: String },
    #[error("{0}")]
    Shape(&'static str),
    #[error("no {0} in the token answer")]
    Missing(&'static str),
    #[error("encrypted exchange failed")]
    Crypto(#[source] CryptoError),
}

/// A web API body as JSON; an empty body (some firmwares answer a write with nothing)
/// is `null`.
pub fn json_body(text: &str) -> Result<Value, BodyError> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(text).map_err(|e| BodyError::Json {
        detail: e.to_string(),
    })
}

/// The session token of a REST login (Braiins `POST /api/v1/auth/login`, Vnish
/// `POST /api/v1/unlock`): `{"token": "..."}`, not empty.
pub fn rest_token(v: &Value) -> Option<String> {
    v.get("token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// Vnish `GET /api/v1/autotune/presets`: presets are named by their watts (`"3000"`);
/// entries whose name is not a finite number of watts are skipped.
pub fn vnish_presets(v: &Value) -> Vec<(String, f64)> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let name = p.get("name")?.as_str()?.to_owned();
            let w = name.trim().parse::<f64>().ok().filter(|w| w.is_finite())?;
            Some((name, w))
        })
        .collect()
}

/// The largest preset (LuxOS profile, Vnish preset) within `watts`; the smallest when
/// none fits; `None` when there are none.
pub fn pick_within(options: &[(String, f64)], watts: f64) -> Option<(String, f64)> {
    options
        .iter()
        .filter(|(_, w)| *w <= watts)
        .max_by(|a, c| a.1.total_cmp(&c.1))
        .or_else(|| options.iter().min_by(|a, c| a.1.total_cmp(&c.1)))
        .cloned()
}

/// Stock Antminer: the configuration read from `get_miner_conf.cgi` with `miner-mode`
/// set (0 normal, 1 sleep), to post back to `set_miner_conf.cgi`. The rest of the
/// configuration goes back as the miner sent it.
pub fn antminer_conf_with_mode(mut conf: Value, mode: u8) -> Result<Value, BodyError> {
    let obj = conf
        .as_object_mut()
        .ok_or(BodyError::Shape("configuration is not an object"))?;
    obj.insert("miner-mode".into(), json!(mode));
    // The configuration read back names the mode `bitmain-work-mode` (a string); sending
    // it back unchanged next to a new `miner-mode` would be a contradiction.
    if obj.contains_key("bitmain-work-mode") {
        obj.insert("bitmain-work-mode".into(), json!(mode.to_string()));
    }
    Ok(conf)
}

/// Stock Antminer: whether `set_miner_conf.cgi` accepted the configuration.
pub fn antminer_set_accepted(v: &Value) -> bool {
    v.get("stats").and_then(Value::as_str) == Some("success")
}

/// The `Authorization` header answering an HTTP digest challenge (`WWW-Authenticate`).
pub fn digest_authorization(
    challenge: &str,
    username: &str,
    password: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<String, BodyError> {
    // digest_auth 0.3 slices the header at character counts taken as byte offsets and
    // panics inside a multi-byte character (found by the `miner_http` fuzz target). A
    // header value is visible ASCII anyway (RFC 9110, 5.5), so anything else is refused
    // before it gets there; on ASCII the two offsets agree.
    if !challenge
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return Err(BodyError::Digest {
            detail: "challenge is not visible ascii".to_owned(),
        });
    }
    let digest = |e: digest_auth::Error| BodyError::Digest {
        detail: e.to_string(),
    };
    let mut prompt = digest_auth::parse(challenge).map_err(digest)?;
    let ctx = digest_auth::AuthContext::new_with_method(
        username,
        password,
        path,
        body,
        digest_auth::HttpMethod::from(method.to_owned()),
    );
    Ok(prompt.respond(&ctx).map_err(digest)?.to_header_string())
}

/// Whatsminer `get_token`: session keys from the answer's `Msg` object (`salt`,
/// `newsalt`, `time`) and the password.
pub fn whatsminer_token(msg: &Value, password: &str) -> Result<TokenKeys, BodyError> {
    let m = msg
        .as_object()
        .ok_or(BodyError::Shape("token answer is not an object"))?;
    let get = |k: &'static str| text(m, &[k]).ok_or(BodyError::Missing(k));
    TokenKeys::derive(password, &get("salt")?, &get("newsalt")?, &get("time")?)
        .map_err(BodyError::Crypto)
}

/// Whatsminer's answer to an encrypted write: `{"enc": "<base64>"}` when accepted
/// (decrypted with the session keys), a plain STATUS object when refused.
pub fn whatsminer_answer(keys: &TokenKeys, v: &Value) -> Result<Reply, BodyError> {
    let body = match v.get("enc") {
        Some(enc) => {
            let enc = enc
                .as_str()
                .ok_or(BodyError::Shape("encrypted answer is not a string"))?;
            keys.open(enc).map_err(BodyError::Crypto)?
        }
        None => v.clone(),
    };
    let status = status_of(&body).ok_or(BodyError::Shape(
        "answer is neither an encrypted nor a plain status",
    ))?;
    Ok(Reply { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_pick() {
        let v: Value = serde_json::from_str(
            r#"[{"name":"3000"},{"name":"nan"},{"name":"inf"},{"name":"2000"},{"x":1}]"#,
        )
        .unwrap();
        let p = vnish_presets(&v);
        assert_eq!(
            p,
            vec![
                (String::from("3000"), 3000.0),
                (String::from("2000"), 2000.0)
            ]
        );
        assert_eq!(pick_within(&p, 2500.0).unwrap().1, 2000.0);
        assert_eq!(pick_within(&p, 100.0).unwrap().1, 2000.0);
        assert_eq!(pick_within(&p, f64::NAN).unwrap().1, 2000.0);
        assert!(pick_within(&[], 100.0).is_none());
    }

    #[test]
    fn bodies_and_tokens() {
        assert_eq!(json_body(" \n").unwrap(), Value::Null);
        assert!(matches!(json_body("{"), Err(BodyError::Json { .. })));
        assert_eq!(rest_token(&json!({"token": "abc"})).as_deref(), Some("abc"));
        assert_eq!(rest_token(&json!({"token": ""})), None);
        assert_eq!(rest_token(&json!([1])), None);
        let conf = antminer_conf_with_mode(json!({"pools": []}), 1).unwrap();
        assert_eq!(conf["miner-mode"], 1);
        assert!(antminer_conf_with_mode(json!([]), 1).is_err());
        assert!(antminer_set_accepted(&json!({"stats": "success"})));
        assert!(!antminer_set_accepted(&json!({"stats": "error"})));
    }

    #[test]
    fn digest_challenge_answered_or_refused() {
        let h = digest_authorization(
            r#"Digest realm="antMiner Configuration", nonce="abc", qop="auth""#,
            "root",
            "pw",
            "GET",
            "/cgi-bin/get_miner_conf.cgi",
            None,
        )
        .unwrap();
        assert!(
            h.starts_with("Digest ") && h.contains("username=\"root\""),
            "{h}"
        );
        assert!(!h.contains("\"pw\""));
        for bad in [
            "",
            "Basic realm=x",
            "Digest",
            "Digest nonce",
            // Regression (fuzz crash-837d438e): a multi-byte character before `=` made
            // digest_auth slice inside it and panic.
            "Digest x\u{e9}=1",
            "Digest realm=\"\u{b7}\u{b7}\u{f7}\", nonce=\"abc\", qop=\"auth\"",
        ] {
            assert!(
                digest_authorization(bad, "root", "pw", "GET", "/", None).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn whatsminer_token_and_answers() {
        let msg = json!({"salt": "BQ5hoXV9", "newsalt": "jbzkfQls", "time": "3604"});
        let keys = whatsminer_token(&msg, "admin").unwrap();
        assert!(matches!(
            whatsminer_token(&json!({"salt": "x"}), "admin"),
            Err(BodyError::Missing("newsalt"))
        ));
        let sealed = keys.seal(br#"{"STATUS":"S","Msg":"ok"}"#);
        let r = whatsminer_answer(&keys, &json!({ "enc": sealed })).unwrap();
        assert!(r.status.kind.is_ok());
        let r = whatsminer_answer(&keys, &json!({"STATUS":"E","Code":135,"Msg":"token"})).unwrap();
        assert_eq!(r.status.code, Some(135));
        assert!(whatsminer_answer(&keys, &json!({"enc": 1})).is_err());
        assert!(whatsminer_answer(&keys, &json!({"enc": "!!"})).is_err());
        assert!(whatsminer_answer(&keys, &json!({})).is_err());
    }
}
