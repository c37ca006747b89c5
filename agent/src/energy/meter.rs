//! One meter's energy, 15-minute slot by slot, from its energy counter where it has one
//! and from its power readings where it has not (docs/energy.md).
//!
//! A PDU's energy counter is cumulative, so it bridges any gap in the readings: the
//! energy between two readings an hour apart is their difference, exactly. What it
//! cannot bridge is a counter that went backwards: a wrap at the register's top (the
//! energy is the distance to the top plus the new value), or a reset (a PDU reboot or
//! replacement: what was drawn before the reset is unknown to the counter). A reset's
//! interval is estimated from the power readings around it and flagged; a jump larger
//! than the meter's rating could draw is flagged and estimated the same way. Without a
//! counter, energy is the trapezoid of consecutive power readings, marked estimated; a
//! gap longer than the stale limit is never integrated: its seconds are recorded as
//! missing (never counted as zero), and the report says so.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::control::Millis;

/// The accounting slot: 15 minutes, the demand interval colocation contracts bill on.
pub const SLOT_MS: Millis = 15 * 60 * 1000;

/// What one meter (or the sum of several) drew in one slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Slot {
    /// From the energy counter.
    pub measured_kwh: f64,
    /// From power readings (no counter, or across a counter reset or jump).
    pub estimated_kwh: f64,
    /// Seconds nothing could account for (no counter and no fresh power reading).
    pub missing_s: f64,
    /// Counter resets (PDU reboot or replacement) seen in the slot.
    pub resets: u32,
    /// Counter wraps at the register's top.
    pub wraps: u32,
    /// Jumps larger than the meter's rating could draw (estimated instead).
    pub jumps: u32,
    /// Reading gaps longer than the stale limit that the counter bridged.
    pub gaps: u32,
}

impl Slot {
    pub fn kwh(&self) -> f64 {
        self.measured_kwh + self.estimated_kwh
    }

    pub fn add(&mut self, o: &Slot) {
        self.measured_kwh += o.measured_kwh;
        self.estimated_kwh += o.estimated_kwh;
        self.missing_s += o.missing_s;
        self.resets += o.resets;
        self.wraps += o.wraps;
        self.jumps += o.jumps;
        self.gaps += o.gaps;
    }

    pub fn is_empty(&self) -> bool {
        *self == Slot::default()
    }
}

/// The start of the slot holding `t`.
pub fn slot_of(t: Millis) -> Millis {
    t - t % SLOT_MS
}

/// How a meter is read: where its counter wraps, how much it can draw, when a silence
/// becomes a gap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeterSpec {
    /// The counter's top (the register's largest value times its scale), kWh; `None`
    /// when the meter has no counter.
    pub wrap_kwh: Option<f64>,
    /// The most the meter can draw, kW (its node's breaker rating): a counter step above
    /// what this allows in the elapsed time is a jump, not energy.
    pub max_kw: f64,
    /// Readings further apart than this are a gap: power is not integrated across it.
    pub stale_ms: Millis,
}

/// The last reading the book holds for a meter (kept across restarts in the database,
/// so a counter bridges the agent's own downtime).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct LastReading {
    pub t: Millis,
    pub kw: Option<f64>,
    pub counter_kwh: Option<f64>,
}

/// One meter's book: its last reading and the slots not yet handed to the store.
///
/// A meter with a counter is accounted from counter reading to counter reading: a
/// reading whose counter point failed accounts nothing yet (the next counter reading
/// covers its time), so nothing is counted twice. A meter without one is accounted from
/// reading to reading by its power.
#[derive(Debug, Clone)]
pub struct MeterBook {
    pub spec: MeterSpec,
    /// The last reading accounted from: the last counter reading of a meter with a
    /// counter, the last reading of one without.
    last: Option<LastReading>,
    slots: BTreeMap<Millis, Slot>,
}

impl MeterBook {
    pub fn new(spec: MeterSpec, last: Option<LastReading>) -> MeterBook {
        MeterBook {
            spec,
            last,
            slots: BTreeMap::new(),
        }
    }

    pub fn last(&self) -> Option<LastReading> {
        self.last
    }

    /// Takes one reading at `t`: `kw` the meter's power, `counter_kwh` its energy counter
    /// (either may be missing: a point that did not read, a meter without a counter). A
    /// reading at or before the last one accounted is ignored.
    pub fn observe(&mut self, t: Millis, kw: Option<f64>, counter_kwh: Option<f64>) {
        let kw = kw.filter(|v| v.is_finite() && *v >= 0.0);
        let counter_kwh = counter_kwh.filter(|v| v.is_finite() && *v >= 0.0);
        if self.last.is_some_and(|l| t <= l.t) {
            return;
        }
        let reading = LastReading { t, kw, counter_kwh };
        if self.spec.wrap_kwh.is_some() {
            let Some(c1) = counter_kwh else { return };
            if let Some(prev) = self.last {
                match prev.counter_kwh {
                    Some(_) => self.by_counter(prev, c1, reading),
                    // Stored by a run that read no counter: power up to here.
                    None => self.by_power(prev, reading),
                }
            }
        } else if let Some(prev) = self.last {
            self.by_power(prev, reading);
        }
        self.last = Some(reading);
    }

    /// Energy from `prev` to `now` by the counter (`c1` now).
    fn by_counter(&mut self, prev: LastReading, c1: f64, now: LastReading) {
        let (t0, t1) = (prev.t, now.t);
        let c0 = prev.counter_kwh.unwrap_or(0.0);
        #[allow(clippy::cast_precision_loss)]
        let hours = (t1 - t0) as f64 / 3_600_000.0;
        // What the meter could draw in the time, with room for the counter's resolution.
        let most = self.spec.max_kw * hours * 1.25 + 1.0;
        let d = c1 - c0;
        let (energy, flag) = if (0.0..=most).contains(&d) {
            (Some(d), None)
        } else if d < 0.0 {
            match self.spec.wrap_kwh {
                Some(top) if c0 > top * 0.5 && top - c0 + c1 <= most => {
                    (Some(top - c0 + c1), Some(Flag::Wrap))
                }
                _ => (None, Some(Flag::Reset)),
            }
        } else {
            (None, Some(Flag::Jump))
        };
        match energy {
            Some(e) => {
                self.spread(t0, t1, |s, share| s.measured_kwh += e * share);
                if t1 - t0 > self.spec.stale_ms {
                    self.slot_mut(t1).gaps += 1;
                }
            }
            // The counter says nothing of this interval: the power readings do.
            None => self.estimate(t0, t1, prev.kw, now.kw),
        }
        match flag {
            Some(Flag::Wrap) => self.slot_mut(t1).wraps += 1,
            Some(Flag::Reset) => self.slot_mut(t1).resets += 1,
            Some(Flag::Jump) => self.slot_mut(t1).jumps += 1,
            None => {}
        }
    }

    /// The interval `[t0, t1]` from power alone: the mean of its ends where both read and
    /// `t1 - t0` is within the stale limit; the one end that read where only one did;
    /// missing seconds where neither did. Across a longer gap (a counter reset during a
    /// meter outage) the mean of the ends is still the best estimate there is, and it is
    /// marked estimated.
    fn estimate(&mut self, t0: Millis, t1: Millis, kw0: Option<f64>, kw1: Option<f64>) {
        let mean = match (kw0, kw1) {
            (Some(a), Some(b)) => Some((a + b) / 2.0),
            (Some(a), None) | (None, Some(a)) => Some(a),
            (None, None) => None,
        };
        #[allow(clippy::cast_precision_loss)]
        let hours = (t1 - t0) as f64 / 3_600_000.0;
        match mean {
            Some(kw) => self.spread(t0, t1, |s, share| s.estimated_kwh += kw * hours * share),
            None => self.spread(t0, t1, |s, share| s.missing_s += hours * 3600.0 * share),
        }
    }

    /// No counter across `prev` to `now`: the trapezoid of the two power readings, or
    /// missing seconds when one did not read or they are further apart than the stale
    /// limit.
    fn by_power(&mut self, prev: LastReading, now: LastReading) {
        let (t0, t1) = (prev.t, now.t);
        match (prev.kw, now.kw) {
            (Some(a), Some(b)) if t1 - t0 <= self.spec.stale_ms => {
                #[allow(clippy::cast_precision_loss)]
                let hours = (t1 - t0) as f64 / 3_600_000.0;
                let e = (a + b) / 2.0 * hours;
                self.spread(t0, t1, |s, share| s.estimated_kwh += e * share);
            }
            _ => {
                #[allow(clippy::cast_precision_loss)]
                let secs = (t1 - t0) as f64 / 1000.0;
                self.spread(t0, t1, |s, share| s.missing_s += secs * share);
            }
        }
    }

    /// Spreads an interval's figure over the slots it covers, by the share of its time
    /// in each.
    fn spread(&mut self, t0: Millis, t1: Millis, mut f: impl FnMut(&mut Slot, f64)) {
        #[allow(clippy::cast_precision_loss)]
        let len = (t1 - t0) as f64;
        let mut a = t0;
        while a < t1 {
            let b = (slot_of(a) + SLOT_MS).min(t1);
            #[allow(clippy::cast_precision_loss)]
            let share = (b - a) as f64 / len;
            f(self.slots.entry(slot_of(a)).or_default(), share);
            a = b;
        }
    }

    fn slot_mut(&mut self, t: Millis) -> &mut Slot {
        // A flag belongs to the slot where its interval ended (`t` itself when it ends a
        // slot exactly belongs to the slot it closes).
        self.slots.entry(slot_of(t.saturating_sub(1))).or_default()
    }

    /// Hands over every slot accumulated since the last call (start, figures).
    pub fn take(&mut self) -> Vec<(Millis, Slot)> {
        std::mem::take(&mut self.slots).into_iter().collect()
    }
}

enum Flag {
    Wrap,
    Reset,
    Jump,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MIN: Millis = 60_000;
    const T0: Millis = 1_800_000_000_000 - 1_800_000_000_000 % SLOT_MS;

    fn spec() -> MeterSpec {
        MeterSpec {
            wrap_kwh: Some(429_496_729.5),
            max_kw: 150.0,
            stale_ms: 10_000,
        }
    }

    fn total(book: &mut MeterBook) -> Slot {
        let mut s = Slot::default();
        for (_, x) in book.take() {
            s.add(&x);
        }
        s
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn counter_steps_are_measured_and_split_across_slots() {
        let mut b = MeterBook::new(spec(), None);
        b.observe(T0 + 10 * MIN, Some(40.0), Some(1000.0));
        // 10 kWh over 15 minutes: a third in the first slot, two thirds in the next.
        b.observe(T0 + 25 * MIN, Some(40.0), Some(1010.0));
        // 10 kWh more, ending exactly at the second slot's end.
        b.observe(T0 + 30 * MIN, Some(120.0), Some(1020.0));
        let slots = b.take();
        assert_eq!(slots.len(), 2, "{slots:?}");
        assert_eq!((slots[0].0, slots[1].0), (T0, T0 + SLOT_MS));
        assert!(close(slots[0].1.measured_kwh, 10.0 / 3.0), "{slots:?}");
        assert!(
            close(slots[1].1.measured_kwh, 20.0 / 3.0 + 10.0),
            "{slots:?}"
        );
        assert!(slots.iter().all(|s| s.1.estimated_kwh == 0.0));
        // Readings 15 and 5 minutes apart: both past the stale limit, both bridged.
        assert_eq!(slots[0].1.gaps + slots[1].1.gaps, 2);
        assert!(b.take().is_empty(), "taken once");
    }

    #[test]
    fn a_wrap_counts_the_distance_to_the_top() {
        let top = spec().wrap_kwh.unwrap();
        let mut b = MeterBook::new(spec(), None);
        b.observe(T0, Some(100.0), Some(top - 0.5));
        b.observe(T0 + MIN, Some(100.0), Some(1.2));
        let s = total(&mut b);
        assert!(close(s.measured_kwh, 1.7), "{s:?}");
        assert_eq!((s.wraps, s.resets), (1, 0));
    }

    #[test]
    fn a_reset_is_estimated_from_power_and_flagged_never_negative() {
        let mut b = MeterBook::new(spec(), None);
        b.observe(T0, Some(60.0), Some(5000.0));
        // The PDU rebooted: its counter starts over.
        b.observe(T0 + 6_000, Some(60.0), Some(0.0));
        b.observe(T0 + 12_000, Some(60.0), Some(0.1));
        let s = total(&mut b);
        assert_eq!(s.resets, 1);
        assert!(close(s.estimated_kwh, 60.0 * 6.0 / 3600.0), "{s:?}");
        assert!(close(s.measured_kwh, 0.1), "{s:?}");
    }

    #[test]
    fn a_gap_is_bridged_by_the_counter_and_flagged() {
        let mut b = MeterBook::new(spec(), None);
        b.observe(T0, Some(80.0), Some(100.0));
        // Two hours without a reading (meter outage), the counter ran on.
        b.observe(T0 + 120 * MIN, Some(80.0), Some(260.0));
        let slots = b.take();
        assert_eq!(slots.len(), 8);
        let s: f64 = slots.iter().map(|x| x.1.measured_kwh).sum();
        assert!(close(s, 160.0));
        assert!(
            slots.iter().all(|x| close(x.1.measured_kwh, 20.0)),
            "{slots:?}"
        );
        assert_eq!(slots.iter().map(|x| x.1.gaps).sum::<u32>(), 1);
        assert_eq!(slots.iter().map(|x| x.1.missing_s).sum::<f64>(), 0.0);
    }

    #[test]
    fn without_a_counter_power_is_integrated_and_a_stale_meter_is_missing_not_zero() {
        let spec = MeterSpec {
            wrap_kwh: None,
            ..spec()
        };
        let mut b = MeterBook::new(spec, None);
        b.observe(T0, Some(36.0), None);
        b.observe(T0 + 5_000, Some(36.0), None);
        // Stale for a minute: not integrated.
        b.observe(T0 + 65_000, Some(36.0), None);
        // A reading whose power point failed: missing too.
        b.observe(T0 + 70_000, None, None);
        let s = total(&mut b);
        assert!(close(s.estimated_kwh, 0.05), "{s:?}");
        assert_eq!(s.measured_kwh, 0.0);
        assert!(close(s.missing_s, 65.0), "{s:?}");
    }

    #[test]
    fn an_impossible_jump_is_estimated_and_flagged() {
        let mut b = MeterBook::new(spec(), None);
        b.observe(T0, Some(50.0), Some(100.0));
        // A replacement PDU with a higher counter: 5,000 kWh in 5 s.
        b.observe(T0 + 5_000, Some(50.0), Some(5100.0));
        let s = total(&mut b);
        assert_eq!(s.jumps, 1);
        assert_eq!(s.measured_kwh, 0.0);
        assert!(close(s.estimated_kwh, 50.0 * 5.0 / 3600.0));
    }

    #[test]
    fn the_last_reading_carries_a_counter_across_a_restart() {
        let mut b = MeterBook::new(spec(), None);
        b.observe(T0, Some(40.0), Some(10.0));
        let last = b.last();
        // The agent stops for 30 minutes; a new book starts from the stored reading.
        let mut b2 = MeterBook::new(spec(), last);
        b2.observe(T0 + 30 * MIN, Some(40.0), Some(30.0));
        let s = total(&mut b2);
        assert!(close(s.measured_kwh, 20.0), "{s:?}");
    }

    #[test]
    fn readings_out_of_order_and_nonsense_values_are_ignored() {
        let mut b = MeterBook::new(spec(), None);
        b.observe(T0 + 10_000, Some(40.0), Some(10.0));
        b.observe(T0 + 5_000, Some(40.0), Some(9.0));
        b.observe(T0 + 15_000, Some(f64::NAN), Some(f64::INFINITY));
        b.observe(T0 + 20_000, Some(40.0), Some(10.1));
        let s = total(&mut b);
        assert!(close(s.measured_kwh, 0.1), "{s:?}");
        assert_eq!(s.resets + s.jumps, 0);
    }
}
