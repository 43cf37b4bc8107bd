//! The broker's clock. The engine never reads time; the broker reads it here and hands
//! it to the engine in `Tick` commands. The demo and tests run time faster than life.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rofr_engine::types::Timestamp;

#[derive(Debug, Clone)]
pub enum Clock {
    /// Wall-clock time.
    System,
    /// Model time that starts at `origin` and runs `speed` times faster than life.
    Scaled {
        origin: Timestamp,
        started: Instant,
        speed: f64,
    },
}

impl Clock {
    pub fn scaled(origin: Timestamp, speed: f64) -> Clock {
        Clock::Scaled {
            origin,
            started: Instant::now(),
            speed,
        }
    }

    pub fn now(&self) -> Timestamp {
        match self {
            Clock::System => {
                let since = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                Timestamp::from_unix_seconds(since.as_secs() as i64)
            }
            Clock::Scaled {
                origin,
                started,
                speed,
            } => {
                let model = started.elapsed().as_secs_f64() * speed;
                origin.plus_seconds(model as i64)
            }
        }
    }

    /// How long to wait in real time until the model time `at`.
    pub fn real_wait_until(&self, at: Timestamp) -> Duration {
        let model = (at.unix_seconds() - self.now().unix_seconds()).max(0) as f64;
        let speed = match self {
            Clock::System => 1.0,
            Clock::Scaled { speed, .. } => *speed,
        };
        Duration::from_secs_f64(model / speed)
    }
}
