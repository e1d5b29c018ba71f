//! Which file holds each job's artifact and attachments.
//!
//! The bytes live in files under the data dir (written by the artifact actor's shell);
//! this partition only records the current file of each (job, kind), so a replacement is
//! one event and the last one recorded wins on replay too.

use super::FastMap;

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
