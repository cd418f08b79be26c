//! Frequency caps: `max N messages per window`, several combined with AND.
//!
//! A cap counts a customer's messages in its scope (all messages, one
//! channel, or one rule tag) over a rolling window (the last 24 hours) or a
//! calendar window in the customer's time zone (today, this week).
//! Transactional messages are exempt and not counted. When a message would
//! exceed a cap, [`check`] says which cap and the first moment it would be
//! allowed, so the caller can skip it or defer it there.

use std::sync::Arc;

use crate::SettingError;
use crate::consent::Channel;

use serde::{Deserialize, Serialize};

const DAY: i64 = 86_400_000_000;

/// What a cap counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapScope {
    /// Every marketing message.
    All,
    /// Messages on one channel.
    Channel(Channel),
    /// Messages of rules with this tag.
    Tag(String),
}

/// Over what time a cap counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapWindow {
    /// The last so many microseconds.
    Rolling(i64),
    /// The customer's local calendar day.
    Day,
    /// The customer's local calendar week, Monday to Sunday.
    Week,
}

/// `max` messages per `window` in `scope`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cap {
    /// Most messages allowed.
    pub max: u32,
    /// What is counted.
    pub scope: CapScope,
    /// Over what time.
    pub window: CapWindow,
}

/// A message already sent (or ghost-sent: holdout sends count too, so the
/// arms see the same pressure).
#[derive(Debug, Clone, PartialEq)]
pub struct SentMessage {
    /// When, µs since the epoch.
    pub at: i64,
    /// Channel used.
    pub channel: Channel,
    /// The rule's tags (shared: every message of a rule has the same).
    pub tags: Arc<[String]>,
}

/// A message as the caps see it: `None` when it does not count
/// (transactional), so a customer's whole history can be passed as is.
pub trait Counted {
    /// The message, if caps count it.
    fn counted(&self) -> Option<&SentMessage>;
}

/// The cap as [`parse_cap`] reads it (`2 per 24h`, `1 sms per day`): how
/// reasons name it, so a reader finds the cap in the config by its text.
impl std::fmt::Display for Cap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.max)?;
        match &self.scope {
            CapScope::All => {}
            CapScope::Channel(c) => write!(f, " {}", c.as_str())?,
            CapScope::Tag(t) => write!(f, " tag:{t}")?,
        }
        match self.window {
            CapWindow::Day => write!(f, " per day"),
            CapWindow::Week => write!(f, " per week"),
            CapWindow::Rolling(us) => {
                let secs = us / 1_000_000;
                // Days from two on: a day is written `24h` more often.
                let (n, unit) = [(86_400, "d"), (3_600, "h"), (60, "m")]
                    .into_iter()
                    .find(|(u, _)| secs % u == 0 && (*u != 86_400 || secs > *u))
                    .map_or((secs, "s"), |(u, name)| (secs / u, name));
                write!(f, " per {n}{unit}")
            }
        }
    }
}

impl Counted for SentMessage {
    fn counted(&self) -> Option<&SentMessage> {
        Some(self)
    }
}

/// Why a message may not go now.
#[derive(Debug, Clone, PartialEq)]
pub struct Capped {
    /// Index of the cap that stopped it (the one allowing it latest).
    pub cap: usize,
    /// First moment every cap allows it, µs.
    pub allowed_at: i64,
}

impl Cap {
    fn counts(&self, m: &SentMessage) -> bool {
        match &self.scope {
            CapScope::All => true,
            CapScope::Channel(c) => m.channel == *c,
            CapScope::Tag(t) => m.tags.iter().any(|x| x == t),
        }
    }

    fn applies(&self, channel: Channel, tags: &[String]) -> bool {
        match &self.scope {
            CapScope::All => true,
            CapScope::Channel(c) => *c == channel,
            CapScope::Tag(t) => tags.iter().any(|x| x == t),
        }
    }

    /// The window containing `at`, as `[start, end)` µs, for a customer
    /// whose local time is UTC + `offset_us`.
    fn window(&self, at: i64, offset_us: i64) -> (i64, i64) {
        match self.window {
            CapWindow::Rolling(w) => (at - w + 1, at + 1),
            CapWindow::Day => {
                let start = (at + offset_us).div_euclid(DAY) * DAY - offset_us;
                (start, start + DAY)
            }
            CapWindow::Week => {
                // 1970-01-01 was a Thursday: shift so weeks start on Monday.
                let local_day = (at + offset_us).div_euclid(DAY);
                let monday = local_day - (local_day + 3).rem_euclid(7);
                let start = monday * DAY - offset_us;
                (start, start + 7 * DAY)
            }
        }
    }

    /// Whether one more message at `t` keeps every window of this cap
    /// within `max`. Messages already deferred to later count too: a
    /// message placed now must not crowd one reserved for tomorrow.
    fn fits(&self, times: &[i64], t: i64, offset_us: i64) -> bool {
        match self.window {
            CapWindow::Rolling(w) => {
                // Every window [s, s + w) that contains t starts in (t - w, t].
                let near: Vec<i64> = times
                    .iter()
                    .copied()
                    .filter(|x| *x > t - w && *x < t + w)
                    .collect();
                let starts = near
                    .iter()
                    .copied()
                    .filter(|s| *s <= t)
                    .chain(std::iter::once(t));
                starts.into_iter().all(|s| {
                    let s = s.max(t - w + 1);
                    let n = near.iter().filter(|x| **x >= s && **x < s + w).count();
                    (n as u32) < self.max
                })
            }
            CapWindow::Day | CapWindow::Week => {
                let (start, end) = self.window(t, offset_us);
                let n = times.iter().filter(|x| **x >= start && **x < end).count();
                (n as u32) < self.max
            }
        }
    }

    /// When this cap would next allow one more message at or after `at`.
    fn next_allowed<M: Counted>(&self, history: &[M], at: i64, offset_us: i64) -> i64 {
        // Fast path, no allocation: fewer messages near `at` than the cap
        // allows means every window containing `at` has room.
        let (lo, hi) = match self.window {
            CapWindow::Rolling(w) => (at - w + 1, at + w),
            CapWindow::Day | CapWindow::Week => self.window(at, offset_us),
        };
        let near = history
            .iter()
            .filter_map(Counted::counted)
            .filter(|m| m.at >= lo && m.at < hi && self.counts(m))
            .count();
        if (near as u32) < self.max {
            return at;
        }
        let mut times: Vec<i64> = history
            .iter()
            .filter_map(Counted::counted)
            .filter(|m| self.counts(m))
            .map(|m| m.at)
            .collect();
        times.sort_unstable();
        if self.fits(&times, at, offset_us) {
            return at;
        }
        match self.window {
            // A window frees up only when a message leaves it: try those
            // moments in order.
            CapWindow::Rolling(w) => times
                .iter()
                .map(|x| x + w)
                .filter(|c| *c > at)
                .find(|c| self.fits(&times, *c, offset_us))
                .unwrap_or(i64::MAX),
            CapWindow::Day | CapWindow::Week => {
                let mut t = at;
                for _ in 0..10_000 {
                    t = self.window(t, offset_us).1;
                    if self.fits(&times, t, offset_us) {
                        return t;
                    }
                }
                i64::MAX
            }
        }
    }
}

/// Checks a marketing message on `channel` (rule `tags`) at `at` against
/// every cap; `history` is the customer's past messages, `offset_us` their
/// local UTC offset. `None` means it may go now.
pub fn check<M: Counted>(
    caps: &[Cap],
    history: &[M],
    at: i64,
    channel: Channel,
    tags: &[String],
    offset_us: i64,
) -> Option<Capped> {
    // The caps interact (moving past one may land inside another), so
    // advance until all agree.
    let mut t = at;
    let mut worst = None;
    for _ in 0..100 {
        let mut moved = false;
        for (i, cap) in caps.iter().enumerate() {
            if !cap.applies(channel, tags) {
                continue;
            }
            let next = cap.next_allowed(history, t, offset_us);
            if next > t {
                t = next;
                worst = Some(i);
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    worst.map(|cap| Capped { cap, allowed_at: t })
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000_000;

    fn sent(at: i64, channel: &str) -> SentMessage {
        SentMessage {
            at,
            channel: Channel::parse(channel).expect("channel"),
            tags: Arc::from(vec!["promo".to_string()]),
        }
    }

    fn cap(max: u32, scope: CapScope, window: CapWindow) -> Cap {
        Cap { max, scope, window }
    }

    #[test]
    fn rolling_cap_defers_until_the_oldest_message_leaves() {
        let caps = [cap(2, CapScope::All, CapWindow::Rolling(24 * H))];
        let history = [sent(10 * H, "email"), sent(12 * H, "sms")];
        let c = check(&caps, &history, 20 * H, Channel::Email, &[], 0).expect("capped");
        assert_eq!(c.allowed_at, 34 * H, "10:00 + 24h");
        assert_eq!(check(&caps, &history, 34 * H, Channel::Email, &[], 0), None);
    }

    #[test]
    fn channel_and_tag_scopes_count_only_their_messages() {
        let caps = [cap(
            1,
            CapScope::Channel(Channel::Sms),
            CapWindow::Rolling(24 * H),
        )];
        let history = [sent(10 * H, "email")];
        assert_eq!(check(&caps, &history, 11 * H, Channel::Sms, &[], 0), None);
        assert!(check(&caps, &[sent(10 * H, "sms")], 11 * H, Channel::Sms, &[], 0).is_some());
        assert_eq!(
            check(
                &caps,
                &[sent(10 * H, "sms")],
                11 * H,
                Channel::Email,
                &[],
                0
            ),
            None
        );
        let caps = [cap(1, CapScope::Tag("promo".into()), CapWindow::Day)];
        assert!(check(&caps, &history, 11 * H, Channel::Push, &["promo".into()], 0).is_some());
        assert_eq!(
            check(
                &caps,
                &history,
                11 * H,
                Channel::Push,
                &["service".into()],
                0
            ),
            None
        );
    }

    #[test]
    fn calendar_day_follows_the_customer_zone() {
        let caps = [cap(1, CapScope::All, CapWindow::Day)];
        // Sent at 22:00 UTC. In UTC+3 that is 01:00 the next local day.
        let history = [sent(22 * H, "email")];
        let c = check(&caps, &history, 23 * H, Channel::Email, &[], 0).expect("same UTC day");
        assert_eq!(c.allowed_at, 24 * H, "next UTC midnight");
        let c = check(&caps, &history, 23 * H, Channel::Email, &[], 3 * H).expect("same local day");
        assert_eq!(
            c.allowed_at,
            45 * H,
            "next local midnight is 21:00 UTC the next day"
        );
    }

    #[test]
    fn calendar_week_starts_on_monday() {
        // 1970-01-05 was a Monday.
        let monday = 4 * 24 * H;
        let caps = [cap(1, CapScope::All, CapWindow::Week)];
        let history = [sent(monday + H, "email")];
        let c =
            check(&caps, &history, monday + 3 * 24 * H, Channel::Email, &[], 0).expect("same week");
        assert_eq!(c.allowed_at, monday + 7 * 24 * H);
        assert_eq!(
            check(&caps, &history, monday - H, Channel::Email, &[], 0),
            None,
            "the Sunday before is another week"
        );
    }

    #[test]
    fn caps_combine_with_and() {
        let caps = [
            cap(3, CapScope::All, CapWindow::Rolling(7 * 24 * H)),
            cap(1, CapScope::All, CapWindow::Day),
        ];
        let history = [
            sent(H, "email"),
            sent(25 * H, "email"),
            sent(49 * H, "email"),
        ];
        // Day cap frees at 72h, but the 7-day cap holds until 1h + 7d.
        let c = check(&caps, &history, 50 * H, Channel::Email, &[], 0).expect("capped");
        assert_eq!(c.allowed_at, H + 7 * 24 * H);
        assert_eq!(c.cap, 0);
    }

    #[test]
    fn a_cap_is_named_as_written_in_config() {
        for text in [
            "2 per 24h",
            "1 sms per day",
            "3 tag:promo per 7d",
            "5 per week",
            "4 push per 90m",
            "1 per 45s",
        ] {
            let cap = parse_cap(text).expect(text);
            assert_eq!(cap.to_string(), text);
            assert_eq!(parse_cap(&cap.to_string()), Ok(cap));
        }
        assert_eq!(
            parse_cap("2 per 1d").expect("valid").to_string(),
            "2 per 24h"
        );
        assert_eq!(
            parse_cap("2 per 48h").expect("valid").to_string(),
            "2 per 2d"
        );
    }
}

/// Parses a cap as written in config: `MAX [CHANNEL | tag:TAG] per WINDOW`,
/// where WINDOW is `day`, `week` or a duration (`24h`, `7d`, `1h30m`;
/// rolling). E.g. `2 per 24h`, `1 sms per day`, `3 tag:promo per 7d`.
pub fn parse_cap(s: &str) -> Result<Cap, SettingError> {
    let words: Vec<&str> = s.split_whitespace().collect();
    let bad = || SettingError::CapShape(s.to_string());
    let (max, rest) = words.split_first().ok_or_else(bad)?;
    let max: u32 = max.parse().map_err(|_| bad())?;
    let (scope, rest) = match rest {
        [w, tail @ ..] if *w != "per" => {
            let scope = match w.strip_prefix("tag:") {
                Some(t) if !t.is_empty() => CapScope::Tag(t.to_string()),
                Some(_) => return Err(bad()),
                None => match Channel::parse(w) {
                    Some(c) => CapScope::Channel(c),
                    None => {
                        return Err(SettingError::CapScope {
                            cap: s.to_string(),
                            word: w.to_string(),
                        });
                    }
                },
            };
            (scope, tail)
        }
        _ => (CapScope::All, rest),
    };
    let window = match rest {
        ["per", "day"] => CapWindow::Day,
        ["per", "week"] => CapWindow::Week,
        ["per", d] => CapWindow::Rolling(parse_duration_us(d).ok_or_else(bad)?),
        _ => return Err(bad()),
    };
    if max == 0 {
        return Err(SettingError::CapZero(s.to_string()));
    }
    Ok(Cap { max, scope, window })
}

/// A window in the rules' syntax (`24h`, `7d`, `1h30m`), in µs; any
/// problem (not a duration, 0, too long) makes the cap's shape error,
/// which shows the form to write.
fn parse_duration_us(s: &str) -> Option<i64> {
    kairos_core::time::parse_duration_us(s)
        .ok()
        .filter(|us| *us > 0)
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn caps_parse_from_config_text() {
        assert_eq!(
            parse_cap("2 per 24h"),
            Ok(Cap {
                max: 2,
                scope: CapScope::All,
                window: CapWindow::Rolling(86_400_000_000)
            })
        );
        assert_eq!(
            parse_cap("1 sms per day"),
            Ok(Cap {
                max: 1,
                scope: CapScope::Channel(Channel::Sms),
                window: CapWindow::Day
            })
        );
        assert_eq!(
            parse_cap("3 tag:promo per 1w"),
            Ok(Cap {
                max: 3,
                scope: CapScope::Tag("promo".into()),
                window: CapWindow::Rolling(604_800_000_000)
            })
        );
        assert_eq!(
            parse_cap("5 per week").map(|c| c.window),
            Ok(CapWindow::Week)
        );
        for bad in [
            "",
            "two per day",
            "2 fax per day",
            "2 per fortnight",
            "0 per day",
            "2 sms",
        ] {
            assert!(parse_cap(bad).is_err(), "{bad:?} should fail");
        }
        assert_eq!(
            parse_cap("2 fax per day"),
            Err(SettingError::CapScope {
                cap: "2 fax per day".into(),
                word: "fax".into()
            })
        );
        assert_eq!(
            parse_cap("0 per day"),
            Err(SettingError::CapZero("0 per day".into()))
        );
    }
}
