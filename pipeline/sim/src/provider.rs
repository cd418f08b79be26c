//! Simulated providers: every channel's API, answering as real ones do on
//! a bad day. What a provider accepted is remembered outside the simulated
//! process (it is the customer's phone), so the checks see every message
//! that really went out, crashes or not.

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kairos_core::Channel;
use kairos_core::time::Clock;
use kairos_messaging::{Adapter, Failure, Outgoing, Receipt};

/// One answer a provider gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Answer {
    /// 200: accepted.
    Accepted,
    /// 4xx: refused for good.
    Refused,
    /// 429 with a Retry-After.
    TooManyRequests,
    /// 5xx.
    ServerError,
    /// Never answers: the attempt times out, and the message did not go.
    Hangs,
    /// Takes the message, then never answers: it went, and the sender
    /// cannot know (in doubt).
    AcceptsThenHangs,
    /// Takes the message, then the connection drops (in doubt).
    AcceptsThenDrops,
}

impl Answer {
    /// Its name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Answer::Accepted => "accepted",
            Answer::Refused => "refused_4xx",
            Answer::TooManyRequests => "throttled_429",
            Answer::ServerError => "server_error_5xx",
            Answer::Hangs => "hangs",
            Answer::AcceptsThenHangs => "accepts_then_hangs",
            Answer::AcceptsThenDrops => "accepts_then_drops",
        }
    }
}

/// A message a provider took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The send id (the idempotency key).
    pub send_id: String,
    /// The rule.
    pub rule: String,
    /// The customer.
    pub customer_id: String,
    /// The channel.
    pub channel: Channel,
    /// Simulated time it arrived, µs.
    pub at: i64,
    /// How many workload steps had their input durable when it arrived
    /// (the clock can step back, so time alone cannot order it against
    /// the workload).
    pub step: usize,
    /// Whether the sender got the answer (false: in doubt).
    pub answered: bool,
}

/// Everything the providers saw.
#[derive(Debug, Default)]
pub struct ProviderLog {
    /// Messages taken, in arrival order.
    pub accepted: Vec<Accepted>,
    /// Answers given, by kind.
    pub answers: HashMap<Answer, u64>,
    /// Attempts per send id (decides the next answer).
    attempts: HashMap<String, u32>,
}

/// Chances of each answer, in percent; the rest is `Accepted`.
#[derive(Debug, Clone, Copy)]
pub struct Weather {
    /// Refused.
    pub refused: u32,
    /// 429.
    pub throttled: u32,
    /// 5xx.
    pub server_error: u32,
    /// Hangs.
    pub hangs: u32,
    /// Accepts, then hangs.
    pub accepts_then_hangs: u32,
    /// Accepts, then drops.
    pub accepts_then_drops: u32,
}

impl Weather {
    /// Every answer 200.
    pub const CALM: Weather = Weather {
        refused: 0,
        throttled: 0,
        server_error: 0,
        hangs: 0,
        accepts_then_hangs: 0,
        accepts_then_drops: 0,
    };

    /// A bad day: about one call in four goes wrong.
    pub const STORMY: Weather = Weather {
        refused: 3,
        throttled: 6,
        server_error: 6,
        hangs: 3,
        accepts_then_hangs: 3,
        accepts_then_drops: 3,
    };
}

/// One channel's provider.
pub struct Provider {
    channel: Channel,
    seed: u64,
    weather: Weather,
    clock: Clock,
    step: Arc<AtomicUsize>,
    log: Arc<Mutex<ProviderLog>>,
}

impl Provider {
    /// A provider per channel, sharing `log`. The answer to a message's
    /// n-th attempt is a hash of (seed, send id, n): the same in a run
    /// with faults and in its oracle.
    pub fn all(
        seed: u64,
        weather: Weather,
        clock: &Clock,
        step: &Arc<AtomicUsize>,
        log: &Arc<Mutex<ProviderLog>>,
    ) -> Vec<(Channel, Arc<dyn Adapter>)> {
        Channel::ALL
            .into_iter()
            .map(|channel| {
                let p: Arc<dyn Adapter> = Arc::new(Provider {
                    channel,
                    seed,
                    weather,
                    clock: clock.clone(),
                    step: step.clone(),
                    log: log.clone(),
                });
                (channel, p)
            })
            .collect()
    }

    fn answer(&self, send_id: &str, attempt: u32) -> Answer {
        let mut h = std::hash::DefaultHasher::new();
        (self.seed, send_id, attempt).hash(&mut h);
        let roll = (h.finish() % 100) as u32;
        let w = self.weather;
        let table = [
            (w.refused, Answer::Refused),
            (w.throttled, Answer::TooManyRequests),
            (w.server_error, Answer::ServerError),
            (w.hangs, Answer::Hangs),
            (w.accepts_then_hangs, Answer::AcceptsThenHangs),
            (w.accepts_then_drops, Answer::AcceptsThenDrops),
        ];
        let mut edge = 0;
        for (pct, answer) in table {
            edge += pct;
            if roll < edge {
                return answer;
            }
        }
        Answer::Accepted
    }

    fn log(&self) -> std::sync::MutexGuard<'_, ProviderLog> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl Adapter for Provider {
    fn provider(&self) -> &str {
        "sim"
    }

    async fn send(&self, m: &Outgoing) -> Result<Receipt, Failure> {
        let answer = {
            let mut log = self.log();
            let n = log.attempts.entry(m.send_id.clone()).or_insert(0);
            *n += 1;
            let attempt = *n;
            let answer = self.answer(&m.send_id, attempt);
            *log.answers.entry(answer).or_insert(0) += 1;
            if matches!(
                answer,
                Answer::Accepted | Answer::AcceptsThenHangs | Answer::AcceptsThenDrops
            ) {
                log.accepted.push(Accepted {
                    send_id: m.send_id.clone(),
                    rule: m.rule.clone(),
                    customer_id: m.customer_id.clone(),
                    channel: self.channel,
                    at: self.clock.now_us(),
                    step: self.step.load(Ordering::SeqCst),
                    answered: answer == Answer::Accepted,
                });
            }
            answer
        };
        match answer {
            Answer::Accepted => Ok(Receipt {
                provider: "sim".into(),
                provider_message_id: format!("sim-{}", m.send_id),
            }),
            Answer::Refused => Err(Failure::Permanent {
                reason: "400 invalid recipient".into(),
            }),
            Answer::TooManyRequests => Err(Failure::Retryable {
                reason: "429 too many requests".into(),
                retry_after: Some(Duration::from_secs(30)),
            }),
            Answer::ServerError => Err(Failure::Retryable {
                reason: "503 unavailable".into(),
                retry_after: None,
            }),
            // The attempt timeout ends both (in doubt for the second).
            Answer::Hangs | Answer::AcceptsThenHangs => std::future::pending().await,
            Answer::AcceptsThenDrops => Err(Failure::InDoubt {
                reason: "connection reset after the request was sent".into(),
            }),
        }
    }
}
