//! The customers' time zones (chrono-tz) and when in the day they visit.

use super::*;

/// The customers' IANA zones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Zone {
    London,
    Berlin,
    NewYork,
    LosAngeles,
    Tokyo,
    Sydney,
    Kolkata,
}

/// Zones with the share of customers living there.
pub(crate) const ZONES: [(Zone, u32); 7] = [
    (Zone::Berlin, 22),
    (Zone::London, 18),
    (Zone::NewYork, 20),
    (Zone::LosAngeles, 12),
    (Zone::Tokyo, 9),
    (Zone::Sydney, 9),
    (Zone::Kolkata, 10),
];

impl Zone {
    pub(crate) fn pick(rng: &mut StdRng) -> Self {
        let weights: Vec<u32> = ZONES.iter().map(|(_, w)| *w).collect();
        ZONES[pick_weighted(rng, &weights)].0
    }

    pub(crate) fn iana(self) -> &'static str {
        self.tz().name()
    }

    pub(crate) fn country(self) -> &'static str {
        match self {
            Zone::London => "GB",
            Zone::Berlin => "DE",
            Zone::NewYork | Zone::LosAngeles => "US",
            Zone::Tokyo => "JP",
            Zone::Sydney => "AU",
            Zone::Kolkata => "IN",
        }
    }

    pub(crate) fn locale(self) -> &'static str {
        match self {
            Zone::London => "en-GB",
            Zone::Berlin => "de-DE",
            Zone::NewYork | Zone::LosAngeles => "en-US",
            Zone::Tokyo => "ja-JP",
            Zone::Sydney => "en-AU",
            Zone::Kolkata => "en-IN",
        }
    }

    /// The shop sells in EUR, GBP and USD only; other countries pay in USD.
    pub(crate) fn currency(self) -> Currency {
        match self {
            Zone::London => Currency::Gbp,
            Zone::Berlin => Currency::Eur,
            _ => Currency::Usd,
        }
    }

    pub(crate) fn names(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Zone::Berlin => (&FIRST_NAMES_DE, &LAST_NAMES_DE),
            Zone::Tokyo => (&FIRST_NAMES_JP, &LAST_NAMES_JP),
            Zone::Kolkata => (&FIRST_NAMES_IN, &LAST_NAMES_IN),
            _ => (&FIRST_NAMES_EN, &LAST_NAMES_EN),
        }
    }

    pub(crate) fn tz(self) -> Tz {
        match self {
            Zone::London => chrono_tz::Europe::London,
            Zone::Berlin => chrono_tz::Europe::Berlin,
            Zone::NewYork => chrono_tz::America::New_York,
            Zone::LosAngeles => chrono_tz::America::Los_Angeles,
            Zone::Tokyo => chrono_tz::Asia::Tokyo,
            Zone::Sydney => chrono_tz::Australia::Sydney,
            Zone::Kolkata => chrono_tz::Asia::Kolkata,
        }
    }

    pub(crate) fn to_local(self, t: DateTime<Utc>) -> NaiveDateTime {
        t.with_timezone(&self.tz()).naive_local()
    }

    /// The UTC instant of a local wall-clock time: the earlier one when the
    /// clock goes back, and an hour later when it springs over that time.
    pub(crate) fn to_utc(self, local: NaiveDateTime) -> DateTime<Utc> {
        let tz = self.tz();
        tz.from_local_datetime(&local)
            .earliest()
            .or_else(|| {
                tz.from_local_datetime(&(local + Duration::hours(1)))
                    .earliest()
            })
            .map_or_else(|| local.and_utc(), |t| t.with_timezone(&Utc))
    }
}

/// How likely a visit is to start in each local hour: quiet nights, a lunch
/// bump and an evening peak.
pub(crate) const HOUR_WEIGHTS: [u32; 24] = [
    3, 2, 1, 1, 1, 1, 2, 4, 6, 7, 7, 8, 10, 10, 8, 7, 7, 8, 11, 14, 15, 13, 9, 5,
];
