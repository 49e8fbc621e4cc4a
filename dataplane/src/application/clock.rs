//! The gateway's notion of now. Injectable, so freshness, expiry and replay windows can be tested
//! at a fixed instant (the SDK vectors are signed at one).

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};

#[derive(Debug, Default)]
pub enum Clock {
    #[default]
    System,
    /// Microseconds since the Unix epoch; tests move it with [`Clock::set`].
    Fixed(AtomicI64),
}

impl Clock {
    pub fn fixed(at: DateTime<Utc>) -> Self {
        Self::Fixed(AtomicI64::new(at.timestamp_micros()))
    }

    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Self::System => Utc::now(),
            Self::Fixed(micros) => {
                DateTime::from_timestamp_micros(micros.load(Ordering::Relaxed)).unwrap_or_default()
            }
        }
    }

    /// Moves a fixed clock; a system clock cannot be moved.
    pub fn set(&self, at: DateTime<Utc>) {
        if let Self::Fixed(micros) = self {
            micros.store(at.timestamp_micros(), Ordering::Relaxed);
        }
    }
}
