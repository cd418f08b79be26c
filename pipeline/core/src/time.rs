//! Time helpers. Kairos keeps instants as `i64` microseconds since the Unix
//! epoch, UTC, which is what Arrow's `Timestamp(Microsecond, "UTC")` stores.

use chrono::{DateTime, Utc};

/// Microseconds in one hour.
pub const HOUR_US: i64 = 3_600_000_000;

/// Now, in µs since the epoch.
pub fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}

/// Where the loop reads the time: the machine's clock, or one a simulation
/// sets (so a seeded run reads the same instants every time, and can step
/// the clock back or forward at will). Cheap to clone; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Clock(Option<std::sync::Arc<std::sync::atomic::AtomicI64>>);

impl Clock {
    /// The machine's clock.
    pub fn system() -> Clock {
        Clock(None)
    }

    /// A clock that reads `start_us` until [`Clock::set`] moves it.
    pub fn manual(start_us: i64) -> Clock {
        Clock(Some(std::sync::Arc::new(start_us.into())))
    }

    /// Now, in µs since the epoch.
    pub fn now_us(&self) -> i64 {
        match &self.0 {
            None => now_us(),
            Some(t) => t.load(std::sync::atomic::Ordering::SeqCst),
        }
    }

    /// Moves a manual clock to `us` (backwards too). The machine's clock
    /// cannot be set: returns false and changes nothing.
    pub fn set(&self, us: i64) -> bool {
        match &self.0 {
            None => false,
            Some(t) => {
                t.store(us, std::sync::atomic::Ordering::SeqCst);
                true
            }
        }
    }
}

/// A duration that does not parse (see [`parse_duration`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DurationError {
    /// Not a duration at all.
    #[error("{input:?}: {reason}; write e.g. 90s, 15m, 6h, 7d, 2w or 1h30m")]
    Unparsable {
        /// What was given.
        input: String,
        /// Why humantime refused it.
        reason: humantime::DurationError,
    },
    /// A fraction of a second: every Kairos duration is whole seconds.
    #[error("{0:?}: durations are whole seconds")]
    Fractional(String),
    /// Longer than an instant in µs can hold (about 292,000 years).
    #[error("{0:?}: too long; write at most a few years")]
    TooLong(String),
}

/// Parses a duration in whole seconds, as every setting and rule header
/// writes them: `60s`, `15m`, `6h`, `7d`, `2w`, sums like `1h30m` or
/// `1h 30m`, and humantime's longer units (`90min`, `2weeks`; `M` is a month
/// of 30.44 days, `y` a year of 365.25).
pub fn parse_duration(s: &str) -> Result<u64, DurationError> {
    let d = humantime::parse_duration(s.trim()).map_err(|reason| DurationError::Unparsable {
        input: s.to_string(),
        reason,
    })?;
    if d.subsec_nanos() != 0 {
        return Err(DurationError::Fractional(s.to_string()));
    }
    Ok(d.as_secs())
}

/// [`parse_duration`] in µs, as Kairos keeps instants.
pub fn parse_duration_us(s: &str) -> Result<i64, DurationError> {
    let secs = parse_duration(s)?;
    i64::try_from(secs)
        .ok()
        .and_then(|secs| secs.checked_mul(1_000_000))
        .ok_or_else(|| DurationError::TooLong(s.to_string()))
}

/// Parses an RFC 3339 / ISO 8601 timestamp with an offset into µs.
pub fn parse_rfc3339_us(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_micros())
}

/// `(date, hour)` of the UTC Hive partition an instant falls in, e.g. `("2026-11-26", 17)`.
pub fn partition_of(us: i64) -> (String, u32) {
    let t = DateTime::<Utc>::from_timestamp_micros(us).unwrap_or_default();
    (t.format("%Y-%m-%d").to_string(), chrono::Timelike::hour(&t))
}

/// The hour bucket (hours since the epoch) an instant falls in.
pub fn hour_bucket(us: i64) -> i64 {
    us.div_euclid(HOUR_US)
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_manual_clock_moves_only_when_set_and_clones_share_it() {
        let c = Clock::manual(5);
        let d = c.clone();
        assert_eq!(c.now_us(), 5);
        assert!(d.set(-3));
        assert_eq!(c.now_us(), -3);
        assert!(!Clock::system().set(1));
        assert!(Clock::system().now_us() > 1_700_000_000_000_000);
    }

    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        assert_eq!(parse_duration("2w"), Ok(1_209_600));
        assert_eq!(parse_duration("1h 30m"), Ok(5400));
        assert_eq!(parse_duration("90min"), Ok(5400));
        for bad in ["5", "h", "3x", "99999999999999999999w"] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(matches!(e, DurationError::Unparsable { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("write e.g. 90s"), "{e}");
        }
        assert_eq!(
            parse_duration("1.5s"),
            Err(DurationError::Fractional("1.5s".into()))
        );
        assert_eq!(parse_duration_us("90s"), Ok(90_000_000));
        assert_eq!(
            parse_duration_us("400000y"),
            Err(DurationError::TooLong("400000y".into()))
        );
    }

    #[test]
    fn parses_offsets_and_fractions() {
        assert_eq!(parse_rfc3339_us("1970-01-01T00:00:01Z"), Some(1_000_000));
        assert_eq!(
            parse_rfc3339_us("1970-01-01T01:00:01.5+01:00"),
            Some(1_500_000)
        );
        assert_eq!(parse_rfc3339_us("yesterday"), None);
        assert_eq!(parse_rfc3339_us("2026-11-26 10:00:00"), None);
    }

    #[test]
    fn partitions_are_utc_hours() {
        let us = parse_rfc3339_us("2026-11-26T23:59:59.999+00:00").expect("valid");
        assert_eq!(partition_of(us), ("2026-11-26".to_string(), 23));
        let us = parse_rfc3339_us("2026-11-27T00:30:00+01:00").expect("valid");
        assert_eq!(partition_of(us), ("2026-11-26".to_string(), 23));
        assert_eq!(hour_bucket(-1), -1);
    }
}
