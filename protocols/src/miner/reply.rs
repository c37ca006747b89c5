//! Bytes off a miner's API socket -> JSON value -> status envelope.
//!
//! Owns the repair of the broken JSON that cgminer forks send (see
//! `protocols/tests/data/miners/README.md`, "Known wire defects"), the STATUS envelope
//! (cgminer array form and Whatsminer's flat form) and lenient field access (numbers
//! as strings, key typos). Pure functions, no I/O: the fuzz target drives them directly.

use serde_json::{Map, Value};

/// Why a reply could not be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReplyError {
    #[error("empty reply")]
    Empty,
    #[error("reply is not json even after repair: {0}")]
    Json(String),
    #[error("reply has no status envelope")]
    NoStatus,
    #[error("miner answered {letter} code {code}: {msg}")]
    Status {
        letter: char,
        code: i64,
        msg: String,
    },
    #[error("reply lacks the {0} section")]
    Missing(&'static str),
}

/// Outcome letter of a STATUS envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusKind {
    /// `S`: success.
    Success,
    /// `I`: informational, still a success (Avalon `ascset` answers `I`).
    Info,
    /// `W`: warning (treated as a failure: the command did not do what was asked).
    Warning,
    /// `E`: error.
    Error,
    /// `F`: fatal.
    Fatal,
}

impl StatusKind {
    fn from_letter(s: &str) -> Option<Self> {
        match s.trim() {
            "S" | "s" => Some(Self::Success),
            "I" | "i" => Some(Self::Info),
            "W" | "w" => Some(Self::Warning),
            "E" | "e" => Some(Self::Error),
            "F" | "f" => Some(Self::Fatal),
            _ => None,
        }
    }

    pub fn letter(self) -> char {
        match self {
            Self::Success => 'S',
            Self::Info => 'I',
            Self::Warning => 'W',
            Self::Error => 'E',
            Self::Fatal => 'F',
        }
    }

    pub fn is_ok(self) -> bool {
        matches!(self, Self::Success | Self::Info)
    }
}

/// The STATUS envelope of one reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub kind: StatusKind,
    pub code: Option<i64>,
    /// `Msg` when it is text (Whatsminer puts an object there: see [`Reply::body`]).
    pub msg: String,
    pub description: String,
    pub when: Option<i64>,
}

/// A parsed reply: its status and the whole JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: Status,
    pub body: Value,
}

impl Reply {
    /// Parse and repair raw bytes, then read the envelope.
    pub fn parse(raw: &[u8]) -> Result<Self, ReplyError> {
        let body = parse_json(raw)?;
        let status = status_of(&body).ok_or(ReplyError::NoStatus)?;
        Ok(Self { status, body })
    }

    /// `Ok` for S/I, the status as an error for W/E/F.
    pub fn ok(self) -> Result<Self, ReplyError> {
        if self.status.kind.is_ok() {
            Ok(self)
        } else {
            Err(ReplyError::Status {
                letter: self.status.kind.letter(),
                code: self.status.code.unwrap_or(-1),
                msg: self.status.msg.clone(),
            })
        }
    }

    /// First object of a cgminer section (`SUMMARY`, `STATS`, ...).
    pub fn first(&self, section: &'static str) -> Result<&Map<String, Value>, ReplyError> {
        section_objects(&self.body, section)
            .next()
            .ok_or(ReplyError::Missing(section))
    }

    /// Every object of a cgminer section.
    pub fn all(&self, section: &'static str) -> impl Iterator<Item = &Map<String, Value>> {
        section_objects(&self.body, section)
    }

    /// Whatsminer's flat form puts the payload object in `Msg`.
    pub fn msg_object(&self) -> Result<&Map<String, Value>, ReplyError> {
        self.body
            .get("Msg")
            .and_then(Value::as_object)
            .ok_or(ReplyError::Missing("Msg"))
    }

    /// Split a multi-command reply (`{"summary":[{..}],"stats":[{..}]}`) into one reply
    /// per command. A reply
    /// that carries its own top-level STATUS (a refusal such as `E 14 Invalid command`)
    /// is returned as that error.
    pub fn split_multi(body: Value, commands: &[&str]) -> Result<Vec<Reply>, ReplyError> {
        if body.get("STATUS").is_some() {
            let status = status_of(&body).ok_or(ReplyError::NoStatus)?;
            Reply { status, body }.ok()?;
            return Err(ReplyError::Missing("multi-command sections"));
        }
        let mut out = Vec::with_capacity(commands.len());
        for cmd in commands {
            let sub = body
                .get(*cmd)
                .and_then(|v| match v {
                    Value::Array(a) => a.first(),
                    other => Some(other),
                })
                .ok_or(ReplyError::Missing("multi-command section"))?;
            let status = status_of(sub).ok_or(ReplyError::NoStatus)?;
            out.push(Reply {
                status,
                body: sub.clone(),
            });
        }
        Ok(out)
    }
}

fn section_objects<'a>(
    body: &'a Value,
    section: &'static str,
) -> impl Iterator<Item = &'a Map<String, Value>> {
    body.get(section)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
}

/// Read the STATUS envelope: cgminer's `"STATUS":[{"STATUS":"S",...}]` or Whatsminer's
/// flat `{"STATUS":"S","Code":131,"Msg":{...}}`.
pub fn status_of(body: &Value) -> Option<Status> {
    let (obj, letter) = match body.get("STATUS")? {
        Value::Array(a) => {
            let o = a.first()?.as_object()?;
            (o, o.get("STATUS")?.as_str()?)
        }
        Value::String(s) => (body.as_object()?, s.as_str()),
        _ => return None,
    };
    let kind = StatusKind::from_letter(letter)?;
    let msg = match obj.get("Msg") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    Some(Status {
        kind,
        code: obj.get("Code").and_then(num).and_then(f64_to_i64),
        msg,
        description: text(obj, &["Description"]).unwrap_or_default(),
        when: obj.get("When").and_then(num).and_then(f64_to_i64),
    })
}

fn f64_to_i64(v: f64) -> Option<i64> {
    // Codes and timestamps are integers far inside i64; the range check makes the cast
    // exact rather than saturating silently.
    if v.is_finite() && v.abs() < 9.0e15 {
        #[allow(clippy::cast_possible_truncation)]
        Some(v.round() as i64)
    } else {
        None
    }
}

/// A number, leniently: JSON numbers, numeric strings (`"415.065"`, `" 12 "`), never
/// `inf`/`nan` or empty strings.
pub fn num(v: &Value) -> Option<f64> {
    let f = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    f.is_finite().then_some(f)
}

/// First of `keys` present as a number (covers firmware key typos: pass every spelling).
pub fn field(obj: &Map<String, Value>, keys: &[&str]) -> Option<f64> {
    keys.iter().find_map(|k| obj.get(*k).and_then(num))
}

/// First of `keys` present as text (numbers rendered).
pub fn text(obj: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| match obj.get(*k)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// Bytes -> JSON, repairing the known wire defects when the bytes are not valid JSON.
pub fn parse_json(raw: &[u8]) -> Result<Value, ReplyError> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let bytes = trim_ascii(&raw[..end]);
    if bytes.is_empty() {
        return Err(ReplyError::Empty);
    }
    // Fast path: most replies are valid once the NUL is gone.
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        if v.is_object() {
            return Ok(v);
        }
    }
    let repaired = repair(bytes)?;
    match serde_json::from_str::<Value>(&repaired) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(ReplyError::Json("top level is not an object".into())),
        Err(e) => Err(ReplyError::Json(e.to_string())),
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |p| p + 1);
    &b[start..end]
}

/// Rewrite a broken reply into JSON that serde_json accepts. Tokens outside strings are
/// rewritten (missing and extra commas, bare `inf`/`nan`), raw control characters inside
/// strings are dropped, and a truncated reply is cut back to its last complete field and
/// closed. Non-UTF-8 bytes are decoded lossily first. A bare word that is no number or
/// JSON literal (an HTTP status line, binary noise) is an error: it is not a reply.
pub fn repair(bytes: &[u8]) -> Result<String, ReplyError> {
    // Work on the bytes of the lossily decoded text: every structural character is ASCII,
    // so multi-byte characters only pass through, and the output stays valid UTF-8.
    let text = String::from_utf8_lossy(bytes);
    let mut src = text.trim_start().as_bytes();
    // Avalon: a reply starting with `,`: drop the commas, then wrap in `{` if needed.
    while let Some((b',', rest)) = src.split_first() {
        src = rest.trim_ascii_start();
    }
    if matches!(src.first(), Some(b'}' | b']')) {
        return Err(ReplyError::Json(
            "reply starts with a closing bracket".into(),
        ));
    }
    let mut out: Vec<u8> = Vec::with_capacity(src.len() + 16);
    let mut stack: Vec<u8> = Vec::new();
    if !matches!(src.first(), Some(b'{' | b'[')) {
        out.push(b'{');
        stack.push(b'}');
    }
    // Last point where the text so far was a complete prefix: (length, open depth). Any
    // close below that depth sets a new checkpoint, so `stack[..depth]` at the end is
    // still the checkpoint's open brackets.
    let mut checkpoint: (usize, usize) = (out.len(), stack.len());
    let mut in_string = false;
    let mut escaped = false;
    // The previous significant token ended a value (so a following value needs a comma).
    let mut after_value = false;
    let mut i = 0;
    let mut finished = false;
    while i < src.len() {
        let c = src[i];
        if in_string {
            if escaped {
                escaped = false;
                out.push(c);
            } else if c == b'\\' {
                escaped = true;
                out.push(c);
            } else if c == b'"' {
                in_string = false;
                after_value = true;
                out.push(c);
            } else if c >= 0x20 {
                out.push(c);
            }
            // Raw newline/tab inside a string (Whatsminer): removed.
            i += 1;
            continue;
        }
        match c {
            b'"' => {
                if after_value {
                    out.push(b',');
                }
                in_string = true;
                after_value = false;
                out.push(c);
            }
            b'{' | b'[' => {
                if after_value {
                    out.push(b',');
                }
                stack.push(if c == b'{' { b'}' } else { b']' });
                out.push(c);
                after_value = false;
                // `[,{`: skip commas right after an opening bracket.
                while i + 1 < src.len() && (src[i + 1] == b',' || src[i + 1].is_ascii_whitespace())
                {
                    i += 1;
                }
            }
            b'}' | b']' => {
                // `,}` / `,]`: drop a trailing comma.
                if out.last() == Some(&b',') {
                    out.pop();
                }
                match stack.pop() {
                    Some(close) => out.push(close),
                    None => {
                        finished = true;
                        break;
                    }
                }
                after_value = true;
                checkpoint = (out.len(), stack.len());
                if stack.is_empty() {
                    // Root closed: ignore anything after it.
                    finished = true;
                    break;
                }
            }
            b',' => {
                if !matches!(out.last(), Some(b',' | b'[' | b'{')) {
                    checkpoint = (out.len(), stack.len());
                    out.push(b',');
                }
                after_value = false;
            }
            b':' => {
                out.push(b':');
                after_value = false;
            }
            c if c.is_ascii_whitespace() => {}
            _ => {
                // A bare token: number or literal.
                let start = i;
                while i < src.len()
                    && !matches!(src[i], b',' | b'}' | b']' | b':' | b'"' | b'{' | b'[')
                    && !src[i].is_ascii_whitespace()
                {
                    i += 1;
                }
                let token = &src[start..i];
                if after_value {
                    out.push(b',');
                }
                let lower = token.to_ascii_lowercase();
                let bare = lower
                    .strip_prefix(b"-")
                    .or_else(|| lower.strip_prefix(b"+"))
                    .unwrap_or(&lower);
                if matches!(bare, b"inf" | b"infinity" | b"nan") {
                    out.extend_from_slice(b"null");
                } else if matches!(bare, b"true" | b"false" | b"null")
                    || std::str::from_utf8(token).is_ok_and(|t| t.parse::<f64>().is_ok())
                {
                    out.extend_from_slice(token);
                } else {
                    let shown = String::from_utf8_lossy(&token[..token.len().min(32)]).into_owned();
                    return Err(ReplyError::Json(format!("unexpected token {shown}")));
                }
                after_value = true;
                continue;
            }
        }
        i += 1;
    }
    if !finished && (in_string || !stack.is_empty()) {
        // Truncated: cut to the last complete field and close what is open.
        let (len, depth) = checkpoint;
        out.truncate(len);
        while matches!(out.last(), Some(b',' | b':')) {
            out.pop();
        }
        out.extend(stack[..depth].iter().rev());
    }
    String::from_utf8(out).map_err(|e| ReplyError::Json(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_path_strips_nul() {
        let v = parse_json(b"{\"a\":1}\0").unwrap();
        assert_eq!(v["a"], 1);
    }

    #[test]
    fn missing_comma_between_objects() {
        let v = parse_json(br#"{"STATS":[{"a":1}{"b":2}],"id":1}"#).unwrap();
        assert_eq!(v["STATS"][1]["b"], 2);
    }

    #[test]
    fn leading_and_trailing_commas() {
        let v = parse_json(br#"{"lcd":[,{"a":1,},],"x":[1,2,],}"#).unwrap();
        assert_eq!(v["lcd"][0]["a"], 1);
        assert_eq!(v["x"][1], 2);
    }

    #[test]
    fn raw_newline_in_string_and_missing_string_comma() {
        let v = parse_json(b"{\"a\":\"x\ny\"\"temp0\":3}").unwrap();
        assert_eq!(v["a"], "xy");
        assert_eq!(v["temp0"], 3);
    }

    #[test]
    fn inf_nan_and_leading_comma() {
        let v = parse_json(br#","STATUS":"S","t":inf,"u":-nan,"w":nan}"#).unwrap();
        assert_eq!(v["STATUS"], "S");
        assert!(v["t"].is_null());
        assert!(v["u"].is_null());
    }

    #[test]
    fn truncated_reply_keeps_complete_fields() {
        let v = parse_json(
            br#"{"STATUS":[{"STATUS":"S","Code":11}],"SUMMARY":[{"MHS av":12.5,"Elapsed":12"#,
        )
        .unwrap();
        assert_eq!(v["SUMMARY"][0]["MHS av"], 12.5);
        assert!(v["SUMMARY"][0].get("Elapsed").is_none());
        assert_eq!(status_of(&v).unwrap().code, Some(11));
        // Cut inside a string.
        let v = parse_json(br#"{"a":1,"b":"abc"#).unwrap();
        assert_eq!(v["a"], 1);
        assert!(v.get("b").is_none());
    }

    #[test]
    fn non_utf8_is_lossy() {
        let v = parse_json(b"{\"Type\":\"S19\xff\xfe\",\"x\":1}").unwrap();
        assert_eq!(v["x"], 1);
        assert!(v["Type"].as_str().unwrap().starts_with("S19"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_json(b"HTTP/1.1 400 Bad Request").is_err());
        assert_eq!(parse_json(b"\0"), Err(ReplyError::Empty));
        assert!(parse_json(b"}}}]]]").is_err());
        assert!(Reply::parse(b"{\"x\":1}").is_err());
    }

    #[test]
    fn lenient_numbers() {
        assert_eq!(num(&Value::from("415.065")), Some(415.065));
        assert_eq!(num(&Value::from("")), None);
        assert_eq!(num(&Value::from("inf")), None);
        assert_eq!(num(&Value::from("nan")), None);
    }

    #[test]
    fn status_errors() {
        let r = Reply::parse(
            br#"{"STATUS":[{"STATUS":"E","When":1,"Code":14,"Msg":"Invalid command","Description":"cgminer"}],"id":1}"#,
        )
        .unwrap();
        assert_eq!(
            r.ok(),
            Err(ReplyError::Status {
                letter: 'E',
                code: 14,
                msg: "Invalid command".into()
            })
        );
    }
}
