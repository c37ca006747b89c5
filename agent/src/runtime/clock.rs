//! The agent's clock: milliseconds on a virtual timeline that runs `speed` times faster
//! than real time (1 in production; more in the demo and the hil-tests, so scenarios of
//! minutes play in seconds).
//!
//! The timeline is anchored to the Unix epoch and continues the last persisted instant,
//! so timestamps in the state file (when a miner was shed, when its cycles happened) stay
//! comparable across restarts. Only `tokio::time` is read, so paused-time tests drive it.

use std::time::Duration;

use tokio::time::Instant;

/// Virtual milliseconds since the Unix epoch.
pub type Millis = u64;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    origin_ms: Millis,
    speed: f64,
}

impl Clock {
    /// A clock starting at `origin_ms` now, running `speed` times real time.
    pub fn new(origin_ms: Millis, speed: f64) -> Clock {
        Clock {
            start: Instant::now(),
            origin_ms,
            speed: if speed.is_finite() && speed > 0.0 {
                speed
            } else {
                1.0
            },
        }
    }

    /// Wall-clock now, or just after `last_ms` if the wall clock is behind it (the state
    /// file came from a faster or later timeline).
    pub fn resume(last_ms: Option<Millis>, speed: f64) -> Clock {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let origin = last_ms.map_or(wall, |l| wall.max(l.saturating_add(1)));
        Clock::new(origin, speed)
    }

    pub fn now_ms(&self) -> Millis {
        let real = self.start.elapsed().as_secs_f64() * 1000.0 * self.speed;
        // Saturating float-to-int: real elapsed time is never negative nor near 2^64 ms.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let v = real as u64;
        self.origin_ms.saturating_add(v)
    }

    /// Real time that a virtual interval of `ms` takes.
    pub fn real(&self, ms: u64) -> Duration {
        #[allow(clippy::cast_precision_loss)]
        let v = ms as f64 / self.speed;
        Duration::from_secs_f64(v / 1000.0).max(Duration::from_millis(1))
    }

    pub fn speed(&self) -> f64 {
        self.speed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn virtual_time_runs_at_speed() {
        let c = Clock::new(1_000, 10.0);
        assert_eq!(c.now_ms(), 1_000);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(c.now_ms(), 6_000);
        assert_eq!(c.real(1_000), Duration::from_millis(100));
    }

    #[test]
    fn resume_never_goes_back() {
        let far = 10_000_000_000_000; // year 2286
        let c = Clock::resume(Some(far), 1.0);
        assert!(c.now_ms() > far);
        let c = Clock::resume(None, 0.0);
        assert!((c.speed() - 1.0).abs() < f64::EPSILON);
    }
}
