//! Quiet hours: no marketing message inside the customer's local quiet
//! window (e.g. 21:00–08:00); it is deferred to the window's end, never
//! dropped. Local time comes from the customer's IANA zone, so the window
//! moves with daylight-saving changes.

use chrono::{DateTime, Days, LocalResult, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::SettingError;

/// A daily quiet window in local time; it may wrap past midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    /// Local time the quiet starts.
    pub start: NaiveTime,
    /// Local time it ends (the first moment a message may go).
    pub end: NaiveTime,
}

impl QuietHours {
    /// `"21:00-08:00"`, as `policy.quiet_hours` writes it.
    pub fn parse_range(range: &str) -> Result<QuietHours, SettingError> {
        let (start, end) = range
            .split_once('-')
            .ok_or_else(|| SettingError::QuietShape(range.to_string()))?;
        QuietHours::parse(start.trim(), end.trim())
    }

    /// `"21:00"`, `"08:00"`.
    pub fn parse(start: &str, end: &str) -> Result<QuietHours, SettingError> {
        let t = |s: &str| {
            NaiveTime::parse_from_str(s, "%H:%M")
                .map_err(|_| SettingError::QuietTime(s.to_string()))
        };
        Ok(QuietHours {
            start: t(start)?,
            end: t(end)?,
        })
    }

    fn is_quiet(&self, t: NaiveTime) -> bool {
        if self.start <= self.end {
            t >= self.start && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }

    /// When a message due at `at` may go for a customer in `zone`: `None`
    /// when `at` is outside the quiet window, else the window's end.
    pub fn defer(&self, at: DateTime<Utc>, zone: Tz) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&zone);
        let t = local.time();
        if self.start == self.end || !self.is_quiet(t) {
            return None;
        }
        let day = if t < self.end {
            local.date_naive()
        } else {
            local.date_naive().checked_add_days(Days::new(1))?
        };
        let mut end = day.and_time(self.end);
        // A spring-forward gap can swallow the end time: take the first
        // local time that exists after it. In a fall-back overlap the
        // earlier instant ends the quiet sooner.
        for _ in 0..4 {
            match zone.from_local_datetime(&end) {
                LocalResult::Single(t) => return Some(t.with_timezone(&Utc)),
                LocalResult::Ambiguous(first, _) => return Some(first.with_timezone(&Utc)),
                LocalResult::None => end += chrono::Duration::minutes(30),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("rfc3339")
            .with_timezone(&Utc)
    }

    fn night() -> QuietHours {
        QuietHours::parse("21:00", "08:00").expect("valid")
    }

    #[test]
    fn outside_the_window_nothing_waits() {
        let berlin: Tz = "Europe/Berlin".parse().expect("zone");
        // 12:00 UTC is 14:00 in Berlin (summer).
        assert_eq!(night().defer(utc("2026-07-01T12:00:00Z"), berlin), None);
        // 06:00 UTC is 08:00 in Berlin: the window just ended.
        assert_eq!(night().defer(utc("2026-07-01T06:00:00Z"), berlin), None);
    }

    #[test]
    fn inside_it_waits_for_the_local_end_across_midnight() {
        let berlin: Tz = "Europe/Berlin".parse().expect("zone");
        // 20:30 UTC is 22:30 in Berlin: wait for 08:00 Berlin = 06:00 UTC next day.
        assert_eq!(
            night().defer(utc("2026-07-01T20:30:00Z"), berlin),
            Some(utc("2026-07-02T06:00:00Z"))
        );
        // The same instant is 16:30 in New York: not quiet there.
        let ny: Tz = "America/New_York".parse().expect("zone");
        assert_eq!(night().defer(utc("2026-07-01T20:30:00Z"), ny), None);
        // 03:00 local (after midnight) waits for 08:00 the same local day.
        assert_eq!(
            night().defer(utc("2026-07-02T01:00:00Z"), berlin),
            Some(utc("2026-07-02T06:00:00Z"))
        );
    }

    #[test]
    fn daylight_saving_moves_the_window_with_the_clock() {
        let ny: Tz = "America/New_York".parse().expect("zone");
        // Night of 2026-03-07/08: clocks go from 02:00 to 03:00 (EST -> EDT).
        // 08:00 EDT on the 8th is 12:00 UTC, not 13:00.
        assert_eq!(
            night().defer(utc("2026-03-08T04:00:00Z"), ny),
            Some(utc("2026-03-08T12:00:00Z"))
        );
        // Night of 2026-10-31/11-01: back from EDT to EST; 08:00 EST is 13:00 UTC.
        assert_eq!(
            night().defer(utc("2026-11-01T04:00:00Z"), ny),
            Some(utc("2026-11-01T13:00:00Z"))
        );
    }

    #[test]
    fn an_end_inside_the_spring_gap_moves_to_the_first_real_time() {
        let ny: Tz = "America/New_York".parse().expect("zone");
        let q = QuietHours::parse("01:00", "02:30").expect("valid");
        // 01:30 EST = 06:30 UTC; 02:30 does not exist that night: 03:00 EDT = 07:00 UTC.
        assert_eq!(
            q.defer(utc("2026-03-08T06:30:00Z"), ny),
            Some(utc("2026-03-08T07:00:00Z"))
        );
        // In the fall-back overlap, 01:30 happens twice: the earlier one ends it.
        let q = QuietHours::parse("00:00", "01:30").expect("valid");
        assert_eq!(
            q.defer(utc("2026-11-01T04:30:00Z"), ny),
            Some(utc("2026-11-01T05:30:00Z")),
            "00:30 EDT waits for 01:30 EDT"
        );
    }

    #[test]
    fn bad_times_are_named() {
        assert_eq!(
            QuietHours::parse_range("9pm-08:00"),
            Err(SettingError::QuietTime("9pm".into()))
        );
        assert_eq!(
            QuietHours::parse_range("21:00"),
            Err(SettingError::QuietShape("21:00".into()))
        );
        assert_eq!(
            QuietHours::parse_range(" 21:00 - 08:00 "),
            QuietHours::parse("21:00", "08:00")
        );
    }
}
