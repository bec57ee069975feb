//! Per-agency quotas (OWASP API4, unrestricted resource consumption): a token bucket of calls
//! per agency, and a cap on each agency's open streams. Both refuse with RESOURCE_EXHAUSTED;
//! the rate limit also says when to retry (google.rpc.RetryInfo).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Calls per second per agency, with a burst allowance.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// `per_second` sustained, up to `burst` at once.
    pub fn new(per_second: f64, burst: f64) -> Self {
        Self { per_second, burst: burst.max(1.0), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one call from `agency`'s bucket, or says how long until one is available.
    pub fn check(&self, agency: &str) -> std::result::Result<(), Duration> {
        self.check_at(agency, Instant::now())
    }

    fn check_at(&self, agency: &str, now: Instant) -> std::result::Result<(), Duration> {
        let Ok(mut buckets) = self.buckets.lock() else { return Ok(()) };
        let b = buckets
            .entry(agency.to_string())
            .or_insert(Bucket { tokens: self.burst, updated: now });
        let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_second).min(self.burst);
        b.updated = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.per_second))
        }
    }
}

/// Open streams per agency (watch streams hold a permit until they end).
#[derive(Debug)]
pub struct StreamLimiter {
    per_agency: usize,
    open: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl StreamLimiter {
    /// At most `per_agency` open streams per agency.
    pub fn new(per_agency: usize) -> Self {
        Self { per_agency: per_agency.max(1), open: Mutex::new(HashMap::new()) }
    }

    /// A permit to hold for the stream's life, or RESOURCE_EXHAUSTED.
    pub fn open(&self, agency: &str) -> Result<OwnedSemaphorePermit> {
        let sem = {
            let mut open = self
                .open
                .lock()
                .map_err(|_| Error::internal(anyhow::anyhow!("stream limiter poisoned")))?;
            open.entry(agency.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_agency)))
                .clone()
        };
        sem.try_acquire_owned().map_err(|_| {
            Error::ResourceExhausted(format!(
                "agency {agency} already has {} open streams; close one before opening another",
                self.per_agency
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_and_are_per_agency() {
        let r = RateLimiter::new(2.0, 2.0);
        let t0 = Instant::now();
        assert!(r.check_at("a", t0).is_ok());
        assert!(r.check_at("a", t0).is_ok());
        let wait = r.check_at("a", t0).expect_err("third call in the same instant");
        assert!(wait <= Duration::from_millis(500), "{wait:?}");
        assert!(r.check_at("b", t0).is_ok(), "another agency has its own bucket");
        assert!(r.check_at("a", t0 + Duration::from_millis(600)).is_ok(), "refilled");
    }

    #[test]
    fn streams_are_capped_per_agency_and_released_on_drop() {
        let s = StreamLimiter::new(2);
        let p1 = s.open("a").expect("first");
        let _p2 = s.open("a").expect("second");
        assert!(matches!(s.open("a"), Err(Error::ResourceExhausted(_))));
        assert!(s.open("b").is_ok());
        drop(p1);
        assert!(s.open("a").is_ok());
    }
}
