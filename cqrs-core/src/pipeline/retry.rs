//! How the pipeline retries a command after a concurrency conflict.

use std::time::Duration;

use uuid::Uuid;

/// How the pipeline reacts to a concurrency conflict: reload the aggregate and run the
/// (pure) handler again, up to `max_retries` times, sleeping a jittered, exponentially
/// growing delay between attempts.
///
/// ```
/// use std::time::Duration;
/// use cqrs_core::RetryPolicy;
///
/// let patient = RetryPolicy::new(20).with_backoff(Duration::from_millis(2), Duration::from_millis(200));
/// assert_eq!(patient.max_retries(), 20);
/// assert_eq!(RetryPolicy::never().max_retries(), 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    max_retries: u32,
    base_delay: Duration,
    max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 10 retries, backing off from 1 ms up to 50 ms.
    fn default() -> Self {
        Self {
            max_retries: 10,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(50),
        }
    }
}

impl RetryPolicy {
    /// Retries up to `max_retries` times with the default backoff.
    #[must_use]
    pub fn new(max_retries: u32) -> Self {
        Self {
            max_retries,
            ..Self::default()
        }
    }

    /// Never retries: the first conflict is returned to the caller.
    #[must_use]
    pub fn never() -> Self {
        Self::new(0)
    }

    /// Sets the backoff: the delay before retry `n` is drawn uniformly from
    /// `[0, min(max, base * 2^n)]`.
    #[must_use]
    pub fn with_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.base_delay = base;
        self.max_delay = max.max(base);
        self
    }

    /// How many times a conflicting command is re-run.
    #[must_use]
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    pub(crate) fn delay(&self, retry: u32) -> Duration {
        let ceiling = self
            .base_delay
            .saturating_mul(1_u32.checked_shl(retry.min(16)).unwrap_or(u32::MAX))
            .min(self.max_delay);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        // Full jitter; the randomness of a v4 uuid is plenty for spreading retries.
        let random = u64::try_from(Uuid::new_v4().as_u128() >> 64).unwrap_or(0);
        Duration::from_nanos(random % nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_stays_within_the_ceiling() {
        let policy =
            RetryPolicy::new(5).with_backoff(Duration::from_millis(1), Duration::from_millis(8));
        for retry in 0..40 {
            assert!(policy.delay(retry) <= Duration::from_millis(8));
        }
        assert_eq!(
            RetryPolicy::new(1)
                .with_backoff(Duration::ZERO, Duration::ZERO)
                .delay(3),
            Duration::ZERO
        );
    }
}
