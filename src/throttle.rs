//! Rate-limited log lines: a fault or a client can make the same warning happen thousands
//! of times a second (every request refused while the disk is failing, every accept while
//! out of descriptors). Each kind of line is written at most once per [`EVERY`], carrying
//! how many repeats were suppressed since the last one written, so the log shows the
//! problem and its rate without drowning everything else.
//!
//! Only for lines a client or a fault can repeat; one-off events log directly.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// At most one line per kind this often.
pub const EVERY: Duration = Duration::from_secs(10);

/// A kind of line: its message, and a discriminator (an HTTP status, or 0).
type Kind = (&'static str, u64);

/// Per kind: when a line was last written, and repeats suppressed since.
fn table() -> &'static Mutex<HashMap<Kind, (Instant, u64)>> {
    static TABLE: OnceLock<Mutex<HashMap<Kind, (Instant, u64)>>> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

/// Whether a line of kind (`message`, `detail`) may be written now: `Some(suppressed)`
/// (repeats dropped since the last one written) if so, `None` if it is a repeat to drop.
pub fn allow(message: &'static str, detail: u64) -> Option<u64> {
    let now = Instant::now();
    let mut table = table().lock();
    match table.get_mut(&(message, detail)) {
        Some((last, suppressed)) if now.duration_since(*last) < EVERY => {
            *suppressed += 1;
            None
        }
        Some((last, suppressed)) => {
            *last = now;
            Some(std::mem::take(suppressed))
        }
        None => {
            table.insert((message, detail), (now, 0));
            Some(0)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn repeats_within_the_interval_are_counted_not_written() {
        assert_eq!(super::allow("test line", 1), Some(0));
        for _ in 0..5 {
            assert_eq!(super::allow("test line", 1), None);
        }
        // Another kind is independent.
        assert_eq!(super::allow("test line", 2), Some(0));
    }
}
