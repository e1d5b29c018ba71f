//! How a registry's jobs decode from a snapshot (see `Registry::decode`): the jobs of a
//! queue share one name, and the jobs without exclusions one empty list, as live
//! submissions do; and a large job table decodes in parts, one per thread.
//!
//! The parts: a snapshot's registry partition is `rmp_serde::to_vec`'s positional form, an
//! array whose first element is the job table, a map of job id to job. [`table`] finds the
//! table, [`skip`] walks msgpack values without decoding them (to where a part starts, and
//! to each entry's end), and each [`part`] decodes its entries exactly as the whole table
//! would decode, files each in its share of the read indexes while it is fresh in the
//! cache, and sorts each by the thread that will insert it into the map.

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use serde::de::{Deserializer, Error, Visitor};
use serde::Deserialize;

use super::Job;
use crate::model::cowmap::Runs;
use crate::model::ids::{JobId, Name};
use crate::model::index::PartIndex;
use crate::model::FastSet;

thread_local! {
    /// While a registry decodes on this thread: the queue names made so far.
    static NAMES: RefCell<Option<FastSet<Name>>> = const { RefCell::new(None) };
}

/// Names are gathered on this thread from `start` until `finish` or the drop (an error
/// or a panic while decoding), so no decode sees another's names.
pub(super) struct Gathering;

impl Gathering {
    pub(super) fn start() -> Gathering {
        NAMES.with(|names| *names.borrow_mut() = Some(FastSet::default()));
        Gathering
    }

    pub(super) fn finish(self) -> FastSet<Name> {
        NAMES.with(|names| names.borrow_mut().take().unwrap_or_default())
    }
}

impl Drop for Gathering {
    fn drop(&mut self) {
        NAMES.with(|names| names.borrow_mut().take());
    }
}

/// A queue name: the one already made for it while a registry decodes, else new.
pub(super) fn queue<'de, D: Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
    struct Queue;
    impl Visitor<'_> for Queue {
        type Value = Name;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a queue name")
        }
        fn visit_str<E: Error>(self, name: &str) -> Result<Name, E> {
            Ok(NAMES.with(|names| match names.borrow_mut().as_mut() {
                Some(names) => intern(names, name),
                None => Name::from(name),
            }))
        }
    }
    d.deserialize_str(Queue)
}

/// `exclude_agents`: when empty, the list all such jobs share.
pub(super) fn exclude<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<[Name]>, D::Error> {
    let names = Vec::<Name>::deserialize(d)?;
    Ok(if names.is_empty() {
        no_names()
    } else {
        names.into()
    })
}

/// The shared copy of `name` in `names` (added when new).
pub(super) fn intern(names: &mut FastSet<Name>, name: &str) -> Name {
    match names.get(name) {
        Some(shared) => shared.clone(),
        None => {
            let shared = Name::from(name);
            names.insert(shared.clone());
            shared
        }
    }
}

/// The one empty exclusion list all jobs without `exclude_agents` share.
pub fn no_names() -> Arc<[Name]> {
    static EMPTY: std::sync::LazyLock<Arc<[Name]>> = std::sync::LazyLock::new(|| Arc::new([]));
    EMPTY.clone()
}

/// Where a registry's job table sits in its snapshot partition.
#[derive(Clone, Copy, Debug)]
pub(super) struct Table {
    /// Length of the registry's array header, which the table follows.
    pub(super) header: usize,
    /// Offset of the table's first entry (after the map's own header).
    pub(super) start: usize,
    /// Entries in the table.
    pub(super) len: usize,
}

/// The job table of a registry partition in the positional form; `None` when the bytes
/// are not that shape (they then decode whole, which reports what is wrong) or the table
/// claims more entries than its bytes could hold (two bytes an entry at least).
pub(super) fn table(bytes: &[u8]) -> Option<Table> {
    let (header, fields) = container(bytes, 0, Kind::Array)?;
    if fields == 0 {
        return None;
    }
    let (start, len) = container(bytes, header, Kind::Map)?;
    (len <= (bytes.len() - start) / 2).then_some(Table { header, start, len })
}

#[derive(Clone, Copy)]
enum Kind {
    Array,
    Map,
}

/// The array or map header at `at`: the offset after it and its element (entry) count.
fn container(bytes: &[u8], at: usize, kind: Kind) -> Option<(usize, usize)> {
    let marker = *bytes.get(at)?;
    let (fix, wide) = match kind {
        Kind::Array => (0x90, 0xdc),
        Kind::Map => (0x80, 0xde),
    };
    match marker {
        m if m & 0xf0 == fix => Some((at + 1, usize::from(m & 0x0f))),
        m if m == wide => Some((
            at + 3,
            usize::from(u16::from_be_bytes(array(bytes, at + 1)?)),
        )),
        m if m == wide + 1 => Some((at + 5, u32::from_be_bytes(array(bytes, at + 1)?) as usize)),
        _ => None,
    }
}

fn array<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// The offset after the `count` msgpack values that start at `at`, found without decoding
/// them (a marker and a length each; nesting is counted, not recursed into, so no input
/// is too deep). Errors name the first marker that is invalid or runs past the end.
pub(super) fn skip(
    bytes: &[u8],
    mut at: usize,
    count: usize,
) -> Result<usize, rmp_serde::decode::Error> {
    let end = |at: usize| {
        rmp_serde::decode::Error::Syntax(format!(
            "the registry's job table ends early (at byte {at} of {})",
            bytes.len()
        ))
    };
    // Values still to pass; each is at least a byte, so more than there are bytes left
    // cannot all be there.
    let mut pending = count as u64;
    while pending > 0 {
        if pending > (bytes.len() - at.min(bytes.len())) as u64 {
            return Err(end(at));
        }
        pending -= 1;
        let marker = *bytes.get(at).ok_or_else(|| end(at))?;
        let length = |width: usize| -> Result<u64, rmp_serde::decode::Error> {
            let field = bytes.get(at + 1..at + 1 + width).ok_or_else(|| end(at))?;
            Ok(field.iter().fold(0u64, |n, b| n << 8 | u64::from(*b)))
        };
        // (header bytes, payload bytes, values inside)
        let (head, payload, inner): (usize, u64, u64) = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (1, 0, 0),
            0x80..=0x8f => (1, 0, 2 * u64::from(marker & 0x0f)),
            0x90..=0x9f => (1, 0, u64::from(marker & 0x0f)),
            0xa0..=0xbf => (1, u64::from(marker & 0x1f), 0),
            0xc4 | 0xd9 => (2, length(1)?, 0),
            0xc5 | 0xda => (3, length(2)?, 0),
            0xc6 | 0xdb => (5, length(4)?, 0),
            // ext: its length, then a type byte, then the data
            0xc7 => (3, length(1)?, 0),
            0xc8 => (4, length(2)?, 0),
            0xc9 => (6, length(4)?, 0),
            0xca | 0xce | 0xd2 => (5, 0, 0),
            0xcb | 0xcf | 0xd3 => (9, 0, 0),
            0xcc | 0xd0 => (2, 0, 0),
            0xcd | 0xd1 => (3, 0, 0),
            0xd4 => (3, 0, 0),
            0xd5 => (4, 0, 0),
            0xd6 => (6, 0, 0),
            0xd7 => (10, 0, 0),
            0xd8 => (18, 0, 0),
            0xdc => (3, 0, length(2)?),
            0xdd => (5, 0, length(4)?),
            0xde => (3, 0, 2 * length(2)?),
            0xdf => (5, 0, 2 * length(4)?),
            0xc1 => {
                return Err(rmp_serde::decode::Error::Syntax(format!(
                    "invalid msgpack marker 0xc1 at byte {at} of the registry"
                )))
            }
        };
        let next = (at as u64) + head as u64 + payload;
        if next > bytes.len() as u64 {
            return Err(end(at));
        }
        at = next as usize;
        pending += inner;
    }
    Ok(at)
}

/// The entries a thread decodes: `[from, to)` of the table's entries, each sorted into
/// the list of the run (`runs`) that will insert it, in table order.
pub(super) struct Part {
    /// Entries by run.
    pub(super) runs: Vec<Vec<(JobId, Arc<Job>)>>,
    /// Offset after the part's last entry.
    pub(super) end: usize,
    /// The queue names the part's jobs share.
    pub(super) names: FastSet<Name>,
    /// The part's jobs filed for the read indexes.
    pub(super) index: PartIndex,
}

/// Remaining nesting depth `rmp_serde::from_slice::<Registry>` has left when it reaches a
/// table entry (its 1,024 less the registry's array and the table's map), so an entry
/// decoded alone is refused exactly when it would be in the whole.
const DEPTH_AT_ENTRY: usize = 1022;

fn entry<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut decoder = rmp_serde::Deserializer::from_read_ref(bytes);
    decoder.set_max_depth(DEPTH_AT_ENTRY);
    T::deserialize(&mut decoder)
}

/// Decodes entries `[from, to)` of `table` (skipping the ones before `from` first), on
/// the calling thread.
pub(super) fn part(
    bytes: &[u8],
    table: Table,
    (from, to): (usize, usize),
    runs: &Runs,
) -> Result<Part, rmp_serde::decode::Error> {
    let gathering = Gathering::start();
    let mut at = skip(bytes, table.start, 2 * from)?;
    let share = (to - from) / runs.count() + 16;
    let mut by_run: Vec<Vec<(JobId, Arc<Job>)>> = (0..runs.count())
        .map(|_| Vec::with_capacity(share))
        .collect();
    let mut index = PartIndex::default();
    for _ in from..to {
        let key_end = skip(bytes, at, 1)?;
        let end = skip(bytes, key_end, 1)?;
        let id: JobId = entry(&bytes[at..key_end])?;
        let job: Arc<Job> = entry(&bytes[key_end..end])?;
        job.file(&mut index, id);
        by_run[runs.of(&id)].push((id, job));
        at = end;
    }
    Ok(Part {
        runs: by_run,
        end: at,
        names: gathering.finish(),
        index,
    })
}
