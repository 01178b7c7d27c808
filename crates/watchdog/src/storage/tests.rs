//! The durable storage's tests: reopening, compaction, journal replay and
//! crashes at every byte of a write.

use std::fs;

use super::*;

fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    Entry {
        index,
        term,
        data: data.to_vec().into(),
        ..Default::default()
    }
}

fn file_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn disk_usage(dir: &std::path::Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// What a reopened storage must show: the hard state, the snapshot index
/// and the entries after it.
type Shown = (HardState, u64, Vec<Entry>);

fn state_of(s: &DurableStorage) -> Shown {
    (
        s.hard_state().clone(),
        s.snapshot_index(),
        s.entries_after_snapshot().to_vec(),
    )
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
fn compaction_keeps_the_files_small() {
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
    let max = sizes.iter().copied().max().unwrap();
    // 64 records of ~500 bytes each at most, whatever the log's length.
    assert!(max < 64 * 600, "largest state {max} bytes");
    assert_eq!(disk_usage(dir.path()), s.persisted_size() as u64);
    assert_eq!(s.snapshot_index(), 256);
    assert_eq!(s.entries_after_snapshot().len(), 44);
    // One base and the one journal continuing it: the older ones are gone.
    assert_eq!(file_names(dir.path()), vec![STATE_FILE, "raft-state.log.5"]);
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
    let _s = persisted_in(dir.path(), &[1, 2, 3], hs(1, 0, 0));
    let err = DurableStorage::open(dir.path(), &[1, 2, 3, 4, 5]).unwrap_err();
    assert!(matches!(err, StorageError::VotersMismatch { .. }), "{err}");
}

#[test]
fn no_temp_file_is_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = persisted_in(dir.path(), &[1], hs(1, 1, 0));
    assert_eq!(file_names(dir.path()), vec![STATE_FILE]);
    s.set_hard_state(&hs(2, 1, 0));
    s.persist().unwrap();
    assert_eq!(file_names(dir.path()), vec![STATE_FILE, "raft-state.log.1"]);
}

#[test]
fn a_persist_appends_a_record_and_leaves_the_base_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = persisted_in(dir.path(), &[1, 2, 3], hs(1, 1, 0));
    let base = fs::read(dir.path().join(STATE_FILE)).unwrap();
    for i in 1..=5 {
        s.append(&[entry(i, 1, b"e")]).unwrap();
        s.set_commit(i - 1);
        assert!(s.persist().unwrap());
    }
    assert_eq!(fs::read(dir.path().join(STATE_FILE)).unwrap(), base);
    let journal = fs::read(dir.path().join("raft-state.log.1")).unwrap();
    let scanned = format::scan(&journal).unwrap();
    assert_eq!(scanned.records.len(), 5);
    // Each record holds its own entry, not the log so far.
    assert!(
        scanned.records.iter().all(|r| r.len() < 200),
        "{:?}",
        scanned.records.iter().map(|r| r.len()).collect::<Vec<_>>()
    );
    let r = DurableStorage::open(dir.path(), &[1, 2, 3]).unwrap();
    assert_eq!(state_of(&r), state_of(&s));
    assert_eq!(r.persisted_size(), s.persisted_size());
}

/// Storage of `voters` in `dir` that persisted `hard`.
fn persisted_in(dir: &std::path::Path, voters: &[u64], hard: HardState) -> DurableStorage {
    let mut s = DurableStorage::open(dir, voters).unwrap();
    s.set_hard_state(&hard);
    s.persist().unwrap();
    s
}

/// Persists a history with every kind of record (entries, a conflicting
/// tail, a hard state alone) into `dir`; returns the journal's length and
/// the state after each persist, oldest first.
fn history(dir: &std::path::Path) -> Vec<(u64, Shown)> {
    let mut s = DurableStorage::open(dir, &[1, 2, 3]).unwrap();
    s.append(&[entry(1, 1, b"base")]).unwrap();
    s.set_hard_state(&hs(1, 1, 1));
    s.persist().unwrap();
    let mut after = vec![(s.journal_len, state_of(&s))];
    type Step = Box<dyn Fn(&mut DurableStorage)>;
    let steps: Vec<Step> = vec![
        Box::new(|s| s.append(&[entry(2, 1, b"a"), entry(3, 1, b"b")]).unwrap()),
        Box::new(|s| s.set_hard_state(&hs(2, 3, 2))),
        Box::new(|s| {
            s.append(&[entry(3, 2, b"B"), entry(4, 2, b"c")]).unwrap();
            s.set_commit(3);
        }),
        Box::new(|s| s.append(&[entry(5, 2, &[7; 300])]).unwrap()),
        Box::new(|s| s.set_hard_state(&hs(3, 0, 4))),
    ];
    for step in steps {
        step(&mut s);
        assert!(s.persist().unwrap());
        after.push((s.journal_len, state_of(&s)));
    }
    after
}

#[test]
fn a_crash_at_any_byte_of_a_journal_write_loses_that_write_alone() {
    let dir = tempfile::tempdir().unwrap();
    let after = history(dir.path());
    let journal = fs::read(dir.path().join("raft-state.log.1")).unwrap();
    let base = fs::read(dir.path().join(STATE_FILE)).unwrap();
    assert_eq!(journal.len() as u64, after.last().unwrap().0);
    for cut in 0..=journal.len() {
        let crashed = tempfile::tempdir().unwrap();
        fs::write(crashed.path().join(STATE_FILE), &base).unwrap();
        fs::write(crashed.path().join("raft-state.log.1"), &journal[..cut]).unwrap();
        let mut r = DurableStorage::open(crashed.path(), &[1, 2, 3])
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let (good, expected) = after
            .iter()
            .rev()
            .find(|(len, _)| *len <= cut as u64)
            .unwrap();
        assert_eq!(&state_of(&r), expected, "cut at {cut}");
        let len = fs::metadata(crashed.path().join("raft-state.log.1"))
            .unwrap()
            .len();
        assert_eq!(len, *good, "cut at {cut}: the torn end is cut off the file");
        // What is written after the crash reads back after the next one.
        let next = r.last_index().unwrap() + 1;
        r.append(&[entry(next, 9, b"after")]).unwrap();
        r.persist().unwrap();
        let again = DurableStorage::open(crashed.path(), &[1, 2, 3])
            .unwrap_or_else(|e| panic!("cut at {cut}, reopened: {e}"));
        assert_eq!(state_of(&again), state_of(&r), "cut at {cut}, reopened");
        assert_eq!(again.term(next).unwrap(), 9);
    }
}

#[test]
fn a_crash_around_a_new_base_keeps_the_old_or_the_new_state() {
    let dir = tempfile::tempdir().unwrap();
    let after = history(dir.path());
    let old_journal = fs::read(dir.path().join("raft-state.log.1")).unwrap();

    // Before the rename: a half-written temp file beside the old base.
    fs::write(
        dir.path().join("raft-state.json.tmp"),
        b"{\"format\": 2, \"jou",
    )
    .unwrap();
    let mut s = DurableStorage::open(dir.path(), &[1, 2, 3]).unwrap();
    assert_eq!(state_of(&s), after.last().unwrap().1);

    // After the rename, before the old journal is removed: the new base
    // names journal 2, and journal 1 is ignored and tidied away.
    s.compact(4, b"sm@4".to_vec()).unwrap();
    s.persist().unwrap();
    let compacted = state_of(&s);
    fs::write(dir.path().join("raft-state.log.1"), &old_journal).unwrap();
    let r = DurableStorage::open(dir.path(), &[1, 2, 3]).unwrap();
    assert_eq!(state_of(&r), compacted);
    assert_eq!(r.snapshot_data(), b"sm@4");
    assert!(!dir.path().join("raft-state.log.1").exists());
}

#[test]
fn a_format_1_file_loads_and_the_next_persist_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STATE_FILE);
    // As the previous version wrote it: the whole state in one file.
    fs::write(
        &path,
        r#"{"format":1,"hard_state":{"term":3,"vote":2,"commit":2},"voters":[1,2,3],
            "snapshot":{"index":1,"term":1,"data":"c20="},
            "entries":[{"index":2,"term":2,"entry_type":0,"data":"YQ=="},
                       {"index":3,"term":3,"entry_type":0,"data":"Yg=="}]}"#,
    )
    .unwrap();
    let mut s = DurableStorage::open(dir.path(), &[1, 2, 3]).unwrap();
    assert_eq!(s.hard_state(), &hs(3, 2, 2));
    assert_eq!(s.snapshot_data(), b"sm");
    assert_eq!(
        s.entries(2, 4, None, GetEntriesContext::empty(false))
            .unwrap(),
        vec![entry(2, 2, b"a"), entry(3, 3, b"b")]
    );
    s.set_commit(3);
    s.persist().unwrap();
    let base: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(base["format"], 2);
    let r = DurableStorage::open(dir.path(), &[1, 2, 3]).unwrap();
    assert_eq!(state_of(&r), state_of(&s));
    assert_eq!(r.hard_state().commit, 3);
}

#[test]
fn a_corrupt_journal_record_is_an_error_naming_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    history(dir.path());
    let path = dir.path().join("raft-state.log.1");
    let mut journal = fs::read(&path).unwrap();
    journal[format::HEADER + 2] ^= 0x20;
    fs::write(&path, &journal).unwrap();
    let err = DurableStorage::open(dir.path(), &[1, 2, 3]).unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("fails its checksum"), "{msg}");
}

#[test]
fn a_failed_append_sends_the_next_persist_to_a_new_base() {
    let mem = MemoryPersist::new();
    let mut s = DurableStorage::open_with(Box::new(mem.clone()), &[1, 2, 3]).unwrap();
    s.append(&[entry(1, 1, b"a")]).unwrap();
    s.persist().unwrap();
    mem.set_failing(true);
    s.append(&[entry(2, 1, b"b")]).unwrap();
    assert!(s.persist().is_err());
    mem.set_failing(false);
    s.set_commit(2);
    s.persist().unwrap();
    let r = DurableStorage::open_with(Box::new(mem), &[1, 2, 3]).unwrap();
    assert_eq!(state_of(&r), state_of(&s));
    assert_eq!(r.journal, 2, "a new base continued by a new journal");
}

/// The environment variable naming the directory the writer child
/// persists into.
const WRITER_DIR: &str = "PGWARDEN_STORAGE_WRITER_DIR";

/// Run by [`a_killed_writer_keeps_every_acknowledged_entry`] in a child
/// process: appends entries for ever (bounded), printing `acked N` once
/// entry N is durable, until it is killed.
#[test]
#[ignore = "the child process of a_killed_writer_keeps_every_acknowledged_entry"]
fn storage_writer_child() {
    let dir =
        std::env::var(WRITER_DIR).expect("run by a_killed_writer_keeps_every_acknowledged_entry");
    let mut s = DurableStorage::open(&dir, &[1, 2, 3]).unwrap();
    let start = s.last_index().unwrap() + 1;
    let mut out = std::io::stdout().lock();
    for i in start..start + 20_000 {
        s.append(&[entry(i, 1, &payload(i))]).unwrap();
        s.set_commit(i);
        if i % 64 == 0 {
            s.compact(i - 8, format!("sm@{}", i - 8).into_bytes())
                .unwrap();
        }
        s.persist().unwrap();
        use std::io::Write as _;
        writeln!(out, "acked {i}").unwrap();
        out.flush().unwrap();
    }
}

fn payload(i: u64) -> Vec<u8> {
    format!("entry {i} ").repeat(40).into_bytes()
}

#[test]
fn a_killed_writer_keeps_every_acknowledged_entry() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked = 0u64;
    for round in 0..6u64 {
        let mut child = std::process::Command::new(&exe)
            .args([
                "storage::tests::storage_writer_child",
                "--exact",
                "--ignored",
            ])
            .args(["--nocapture", "--test-threads=1"])
            .env(WRITER_DIR, dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        // Kill it at a different point of its writes each round.
        let kill_after = 30 + round * 41;
        let mut seen = 0;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("acked ") {
                acked = n.parse().unwrap();
                seen += 1;
                if seen == kill_after {
                    break;
                }
            }
        }
        assert_eq!(seen, kill_after, "round {round}: the writer stopped early");
        std::thread::sleep(std::time::Duration::from_micros(round * 700));
        child.kill().unwrap();
        // What it printed before it died was durable too.
        for line in lines {
            if let Some(n) = line.unwrap().strip_prefix("acked ") {
                acked = n.parse().unwrap();
            }
        }
        child.wait().unwrap();

        let r = DurableStorage::open(dir.path(), &[1, 2, 3])
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let last = r.last_index().unwrap();
        assert!(
            last >= acked,
            "round {round}: acked {acked}, the log ends at {last}"
        );
        assert!(r.hard_state().commit >= acked, "round {round}");
        let first = r.first_index().unwrap();
        let ents = r
            .entries(first, last + 1, None, GetEntriesContext::empty(false))
            .unwrap();
        for e in ents {
            assert_eq!(
                &e.data[..],
                &payload(e.index)[..],
                "round {round}: entry {}",
                e.index
            );
        }
    }
}
