//! Whatsminer API v2 privileged-command crypto, shared by the driver and the simulator.
//!
//! The firmware's scheme (btminer API v2): `get_token` returns `time`, `salt` and
//! `newsalt`; the key material is `md5-crypt(password, salt)` and the token
//! `md5-crypt(key_material + time, newsalt)` (the hash part after the third `$`); writes
//! are `{"enc":1,"data":base64(AES-256-ECB(zero-padded json, sha256(key_material)))}` and
//! the reply is `{"enc":"base64(...)"}`. md5-crypt and AES-ECB are the firmware's choice,
//! not ours: we must speak them to control the miner.

use aes::cipher::block_padding::ZeroPadding;
use aes::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyInit};
use base64::Engine;
use sha2::{Digest, Sha256};

type Enc = ecb::Encryptor<aes::Aes256>;
type Dec = ecb::Decryptor<aes::Aes256>;

/// Why a privileged exchange could not be built or read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CryptoError {
    #[error("md5-crypt rejected the salt")]
    Salt,
    #[error("encrypted payload is not base64")]
    Base64,
    #[error("encrypted payload does not decrypt to whole blocks")]
    Blocks,
    #[error("decrypted payload is not json: {0}")]
    Json(String),
}

/// `md5-crypt(pass, "$1$salt$")`, hash part only. The salt comes from the miner: only
/// the crypt alphabet (`./0-9A-Za-z`) is accepted. Anything else could end the setting
/// string early (`$`), and a control character made pwhash 1.0 subtract below zero and
/// panic where overflow checks are on (found by the `miner_http` fuzz target).
pub fn md5crypt_hash(pass: &str, salt: &str) -> Result<String, CryptoError> {
    if !salt
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/')
    {
        return Err(CryptoError::Salt);
    }
    // The firmware fixes md5-crypt; pwhash deprecates it for *new* password storage.
    #[allow(deprecated)]
    let full = pwhash::md5_crypt::hash_with(format!("$1${salt}$").as_str(), pass)
        .map_err(|_| CryptoError::Salt)?;
    full.rsplit('$')
        .next()
        .map(str::to_owned)
        .ok_or(CryptoError::Salt)
}

/// Session keys derived from a `get_token` answer.
#[derive(Clone)]
pub struct TokenKeys {
    /// AES-256 key.
    key: [u8; 32],
    /// Token to put in every privileged command.
    pub sign: String,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(<redacted>)")
    }
}

impl TokenKeys {
    pub fn derive(
        password: &str,
        salt: &str,
        newsalt: &str,
        time: &str,
    ) -> Result<Self, CryptoError> {
        let passwd_md5 = md5crypt_hash(password, salt)?;
        let sign = md5crypt_hash(&format!("{passwd_md5}{time}"), newsalt)?;
        let key: [u8; 32] = Sha256::digest(passwd_md5.as_bytes()).into();
        Ok(Self { key, sign })
    }

    fn enc(&self) -> Enc {
        Enc::new(&self.key.into())
    }

    fn dec(&self) -> Dec {
        Dec::new(&self.key.into())
    }

    /// Encrypt a JSON text, base64 encoded.
    pub fn seal(&self, plain: &[u8]) -> String {
        let ct = self.enc().encrypt_padded_vec::<ZeroPadding>(plain);
        base64::engine::general_purpose::STANDARD.encode(ct)
    }

    /// Decrypt a base64 payload to JSON.
    pub fn open(&self, b64: &str) -> Result<serde_json::Value, CryptoError> {
        let ct = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| CryptoError::Base64)?;
        if ct.is_empty() || ct.len() % 16 != 0 {
            return Err(CryptoError::Blocks);
        }
        let pt = self
            .dec()
            .decrypt_padded_vec::<ZeroPadding>(&ct)
            .map_err(|_| CryptoError::Blocks)?;
        let end = pt.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
        serde_json::from_slice(&pt[..end]).map_err(|e| CryptoError::Json(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5crypt_known_vector() {
        // Same as `openssl passwd -1 -salt saltstri password`.
        assert_eq!(
            md5crypt_hash("password", "saltstri").unwrap(),
            "qQY4WxjABChYG1ccLpfkz/"
        );
    }

    #[test]
    fn salts_outside_the_crypt_alphabet_are_refused() {
        // Regression (fuzz crash-dd54e543): a newline in the salt panicked in pwhash.
        for salt in [
            "rp\ner&&&&24hoXV`",
            "ab$cd",
            "\u{0}",
            "sa lt",
            "\u{e9}t\u{e9}",
        ] {
            assert_eq!(
                md5crypt_hash("admin", salt),
                Err(CryptoError::Salt),
                "{salt:?}"
            );
        }
        assert!(TokenKeys::derive("admin", "BQ5hoXV9", "jbzk\nQls", "3604").is_err());
        assert!(md5crypt_hash("admin", "./09AZaz").is_ok());
    }

    #[test]
    fn seal_open_round_trip() {
        let k = TokenKeys::derive("admin", "BQ5hoXV9", "jbzkfQls", "3604").unwrap();
        let msg = br#"{"cmd":"power_off","respbefore":"true","token":"x"}"#;
        let sealed = k.seal(msg);
        let v = k.open(&sealed).unwrap();
        assert_eq!(v["cmd"], "power_off");
        let other = TokenKeys::derive("wrong", "BQ5hoXV9", "jbzkfQls", "3604").unwrap();
        assert!(other.open(&sealed).is_err());
        assert_eq!(k.open("!!!"), Err(CryptoError::Base64));
    }
}
