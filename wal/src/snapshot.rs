//! Snapshot files of one log: [`SnapshotWriter`] writes them under a temporary name, whole
//! ([`SnapshotWriter::prepare`]) or in pieces ([`SnapshotFile`]), and fsyncs them; the
//! result, a [`PreparedSnapshot`], is made the log's newest by [`Wal::install_snapshot`](crate::Wal::install_snapshot),
//! which also compacts what it covers.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::frame::{self, SNAPSHOT_HEADER_LEN};
use crate::fs::SteppedSync;
use crate::layout::{snapshot_name, TMP_SUFFIX};
use crate::{Error, Fs, FsFile, Lsn};

/// Writes snapshot files of one log (see [`Wal::snapshot_writer`](crate::Wal::snapshot_writer)).
#[derive(Clone)]
pub struct SnapshotWriter {
    /// The log's filesystem.
    pub(crate) fs: Arc<dyn Fs>,
    /// The log's directory.
    pub(crate) dir: PathBuf,
}

/// A snapshot written and fsynced under its temporary name, waiting for
/// [`Wal::install_snapshot`](crate::Wal::install_snapshot).
#[derive(Debug)]
pub struct PreparedSnapshot {
    /// The LSN it covers.
    pub(crate) lsn: Lsn,
    /// Where it was written.
    pub(crate) tmp: PathBuf,
    /// Its final name.
    pub(crate) path: PathBuf,
    /// Payload bytes.
    pub(crate) bytes: u64,
}

impl PreparedSnapshot {
    /// The snapshot's payload size in bytes (a caller paces the next snapshot by it).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The LSN it covers: every record up to and including it.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }
}

impl SnapshotWriter {
    /// Starts the snapshot at `lsn` as a temporary file to be written in pieces (see
    /// [`SnapshotFile`]), so a large state can be encoded straight into it instead of into
    /// one buffer first.
    pub fn create(&self, lsn: Lsn) -> Result<SnapshotFile, Error> {
        let name = snapshot_name(lsn);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}{TMP_SUFFIX}"));
        let file = self
            .fs
            .create(&tmp)
            .map_err(|e| Error::io("create", &tmp, e))?;
        Ok(SnapshotFile {
            fs: self.fs.clone(),
            file: Some(file),
            lsn,
            tmp,
            path,
            len: 0,
            pieces: Vec::new(),
            steps: SteppedSync::default(),
        })
    }

    /// Writes `payload` as the snapshot at `lsn` to a temporary file and fsyncs it. The
    /// log is not touched; a failure leaves nothing behind.
    pub fn prepare(&self, lsn: Lsn, payload: &[u8]) -> Result<PreparedSnapshot, Error> {
        let mut file = self.create(lsn)?;
        file.append(payload)?;
        file.finish()
    }
}

/// A snapshot being written in pieces under its temporary name (from
/// [`SnapshotWriter::create`]): payload bytes appended in order, with holes reserved for
/// bytes known only later (a length prefix) and filled before [`SnapshotFile::finish`].
/// The checksum is combined piece by piece, so nothing is read back. Dropped unfinished,
/// it removes its file.
pub struct SnapshotFile {
    /// The log's filesystem.
    fs: Arc<dyn Fs>,
    /// The temporary file (taken by `finish`).
    file: Option<Box<dyn FsFile>>,
    /// The LSN it covers.
    lsn: Lsn,
    /// Where it is written.
    tmp: PathBuf,
    /// Its final name.
    path: PathBuf,
    /// Payload bytes so far, holes included.
    len: u64,
    /// The payload in order: runs of appended bytes and holes, each with its CRC32C
    /// (`None`: a hole not filled yet).
    pieces: Vec<Piece>,
    /// Its writes, synced a MiB at a time.
    steps: SteppedSync,
}

/// A run of payload bytes of a [`SnapshotFile`].
struct Piece {
    /// Payload offset of its first byte.
    at: u64,
    /// Its length.
    len: u64,
    /// CRC32C of its bytes; `None` for a hole not filled yet.
    crc: Option<u32>,
    /// Whether it is a hole (filled by `fill`, never extended by `append`).
    hole: bool,
}

impl SnapshotFile {
    /// Payload bytes written or reserved so far: the payload offset of the next byte.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn file(&mut self) -> &mut Box<dyn FsFile> {
        self.file
            .as_mut()
            .expect("a snapshot file is open until finished")
    }

    /// Writes `bytes` at file offset `offset`, synced in steps ([`SteppedSync`]).
    fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), Error> {
        let file = self
            .file
            .as_mut()
            .expect("a snapshot file is open until finished");
        self.steps.write_at(&mut **file, &self.tmp, offset, bytes)
    }

    /// Appends `bytes` to the payload.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.write(SNAPSHOT_HEADER_LEN as u64 + self.len, bytes)?;
        match self.pieces.last_mut() {
            Some(run) if !run.hole => {
                run.crc = run.crc.map(|crc| crc32c::crc32c_append(crc, bytes));
                run.len += bytes.len() as u64;
            }
            _ => self.pieces.push(Piece {
                at: self.len,
                len: bytes.len() as u64,
                crc: Some(crc32c::crc32c(bytes)),
                hole: false,
            }),
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Reserves the next `len` payload bytes, to be written by [`SnapshotFile::fill`];
    /// returns their payload offset.
    pub fn reserve(&mut self, len: u64) -> u64 {
        let at = self.len;
        self.pieces.push(Piece {
            at,
            len,
            crc: None,
            hole: true,
        });
        self.len += len;
        at
    }

    /// Writes the bytes of the hole reserved at payload offset `at`, which must be exactly
    /// as long as reserved.
    pub fn fill(&mut self, at: u64, bytes: &[u8]) -> Result<(), Error> {
        let found = self.pieces.iter().position(|p| p.hole && p.at == at);
        let Some(i) = found.filter(|&i| self.pieces[i].len == bytes.len() as u64) else {
            let msg = format!(
                "no hole of {} bytes reserved at payload offset {at}",
                bytes.len()
            );
            let source = io::Error::new(io::ErrorKind::InvalidInput, msg);
            return Err(Error::io("write", &self.tmp, source));
        };
        self.write(SNAPSHOT_HEADER_LEN as u64 + at, bytes)?;
        self.pieces[i].crc = Some(crc32c::crc32c(bytes));
        Ok(())
    }

    /// Writes the header (length and checksum of the whole payload) and fsyncs the file:
    /// the snapshot is then ready for [`Wal::install_snapshot`](crate::Wal::install_snapshot). Refuses while a hole is
    /// unfilled. On failure the file is removed.
    pub fn finish(mut self) -> Result<PreparedSnapshot, Error> {
        let mut crc = 0u32;
        for piece in &self.pieces {
            let Some(piece_crc) = piece.crc else {
                let msg = format!("hole at payload offset {} never filled", piece.at);
                let source = io::Error::new(io::ErrorKind::InvalidInput, msg);
                return Err(Error::io("write", &self.tmp, source));
            };
            crc = crc32c::crc32c_combine(crc, piece_crc, piece.len as usize);
        }
        let header = frame::snapshot_header(self.lsn, self.len, crc);
        let file = self.file();
        if let Err(e) = file.write_at(0, &header) {
            return Err(Error::io("write", &self.tmp, e));
        }
        if let Err(e) = self.file().sync_all() {
            return Err(Error::io("sync_all", &self.tmp, e));
        }
        // Finished: the file now belongs to the PreparedSnapshot, not to Drop.
        self.file = None;
        Ok(PreparedSnapshot {
            lsn: self.lsn,
            tmp: self.tmp.clone(),
            path: self.path.clone(),
            bytes: self.len,
        })
    }
}

impl Drop for SnapshotFile {
    /// An unfinished snapshot (an encoding that failed, a failed write) leaves nothing
    /// behind; a finished one is the [`PreparedSnapshot`]'s.
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            drop(file);
            let _ = self.fs.remove(&self.tmp);
        }
    }
}

/// Fewest bytes a thread checksumming a snapshot is given ([`crc32c_on`]).
const CRC_PIECE: usize = 16 << 20;

/// CRC32C of `bytes` on up to `threads` threads, each given at least [`CRC_PIECE`] bytes,
/// the pieces' checksums combined: a snapshot of hundreds of MiB checks in a fraction of
/// the time (and, mapped, has its pages faulted in on every core).
pub(crate) fn crc32c_on(bytes: &[u8], threads: usize) -> u32 {
    crc32c_in_pieces(bytes, threads.min(bytes.len() / CRC_PIECE))
}

/// CRC32C of `bytes` cut into `pieces` (at least 1) equal pieces, the first checksummed on
/// this thread and each other on a thread of its own (here, when none can be started).
fn crc32c_in_pieces(bytes: &[u8], pieces: usize) -> u32 {
    let pieces = pieces.clamp(1, 64);
    if pieces == 1 || bytes.is_empty() {
        return crc32c::crc32c(bytes);
    }
    let mut cut = bytes.chunks(bytes.len().div_ceil(pieces));
    let first = cut.next().unwrap_or_default();
    let rest: Vec<&[u8]> = cut.collect();
    std::thread::scope(|scope| {
        let threads: Vec<_> = (rest.iter())
            .map(|&piece| {
                std::thread::Builder::new()
                    .name("snapshot-crc".into())
                    .spawn_scoped(scope, move || crc32c::crc32c(piece))
            })
            .collect();
        let mut crc = crc32c::crc32c(first);
        for (piece, thread) in rest.iter().zip(threads) {
            let piece_crc = match thread {
                Ok(thread) => thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(_) => crc32c::crc32c(piece),
            };
            crc = crc32c::crc32c_combine(crc, piece_crc, piece.len());
        }
        crc
    })
}

/// A loaded snapshot's payload (the bytes after its header), mapped from its file where
/// the filesystem can, else read into memory: [`crate::Wal::load_snapshot`]. Made only
/// there, after the header and checksum were checked.
pub struct SnapshotBytes(Held);

enum Held {
    /// The whole file read into memory.
    Read(Vec<u8>),
    /// The whole file mapped.
    Mapped(crate::fs::Mapped),
}

impl SnapshotBytes {
    pub(crate) fn read(file: Vec<u8>) -> SnapshotBytes {
        SnapshotBytes(Held::Read(file))
    }

    pub(crate) fn mapped(file: crate::fs::Mapped) -> SnapshotBytes {
        SnapshotBytes(Held::Mapped(file))
    }

    /// Whether the file is mapped rather than read.
    pub fn is_mapped(&self) -> bool {
        matches!(self.0, Held::Mapped(_))
    }

    /// The whole file, header included.
    pub(crate) fn file(&self) -> &[u8] {
        match &self.0 {
            Held::Read(file) => file,
            Held::Mapped(file) => file,
        }
    }
}

impl std::ops::Deref for SnapshotBytes {
    type Target = [u8];

    /// The payload: the file after its header (checked to be there when it was loaded).
    fn deref(&self) -> &[u8] {
        &self.file()[SNAPSHOT_HEADER_LEN..]
    }
}

impl std::fmt::Debug for SnapshotBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = if self.is_mapped() { "mapped" } else { "read" };
        write!(f, "SnapshotBytes({} bytes, {how})", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cut into any number of pieces, on threads, the checksum is the whole's.
    #[test]
    fn a_checksum_in_pieces_is_the_checksum_of_the_whole() {
        let bytes: Vec<u8> = (0..100_003u32).map(|i| (i * 31 % 251) as u8).collect();
        let whole = crc32c::crc32c(&bytes);
        for pieces in [0, 1, 2, 3, 7, 64, 1000] {
            assert_eq!(crc32c_in_pieces(&bytes, pieces), whole, "{pieces} pieces");
        }
        for len in [0, 1, 2, 5] {
            let short = &bytes[..len];
            assert_eq!(
                crc32c_in_pieces(short, 4),
                crc32c::crc32c(short),
                "{len} bytes"
            );
        }
        assert_eq!(crc32c_on(&bytes, 8), whole);
    }
}
