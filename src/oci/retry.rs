//! The retry policy of every registry request: which failures are transient, and how long to
//! wait before the next attempt.
//!
//! Budget (per request, documented in docs/registries.md): at most [`ATTEMPTS`]
//! attempts; waits grow exponentially from 0.5 s to at most 8 s with full jitter
//! ([AWS "Exponential Backoff and Jitter"]: a random wait between half and all of the step, so
//! builders that failed together do not retry together); a `Retry-After` header (seconds) is
//! honoured up to [`MAX_RETRY_AFTER`]; all waits of one request together stay within
//! [`BUDGET`]. A request that still fails then gives its last error.
//!
//! Hand-written rather than a retry crate (`backon`, `tokio-retry`): the registry loop needs
//! the response itself to decide (a 401 re-authenticates instead, `Retry-After` sets the wait),
//! which those crates' closures do not carry out without the same amount of glue.
//!
//! [AWS "Exponential Backoff and Jitter"]: https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/

use reqwest::header::RETRY_AFTER;
use reqwest::{Response, StatusCode};
use std::time::Duration;

/// Attempts per request (the first one included).
pub const ATTEMPTS: u32 = 7;
/// The longest a `Retry-After` is honoured for one wait.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// All waits of one request together.
pub const BUDGET: Duration = Duration::from_secs(60);
const FIRST_STEP: Duration = Duration::from_millis(500);
const MAX_STEP: Duration = Duration::from_secs(8);

/// HTTP answers that may succeed when asked again: 408, 429 and 5xx.
pub fn transient(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// Network failures worth another attempt: refused or reset connections, timeouts, bodies cut
/// short. Not a name that does not resolve, nor a TLS failure: asking again changes neither.
pub fn transient_net(e: &reqwest::Error) -> bool {
    if !(e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()) {
        return false;
    }
    let chain = causes(e);
    let permanent = [
        "dns error",
        "failed to lookup address",
        "certificate",
        "UnknownIssuer",
        "InvalidContentType",
        "corrupt message",
        "wrong version",
    ];
    !permanent.iter().any(|p| chain.contains(p))
}

/// Every cause in the chain, joined (reqwest's own Display hides the inner ones).
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e;
    while let Some(next) = cur.source() {
        out.push_str(": ");
        out.push_str(&next.to_string());
        cur = next;
    }
    out
}

/// `Retry-After` in seconds (the HTTP-date form is not used by registries and is ignored).
pub fn retry_after(resp: &Response) -> Option<Duration> {
    resp.headers()
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The waits of one request. `next` gives the wait before the next attempt, or `None` when
/// the attempts or the time budget are spent.
#[derive(Debug, Default)]
pub struct Backoff {
    attempt: u32,
    waited: Duration,
}

impl Backoff {
    pub fn new() -> Self {
        Self::default()
    }

    /// Attempts made so far that failed.
    pub fn failures(&self) -> u32 {
        self.attempt
    }

    pub fn next(&mut self, retry_after: Option<Duration>) -> Option<Duration> {
        if self.attempt + 1 >= ATTEMPTS {
            return None;
        }
        let step = FIRST_STEP
            .saturating_mul(1 << self.attempt.min(8))
            .min(MAX_STEP);
        let jittered = step.mul_f64(0.5 + fastrand::f64() * 0.5);
        let wait = retry_after
            .map(|r| r.min(MAX_RETRY_AFTER).max(jittered))
            .unwrap_or(jittered);
        if self.waited + wait > BUDGET {
            return None;
        }
        self.attempt += 1;
        self.waited += wait;
        Some(wait)
    }

    /// Sleeps the next wait; false when the budget is spent (the caller gives up).
    pub async fn wait(&mut self, retry_after: Option<Duration>) -> bool {
        match self.next(retry_after) {
            Some(d) => {
                tokio::time::sleep(d).await;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_with_jitter_and_stay_in_budget() {
        let mut b = Backoff::new();
        let mut waits = Vec::new();
        while let Some(w) = b.next(None) {
            waits.push(w);
        }
        assert_eq!(waits.len() as u32, ATTEMPTS - 1);
        for (i, w) in waits.iter().enumerate() {
            let step = FIRST_STEP.saturating_mul(1 << i).min(MAX_STEP);
            assert!(
                *w >= step / 2 && *w <= step,
                "wait {i}: {w:?} for step {step:?}"
            );
        }
        assert!(waits.iter().sum::<Duration>() <= BUDGET);
    }

    #[test]
    fn retry_after_is_honoured_up_to_its_bound_and_the_budget() {
        let mut b = Backoff::new();
        assert_eq!(
            b.next(Some(Duration::from_secs(3))),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            b.next(Some(Duration::from_secs(600))),
            Some(MAX_RETRY_AFTER)
        );
        // 33 s waited: another 30 s would pass the 60 s budget.
        assert_eq!(b.next(Some(Duration::from_secs(30))), None);
    }

    #[test]
    fn statuses() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(transient(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [400, 401, 403, 404, 416] {
            assert!(!transient(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }
}
