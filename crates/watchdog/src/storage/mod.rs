//! Durable Raft storage: the log, hard state, conf state and last snapshot,
//! persisted before any message that depends on them leaves the node.
//!
//! [`DurableStorage`] implements [`raft::Storage`] over an in-memory copy of
//! the persisted state. [`crate::node::WatchdogNode`] changes that copy while
//! it handles a `Ready` and then calls [`DurableStorage::persist`], which
//! makes the changes durable through a [`Disk`]:
//!
//! - a **base** (`state_dir/raft-state.json`): the snapshot, the entries
//!   after it and the hard state, replaced atomically (write a temp file,
//!   fsync it, rename it over the old one, fsync the directory), so a crash
//!   leaves either the old or the new base, never a mix. It is rewritten
//!   only when the snapshot changes (a compaction every few dozen applied
//!   entries, [`DurableStorage::compact`], or one received from the leader)
//!   or when its journal has grown large;
//! - a **journal** (`state_dir/raft-state.log.<n>`, `n` named by the base):
//!   every other persist appends one checksummed record (the new entries,
//!   the new hard state) and fsyncs it, instead of rewriting the state.
//!   Loading replays the records over the base. A crash while appending
//!   tears at most the last record, which was never acknowledged: it is
//!   dropped and the journal cut back to its last whole record before
//!   anything else is appended. Once a new base is in place, the journals it
//!   supersedes are removed.
//!
//! [`FilePersist`] keeps them in files; [`MemoryPersist`] is a shared
//! in-memory "disk" for the simulation, through the same encoding: a
//! simulated restart reopens the storage from it, so whatever was not
//! persisted is lost, as in a crash.
//!
//! A restarted node gets back the term and vote it persisted, so it never
//! votes twice in one term. Loading validates the structure (contiguous
//! entries after the snapshot, commit index within the log, voters matching
//! the configuration) and reports a corrupt file as an error naming its
//! path. A base written by an earlier version (format 1, no journal) loads,
//! and the next persist replaces it with the current format.

mod disk;
mod format;

use std::path::PathBuf;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage};

pub use disk::{Disk, FilePersist, MemoryPersist, Persist, StorageError};
use format::{BaseFile, EntryFile, FORMAT, FORMAT_WHOLE, HardStateFile, RecordFile, SnapshotFile};

/// The file name of the persisted Raft state's base inside `state_dir`.
pub const STATE_FILE: &str = "raft-state.json";

/// A journal longer than this is folded into a new base at the next persist.
const JOURNAL_LIMIT: u64 = 1 << 20;

/// Raft's durable state, kept in memory and written through a [`Disk`].
pub struct DurableStorage {
    disk: Box<dyn Disk>,
    hard_state: HardState,
    conf_state: ConfState,
    /// The last snapshot: metadata (index, term, conf state) and the state
    /// machine's bytes at that index.
    snapshot: Snapshot,
    /// Entries after the snapshot; `entries[i].index == snapshot index + 1 + i`.
    entries: Vec<Entry>,
    /// The journal continuing the base on disk, and its length.
    journal: u64,
    journal_len: u64,
    base_len: u64,
    /// What changed since the last persist: a new base is due (snapshot,
    /// compaction, an old format, a failed append), the hard state, entries
    /// from this index on.
    rebase: bool,
    hard_state_changed: bool,
    appended_from: Option<u64>,
    saves: u64,
}

impl std::fmt::Debug for DurableStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableStorage")
            .field("location", &self.disk.location())
            .field("hard_state", &self.hard_state)
            .field("snapshot_index", &self.snapshot_index())
            .field("entries", &self.entries.len())
            .field("journal", &self.journal)
            .finish_non_exhaustive()
    }
}

impl DurableStorage {
    /// Opens the state persisted in `dir` (a [`FilePersist`]), or starts an
    /// empty log for `voters` if there is none.
    pub fn open(dir: impl Into<PathBuf>, voters: &[u64]) -> Result<Self, StorageError> {
        Self::open_with(Box::new(FilePersist::new(dir)), voters)
    }

    /// Opens the state saved in `disk`, or starts an empty log for
    /// `voters` if there is none.
    pub fn open_with(disk: Box<dyn Disk>, voters: &[u64]) -> Result<Self, StorageError> {
        let mut configured = voters.to_vec();
        configured.sort_unstable();
        configured.dedup();
        let mut conf_state = ConfState::default();
        conf_state.set_voters(configured.clone());
        let mut storage = Self {
            disk,
            hard_state: HardState::default(),
            conf_state: conf_state.clone(),
            snapshot: Snapshot::default(),
            entries: Vec::new(),
            journal: 0,
            journal_len: 0,
            base_len: 0,
            // Nothing on disk yet: the first persist writes a base.
            rebase: true,
            hard_state_changed: false,
            appended_from: None,
            saves: 0,
        };
        storage.snapshot.mut_metadata().set_conf_state(conf_state);
        let Some(bytes) = storage.disk.load()? else {
            return Ok(storage);
        };
        storage.base_len = bytes.len() as u64;
        let path = storage.disk.location();
        let corrupt = |detail: String| StorageError::Corrupt {
            path: path.clone(),
            detail,
        };
        let base: BaseFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if base.format != FORMAT && base.format != FORMAT_WHOLE {
            return Err(corrupt(format!(
                "format {} is not a supported format ({FORMAT_WHOLE} or {FORMAT})",
                base.format
            )));
        }
        if base.voters != configured {
            return Err(StorageError::VotersMismatch {
                path,
                persisted: base.voters,
                configured,
            });
        }
        let meta = storage.snapshot.mut_metadata();
        meta.index = base.snapshot.index;
        meta.term = base.snapshot.term;
        storage.snapshot.data = format::decode_base64("snapshot data", &base.snapshot.data)
            .map_err(&corrupt)?
            .into();
        storage.replace_from(&base.entries).map_err(&corrupt)?;
        base.hard_state.apply_to(&mut storage.hard_state);
        // An earlier version's base has no journal: keep it until the next
        // persist replaces it.
        storage.rebase = base.format == FORMAT_WHOLE;
        if base.format == FORMAT {
            storage.journal = base.journal;
            storage.replay_journal()?;
        }
        let last = storage.last();
        let commit = storage.hard_state.commit;
        if commit < storage.snapshot_index() || commit > last {
            return Err(corrupt(format!(
                "commit index {commit} outside the log [{}, {last}]",
                storage.snapshot_index()
            )));
        }
        if let Err(e) = storage.disk.remove_journals_before(storage.journal) {
            tracing::warn!(error = %e, "could not remove superseded raft journals");
        }
        Ok(storage)
    }

    /// Applies the records of the current journal, and cuts a torn last
    /// record off the file so that what is appended next follows whole ones.
    fn replay_journal(&mut self) -> Result<(), StorageError> {
        let path = self.disk.journal_location(self.journal);
        let corrupt = |detail: String| StorageError::Corrupt {
            path: path.clone(),
            detail,
        };
        let bytes = self.disk.read_journal(self.journal)?;
        let scanned = format::scan(&bytes).map_err(&corrupt)?;
        for (i, payload) in scanned.records.iter().enumerate() {
            let record: RecordFile = serde_json::from_slice(payload)
                .map_err(|e| corrupt(format!("record {}: {e}", i + 1)))?;
            self.replace_from(&record.entries)
                .map_err(|e| corrupt(format!("record {}: {e}", i + 1)))?;
            if let Some(hs) = &record.hard_state {
                hs.apply_to(&mut self.hard_state);
            }
        }
        self.journal_len = scanned.good_len as u64;
        if scanned.good_len < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                dropped = bytes.len() - scanned.good_len,
                "dropped the torn end of the raft journal (a write cut short by a crash; it was never acknowledged)"
            );
            self.disk.truncate_journal(self.journal, self.journal_len)?;
        }
        Ok(())
    }

    /// Replaces the log from the first of `files` on with them, checking
    /// that they follow the snapshot and each other without a gap.
    fn replace_from(&mut self, files: &[EntryFile]) -> Result<(), String> {
        let Some(first) = files.first() else {
            return Ok(());
        };
        if first.index() < self.first() || first.index() > self.last().saturating_add(1) {
            return Err(format!(
                "entry index {} where {}..={} was expected",
                first.index(),
                self.first(),
                self.last().saturating_add(1)
            ));
        }
        let keep = usize::try_from(first.index() - self.first()).unwrap_or(usize::MAX);
        self.entries.truncate(keep);
        for file in files {
            let expected = self.last().saturating_add(1);
            if file.index() != expected {
                return Err(format!(
                    "entry index {} where {expected} was expected",
                    file.index()
                ));
            }
            self.entries.push(file.decode()?);
        }
        Ok(())
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

    /// Where the state is persisted (its base).
    pub fn location(&self) -> PathBuf {
        self.disk.location()
    }

    /// How many times the state was made durable (a record appended or a
    /// base written).
    pub fn saves(&self) -> u64 {
        self.saves
    }

    /// The bytes on disk as last written or read: the base and its journal.
    pub fn persisted_size(&self) -> usize {
        usize::try_from(self.base_len + self.journal_len).unwrap_or(usize::MAX)
    }

    /// Whether there are changes not yet persisted.
    pub fn is_dirty(&self) -> bool {
        self.rebase || self.hard_state_changed || self.appended_from.is_some()
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
            self.hard_state_changed = true;
        }
    }

    /// Sets the commit index (from `LightReady::commit_index`).
    pub fn set_commit(&mut self, commit: u64) {
        if self.hard_state.commit != commit {
            self.hard_state.commit = commit;
            self.hard_state_changed = true;
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
        self.appended_from = Some(
            self.appended_from
                .map_or(first_new.index, |from| from.min(first_new.index)),
        );
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
        self.rebase = true;
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
        self.rebase = true;
        Ok(())
    }

    /// Makes the changes since the last persist durable, if there are any;
    /// returns whether it wrote. When it returns `Ok`, the state is durable.
    ///
    /// It appends one record to the journal, or writes a new base when the
    /// snapshot changed or the journal is long.
    pub fn persist(&mut self) -> Result<bool, StorageError> {
        if !self.is_dirty() {
            return Ok(false);
        }
        if self.rebase || self.journal_len > JOURNAL_LIMIT {
            self.write_base()?;
        } else {
            self.append_record()?;
        }
        self.rebase = false;
        self.hard_state_changed = false;
        self.appended_from = None;
        self.saves += 1;
        Ok(true)
    }

    fn append_record(&mut self) -> Result<(), StorageError> {
        let from = self.appended_from.map_or(self.entries.len(), |from| {
            usize::try_from(from.saturating_sub(self.first())).unwrap_or(usize::MAX)
        });
        let record = RecordFile {
            hard_state: self
                .hard_state_changed
                .then(|| HardStateFile::from(&self.hard_state)),
            entries: self
                .entries
                .get(from..)
                .unwrap_or_default()
                .iter()
                .map(EntryFile::from)
                .collect(),
        };
        let payload = serde_json::to_vec(&record).map_err(|e| self.encode_error(e))?;
        let framed = format::frame(&payload);
        if let Err(e) = self.disk.append_journal(self.journal, &framed) {
            // Part of the record may be on disk: what comes next goes to a
            // new base and journal, never after a torn record.
            self.rebase = true;
            return Err(e);
        }
        self.journal_len += framed.len() as u64;
        Ok(())
    }

    fn write_base(&mut self) -> Result<(), StorageError> {
        let next = self.journal + 1;
        let meta = self.snapshot.get_metadata();
        let base = BaseFile {
            format: FORMAT,
            journal: next,
            hard_state: HardStateFile::from(&self.hard_state),
            voters: self.conf_state.get_voters().to_vec(),
            snapshot: SnapshotFile {
                index: meta.index,
                term: meta.term,
                data: format::encode_base64(&self.snapshot.data),
            },
            entries: self.entries.iter().map(EntryFile::from).collect(),
        };
        let bytes = serde_json::to_vec(&base).map_err(|e| self.encode_error(e))?;
        self.disk.save(&bytes)?;
        self.journal = next;
        self.journal_len = 0;
        self.base_len = bytes.len() as u64;
        if let Err(e) = self.disk.remove_journals_before(next) {
            tracing::warn!(error = %e, "could not remove superseded raft journals");
        }
        Ok(())
    }

    fn encode_error(&self, e: serde_json::Error) -> StorageError {
        StorageError::Io {
            path: self.disk.location(),
            source: std::io::Error::other(e),
        }
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
mod tests;
