//! Where the durable storage keeps its bytes: a base file replaced
//! atomically ([`Persist`]) and, beside it, append-only journals
//! ([`Disk`]), on a real file system ([`FilePersist`]) or in memory for the
//! simulation ([`MemoryPersist`]).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Errors of the durable storage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// Reading or writing the state failed.
    #[error("raft state {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The persisted state cannot be decoded or is inconsistent.
    #[error("raft state file {path} is corrupt: {detail}")]
    Corrupt {
        /// Where the state was read from.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The persisted voters differ from the configured ones.
    #[error(
        "raft state file {path} belongs to a cluster with voters {persisted:?}, \
         configured voters are {configured:?}; remove it to start afresh"
    )]
    VotersMismatch {
        /// Where the state was read from.
        path: PathBuf,
        /// The voters in the file.
        persisted: Vec<u64>,
        /// The voters in the configuration.
        configured: Vec<u64>,
    },
}

/// One blob, replaced atomically: the replay state of [`crate::replay`],
/// and the base of the Raft state.
pub trait Persist: Send {
    /// The last saved blob, or `None` if nothing was ever saved.
    fn load(&self) -> Result<Option<Vec<u8>>, StorageError>;
    /// Replaces the saved blob; when this returns `Ok` the bytes are durable.
    fn save(&mut self, bytes: &[u8]) -> Result<(), StorageError>;
    /// Where the blob lives, for error messages.
    fn location(&self) -> PathBuf;
}

/// A [`Persist`] base plus numbered append-only journals beside it: what
/// [`super::DurableStorage`] writes. A journal's number is the generation
/// of the base it continues.
pub trait Disk: Persist {
    /// The bytes of journal `generation`; empty if it does not exist.
    fn read_journal(&self, generation: u64) -> Result<Vec<u8>, StorageError>;
    /// Appends `bytes` to journal `generation` (creating it); when this
    /// returns `Ok` they are durable, the journal's existence included.
    fn append_journal(&mut self, generation: u64, bytes: &[u8]) -> Result<(), StorageError>;
    /// Cuts journal `generation` to `len` bytes, durably.
    fn truncate_journal(&mut self, generation: u64, len: u64) -> Result<(), StorageError>;
    /// Removes the journals older than `generation` (superseded by a newer
    /// base; removing them is tidying, not needed for correctness).
    fn remove_journals_before(&mut self, generation: u64) -> Result<(), StorageError>;
    /// Where journal `generation` lives, for error messages.
    fn journal_location(&self, generation: u64) -> PathBuf;
}

/// Persists to `dir/raft-state.json` (or another file name) with
/// write-temp, fsync, rename, fsync-dir; journals are `dir/<stem>.log.<n>`.
#[derive(Debug, Clone)]
pub struct FilePersist {
    dir: PathBuf,
    name: &'static str,
}

impl FilePersist {
    /// Persistence of the Raft state in `dir` (created if missing on the first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self::named(dir, super::STATE_FILE)
    }

    /// Persistence in `dir/name`, written the same way (the replay state of
    /// [`crate::replay`] lives beside the Raft state).
    pub fn named(dir: impl Into<PathBuf>, name: &'static str) -> Self {
        Self {
            dir: dir.into(),
            name,
        }
    }

    /// The path of the state file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(self.name)
    }

    fn stem(&self) -> &str {
        self.name
            .rsplit_once('.')
            .map_or(self.name, |(stem, _)| stem)
    }

    /// The number of a journal file named `name`, if it is one of ours.
    fn journal_number(&self, name: &str) -> Option<u64> {
        name.strip_prefix(self.stem())?
            .strip_prefix(".log.")?
            .parse()
            .ok()
    }

    fn sync_dir(&self) -> Result<(), StorageError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))
    }
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens `path` with `options`, makes `change` to the file and, before it
/// returns, makes that durable with `sync` (`File::sync_all`, or
/// `File::sync_data` when the data and the length are what matters).
fn durably(
    path: &Path,
    options: &OpenOptions,
    change: impl FnOnce(&mut File) -> std::io::Result<()>,
    sync: fn(&File) -> std::io::Result<()>,
) -> Result<(), StorageError> {
    let mut file = options.open(path).map_err(io_err(path))?;
    change(&mut file).map_err(io_err(path))?;
    sync(&file).map_err(io_err(path))
}

/// The bytes of the file at `path`; `None` if there is none.
fn read_if_there(path: &Path) -> Result<Option<Vec<u8>>, StorageError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

impl Persist for FilePersist {
    fn load(&self) -> Result<Option<Vec<u8>>, StorageError> {
        read_if_there(&self.path())
    }

    fn save(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let path = self.path();
        let tmp = self.dir.join(format!("{}.tmp", self.name));
        durably(
            &tmp,
            OpenOptions::new().write(true).create(true).truncate(true),
            |file| file.write_all(bytes),
            File::sync_all,
        )?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        self.sync_dir()
    }

    fn location(&self) -> PathBuf {
        self.path()
    }
}

impl Disk for FilePersist {
    fn read_journal(&self, generation: u64) -> Result<Vec<u8>, StorageError> {
        Ok(read_if_there(&self.journal_location(generation))?.unwrap_or_default())
    }

    fn append_journal(&mut self, generation: u64, bytes: &[u8]) -> Result<(), StorageError> {
        let path = self.journal_location(generation);
        let created = !path.exists();
        if created {
            fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        }
        // The length is part of what `sync_data` makes durable.
        durably(
            &path,
            OpenOptions::new().append(true).create(true),
            |file| file.write_all(bytes),
            File::sync_data,
        )?;
        if created {
            self.sync_dir()?;
        }
        Ok(())
    }

    fn truncate_journal(&mut self, generation: u64, len: u64) -> Result<(), StorageError> {
        let path = self.journal_location(generation);
        durably(
            &path,
            OpenOptions::new().write(true),
            |file| file.set_len(len),
            File::sync_all,
        )
    }

    fn remove_journals_before(&mut self, generation: u64) -> Result<(), StorageError> {
        let listing = match fs::read_dir(&self.dir) {
            Ok(listing) => listing,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        for item in listing {
            let item = item.map_err(io_err(&self.dir))?;
            let name = item.file_name();
            let Some(number) = name.to_str().and_then(|n| self.journal_number(n)) else {
                continue;
            };
            if number < generation {
                let path = item.path();
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        Ok(())
    }

    fn journal_location(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("{}.log.{generation}", self.stem()))
    }
}

#[derive(Debug, Default)]
struct MemoryDisk {
    base: Option<Vec<u8>>,
    journals: BTreeMap<u64, Vec<u8>>,
}

/// An in-memory "disk" for the simulation. Clones share the same bytes, so
/// the simulation keeps one clone while a node is down and reopens the
/// storage from it on restart.
#[derive(Debug, Clone, Default)]
pub struct MemoryPersist {
    disk: Arc<Mutex<MemoryDisk>>,
    failing: Arc<AtomicBool>,
}

impl MemoryPersist {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every later save fail (or succeed again), like a disk that
    /// refuses writes: simulates a crash in the middle of persisting.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// The base saved last, if any.
    pub fn bytes(&self) -> Option<Vec<u8>> {
        self.lock().base.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryDisk> {
        self.disk.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn refuse(&self) -> Result<(), StorageError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StorageError::Io {
                path: self.location(),
                source: std::io::Error::other("simulated write failure"),
            });
        }
        Ok(())
    }
}

impl Persist for MemoryPersist {
    fn load(&self) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.bytes())
    }

    fn save(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.refuse()?;
        self.lock().base = Some(bytes.to_vec());
        Ok(())
    }

    fn location(&self) -> PathBuf {
        PathBuf::from("<memory>")
    }
}

impl Disk for MemoryPersist {
    fn read_journal(&self, generation: u64) -> Result<Vec<u8>, StorageError> {
        Ok(self
            .lock()
            .journals
            .get(&generation)
            .cloned()
            .unwrap_or_default())
    }

    fn append_journal(&mut self, generation: u64, bytes: &[u8]) -> Result<(), StorageError> {
        self.refuse()?;
        self.lock()
            .journals
            .entry(generation)
            .or_default()
            .extend_from_slice(bytes);
        Ok(())
    }

    fn truncate_journal(&mut self, generation: u64, len: u64) -> Result<(), StorageError> {
        self.refuse()?;
        if let Some(journal) = self.lock().journals.get_mut(&generation) {
            journal.truncate(usize::try_from(len).unwrap_or(usize::MAX));
        }
        Ok(())
    }

    fn remove_journals_before(&mut self, generation: u64) -> Result<(), StorageError> {
        self.lock().journals.retain(|&n, _| n >= generation);
        Ok(())
    }

    fn journal_location(&self, generation: u64) -> PathBuf {
        PathBuf::from(format!("<memory journal {generation}>"))
    }
}
