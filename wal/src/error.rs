//! The crate's one error type. Each variant is a distinct decision for the server: retry later
//! (`NoSpace`, `Deferred`), reject the request (`TooLarge`), refuse to start (`Corrupt`, `Apply`, `Locked`), or
//! stop writing and restart (`Io`, `Poisoned`).

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::{Discard, Lsn};

/// Everything that can go wrong in the log.
#[derive(Debug)]
pub enum Error {
    /// An operating-system call failed. After a failed write, sync or rename the [`crate::Wal`] is
    /// poisoned and later calls return [`Error::Poisoned`].
    Io {
        /// The operation, e.g. `"sync_data"`.
        op: &'static str,
        /// The file or directory it was applied to.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Bytes on disk are damaged in a way that may have lost acknowledged data.
    Corrupt {
        /// The segment (or snapshot) file.
        segment: PathBuf,
        /// Byte offset of the damage.
        offset: u64,
        /// What is wrong.
        reason: String,
        /// What [`crate::Recovery::TruncateCorruption`] would discard by cutting the log here;
        /// `None` where it would not help (a damaged snapshot) or could not be counted.
        discard: Option<Discard>,
    },
    /// A record's length is outside `1..=max_record`; nothing of its batch was written.
    TooLarge {
        /// The payload length offered.
        len: usize,
        /// The configured maximum.
        max: u32,
    },
    /// An earlier write, sync or rename failed; the log refuses all further work until reopened.
    Poisoned,
    /// A new segment could not be allocated; nothing was written and the log is still usable.
    NoSpace,
    /// A new segment could not be made right now for a reason that may pass (out of file
    /// descriptors or memory, permission denied, read-only or full filesystem), or its directory
    /// entry could not be synced because the directory could not even be opened. The first
    /// `written` payloads of the batch are durable (LSNs from the batch's first on); nothing after
    /// them was written, and the log is not poisoned: retry the rest of the batch later.
    Deferred {
        /// Payloads of the batch that are durable.
        written: usize,
        /// What failed (an [`Error::Io`]).
        source: Box<Error>,
    },
    /// Another process holds the directory's lock.
    Locked(PathBuf),
    /// The replay callback rejected a checksum-valid record: a bug or version skew, never a torn
    /// write, so the log is left untouched.
    Apply {
        /// Segment holding the record.
        segment: PathBuf,
        /// Offset of the record header.
        offset: u64,
        /// The record's LSN.
        lsn: Lsn,
        /// The callback's error, rendered.
        message: String,
    },
}

impl Error {
    /// Wraps an OS error with the operation and path it came from.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// True for an OS "no space left on device" (or over quota).
    pub fn is_no_space(&self) -> bool {
        match self {
            Error::NoSpace => true,
            Error::Io { source, .. } => {
                matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
            }
            Error::Deferred { source, .. } => source.is_no_space(),
            _ => false,
        }
    }

    /// True for an OS error that means the call was refused before it did anything and may
    /// succeed later: out of descriptors or memory, permission denied, read-only or full
    /// filesystem. Used only for calls whose failure cannot lose data already written.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, Error::Io { source, .. } if matches!(
            source.raw_os_error(),
            Some(
                libc::EMFILE
                    | libc::ENFILE
                    | libc::ENOMEM
                    | libc::EACCES
                    | libc::EPERM
                    | libc::EROFS
                    | libc::ENOSPC
                    | libc::EDQUOT
            )
        ))
    }

    /// True for an OS error that only opening a file or directory produces (the descriptor or
    /// permission was refused), so a directory sync that failed this way never reached the disk.
    pub(crate) fn is_open_refused(&self) -> bool {
        matches!(self, Error::Io { source, .. } if matches!(
            source.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EACCES)
        ))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { op, path, source } => {
                write!(f, "wal: {op} {} failed: {source}", path.display())
            }
            Error::Corrupt {
                segment,
                offset,
                reason,
                discard,
            } => {
                write!(
                    f,
                    "wal: corruption in {} at offset {offset}: {reason}",
                    segment.display()
                )?;
                match discard {
                    Some(d) => write!(
                        f,
                        "; cutting the log there would discard {} bytes holding {}",
                        d.bytes, d.records
                    ),
                    None => Ok(()),
                }
            }
            Error::TooLarge { len, max } => {
                write!(f, "wal: record of {len} bytes is outside 1..={max}")
            }
            Error::Poisoned => write!(
                f,
                "wal: an earlier write or sync failed; restart to recover from disk"
            ),
            Error::NoSpace => write!(f, "wal: no space left for a new segment"),
            Error::Deferred { written, source } => write!(
                f,
                "{source}; the log is intact and will retry ({written} records of the batch written)"
            ),
            Error::Locked(dir) => {
                write!(
                    f,
                    "wal: {} is locked by another process (another flinger, or a flinger \
                     command, is using this data directory)",
                    dir.display()
                )
            }
            Error::Apply {
                segment,
                offset,
                lsn,
                message,
            } => write!(
                f,
                "wal: record {lsn} in {} at offset {offset} could not be applied: {message}",
                segment.display()
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Deferred { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}
