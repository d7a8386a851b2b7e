//! Stopping the process: the stop signal every loop watches, the pause that
//! wakes on it, and whether the drain that followed finished its work.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Sleeps unless stopped; returns false when `stop` fired first.
pub async fn pause(stop: &CancellationToken, duration: Duration) -> bool {
    if duration.is_zero() {
        return !stop.is_cancelled();
    }
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(duration) => true,
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every in-flight batch was committed and acknowledged.
    Finished,
    /// The drain timeout passed with work unfinished (it will be redelivered).
    TimedOut,
}

/// The stop signal and the drain's outcome, shared by the loops, the HTTP
/// `/drain` endpoint and the process's main task.
#[derive(Debug, Default)]
pub struct Lifecycle {
    stop: CancellationToken,
    ended: CancellationToken,
    finished: AtomicBool,
}

impl Lifecycle {
    pub fn new() -> Self {
        Self::default()
    }

    /// The token that loops watch: cancelled when intake must stop.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    pub fn request_stop(&self) {
        self.stop.cancel();
    }

    /// Records how the drain ended and wakes those waiting for it.
    pub fn end_drain(&self, outcome: DrainOutcome) {
        self.finished
            .store(outcome == DrainOutcome::Finished, Ordering::SeqCst);
        self.ended.cancel();
    }

    /// Waits for the drain to end; `None` when it did not end within `timeout`.
    pub async fn drain_outcome(&self, timeout: Duration) -> Option<DrainOutcome> {
        tokio::time::timeout(timeout, self.ended.cancelled())
            .await
            .ok()?;
        Some(if self.finished.load(Ordering::SeqCst) {
            DrainOutcome::Finished
        } else {
            DrainOutcome::TimedOut
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_timed_out_drain_is_reported_as_such() {
        let life = Lifecycle::new();
        assert_eq!(life.drain_outcome(Duration::from_millis(5)).await, None);
        life.end_drain(DrainOutcome::TimedOut);
        assert_eq!(
            life.drain_outcome(Duration::from_millis(5)).await,
            Some(DrainOutcome::TimedOut)
        );
        let life = Lifecycle::new();
        life.end_drain(DrainOutcome::Finished);
        assert_eq!(
            life.drain_outcome(Duration::from_millis(5)).await,
            Some(DrainOutcome::Finished)
        );
    }

    #[tokio::test]
    async fn pause_wakes_on_stop() {
        let life = Lifecycle::new();
        let stop = life.stop_token();
        assert!(pause(&stop, Duration::from_millis(1)).await);
        life.request_stop();
        assert!(!pause(&stop, Duration::from_secs(60)).await);
    }
}
