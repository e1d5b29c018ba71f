//! File names inside the log directory (format item 1) and reading a directory back into them.
//!
//! The one place that knows how a name maps to an LSN; everything else works with [`Segment`] and
//! [`Listing`].

use std::path::{Path, PathBuf};

use crate::{Error, Fs, Lsn};

/// Name of the preallocated file that becomes the next segment.
pub const SPARE: &str = "next.spare";
/// Name of the file flock'd by the open [`crate::Wal`].
pub const LOCK: &str = "LOCK";
/// Suffix of half-written files, removed on open.
pub const TMP_SUFFIX: &str = ".tmp";

const SEGMENT_SUFFIX: &str = ".wal";
const SNAPSHOT_PREFIX: &str = "snapshot-";
const SNAPSHOT_SUFFIX: &str = ".snap";
const DIGITS: usize = 20;

/// A segment file as named on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// LSN of the first record, from the file name (checked against the header on replay).
    pub first_lsn: Lsn,
    /// Full path of the file.
    pub path: PathBuf,
}

pub fn segment_name(first_lsn: Lsn) -> String {
    format!("{first_lsn:0DIGITS$}{SEGMENT_SUFFIX}")
}

pub fn snapshot_name(lsn: Lsn) -> String {
    format!("{SNAPSHOT_PREFIX}{lsn:0DIGITS$}{SNAPSHOT_SUFFIX}")
}

/// Parses exactly twenty decimal digits, so `1.wal` or `+0001….wal` are not mistaken for ours.
fn parse_lsn(digits: &str) -> Option<Lsn> {
    if digits.len() != DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What a directory holds, sorted by LSN.
#[derive(Debug, Default)]
pub struct Listing {
    /// Segments in LSN order.
    pub segments: Vec<Segment>,
    /// Snapshot LSNs in ascending order.
    pub snapshots: Vec<Lsn>,
    /// Leftovers of interrupted writes.
    pub tmp: Vec<PathBuf>,
    /// Whether `next.spare` exists.
    pub spare: bool,
}

pub fn list(fs: &dyn Fs, dir: &Path) -> Result<Listing, Error> {
    let names = fs
        .read_dir(dir)
        .map_err(|e| Error::io("read_dir", dir, e))?;
    let mut listing = Listing::default();
    for name in names {
        if name.ends_with(TMP_SUFFIX) {
            listing.tmp.push(dir.join(name));
        } else if name == SPARE {
            listing.spare = true;
        } else if let Some(lsn) = name.strip_suffix(SEGMENT_SUFFIX).and_then(parse_lsn) {
            listing.segments.push(Segment {
                first_lsn: lsn,
                path: dir.join(name),
            });
        } else if let Some(lsn) = name
            .strip_prefix(SNAPSHOT_PREFIX)
            .and_then(|n| n.strip_suffix(SNAPSHOT_SUFFIX))
            .and_then(parse_lsn)
        {
            listing.snapshots.push(lsn);
        }
    }
    listing.segments.sort_by_key(|s| s.first_lsn);
    listing.snapshots.sort_unstable();
    Ok(listing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::MemFs;

    #[test]
    fn list_sorts_and_classifies_names() {
        let fs = MemFs::new();
        let dir = Path::new("/d");
        for name in [
            segment_name(30),
            segment_name(1),
            snapshot_name(12),
            "snapshot-00000000000000000099.snap.tmp".to_owned(),
            SPARE.to_owned(),
            "1.wal".to_owned(),
            "notes.txt".to_owned(),
        ] {
            fs.put(&dir.join(name), Vec::new());
        }
        let listing = list(&fs, dir).unwrap();
        let firsts: Vec<_> = listing.segments.iter().map(|s| s.first_lsn).collect();
        assert_eq!(firsts, [1, 30]);
        assert_eq!(listing.snapshots, [12]);
        assert_eq!(listing.tmp.len(), 1);
        assert!(listing.spare);
        assert_eq!(segment_name(1), "00000000000000000001.wal");
    }
}
