//! Durable Raft storage: the log, hard state, conf state and last snapshot,
//! persisted before any message that depends on them leaves the node.
//!
//! [`DurableStorage`] implements [`raft::Storage`] over an in-memory copy of
//! the persisted state. [`crate::node::WatchdogNode`] changes that copy while
//! it handles a `Ready` and then calls [`DurableStorage::persist`], which
//! writes the whole state through a [`Persist`] back end:
//!
//! - [`FilePersist`]: `state_dir/raft-state.json`, written atomically (write
//!   a temp file, fsync it, rename it over the old one, fsync the directory),
//!   so a crash leaves either the old or the new state, never a mix;
//! - [`MemoryPersist`]: a shared in-memory "disk" for the simulation. It goes
//!   through the same encoding, and a simulated restart reopens the storage
//!   from it, so whatever was not persisted is lost, as in a crash.
//!
//! A restarted node gets back the term and vote it persisted, so it never
//! votes twice in one term. The log stays short: the node takes a snapshot of
//! the state machine every few dozen applied entries
//! ([`DurableStorage::compact`]) and the entries it covers are dropped.
//!
//! The file is JSON (readable by an operator); entry and snapshot payloads
//! are base64. Loading validates the structure (contiguous entries after the
//! snapshot, commit index within the log, voters matching the configuration)
//! and reports a corrupt file as an error naming its path.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use protobuf::ProtobufEnum as _;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage};
use serde::{Deserialize, Serialize};

/// The file name of the persisted Raft state inside `state_dir`.
pub const STATE_FILE: &str = "raft-state.json";

/// The version of the persisted format, checked on load.
const FORMAT: u32 = 1;

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

/// Where [`DurableStorage`] keeps its bytes: one blob, replaced atomically.
pub trait Persist: Send {
    /// The last saved blob, or `None` if nothing was ever saved.
    fn load(&self) -> Result<Option<Vec<u8>>, StorageError>;
    /// Replaces the saved blob; when this returns `Ok` the bytes are durable.
    fn save(&mut self, bytes: &[u8]) -> Result<(), StorageError>;
    /// Where the blob lives, for error messages.
    fn location(&self) -> PathBuf;
}

/// Persists to `dir/raft-state.json` (or another file name) with
/// write-temp, fsync, rename, fsync-dir.
#[derive(Debug, Clone)]
pub struct FilePersist {
    dir: PathBuf,
    name: &'static str,
}

impl FilePersist {
    /// Persistence of the Raft state in `dir` (created if missing on the first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self::named(dir, STATE_FILE)
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
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Persist for FilePersist {
    fn load(&self) -> Result<Option<Vec<u8>>, StorageError> {
        let path = self.path();
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    fn save(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let path = self.path();
        let tmp = self.dir.join(format!("{}.tmp", self.name));
        {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(io_err(&tmp))?;
            file.write_all(bytes).map_err(io_err(&tmp))?;
            file.sync_all().map_err(io_err(&tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        Ok(())
    }

    fn location(&self) -> PathBuf {
        self.path()
    }
}

/// An in-memory "disk" for the simulation. Clones share the same bytes, so
/// the simulation keeps one clone while a node is down and reopens the
/// storage from it on restart.
#[derive(Debug, Clone, Default)]
pub struct MemoryPersist {
    disk: Arc<Mutex<Option<Vec<u8>>>>,
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

    /// The bytes saved last, if any.
    pub fn bytes(&self) -> Option<Vec<u8>> {
        self.disk
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Persist for MemoryPersist {
    fn load(&self) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.bytes())
    }

    fn save(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StorageError::Io {
                path: self.location(),
                source: std::io::Error::other("simulated write failure"),
            });
        }
        *self.disk.lock().unwrap_or_else(PoisonError::into_inner) = Some(bytes.to_vec());
        Ok(())
    }

    fn location(&self) -> PathBuf {
        PathBuf::from("<memory>")
    }
}

// === persisted format ===

#[derive(Serialize, Deserialize)]
struct StateFile {
    format: u32,
    hard_state: HardStateFile,
    voters: Vec<u64>,
    snapshot: SnapshotFile,
    entries: Vec<EntryFile>,
}

#[derive(Serialize, Deserialize)]
struct HardStateFile {
    term: u64,
    vote: u64,
    commit: u64,
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    index: u64,
    term: u64,
    /// base64 of the state machine's bytes at `index`.
    data: String,
}

#[derive(Serialize, Deserialize)]
struct EntryFile {
    index: u64,
    term: u64,
    entry_type: i32,
    /// base64
    data: String,
    /// base64
    #[serde(default, skip_serializing_if = "String::is_empty")]
    context: String,
}

/// Raft's durable state, kept in memory and written through a [`Persist`].
pub struct DurableStorage {
    persist: Box<dyn Persist>,
    hard_state: HardState,
    conf_state: ConfState,
    /// The last snapshot: metadata (index, term, conf state) and the state
    /// machine's bytes at that index.
    snapshot: Snapshot,
    /// Entries after the snapshot; `entries[i].index == snapshot index + 1 + i`.
    entries: Vec<Entry>,
    dirty: bool,
    saves: u64,
    last_size: usize,
}

impl std::fmt::Debug for DurableStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableStorage")
            .field("location", &self.persist.location())
            .field("hard_state", &self.hard_state)
            .field("snapshot_index", &self.snapshot_index())
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl DurableStorage {
    /// Opens the state persisted in `dir` (a [`FilePersist`]), or starts an
    /// empty log for `voters` if there is none.
    pub fn open(dir: impl Into<PathBuf>, voters: &[u64]) -> Result<Self, StorageError> {
        Self::open_with(Box::new(FilePersist::new(dir)), voters)
    }

    /// Opens the state saved in `persist`, or starts an empty log for
    /// `voters` if there is none.
    pub fn open_with(persist: Box<dyn Persist>, voters: &[u64]) -> Result<Self, StorageError> {
        let mut configured = voters.to_vec();
        configured.sort_unstable();
        configured.dedup();
        let mut conf_state = ConfState::default();
        conf_state.set_voters(configured.clone());
        let mut storage = Self {
            persist,
            hard_state: HardState::default(),
            conf_state: conf_state.clone(),
            snapshot: Snapshot::default(),
            entries: Vec::new(),
            dirty: false,
            saves: 0,
            last_size: 0,
        };
        storage
            .snapshot
            .mut_metadata()
            .set_conf_state(conf_state.clone());
        let Some(bytes) = storage.persist.load()? else {
            return Ok(storage);
        };
        storage.last_size = bytes.len();
        let path = storage.persist.location();
        let corrupt = |detail: String| StorageError::Corrupt {
            path: path.clone(),
            detail,
        };
        let file: StateFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if file.format != FORMAT {
            return Err(corrupt(format!(
                "format {} is not the supported format {FORMAT}",
                file.format
            )));
        }
        if file.voters != configured {
            return Err(StorageError::VotersMismatch {
                path,
                persisted: file.voters,
                configured,
            });
        }
        let decode = |what: &str, s: &str| {
            BASE64
                .decode(s)
                .map_err(|e| corrupt(format!("{what}: invalid base64: {e}")))
        };
        let mut entries = Vec::with_capacity(file.entries.len());
        let mut expected = file.snapshot.index.saturating_add(1);
        for e in &file.entries {
            if e.index != expected {
                return Err(corrupt(format!(
                    "entry index {} where {expected} was expected",
                    e.index
                )));
            }
            expected = expected.saturating_add(1);
            let entry_type = EntryType::from_i32(e.entry_type).ok_or_else(|| {
                corrupt(format!(
                    "entry {}: unknown entry type {}",
                    e.index, e.entry_type
                ))
            })?;
            let mut entry = Entry {
                index: e.index,
                term: e.term,
                data: decode("entry data", &e.data)?.into(),
                context: decode("entry context", &e.context)?.into(),
                ..Default::default()
            };
            entry.set_entry_type(entry_type);
            entries.push(entry);
        }
        let last_index = expected.saturating_sub(1);
        let hs = &file.hard_state;
        if hs.commit < file.snapshot.index || hs.commit > last_index {
            return Err(corrupt(format!(
                "commit index {} outside the log [{}, {last_index}]",
                hs.commit, file.snapshot.index
            )));
        }
        storage.hard_state.term = hs.term;
        storage.hard_state.vote = hs.vote;
        storage.hard_state.commit = hs.commit;
        let meta = storage.snapshot.mut_metadata();
        meta.index = file.snapshot.index;
        meta.term = file.snapshot.term;
        storage.snapshot.data = decode("snapshot data", &file.snapshot.data)?.into();
        storage.entries = entries;
        Ok(storage)
    }

    /// The hard state (term, vote, commit) as last set.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The voters.
    pub fn voters(&self) -> &[u64] {
        self.conf_state.get_voters()
    }

    /// The index of the last snapshot (0 if none): every entry up to it is
    /// applied and compacted away.
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    /// The state machine's bytes at [`Self::snapshot_index`] (empty if none).
    pub fn snapshot_data(&self) -> &[u8] {
        &self.snapshot.data
    }

    /// The entries after the snapshot.
    pub fn entries_after_snapshot(&self) -> &[Entry] {
        &self.entries
    }

    /// Where the state is persisted.
    pub fn location(&self) -> PathBuf {
        self.persist.location()
    }

    /// How many times the state was written.
    pub fn saves(&self) -> u64 {
        self.saves
    }

    /// The size in bytes of the state as last written or read.
    pub fn persisted_size(&self) -> usize {
        self.last_size
    }

    /// Whether there are changes not yet persisted.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    fn first(&self) -> u64 {
        self.snapshot_index().saturating_add(1)
    }

    fn last(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.snapshot_index(), |e| e.index)
    }

    /// Sets the hard state (from `Ready::hs`).
    pub fn set_hard_state(&mut self, hs: &HardState) {
        if &self.hard_state != hs {
            self.hard_state = hs.clone();
            self.dirty = true;
        }
    }

    /// Sets the commit index (from `LightReady::commit_index`).
    pub fn set_commit(&mut self, commit: u64) {
        if self.hard_state.commit != commit {
            self.hard_state.commit = commit;
            self.dirty = true;
        }
    }

    /// Appends entries from `Ready::entries`, replacing any conflicting tail.
    ///
    /// Raft never appends below the snapshot nor leaves a gap; if it asked
    /// to, the call is refused rather than corrupting the log.
    pub fn append(&mut self, ents: &[Entry]) -> raft::Result<()> {
        let Some(first_new) = ents.first() else {
            return Ok(());
        };
        if first_new.index < self.first() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if first_new.index > self.last().saturating_add(1) {
            return Err(raft::Error::Store(raft::StorageError::Other(
                format!(
                    "append at {} leaves a gap after last index {}",
                    first_new.index,
                    self.last()
                )
                .into(),
            )));
        }
        let keep = usize::try_from(first_new.index - self.first()).unwrap_or(usize::MAX);
        self.entries.truncate(keep);
        self.entries.extend_from_slice(ents);
        self.dirty = true;
        Ok(())
    }

    /// Installs a snapshot received from the leader (`Ready::snapshot`):
    /// replaces the whole log.
    pub fn apply_snapshot(&mut self, snapshot: &Snapshot) -> raft::Result<()> {
        let meta = snapshot.get_metadata();
        if meta.index < self.snapshot_index() {
            return Err(raft::Error::Store(raft::StorageError::SnapshotOutOfDate));
        }
        self.snapshot = snapshot.clone();
        // Voters are fixed by configuration; keep ours in the metadata.
        self.snapshot
            .mut_metadata()
            .set_conf_state(self.conf_state.clone());
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.hard_state.commit = meta.index;
        self.entries.clear();
        self.dirty = true;
        Ok(())
    }

    /// Takes a snapshot at `index` (an applied, committed entry) holding the
    /// state machine's `data`, and drops the entries up to it.
    pub fn compact(&mut self, index: u64, data: Vec<u8>) -> raft::Result<()> {
        if index <= self.snapshot_index() {
            return Ok(());
        }
        if index > self.hard_state.commit || index > self.last() {
            return Err(raft::Error::Store(raft::StorageError::Other(
                format!(
                    "compact to {index} beyond commit {} / last index {}",
                    self.hard_state.commit,
                    self.last()
                )
                .into(),
            )));
        }
        let term = self.term(index)?;
        let drop = usize::try_from(index - self.snapshot_index()).unwrap_or(usize::MAX);
        self.entries.drain(..drop.min(self.entries.len()));
        let meta = self.snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        self.snapshot.data = data.into();
        self.dirty = true;
        Ok(())
    }

    /// Writes the state if anything changed since the last write; returns
    /// whether it wrote. When it returns `Ok`, the state is durable.
    pub fn persist(&mut self) -> Result<bool, StorageError> {
        if !self.dirty {
            return Ok(false);
        }
        let bytes = self.encode()?;
        self.persist.save(&bytes)?;
        self.dirty = false;
        self.saves += 1;
        self.last_size = bytes.len();
        Ok(true)
    }

    fn encode(&self) -> Result<Vec<u8>, StorageError> {
        let meta = self.snapshot.get_metadata();
        let file = StateFile {
            format: FORMAT,
            hard_state: HardStateFile {
                term: self.hard_state.term,
                vote: self.hard_state.vote,
                commit: self.hard_state.commit,
            },
            voters: self.conf_state.get_voters().to_vec(),
            snapshot: SnapshotFile {
                index: meta.index,
                term: meta.term,
                data: BASE64.encode(&self.snapshot.data),
            },
            entries: self
                .entries
                .iter()
                .map(|e| EntryFile {
                    index: e.index,
                    term: e.term,
                    entry_type: e.get_entry_type().value(),
                    data: BASE64.encode(&e.data),
                    context: BASE64.encode(&e.context),
                })
                .collect(),
        };
        serde_json::to_vec(&file).map_err(|e| StorageError::Io {
            path: self.persist.location(),
            source: std::io::Error::other(e),
        })
    }
}

impl Storage for DurableStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > self.last().saturating_add(1) || low > high {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let lo = usize::try_from(low - self.first()).unwrap_or(usize::MAX);
        let hi = usize::try_from(high - self.first()).unwrap_or(usize::MAX);
        let mut ents = self.entries.get(lo..hi).unwrap_or_default().to_vec();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let meta = self.snapshot.get_metadata();
        if idx == meta.index {
            return Ok(meta.term);
        }
        if idx < self.first() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        let pos = usize::try_from(idx - self.first()).unwrap_or(usize::MAX);
        self.entries
            .get(pos)
            .map(|e| e.term)
            .ok_or(raft::Error::Store(raft::StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot_index() < request_index {
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    fn hs(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..Default::default()
        }
    }

    #[test]
    fn persist_then_reopen_gives_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DurableStorage::open(dir.path(), &[1, 2, 3]).unwrap();
        assert_eq!(s.first_index().unwrap(), 1);
        assert_eq!(s.last_index().unwrap(), 0);
        s.append(&[entry(1, 1, b""), entry(2, 1, b"a"), entry(3, 2, b"b")])
            .unwrap();
        s.set_hard_state(&hs(2, 3, 2));
        assert!(s.persist().unwrap());
        assert!(!s.persist().unwrap(), "nothing changed");

        let r = DurableStorage::open(dir.path(), &[3, 2, 1]).unwrap();
        assert_eq!(r.hard_state(), &hs(2, 3, 2));
        assert_eq!(r.voters(), &[1, 2, 3]);
        assert_eq!(
            r.entries(1, 4, None, GetEntriesContext::empty(false))
                .unwrap(),
            vec![entry(1, 1, b""), entry(2, 1, b"a"), entry(3, 2, b"b")]
        );
        let st = r.initial_state().unwrap();
        assert_eq!(st.conf_state.get_voters(), &[1, 2, 3]);
        assert_eq!(r.term(3).unwrap(), 2);
        assert_eq!(r.term(0).unwrap(), 0);
    }

    #[test]
    fn snapshot_compaction_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DurableStorage::open(dir.path(), &[1, 2, 3]).unwrap();
        let ents: Vec<Entry> = (1..=10).map(|i| entry(i, 1, b"x")).collect();
        s.append(&ents).unwrap();
        s.set_hard_state(&hs(1, 1, 8));
        // Not beyond the commit index.
        assert!(s.compact(9, b"state".to_vec()).is_err());
        s.compact(6, b"state@6".to_vec()).unwrap();
        s.persist().unwrap();

        let r = DurableStorage::open(dir.path(), &[1, 2, 3]).unwrap();
        assert_eq!(r.snapshot_index(), 6);
        assert_eq!(r.snapshot_data(), b"state@6");
        assert_eq!(r.first_index().unwrap(), 7);
        assert_eq!(r.last_index().unwrap(), 10);
        assert_eq!(r.term(6).unwrap(), 1);
        assert!(matches!(
            r.term(5),
            Err(raft::Error::Store(raft::StorageError::Compacted))
        ));
        assert!(matches!(
            r.entries(5, 8, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(raft::StorageError::Compacted))
        ));
        let snap = r.snapshot(0, 2).unwrap();
        assert_eq!(snap.get_metadata().index, 6);
        assert_eq!(
            snap.get_metadata().get_conf_state().get_voters(),
            &[1, 2, 3]
        );
        assert_eq!(&snap.data[..], b"state@6");
    }

    #[test]
    fn compaction_keeps_the_file_small() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DurableStorage::open(dir.path(), &[1, 2, 3]).unwrap();
        let payload = vec![b'p'; 200];
        let mut sizes = Vec::new();
        for i in 1..=300u64 {
            s.append(&[entry(i, 1, &payload)]).unwrap();
            s.set_commit(i);
            if i % 64 == 0 {
                s.compact(i, b"sm".to_vec()).unwrap();
            }
            s.persist().unwrap();
            sizes.push(s.persisted_size());
        }
        let len = fs::metadata(dir.path().join(STATE_FILE)).unwrap().len();
        let max = sizes.iter().copied().max().unwrap();
        // 64 entries of ~300 bytes each at most, whatever the log's length.
        assert!(max < 64 * 400, "largest file {max} bytes");
        assert!(len < 64 * 400, "file {len} bytes");
        assert_eq!(s.snapshot_index(), 256);
        assert_eq!(s.entries_after_snapshot().len(), 44);
    }

    #[test]
    fn append_replaces_a_conflicting_tail() {
        let mut s = DurableStorage::open_with(Box::new(MemoryPersist::new()), &[1, 2, 3]).unwrap();
        s.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")])
            .unwrap();
        s.append(&[entry(2, 2, b"B")]).unwrap();
        assert_eq!(s.last_index().unwrap(), 2);
        assert_eq!(s.term(2).unwrap(), 2);
        assert!(s.append(&[entry(5, 2, b"gap")]).is_err());
    }

    #[test]
    fn received_snapshot_replaces_the_log() {
        let mem = MemoryPersist::new();
        let mut s = DurableStorage::open_with(Box::new(mem.clone()), &[1, 2, 3]).unwrap();
        s.append(&[entry(1, 1, b"a")]).unwrap();
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 20;
        snap.mut_metadata().term = 4;
        snap.data = b"sm@20".to_vec().into();
        s.apply_snapshot(&snap).unwrap();
        s.persist().unwrap();
        let r = DurableStorage::open_with(Box::new(mem), &[1, 2, 3]).unwrap();
        assert_eq!(r.snapshot_index(), 20);
        assert_eq!(r.hard_state().commit, 20);
        assert_eq!(r.hard_state().term, 4);
        assert_eq!(r.last_index().unwrap(), 20);
        assert_eq!(r.first_index().unwrap(), 21);
    }

    #[test]
    fn memory_persist_loses_what_was_not_persisted() {
        let mem = MemoryPersist::new();
        let mut s = DurableStorage::open_with(Box::new(mem.clone()), &[1, 2, 3]).unwrap();
        s.set_hard_state(&hs(3, 2, 0));
        s.persist().unwrap();
        s.set_hard_state(&hs(4, 1, 0));
        drop(s); // crash before persisting term 4
        let r = DurableStorage::open_with(Box::new(mem), &[1, 2, 3]).unwrap();
        assert_eq!(r.hard_state(), &hs(3, 2, 0));
    }

    #[test]
    fn corrupt_file_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        fs::write(&path, b"{\"format\": 1, \"hard_st").unwrap();
        let err = DurableStorage::open(dir.path(), &[1, 2, 3]).unwrap_err();
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("corrupt"), "{msg}");

        // Structurally valid JSON with a hole in the log.
        let mut s = DurableStorage::open(dir.path().join("ok"), &[1, 2, 3]).unwrap();
        s.append(&[entry(1, 1, b"a"), entry(2, 1, b"b")]).unwrap();
        s.persist().unwrap();
        let good = fs::read_to_string(dir.path().join("ok").join(STATE_FILE)).unwrap();
        fs::write(&path, good.replace("\"index\":2", "\"index\":3")).unwrap();
        let msg = DurableStorage::open(dir.path(), &[1, 2, 3])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("entry index 3 where 2 was expected"), "{msg}");

        fs::write(&path, good.replace("\"commit\":0", "\"commit\":9")).unwrap();
        let msg = DurableStorage::open(dir.path(), &[1, 2, 3])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("commit index 9 outside the log"), "{msg}");
    }

    #[test]
    fn voters_must_match_the_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DurableStorage::open(dir.path(), &[1, 2, 3]).unwrap();
        s.set_hard_state(&hs(1, 0, 0));
        s.persist().unwrap();
        let err = DurableStorage::open(dir.path(), &[1, 2, 3, 4, 5]).unwrap_err();
        assert!(matches!(err, StorageError::VotersMismatch { .. }), "{err}");
    }

    #[test]
    fn no_temp_file_is_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DurableStorage::open(dir.path(), &[1]).unwrap();
        s.set_hard_state(&hs(1, 1, 0));
        s.persist().unwrap();
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![STATE_FILE.to_owned()]);
    }
}
