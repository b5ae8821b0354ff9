//! Log lines for events that can come by the thousand (failed accepts, AUTH guesses, TLS
//! handshakes that fail): at most one a second, saying how many there were.

use std::time::{Duration, Instant};

const EVERY: Duration = Duration::from_secs(1);

/// Events since the last line, and when that was.
#[derive(Debug, Default)]
pub struct Throttle {
    logged: Option<Instant>,
    unlogged: u64,
}

impl Throttle {
    /// Counts an event: `Some(n)` when a line is due, for the `n` events since the last one.
    pub fn note(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        if self.is_quiet(now) {
            self.logged = Some(now);
            return Some(std::mem::take(&mut self.unlogged));
        }
        None
    }

    /// Whether a line logged now would be the first within a second.
    pub fn is_quiet(&self, now: Instant) -> bool {
        self.logged.is_none_or(|at| now.duration_since(at) >= EVERY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_counts_every_event() {
        let start = Instant::now();
        let mut throttle = Throttle::default();
        assert_eq!(throttle.note(start), Some(1));
        assert_eq!(throttle.note(start + Duration::from_millis(10)), None);
        assert_eq!(throttle.note(start + Duration::from_millis(900)), None);
        assert_eq!(throttle.note(start + EVERY), Some(3));
        assert!(!throttle.is_quiet(start + EVERY));
        assert!(throttle.is_quiet(start + EVERY * 2));
    }
}
