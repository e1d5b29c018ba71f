//! The end of one run of a log stream, picked while the stream is walked: what a page
//! that shows a log's last bytes needs (the dashboard's job page), without a handle to
//! every fragment of the run.
//!
//! A log read orders a run's fragments by phase (in [`PHASES`] order), then by number;
//! fragments arrive in another order (phases interleave, retries come late), so the last
//! bytes in that order are known only once every fragment was seen. [`TailPick`] sees
//! each fragment's place and length and keeps the handles of the fewest last ones whose
//! texts hold at least the bytes asked for: at most one handle per byte shown, whatever
//! the run holds. It copies no text and does no I/O; the reader feeds it the stream in
//! steps (`actors::reads`).

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use bytes::Bytes;

use super::job::PHASES;
use super::results::{Fragment, PhaseLog};

/// A fragment kept for the tail: its place in read order and its text.
struct Kept {
    /// (index of its phase in [`PHASES`], fragment number): unique within a run, as a
    /// run's fragments are de-duplicated on (phase, number).
    place: (usize, u64),
    /// The text (a handle to the stored buffer).
    text: Bytes,
}

impl PartialEq for Kept {
    fn eq(&self, other: &Kept) -> bool {
        self.place == other.place
    }
}

impl Eq for Kept {}

impl PartialOrd for Kept {
    fn partial_cmp(&self, other: &Kept) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Kept {
    fn cmp(&self, other: &Kept) -> Ordering {
        self.place.cmp(&other.place)
    }
}

/// The last fragments of one run of a stream, in read order, holding at least `most`
/// bytes of text (all of them when the run holds fewer), with each phase's highest
/// fragment number and the run's length in bytes.
pub struct TailPick {
    /// The run read.
    run: u32,
    /// Bytes of text to keep at least.
    most: usize,
    /// The fragments kept, the earliest in read order on top (the first to drop).
    kept: BinaryHeap<Reverse<Kept>>,
    /// Bytes of text in `kept`.
    held: usize,
    /// Per phase of [`PHASES`], its highest fragment number so far.
    last: Vec<Option<u64>>,
    /// Bytes of text of every fragment of the run in a known phase.
    total: usize,
}

impl TailPick {
    /// A pick of the last `most` bytes of `run`.
    pub fn new(run: u32, most: usize) -> TailPick {
        TailPick {
            run,
            most,
            kept: BinaryHeap::new(),
            held: 0,
            last: vec![None; PHASES.len()],
            total: 0,
        }
    }

    /// Sees `fragments` (any part of the stream, in any order, each fragment once).
    pub fn feed(&mut self, fragments: &[Fragment]) {
        for f in fragments {
            if f.run != self.run {
                continue;
            }
            // A read shows only the known phases.
            let Some(phase) = PHASES.iter().position(|p| *p == &*f.phase) else {
                continue;
            };
            self.total += f.data.len();
            let last = &mut self.last[phase];
            *last = Some(last.map_or(f.number, |n| n.max(f.number)));
            // An empty text adds nothing to the tail (and would make the heap unbounded).
            if f.data.is_empty() {
                continue;
            }
            self.held += f.data.len();
            self.kept.push(Reverse(Kept {
                place: (phase, f.number),
                text: f.data.clone(),
            }));
            // Drop the earliest while the others still hold `most`: the fewest last ones.
            while let Some(Reverse(first)) = self.kept.peek() {
                if self.held - first.text.len() < self.most {
                    break;
                }
                self.held -= first.text.len();
                self.kept.pop();
            }
        }
    }

    /// Every phase of [`PHASES`] in order, each with its highest fragment number (-1
    /// when it has none) and the texts kept of it in fragment order; and the run's
    /// length in bytes.
    pub fn finish(self) -> (Vec<PhaseLog>, usize) {
        let mut phases: Vec<PhaseLog> = PHASES
            .iter()
            .zip(&self.last)
            .map(|(phase, last)| PhaseLog {
                phase,
                last: last.map_or(-1, |n| n as i64),
                pieces: Vec::new(),
            })
            .collect();
        for kept in self.kept.into_sorted_vec().into_iter().rev() {
            let Reverse(Kept { place, text }) = kept;
            phases[place.0].pieces.push(text);
        }
        (phases, self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::results::LogStream;

    /// Whatever the arrival order, steps and sizes, the pick holds the fewest last
    /// fragments of the run whose texts reach `most`, and the same numbers and length as
    /// a read of the whole run.
    #[test]
    fn the_pick_is_the_shortest_end_of_the_whole_read() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut below = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let phases = ["setup", "test", "nonsense", "cleanup"];
        for round in 0..2_000 {
            let mut stream = LogStream::default();
            for _ in 0..below(40) {
                let text = "x".repeat(below(6) as usize);
                stream.push(Fragment {
                    number: below(30),
                    phase: phases[below(4) as usize].into(),
                    timestamp: 0,
                    data: Bytes::from(text),
                    run: 1 + below(2) as u32,
                });
            }
            let most = below(40) as usize;
            let mut pick = TailPick::new(1, most);
            for step in stream.fragments.chunks(1 + below(5) as usize) {
                pick.feed(step);
            }
            let (picked, total) = pick.finish();
            let whole: Vec<(i64, Vec<Bytes>)> = PHASES
                .iter()
                .map(|p| match stream.phase_pieces(1, p, 0, i64::MIN) {
                    Some((last, pieces)) => (last as i64, pieces),
                    None => (-1, Vec::new()),
                })
                .collect();
            let all: Vec<Bytes> = whole.iter().flat_map(|(_, p)| p.clone()).collect();
            assert_eq!(total, all.iter().map(Bytes::len).sum::<usize>(), "{round}");
            let lasts: Vec<i64> = picked.iter().map(|p| p.last).collect();
            assert_eq!(lasts, whole.iter().map(|w| w.0).collect::<Vec<_>>());
            // The shortest suffix of the non-empty texts holding `most` bytes.
            let texts: Vec<Bytes> = all.into_iter().filter(|t| !t.is_empty()).collect();
            let mut from = texts.len();
            let mut held = 0;
            while from > 0 && held < most {
                from -= 1;
                held += texts[from].len();
            }
            let kept: Vec<Bytes> = picked.into_iter().flat_map(|p| p.pieces).collect();
            assert_eq!(kept, texts[from..], "round {round}, most {most}");
        }
    }
}
