//! `--bwlimit`: one token bucket shared by every transfer of a run.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bytes per second across all callers, with up to one second of burst. Callers that
/// overdraw sleep off their debt, so concurrent transfers share the rate fairly.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(bytes_per_sec: u64) -> Self {
        let rate = bytes_per_sec.max(1) as f64;
        Self {
            rate,
            state: Mutex::new((rate, Instant::now())),
        }
    }

    /// Waits until `n` more bytes may pass.
    pub async fn acquire(&self, n: u64) {
        let wait = {
            let mut s = match self.state.lock() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            let now = Instant::now();
            let elapsed = now.duration_since(s.1).as_secs_f64();
            s.0 = (s.0 + elapsed * self.rate).min(self.rate);
            s.1 = now;
            s.0 -= n as f64;
            if s.0 < 0.0 {
                Duration::from_secs_f64(-s.0 / self.rate)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}
