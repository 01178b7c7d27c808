//! The persisted format: a JSON base (readable by an operator; payloads in
//! base64) and journal records framed as
//! `[payload length: u32 LE][first 8 bytes of SHA-256(payload)][payload]`,
//! each payload a JSON [`RecordFile`].

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use protobuf::ProtobufEnum as _;
use raft::eraftpb::{Entry, EntryType, HardState};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The base written by this version: it names the journal that continues it.
pub(super) const FORMAT: u32 = 2;
/// The base of earlier versions: the whole state, no journal.
pub(super) const FORMAT_WHOLE: u32 = 1;

/// Bytes before a record's payload.
pub(super) const HEADER: usize = 4 + SUM;
const SUM: usize = 8;

/// The base file.
#[derive(Serialize, Deserialize)]
pub(super) struct BaseFile {
    pub format: u32,
    /// The journal that continues this base (format 2).
    #[serde(default)]
    pub journal: u64,
    pub hard_state: HardStateFile,
    pub voters: Vec<u64>,
    pub snapshot: SnapshotFile,
    pub entries: Vec<EntryFile>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct HardStateFile {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

impl From<&HardState> for HardStateFile {
    fn from(hs: &HardState) -> Self {
        Self {
            term: hs.term,
            vote: hs.vote,
            commit: hs.commit,
        }
    }
}

impl HardStateFile {
    pub fn apply_to(&self, hs: &mut HardState) {
        hs.term = self.term;
        hs.vote = self.vote;
        hs.commit = self.commit;
    }
}

#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotFile {
    pub index: u64,
    pub term: u64,
    /// base64 of the state machine's bytes at `index`.
    pub data: String,
}

#[derive(Serialize, Deserialize)]
pub(super) struct EntryFile {
    index: u64,
    term: u64,
    entry_type: i32,
    /// base64
    data: String,
    /// base64
    #[serde(default, skip_serializing_if = "String::is_empty")]
    context: String,
}

impl From<&Entry> for EntryFile {
    fn from(e: &Entry) -> Self {
        Self {
            index: e.index,
            term: e.term,
            entry_type: e.get_entry_type().value(),
            data: BASE64.encode(&e.data),
            context: BASE64.encode(&e.context),
        }
    }
}

impl EntryFile {
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The entry, or what is wrong with it.
    pub fn decode(&self) -> Result<Entry, String> {
        let entry_type = EntryType::from_i32(self.entry_type).ok_or_else(|| {
            format!(
                "entry {}: unknown entry type {}",
                self.index, self.entry_type
            )
        })?;
        let mut entry = Entry {
            index: self.index,
            term: self.term,
            data: decode_base64("entry data", &self.data)?.into(),
            context: decode_base64("entry context", &self.context)?.into(),
            ..Default::default()
        };
        entry.set_entry_type(entry_type);
        Ok(entry)
    }
}

/// One journal record: what changed since the record before it. Entries
/// replace the log from their first index on; then the hard state is set.
#[derive(Serialize, Deserialize, Default)]
pub(super) struct RecordFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hard_state: Option<HardStateFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<EntryFile>,
}

pub(super) fn encode_base64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

pub(super) fn decode_base64(what: &str, s: &str) -> Result<Vec<u8>, String> {
    BASE64
        .decode(s)
        .map_err(|e| format!("{what}: invalid base64: {e}"))
}

fn sum(payload: &[u8]) -> [u8; SUM] {
    let digest = Sha256::digest(payload);
    let mut out = [0; SUM];
    for (o, d) in out.iter_mut().zip(digest.iter()) {
        *o = *d;
    }
    out
}

/// Frames `payload` as one journal record.
pub(super) fn frame(payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&sum(payload));
    out.extend_from_slice(payload);
    out
}

/// A journal read back.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Scanned<'a> {
    /// The payloads of the whole records, in order.
    pub records: Vec<&'a [u8]>,
    /// Where the last whole record ends: the rest is a torn write.
    pub good_len: usize,
}

/// Splits a journal into records. A crash while appending leaves at most
/// the last record torn (cut short, or its length written but its bytes
/// not, which reads as zeros): that tail is not part of the journal, it was
/// never acknowledged. A record that fails its checksum with more bytes
/// after it cannot come from a torn append: it is corruption, an error
/// naming its offset.
pub(super) fn scan(journal: &[u8]) -> Result<Scanned<'_>, String> {
    let mut records = Vec::new();
    let mut pos = 0;
    while let Some(header) = journal.get(pos..pos + HEADER) {
        let (len, expected) = header.split_at(4);
        let len = u32::from_le_bytes(len.try_into().unwrap_or_default());
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len == 0 {
            break;
        }
        let end = pos.saturating_add(HEADER).saturating_add(len);
        let Some(payload) = journal.get(pos + HEADER..end) else {
            break;
        };
        if sum(payload) != expected {
            if end == journal.len() {
                break;
            }
            return Err(format!(
                "the record at byte {pos} fails its checksum and {} bytes follow it",
                journal.len() - end
            ));
        }
        records.push(payload);
        pos = end;
    }
    Ok(Scanned {
        records,
        good_len: pos,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_and_a_torn_tail_is_not_a_record() {
        let mut journal = frame(b"one");
        journal.extend(frame(b"two"));
        let whole = journal.len();
        let scanned = scan(&journal).unwrap();
        assert_eq!(scanned.records, vec![&b"one"[..], &b"two"[..]]);
        assert_eq!(scanned.good_len, whole);
        for cut in 0..whole {
            let scanned = scan(&journal[..cut]).unwrap();
            let first = HEADER + 3;
            assert_eq!(
                scanned.records.len(),
                usize::from(cut >= first),
                "cut {cut}"
            );
            assert_eq!(scanned.good_len, if cut >= first { first } else { 0 });
        }
        // A length written, its bytes not (zeros): torn.
        let mut zeros = frame(b"one");
        zeros.extend(vec![0; 40]);
        assert_eq!(scan(&zeros).unwrap().records.len(), 1);
        let mut garbled = frame(b"one");
        garbled.extend(frame(b"two"));
        let last = garbled.len() - 1;
        garbled[last] = b'x';
        assert_eq!(scan(&garbled).unwrap().records.len(), 1);
    }

    #[test]
    fn a_bad_record_in_the_middle_is_corruption() {
        let mut journal = frame(b"one");
        journal.extend(frame(b"two"));
        journal[HEADER] = b'X';
        let err = scan(&journal).unwrap_err();
        assert!(err.contains("at byte 0 fails its checksum"), "{err}");
    }
}
