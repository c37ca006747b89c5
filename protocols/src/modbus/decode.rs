//! Register decoding and encoding: raw Modbus words to engineering values and back.
//!
//! Byte orders follow Telegraf's spelling. Write the value's bytes most significant first
//! as `A B C D` (`A B C D E F G H` for 64-bit types); the order names how they sit on the
//! wire, first register first:
//! - `ABCD`: big-endian, high word first (the Modbus convention);
//! - `CDAB`: words swapped (low word first), bytes inside a word big-endian;
//! - `BADC`: high word first, bytes inside each word swapped;
//! - `DCBA`: little-endian throughout.
//!
//! For 64-bit types "words swapped" reverses all four words. 16-bit types take the byte
//! swap of `BADC`/`DCBA` and ignore word order. Engineering value = raw x scale + offset.
//! A value that is not finite (a float NaN, which many devices send for "not available")
//! is an error here; the client reports such a point as missing, never as zero.

use rackwarden_config::profile::{ByteOrder, DataType, Point};

/// Why words could not become a value (or a value words).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("{data_type:?} needs {expected} registers, got {got}")]
    WrongLength {
        data_type: DataType,
        expected: usize,
        got: usize,
    },
    #[error("value is not a finite number (raw bits {bits:#x})")]
    NotFinite { bits: u64 },
    #[error("value {value} does not fit type {data_type:?} (raw {raw})")]
    OutOfRange {
        value: f64,
        raw: f64,
        data_type: DataType,
    },
    #[error("value {value} is not a bit (0 or 1)")]
    NotABit { value: f64 },
}

/// The words of a value in canonical big-endian byte order (`A B C D ...`).
fn canonical_bytes(words: &[u16], order: ByteOrder) -> Vec<u8> {
    let (swap_words, swap_bytes) = match order {
        ByteOrder::Abcd => (false, false),
        ByteOrder::Cdab => (true, false),
        ByteOrder::Badc => (false, true),
        ByteOrder::Dcba => (true, true),
    };
    let mut out = Vec::with_capacity(words.len() * 2);
    let mut push = |w: u16| {
        let b = if swap_bytes {
            w.to_le_bytes()
        } else {
            w.to_be_bytes()
        };
        out.extend_from_slice(&b);
    };
    if swap_words {
        words.iter().rev().copied().for_each(&mut push);
    } else {
        words.iter().copied().for_each(&mut push);
    }
    out
}

/// Inverse of [`canonical_bytes`]: big-endian bytes to wire words.
fn wire_words(bytes: &[u8], order: ByteOrder) -> Vec<u16> {
    let (swap_words, swap_bytes) = match order {
        ByteOrder::Abcd => (false, false),
        ByteOrder::Cdab => (true, false),
        ByteOrder::Badc => (false, true),
        ByteOrder::Dcba => (true, true),
    };
    let mut words: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| {
            let pair = [c[0], c[1]];
            if swap_bytes {
                u16::from_le_bytes(pair)
            } else {
                u16::from_be_bytes(pair)
            }
        })
        .collect();
    if swap_words {
        words.reverse();
    }
    words
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&bytes[..N]);
    a
}

/// Decodes the raw number (before scale and offset) of a register value. `u64` values
/// above 2^53 lose precision in the `f64` (no meter counts that high).
pub fn decode_raw(
    words: &[u16],
    data_type: DataType,
    order: ByteOrder,
) -> Result<f64, DecodeError> {
    let expected = usize::try_from(data_type.words()).unwrap_or(usize::MAX);
    if words.len() != expected {
        return Err(DecodeError::WrongLength {
            data_type,
            expected,
            got: words.len(),
        });
    }
    let b = canonical_bytes(words, order);
    let v = match data_type {
        DataType::U16 => f64::from(u16::from_be_bytes(array(&b))),
        DataType::I16 => f64::from(i16::from_be_bytes(array(&b))),
        DataType::U32 => f64::from(u32::from_be_bytes(array(&b))),
        DataType::I32 => f64::from(i32::from_be_bytes(array(&b))),
        // Precision loss above 2^53 is accepted (see the doc comment).
        #[allow(clippy::cast_precision_loss)]
        DataType::U64 => u64::from_be_bytes(array(&b)) as f64,
        DataType::F32 => {
            let f = f32::from_be_bytes(array(&b));
            if !f.is_finite() {
                return Err(DecodeError::NotFinite {
                    bits: u64::from(f.to_bits()),
                });
            }
            f64::from(f)
        }
        DataType::F64 => {
            let f = f64::from_be_bytes(array(&b));
            if !f.is_finite() {
                return Err(DecodeError::NotFinite { bits: f.to_bits() });
            }
            f
        }
        // A bool kept in a register: any non-zero word is true.
        DataType::Bool => {
            if u16::from_be_bytes(array(&b)) == 0 {
                0.0
            } else {
                1.0
            }
        }
    };
    Ok(v)
}

/// Decodes one point instance from its registers: raw x scale + offset, or the flag of
/// a `true_when` point.
pub fn decode_point(words: &[u16], point: &Point) -> Result<f64, DecodeError> {
    let raw = decode_raw(words, point.data_type, point.byte_order)?;
    if !point.true_when.is_empty() {
        return Ok(flag(raw, point));
    }
    let v = raw * point.scale + point.offset;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(DecodeError::NotFinite { bits: v.to_bits() })
    }
}

/// A bit from a coil or discrete input as a value (1.0 on, 0.0 off; no scale).
pub fn decode_bit(bit: bool) -> f64 {
    if bit {
        1.0
    } else {
        0.0
    }
}

/// A bit of a point: the bit itself, or its `true_when` flag.
pub fn decode_bit_point(bit: bool, point: &Point) -> f64 {
    let raw = decode_bit(bit);
    if point.true_when.is_empty() {
        raw
    } else {
        flag(raw, point)
    }
}

fn flag(raw: f64, point: &Point) -> f64 {
    // true_when holds integers; raw values of integer types are exact in f64.
    #[allow(clippy::cast_precision_loss)]
    let hit = point.true_when.iter().any(|t| *t as f64 == raw);
    decode_bit(hit)
}

/// The raw value that encodes flag `on` for a `true_when` point: its first listed value
/// for 1, the smallest non-negative integer not listed for 0.
fn flag_raw(on: bool, point: &Point) -> f64 {
    // Small integers from a profile; exact in f64.
    #[allow(clippy::cast_precision_loss)]
    if on {
        point.true_when.first().map_or(1.0, |t| *t as f64)
    } else {
        (0i64..)
            .find(|c| !point.true_when.contains(c))
            .map_or(0.0, |c| c as f64)
    }
}

/// The bit to write for `value` (0 or 1) on a coil point, through `true_when`.
pub fn encode_bit_point(value: f64, point: &Point) -> Result<bool, DecodeError> {
    let on = encode_bit(value)?;
    if point.true_when.is_empty() {
        Ok(on)
    } else {
        Ok(flag_raw(on, point) != 0.0)
    }
}

/// Encodes a raw number (after removing scale and offset) into wire words. Integer types
/// take the nearest integer and refuse values outside their range.
pub fn encode_raw(
    raw: f64,
    data_type: DataType,
    order: ByteOrder,
) -> Result<Vec<u16>, DecodeError> {
    if !raw.is_finite() {
        return Err(DecodeError::NotFinite {
            bits: raw.to_bits(),
        });
    }
    let out_of_range = || DecodeError::OutOfRange {
        value: raw,
        raw,
        data_type,
    };
    let r = raw.round();
    // Each cast below is range-checked on the line before it.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let bytes: Vec<u8> = match data_type {
        DataType::U16 | DataType::Bool => {
            if !(0.0..=f64::from(u16::MAX)).contains(&r) {
                return Err(out_of_range());
            }
            (r as u16).to_be_bytes().to_vec()
        }
        DataType::I16 => {
            if !(f64::from(i16::MIN)..=f64::from(i16::MAX)).contains(&r) {
                return Err(out_of_range());
            }
            (r as i16).to_be_bytes().to_vec()
        }
        DataType::U32 => {
            if !(0.0..=f64::from(u32::MAX)).contains(&r) {
                return Err(out_of_range());
            }
            (r as u32).to_be_bytes().to_vec()
        }
        DataType::I32 => {
            if !(f64::from(i32::MIN)..=f64::from(i32::MAX)).contains(&r) {
                return Err(out_of_range());
            }
            (r as i32).to_be_bytes().to_vec()
        }
        DataType::U64 => {
            // 2^64 is exactly representable; u64::MAX is not, so compare against 2^64.
            if !(0.0..18_446_744_073_709_551_616.0).contains(&r) {
                return Err(out_of_range());
            }
            (r as u64).to_be_bytes().to_vec()
        }
        DataType::F32 => {
            if raw.abs() > f64::from(f32::MAX) {
                return Err(out_of_range());
            }
            // Narrowing to f32 is the point of the type.
            (raw as f32).to_be_bytes().to_vec()
        }
        DataType::F64 => raw.to_be_bytes().to_vec(),
    };
    Ok(wire_words(&bytes, order))
}

/// Encodes an engineering value for a point: (value - offset) / scale, then the type.
pub fn encode_point(value: f64, point: &Point) -> Result<Vec<u16>, DecodeError> {
    if !point.true_when.is_empty() {
        let raw = flag_raw(encode_bit(value)?, point);
        return encode_raw(raw, point.data_type, point.byte_order);
    }
    let raw = (value - point.offset) / point.scale;
    encode_raw(raw, point.data_type, point.byte_order).map_err(|e| match e {
        DecodeError::OutOfRange { data_type, .. } => DecodeError::OutOfRange {
            value,
            raw,
            data_type,
        },
        other => other,
    })
}

/// An engineering value for a coil: only 0 and 1 are bits.
pub fn encode_bit(value: f64) -> Result<bool, DecodeError> {
    if value == 0.0 {
        Ok(false)
    } else if value == 1.0 {
        Ok(true)
    } else {
        Err(DecodeError::NotABit { value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rackwarden_config::profile::RegisterKind;

    const ORDERS: [ByteOrder; 4] = [
        ByteOrder::Abcd,
        ByteOrder::Cdab,
        ByteOrder::Badc,
        ByteOrder::Dcba,
    ];

    fn point(data_type: DataType, byte_order: ByteOrder, scale: f64, offset: f64) -> Point {
        Point {
            name: "p".into(),
            role: None,
            register: RegisterKind::Holding,
            address: 0,
            data_type,
            byte_order,
            scale,
            offset,
            unit: None,
            writable: true,
            count: 1,
            stride: None,
            true_when: vec![],
        }
    }

    #[test]
    fn u32_in_every_byte_order() {
        // 0x11223344: A=11 B=22 C=33 D=44.
        let cases = [
            (ByteOrder::Abcd, [0x1122, 0x3344]),
            (ByteOrder::Cdab, [0x3344, 0x1122]),
            (ByteOrder::Badc, [0x2211, 0x4433]),
            (ByteOrder::Dcba, [0x4433, 0x2211]),
        ];
        for (order, words) in cases {
            assert_eq!(
                decode_raw(&words, DataType::U32, order).unwrap(),
                f64::from(0x1122_3344u32),
                "{order:?}"
            );
            assert_eq!(
                encode_raw(f64::from(0x1122_3344u32), DataType::U32, order).unwrap(),
                words.to_vec()
            );
        }
    }

    #[test]
    fn u64_and_f64_in_every_byte_order() {
        let v: u64 = 0x0011_2233_4455_6677;
        let cases = [
            (ByteOrder::Abcd, [0x0011, 0x2233, 0x4455, 0x6677]),
            (ByteOrder::Cdab, [0x6677, 0x4455, 0x2233, 0x0011]),
            (ByteOrder::Badc, [0x1100, 0x3322, 0x5544, 0x7766]),
            (ByteOrder::Dcba, [0x7766, 0x5544, 0x3322, 0x1100]),
        ];
        for (order, words) in cases {
            #[allow(clippy::cast_precision_loss)]
            let expect = v as f64;
            assert_eq!(decode_raw(&words, DataType::U64, order).unwrap(), expect);
        }
        for order in ORDERS {
            let w = encode_raw(-1234.5678, DataType::F64, order).unwrap();
            assert_eq!(decode_raw(&w, DataType::F64, order).unwrap(), -1234.5678);
        }
    }

    #[test]
    fn sixteen_bit_types_and_negatives() {
        assert_eq!(
            decode_raw(&[0xFFFF], DataType::U16, ByteOrder::Abcd).unwrap(),
            65535.0
        );
        assert_eq!(
            decode_raw(&[0xFFFF], DataType::I16, ByteOrder::Abcd).unwrap(),
            -1.0
        );
        assert_eq!(
            decode_raw(&[0xFF85], DataType::I16, ByteOrder::Cdab).unwrap(),
            -123.0
        );
        // Byte swap for BADC/DCBA: 0x85FF on the wire is 0xFF85.
        assert_eq!(
            decode_raw(&[0x85FF], DataType::I16, ByteOrder::Badc).unwrap(),
            -123.0
        );
        assert_eq!(
            decode_raw(&[0x85FF], DataType::I16, ByteOrder::Dcba).unwrap(),
            -123.0
        );
        assert_eq!(
            decode_raw(&[0xFFFF, 0xFF85], DataType::I32, ByteOrder::Abcd).unwrap(),
            -123.0
        );
        assert_eq!(
            decode_raw(&[0xFF85, 0xFFFF], DataType::I32, ByteOrder::Cdab).unwrap(),
            -123.0
        );
        assert_eq!(
            decode_raw(&[0x0000], DataType::Bool, ByteOrder::Abcd).unwrap(),
            0.0
        );
        assert_eq!(
            decode_raw(&[0x0100], DataType::Bool, ByteOrder::Abcd).unwrap(),
            1.0
        );
    }

    #[test]
    fn f32_known_values_and_word_swap() {
        // 230.5 = 0x43668000; -12.25 = 0xC1440000.
        assert_eq!(
            decode_raw(&[0x4366, 0x8000], DataType::F32, ByteOrder::Abcd).unwrap(),
            230.5
        );
        assert_eq!(
            decode_raw(&[0x8000, 0x4366], DataType::F32, ByteOrder::Cdab).unwrap(),
            230.5
        );
        assert_eq!(
            decode_raw(&[0x0000, 0x44C1], DataType::F32, ByteOrder::Dcba).unwrap(),
            -12.25
        );
        assert_eq!(
            decode_raw(&[0x44C1, 0x0000], DataType::F32, ByteOrder::Badc).unwrap(),
            -12.25
        );
    }

    #[test]
    fn nan_and_infinity_are_errors_not_values() {
        let nan = f32::NAN.to_bits();
        let hi = u16::try_from(nan >> 16).unwrap();
        let lo = u16::try_from(nan & 0xFFFF).unwrap();
        assert!(matches!(
            decode_raw(&[hi, lo], DataType::F32, ByteOrder::Abcd),
            Err(DecodeError::NotFinite { .. })
        ));
        assert!(matches!(
            decode_raw(&[0x7F80, 0x0000], DataType::F32, ByteOrder::Abcd),
            Err(DecodeError::NotFinite { .. })
        ));
        let w = f64::NAN.to_bits().to_be_bytes();
        let words: Vec<u16> = w
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        assert!(decode_raw(&words, DataType::F64, ByteOrder::Abcd).is_err());
        assert!(encode_raw(f64::NAN, DataType::F32, ByteOrder::Abcd).is_err());
    }

    #[test]
    fn scale_and_offset() {
        // Liebert style: divisor 10 -> scale 0.1; temperature -4.5 degC stored as -45.
        let p = point(DataType::I16, ByteOrder::Abcd, 0.1, 0.0);
        let w = encode_point(-4.5, &p).unwrap();
        assert_eq!(w, vec![0xFFD3]);
        assert!((decode_point(&w, &p).unwrap() + 4.5).abs() < 1e-9);
        // Offset: raw 500 x 0.1 - 40 = 10.
        let q = point(DataType::U16, ByteOrder::Abcd, 0.1, -40.0);
        assert!((decode_point(&[500], &q).unwrap() - 10.0).abs() < 1e-9);
        assert_eq!(encode_point(10.0, &q).unwrap(), vec![500]);
        // Below the type's range after scaling: refused, not wrapped.
        assert!(matches!(
            encode_point(-50.0, &q),
            Err(DecodeError::OutOfRange { .. })
        ));
    }

    #[test]
    fn true_when_flags() {
        let mut p = point(DataType::U16, ByteOrder::Abcd, 1.0, 0.0);
        p.true_when = vec![16, 32];
        assert_eq!(decode_point(&[16], &p).unwrap(), 1.0);
        assert_eq!(decode_point(&[32], &p).unwrap(), 1.0);
        assert_eq!(decode_point(&[8], &p).unwrap(), 0.0);
        assert_eq!(encode_point(1.0, &p).unwrap(), vec![16]);
        assert_eq!(encode_point(0.0, &p).unwrap(), vec![0]);
        // An inverted bit (STULZ "1 = unit off"): reads 1 when the bit is 0.
        let mut b = point(DataType::Bool, ByteOrder::Abcd, 1.0, 0.0);
        b.register = RegisterKind::Coil;
        b.true_when = vec![0];
        assert_eq!(decode_bit_point(false, &b), 1.0);
        assert_eq!(decode_bit_point(true, &b), 0.0);
        assert!(!encode_bit_point(1.0, &b).unwrap());
        assert!(encode_bit_point(0.0, &b).unwrap());
        assert!(encode_bit_point(0.3, &b).is_err());
    }

    #[test]
    fn wrong_length_and_out_of_range() {
        assert!(matches!(
            decode_raw(&[1], DataType::U32, ByteOrder::Abcd),
            Err(DecodeError::WrongLength {
                expected: 2,
                got: 1,
                ..
            })
        ));
        assert!(decode_raw(&[], DataType::U16, ByteOrder::Abcd).is_err());
        assert!(encode_raw(65536.0, DataType::U16, ByteOrder::Abcd).is_err());
        assert!(encode_raw(-1.0, DataType::U32, ByteOrder::Abcd).is_err());
        assert!(encode_raw(40000.0, DataType::I16, ByteOrder::Abcd).is_err());
        assert!(encode_raw(1e40, DataType::F32, ByteOrder::Abcd).is_err());
        assert!(encode_bit(0.5).is_err());
        assert!(encode_bit(1.0).unwrap());
    }

    fn any_order() -> impl Strategy<Value = ByteOrder> {
        prop::sample::select(ORDERS.to_vec())
    }

    proptest! {
        #[test]
        fn i32_roundtrips(v in any::<i32>(), order in any_order()) {
            let w = encode_raw(f64::from(v), DataType::I32, order).unwrap();
            prop_assert_eq!(decode_raw(&w, DataType::I32, order).unwrap(), f64::from(v));
        }

        #[test]
        fn u32_roundtrips(v in any::<u32>(), order in any_order()) {
            let w = encode_raw(f64::from(v), DataType::U32, order).unwrap();
            prop_assert_eq!(decode_raw(&w, DataType::U32, order).unwrap(), f64::from(v));
        }

        #[test]
        fn i16_u16_roundtrip(v in any::<i16>(), u in any::<u16>(), order in any_order()) {
            let w = encode_raw(f64::from(v), DataType::I16, order).unwrap();
            prop_assert_eq!(decode_raw(&w, DataType::I16, order).unwrap(), f64::from(v));
            let w = encode_raw(f64::from(u), DataType::U16, order).unwrap();
            prop_assert_eq!(decode_raw(&w, DataType::U16, order).unwrap(), f64::from(u));
        }

        #[test]
        fn u64_roundtrips_below_2_pow_53(v in 0u64..(1u64 << 53), order in any_order()) {
            #[allow(clippy::cast_precision_loss)]
            let f = v as f64;
            let w = encode_raw(f, DataType::U64, order).unwrap();
            prop_assert_eq!(decode_raw(&w, DataType::U64, order).unwrap(), f);
        }

        #[test]
        fn f32_f64_roundtrip(v in any::<f32>(), d in any::<f64>(), order in any_order()) {
            prop_assume!(v.is_finite() && d.is_finite());
            let w = encode_raw(f64::from(v), DataType::F32, order).unwrap();
            prop_assert_eq!(decode_raw(&w, DataType::F32, order).unwrap(), f64::from(v));
            let w = encode_raw(d, DataType::F64, order).unwrap();
            prop_assert_eq!(decode_raw(&w, DataType::F64, order).unwrap(), d);
        }

        #[test]
        fn scaled_points_roundtrip_within_half_a_step(
            raw in -30000i32..30000, scale in prop::sample::select(vec![0.1, 0.01, 0.001, 10.0]),
            offset in -100.0f64..100.0, order in any_order(),
        ) {
            let p = point(DataType::I32, order, scale, offset);
            let value = f64::from(raw) * scale + offset;
            let w = encode_point(value, &p).unwrap();
            let back = decode_point(&w, &p).unwrap();
            prop_assert!((back - value).abs() <= scale.abs() / 2.0 + 1e-9);
        }

        #[test]
        fn arbitrary_words_never_panic(words in prop::collection::vec(any::<u16>(), 0..6), order in any_order()) {
            for t in [DataType::U16, DataType::I16, DataType::U32, DataType::I32, DataType::U64, DataType::F32, DataType::F64, DataType::Bool] {
                let r = decode_raw(&words, t, order);
                if words.len() != usize::try_from(t.words()).unwrap() {
                    prop_assert!(r.is_err());
                }
            }
        }
    }
}
