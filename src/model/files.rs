//! Which file holds each job's artifact and attachments.
//!
//! The bytes live in files under the data dir (written by the artifact actor's shell);
//! this partition only records the current file of each (job, kind), so a replacement is
//! one event and the last one recorded wins on replay too.
//!
//! [`AttachmentRoom`] is what `--max-attachments-bytes` bounds: the attachment files held
//! (and being written), in all and per submitter; derived from this partition and the
//! jobs' owners, never recorded.

use super::shares::{elsewhere, whose, Tally};
use super::{FastMap, Name};
use crate::error::{Error, Result};

use serde::{Deserialize, Serialize};

use super::event::{Event, FileKind};
use super::ids::JobId;

/// A stored file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    /// File name inside the `files/` folder (server-chosen, never from the client).
    pub file: Box<str>,
    /// Size in bytes.
    pub size: u64,
    /// Unix seconds it was stored (files of ids no job has expire a retention period
    /// after it). Last in the snapshot layout: older snapshots decode with 0.
    #[serde(default)]
    pub at: u64,
}

/// All stored files.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Files {
    /// Current file per job and kind.
    files: FastMap<(JobId, FileKind), StoredFile>,
}

impl Files {
    /// The current file of `kind` for `id`.
    pub fn get(&self, id: JobId, kind: FileKind) -> Option<&StoredFile> {
        self.files.get(&(id, kind))
    }

    /// Every job id with files: its bytes stored and its latest store (unix seconds).
    pub fn by_id(&self) -> FastMap<JobId, (u64, u64)> {
        let mut out: FastMap<JobId, (u64, u64)> = FastMap::default();
        for ((id, _), f) in &self.files {
            let entry = out.entry(*id).or_default();
            entry.0 += f.size;
            entry.1 = entry.1.max(f.at);
        }
        out
    }

    /// Every job's attachments file and its size: what [`AttachmentRoom`] counts.
    pub fn attachments(&self) -> impl Iterator<Item = (JobId, u64)> + '_ {
        self.files
            .iter()
            .filter(|((_, kind), _)| *kind == FileKind::Attachments)
            .map(|((id, _), f)| (*id, f.size))
    }

    /// Every file name that is referenced (to sweep orphans at start-up).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.files.values().map(|f| &*f.file)
    }

    /// Folds one files event in; returns the names of files it made unreferenced, for the
    /// shell to delete.
    pub fn apply(&mut self, event: &Event) -> Vec<Box<str>> {
        match event {
            Event::FileStored {
                id,
                kind,
                file,
                size,
                at,
            } => self
                .files
                .insert(
                    (*id, *kind),
                    StoredFile {
                        file: file.clone(),
                        size: *size,
                        at: *at,
                    },
                )
                .map(|old| old.file)
                .filter(|old| old != file)
                .into_iter()
                .collect(),
            Event::FilesExpired { ids } => {
                let mut gone = Vec::new();
                for id in ids {
                    for kind in [FileKind::Artifact, FileKind::Attachments] {
                        if let Some(f) = self.files.remove(&(*id, kind)) {
                            gone.push(f.file);
                        }
                    }
                }
                gone
            }
            _ => Vec::new(),
        }
    }
}

/// The bytes of attachment files held, stored or being written, in all and by the owner
/// of the job they are for (`None`: jobs submitted without a token, all such callers
/// together as one), and the bounds they are held to: `--max-attachments-bytes` in all,
/// and with access control on a share of it per owner (`--max-jobs-share-percent`, the
/// share job documents are held to). A job waits for an agent forever, keeping its
/// attachments while it does, so nothing else bounds them.
///
/// Derived, never recorded: start-up counts the attachments of the files partition under
/// their jobs' owners, and an upload counts its bytes as it writes them, so concurrent
/// uploads cannot together pass a bound. Agents' artifacts are not counted.
#[derive(Debug)]
pub struct AttachmentRoom {
    /// `--max-attachments-bytes`.
    limit: u64,
    /// One owner's share of it (`None`: no share, access control off or 100 %).
    share: Option<u64>,
    /// `--retention-secs`, for the refusal's word on how room comes back.
    retention_secs: u64,
    /// The bytes held, in all and by owner.
    held: Tally,
}

impl AttachmentRoom {
    /// Nothing held yet, under `limit` and `share`.
    pub fn new(limit: u64, share: Option<u64>, retention_secs: u64) -> AttachmentRoom {
        AttachmentRoom {
            limit,
            share,
            retention_secs,
            held: Tally::default(),
        }
    }

    /// Counts `bytes` of `owner`'s that are held already, whatever the bounds (start-up
    /// counting what is stored, which a lowered bound may leave above it).
    pub fn count(&mut self, owner: Option<&Name>, bytes: u64) {
        self.held.add(owner, bytes);
    }

    /// Takes `bytes` more for `owner`, or refuses (507, naming the bound passed, its
    /// option and how room comes back) leaving everything as it was.
    pub fn take(&mut self, owner: Option<&Name>, bytes: u64) -> Result<()> {
        self.fits(owner, bytes)?;
        self.held.add(owner, bytes);
        Ok(())
    }

    /// Whether `bytes` more for `owner` would fit (the refusal [`AttachmentRoom::take`]
    /// would give if not), taking nothing.
    pub fn fits(&self, owner: Option<&Name>, bytes: u64) -> Result<()> {
        let all = self.held.total();
        if all.saturating_add(bytes) > self.limit {
            return Err(Error::NoSpace(format!(
                "no room for these attachments: the attachments held take {all} bytes, \
                 stored and being uploaded, and this upload would take them past the \
                 server's limit of {} bytes (--max-attachments-bytes); {}",
                self.limit,
                self.freed()
            )));
        }
        if let Some(share) = self.share {
            let theirs = self.held.of(owner);
            if theirs.saturating_add(bytes) > share {
                return Err(Error::NoSpace(format!(
                    "no room for these attachments: {} take {theirs} bytes, stored and being \
                     uploaded, and this upload would take them past their share of \
                     the server's room for attachments: {share} bytes \
                     (--max-jobs-share-percent of --max-attachments-bytes); {}{}",
                    whose(
                        owner,
                        "attachments",
                        "the attachments of jobs submitted without a token"
                    ),
                    self.freed(),
                    elsewhere(owner)
                )));
            }
        }
        Ok(())
    }

    /// How room comes back, for a refusal.
    fn freed(&self) -> String {
        format!(
            "a job's attachments are deleted with the job: when it is deleted \
             (DELETE /v1/job/<id>) or {} s after it finishes (--retention-secs; cancelling \
             a waiting job finishes it)",
            self.retention_secs
        )
    }

    /// Gives back `bytes` of `owner`'s (at most what it holds).
    pub fn give(&mut self, owner: Option<&Name>, bytes: u64) {
        self.held.remove(owner, bytes);
    }

    /// The bytes held, in all and by owner.
    pub fn held(&self) -> &Tally {
        &self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(id: JobId, kind: FileKind, size: u64) -> Event {
        Event::FileStored {
            id,
            kind,
            file: format!("{id}.{kind:?}").into(),
            size,
            at: 1,
        }
    }

    #[test]
    fn the_attachments_counted_are_the_partitions_after_stores_replacements_and_removals() {
        let (a, b) = (JobId::random(), JobId::random());
        let mut files = Files::default();
        files.apply(&stored(a, FileKind::Attachments, 10));
        files.apply(&stored(a, FileKind::Artifact, 1000));
        files.apply(&stored(b, FileKind::Attachments, 7));
        let mut replaced = stored(b, FileKind::Attachments, 5);
        if let Event::FileStored { file, .. } = &mut replaced {
            *file = "other".into();
        }
        files.apply(&replaced);
        let mut held: Vec<_> = files.attachments().collect();
        held.sort();
        let mut want = vec![(a, 10), (b, 5)];
        want.sort();
        assert_eq!(
            held, want,
            "artifacts are not counted; a replacement counts once"
        );
        files.apply(&Event::FilesExpired { ids: vec![a] });
        assert_eq!(files.attachments().collect::<Vec<_>>(), vec![(b, 5)]);
    }

    #[test]
    fn a_take_past_the_total_or_a_share_is_refused_and_changes_nothing() {
        let (alice, bob) = (Name::from("alice"), Name::from("bob"));
        let mut room = AttachmentRoom::new(100, Some(40), 60);
        room.take(Some(&alice), 40).unwrap();
        let e = room.take(Some(&alice), 1).unwrap_err();
        assert!(
            matches!(&e, Error::NoSpace(m) if m.contains("client \"alice\"'s attachments")
            && m.contains("--max-jobs-share-percent of --max-attachments-bytes")
            && m.contains("DELETE /v1/job/<id>") && m.contains("60 s")),
            "{e:?}"
        );
        // Anonymous callers share one owner's room.
        room.take(None, 30).unwrap();
        let e = room.take(None, 11).unwrap_err();
        assert!(
            matches!(&e, Error::NoSpace(m) if m.contains("without a token")
            && m.contains("a client with a token has a share of its own")),
            "{e:?}"
        );
        room.take(Some(&bob), 30).unwrap();
        // 100 held: the total refuses before any share.
        room.take(None, 0).unwrap();
        let e = room.take(Some(&Name::from("carol")), 1).unwrap_err();
        assert!(
            matches!(&e, Error::NoSpace(m) if m.contains("--max-attachments-bytes)")
            && m.contains("take 100 bytes")),
            "{e:?}"
        );
        assert_eq!(room.held().total(), 100);
        room.give(Some(&bob), 30);
        room.take(Some(&Name::from("carol")), 30).unwrap();
        assert_eq!((room.held().of(Some(&bob)), room.held().total()), (0, 100));
    }

    #[test]
    fn without_a_share_only_the_total_bounds_and_counting_may_exceed_it() {
        let mut room = AttachmentRoom::new(100, None, 60);
        room.take(None, 100).unwrap();
        room.count(Some(&Name::from("alice")), 50);
        assert_eq!(
            room.held().total(),
            150,
            "what is stored is counted whatever the bound"
        );
        assert!(
            room.fits(None, 1).is_err(),
            "over a lowered bound nothing more fits"
        );
        room.give(None, 100);
        room.take(None, 50).unwrap();
        assert!(room.take(Some(&Name::from("alice")), 1).is_err());
        assert_eq!(room.held().of(None), 50);
    }
}
