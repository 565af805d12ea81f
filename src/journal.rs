//! The change journal: every decision, held change, staged step, approval
//! and cancel, appended to `<state_dir>/journal.jsonl` (one JSON object a
//! line, synced with `fdatasync`) *before* the action it describes is
//! taken. Outcomes (`done`) of held changes are synced too; the outcome of
//! a change that was never held is history only and is written without
//! waiting for the disk ([`Journal::append_unsynced`]), so an allowed
//! change costs one sync.
//!
//! On start the core replays it ([`Journal::open`] → [`Replay`]): changes
//! that were held (or whose apply had begun) and never finished resume
//! with their original deadlines; change ids continue after the highest
//! one seen. A resumed change is judged again before it applies, so a
//! change whose apply was interrupted rolls *forward* (every apply is a
//! replace or a write of a value, so doing it again is harmless) or waits
//! again if its condition no longer holds.
//!
//! A torn last line (a crash mid-write) is dropped with a warning; any
//! other unreadable line is skipped with a warning naming its number, and
//! the rest is still replayed: one bad line never loses the others.
//!
//! **Rotation.** Once the file passes [`MAX_BYTES`] it is rotated: the
//! records of every change that could still resume are copied, after a
//! `rotated` record carrying the highest change id so far, into a new
//! file that atomically replaces `journal.jsonl`; the full old file
//! becomes `journal.1.jsonl` (older ones shift up to `journal.3.jsonl`,
//! the oldest is dropped). Every step leaves a complete `journal.jsonl`
//! behind: the old file is hard-linked to its archive name before the new
//! one is renamed over it, so a crash at any point loses nothing (a link
//! left by an interrupted rotation is removed at the next open). History
//! reads the archives too.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::policy::intent::Intent;

/// File name under the state directory.
pub const FILE: &str = "journal.jsonl";
/// Size past which the journal is rotated.
pub const MAX_BYTES: u64 = 16 << 20;
/// Rotated files kept (`journal.1.jsonl` newest).
pub const ARCHIVES: usize = 3;

/// `journal.N.jsonl` next to `path`.
fn archive(path: &Path, n: usize) -> PathBuf {
    path.with_file_name(format!("journal.{n}.jsonl"))
}

/// One journal record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// A proposal and its verdict (every proposal, vetoes included).
    Decision {
        /// Change id.
        change_id: u64,
        /// The change.
        intent: Intent,
        /// allow, delay, stage or veto.
        verdict: String,
        /// Who asked.
        requester: String,
        /// Why (the findings' summaries).
        reasons: Vec<String>,
        /// FRR northbound edits the change stands for (the proxy's commit
        /// or the Guard API's edits): how an approval after a restart
        /// commits it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        northbound: Option<crate::frr::proxy::HeldCommit>,
    },
    /// A change is held until its condition holds.
    Held {
        /// Change id.
        change_id: u64,
        /// The change.
        intent: Intent,
        /// `delay` or `stage_hash_fields`.
        plan: String,
        /// The hash fields of a `stage_hash_fields` plan.
        fields: Option<u32>,
        /// Wall-clock deadline, ms since the epoch.
        deadline_ms: u64,
        /// `apply` or `cancel` when the deadline passes.
        on_timeout: String,
        /// Who asked.
        requester: String,
        /// A commit held by the northbound proxy: its edits, so that it
        /// can be committed to FRR after a restart.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        northbound: Option<crate::frr::proxy::HeldCommit>,
    },
    /// The apply of a change begins (written before the first write).
    Applying {
        /// Change id.
        change_id: u64,
        /// Whether it was forced (deadline or approval) rather than ready.
        forced: bool,
    },
    /// A staged step is about to be taken, with the values it replaces.
    Step {
        /// Change id.
        change_id: u64,
        /// What is done, e.g. `net.ipv6.fib_multipath_hash_policy=3`.
        step: String,
    },
    /// A change ended: applied, failed, expired or cancelled.
    Done {
        /// Change id.
        change_id: u64,
        /// applied, failed, expired, cancelled.
        outcome: String,
        /// Details.
        message: String,
    },
    /// An operator approved a change despite its findings.
    Approve {
        /// Change id.
        change_id: u64,
        /// Who.
        who: String,
        /// Why (required).
        reason: String,
    },
    /// An operator cancelled a held change.
    Cancel {
        /// Change id.
        change_id: u64,
        /// Who.
        who: String,
        /// Why (may be empty).
        reason: String,
    },
    /// The first record of a rotated journal: ids continue after
    /// `change_id`; older records are in `journal.1.jsonl` and up.
    Rotated {
        /// The highest change id so far (not a change of its own).
        change_id: u64,
        /// Records copied after this one (the changes that may resume;
        /// their originals are in `journal.1.jsonl`).
        #[serde(default)]
        carried: usize,
    },
}

impl Record {
    /// The change the record is about.
    pub fn change_id(&self) -> u64 {
        match self {
            Record::Decision { change_id, .. }
            | Record::Held { change_id, .. }
            | Record::Applying { change_id, .. }
            | Record::Step { change_id, .. }
            | Record::Done { change_id, .. }
            | Record::Approve { change_id, .. }
            | Record::Cancel { change_id, .. }
            | Record::Rotated { change_id, .. } => *change_id,
        }
    }
}

/// A record with when it was written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// ms since the epoch.
    pub at_ms: u64,
    /// The record.
    #[serde(flatten)]
    pub record: Record,
}

impl Entry {
    /// The state a change is in after this entry: `vetoed`, `allowed`,
    /// `held`, `applying`, `approved`, `cancelled`, or the outcome of `done`
    /// (`applied`, `failed`, `expired`).
    pub fn state(&self) -> String {
        match &self.record {
            Record::Decision { verdict, .. } if verdict == "veto" => "vetoed".into(),
            Record::Decision { verdict, .. } if verdict == "allow" => "allowed".into(),
            Record::Decision { verdict, .. } => verdict.clone(),
            Record::Held { .. } => "held".into(),
            Record::Applying { .. } | Record::Step { .. } => "applying".into(),
            Record::Done { outcome, .. } => outcome.clone(),
            Record::Approve { .. } => "approved".into(),
            Record::Cancel { .. } => "cancelled".into(),
            Record::Rotated { .. } => "rotated".into(),
        }
    }

    /// Whether nothing follows this entry for its change (a veto may
    /// still be approved: not final).
    pub fn is_final(&self) -> bool {
        matches!(self.record, Record::Done { .. } | Record::Cancel { .. })
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A held change to resume.
#[derive(Clone, Debug, PartialEq)]
pub struct Resume {
    /// The `Held` record.
    pub held: Record,
    /// Time left before its deadline (zero when it passed while down).
    pub remaining: Duration,
    /// Its apply had begun (and not finished) when the guard stopped.
    pub was_applying: bool,
    /// Steps recorded for it.
    pub steps: Vec<String>,
}

/// What replaying the journal found.
#[derive(Debug, Default)]
pub struct Replay {
    /// Held changes that never finished, by id.
    pub resume: BTreeMap<u64, Resume>,
    /// The highest change id seen (new ids continue after it).
    pub max_id: u64,
    /// Records read.
    pub records: usize,
    /// Lines skipped as unreadable (line number, error).
    pub skipped: Vec<(usize, String)>,
    /// Vetoed proposals nobody approved yet, the newest [`MAX_VETOED`]:
    /// their `Decision` records (an operator may still approve them).
    pub vetoed: BTreeMap<u64, Record>,
}

/// Vetoed proposals kept approvable across restarts.
pub const MAX_VETOED: usize = 256;

/// A journal error.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The file could not be opened, read or written.
    #[error("journal {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The open journal.
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Bytes in the file.
    size: u64,
    /// Rotate past this.
    max_bytes: u64,
    syncs: u64,
}

impl Journal {
    /// Opens (creating) `<dir>/journal.jsonl` and replays it.
    pub fn open(dir: &Path) -> Result<(Journal, Replay), JournalError> {
        Self::open_with(dir, MAX_BYTES)
    }

    /// [`Journal::open`], rotating past `max_bytes`.
    pub fn open_with(dir: &Path, max_bytes: u64) -> Result<(Journal, Replay), JournalError> {
        let path = dir.join(FILE);
        let io = |source| JournalError::Io { path: path.clone(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        recover_rotation(&path).map_err(io)?;
        let replay = match File::open(&path) {
            Ok(f) => replay(BufReader::new(f), now_ms()).map_err(io)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Replay::default(),
            Err(e) => return Err(io(e)),
        };
        for (line, why) in &replay.skipped {
            warn!(path = %path.display(), line, error = %why, "journal line skipped");
        }
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        Ok((Journal { path, file, size, max_bytes, syncs: 0 }, replay))
    }

    /// Appends one entry and syncs it to disk before returning; rotates
    /// the file once it is past its size (a failed rotation is logged and
    /// retried at the next append: the entry itself is written).
    pub fn append(&mut self, entry: &Entry) -> Result<(), JournalError> {
        self.write(entry)?;
        self.syncs += 1;
        self.file.sync_data().map_err(|source| JournalError::Io { path: self.path.clone(), source })?;
        self.rotate_if_full();
        Ok(())
    }

    /// Appends one entry without waiting for the disk: for a record that
    /// nothing is decided on after a restart (the outcome of a change that
    /// was never held; replay only resumes held changes). It survives a
    /// crash of the guard at once (it is in the page cache) and a crash of
    /// the machine once the next [`Journal::append`] returns (syncing the
    /// file flushes all of it) or the kernel has written it back.
    pub fn append_unsynced(&mut self, entry: &Entry) -> Result<(), JournalError> {
        self.write(entry)?;
        self.rotate_if_full();
        Ok(())
    }

    fn write(&mut self, entry: &Entry) -> Result<(), JournalError> {
        let mut line = serde_json::to_string(entry).expect("journal records serialize");
        line.push('\n');
        // One write(2) per line: a crash leaves at most a torn last line.
        self.file.write_all(line.as_bytes()).map_err(|source| JournalError::Io { path: self.path.clone(), source })?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// Syncs done since the journal was opened.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// Rotates once past the size (a failure is logged; the next append
    /// tries again: the entry itself is written).
    fn rotate_if_full(&mut self) {
        if self.size > self.max_bytes {
            if let Err(e) = self.rotate() {
                warn!(path = %self.path.display(), error = %e, "journal rotation failed; the journal keeps growing");
            }
        }
    }

    /// Rotates now (see the module docs).
    pub fn rotate(&mut self) -> std::io::Result<()> {
        let text = std::fs::read_to_string(&self.path)?;
        let r = replay(text.as_bytes(), now_ms())?;
        // Whole lines of the changes that may resume, in order.
        let mut carried = String::new();
        let mut n = 0;
        for line in text.lines() {
            let Ok(e) = serde_json::from_str::<Entry>(line) else { continue };
            let id = e.record.change_id();
            if (r.resume.contains_key(&id) || r.vetoed.contains_key(&id)) && !matches!(e.record, Record::Rotated { .. })
            {
                carried.push_str(line);
                carried.push('\n');
                n += 1;
            }
        }
        let marker = Entry { at_ms: now_ms(), record: Record::Rotated { change_id: r.max_id, carried: n } };
        let mut out = serde_json::to_string(&marker).expect("journal records serialize");
        out.push('\n');
        out.push_str(&carried);
        let tmp = self.path.with_extension("jsonl.tmp");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(out.as_bytes())?;
            f.sync_all()?;
        }
        for n in (1..ARCHIVES).rev() {
            match std::fs::rename(archive(&self.path, n), archive(&self.path, n + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::hard_link(&self.path, archive(&self.path, 1))?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.size = out.len() as u64;
        tracing::info!(
            path = %self.path.display(),
            kept = r.resume.len(),
            archived = %archive(&self.path, 1).display(),
            "journal rotated"
        );
        Ok(())
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Undoes what an interrupted rotation left: the archive link still
/// naming the current file, and the unfinished new file.
fn recover_rotation(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let same = match (std::fs::metadata(path), std::fs::metadata(archive(path, 1))) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    };
    if same {
        warn!(path = %path.display(), "an interrupted journal rotation is undone");
        std::fs::remove_file(archive(path, 1))?;
        for n in 2..=ARCHIVES {
            match std::fs::rename(archive(path, n), archive(path, n - 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    match std::fs::remove_file(path.with_extension("jsonl.tmp")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The history: entries of change `id` (all of them, from every file) or,
/// without an id, the newest `limit` entries, oldest first. Reads the
/// current journal, then the archives only as far as needed. `rotated`
/// records are not history and are left out.
pub fn history(path: &Path, id: Option<u64>, limit: usize) -> Result<Vec<Entry>, JournalError> {
    let matches = |e: &Entry| id.is_none_or(|id| e.record.change_id() == id);
    let mut newest_first: Vec<Vec<Entry>> = Vec::new();
    let mut count = 0;
    let mut current_carried = Vec::new();
    let mut began_anywhere = false;
    for n in 0..=ARCHIVES {
        let p = if n == 0 { path.to_path_buf() } else { archive(path, n) };
        // A file's carried records are copies of records in the file
        // before it: each record is listed once, from where it was written.
        let (carried, own) = split_carried(read_entries(&p)?);
        if n == 0 {
            current_carried = carried.into_iter().filter(|e| matches(e)).collect();
        }
        let mut v: Vec<Entry> = own.into_iter().filter(|e| matches(e)).collect();
        // A change begins with its decision: once seen, older files hold
        // nothing more of it.
        let began = id.is_some() && v.iter().any(|e| matches!(e.record, Record::Decision { .. }));
        began_anywhere |= began;
        count += v.len();
        if id.is_none() && count > limit {
            v.drain(..count - limit);
            count = limit;
        }
        newest_first.push(v);
        if began || (id.is_none() && count >= limit) {
            break;
        }
    }
    if id.is_some() && !began_anywhere {
        // The change began in an archive dropped since: its carried
        // copies are all that is left of its beginning.
        newest_first.push(current_carried);
    }
    Ok(newest_first.into_iter().rev().flatten().collect())
}

/// A file's entries as (carried copies, its own), without the marker.
fn split_carried(entries: Vec<Entry>) -> (Vec<Entry>, Vec<Entry>) {
    let mut carried = Vec::new();
    let mut own = Vec::new();
    let mut skip = 0;
    for e in entries {
        match e.record {
            Record::Rotated { carried: n, .. } => skip = n,
            _ if skip > 0 => {
                skip -= 1;
                carried.push(e);
            }
            _ => own.push(e),
        }
    }
    (carried, own)
}

/// Reads every entry of the journal at `path` (for `history`), skipping
/// unreadable lines.
pub fn read_entries(path: &Path) -> Result<Vec<Entry>, JournalError> {
    let io = |source| JournalError::Io { path: path.to_path_buf(), source };
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let mut out = Vec::new();
    for line in BufReader::new(f).lines() {
        if let Ok(e) = serde_json::from_str::<Entry>(&line.map_err(io)?) {
            out.push(e);
        }
    }
    Ok(out)
}

/// Replays journal lines read from `r` as of wall-clock `now_ms`.
pub fn replay(r: impl BufRead, now_ms: u64) -> std::io::Result<Replay> {
    let mut out = Replay::default();
    let lines: Vec<String> = r.lines().collect::<Result<_, _>>()?;
    let last = lines.len();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let entry: Entry = match serde_json::from_str(line) {
            Ok(e) => e,
            Err(e) => {
                let why = if i + 1 == last { format!("torn last line: {e}") } else { e.to_string() };
                out.skipped.push((i + 1, why));
                continue;
            }
        };
        out.records += 1;
        let id = entry.record.change_id();
        out.max_id = out.max_id.max(id);
        match entry.record {
            held @ Record::Held { .. } => {
                let Record::Held { deadline_ms, .. } = &held else { unreachable!() };
                let remaining = Duration::from_millis(deadline_ms.saturating_sub(now_ms));
                out.resume.insert(id, Resume { held, remaining, was_applying: false, steps: Vec::new() });
            }
            Record::Applying { .. } => {
                if let Some(r) = out.resume.get_mut(&id) {
                    r.was_applying = true;
                }
            }
            Record::Step { step, .. } => {
                if let Some(r) = out.resume.get_mut(&id) {
                    r.steps.push(step);
                }
            }
            Record::Done { .. } | Record::Cancel { .. } => {
                out.resume.remove(&id);
                out.vetoed.remove(&id);
            }
            Record::Approve { .. } => {
                out.vetoed.remove(&id);
            }
            d @ Record::Decision { .. } => {
                if matches!(&d, Record::Decision { verdict, .. } if verdict == "veto") {
                    out.vetoed.insert(id, d);
                    while out.vetoed.len() > MAX_VETOED {
                        out.vetoed.pop_first();
                    }
                }
            }
            Record::Rotated { .. } => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::intent::parse_sysctl;

    fn held(id: u64, deadline_ms: u64) -> Record {
        Record::Held {
            change_id: id,
            intent: parse_sysctl("net.ipv6.conf.all.forwarding=1").unwrap(),
            plan: "delay".into(),
            fields: None,
            deadline_ms,
            on_timeout: "cancel".into(),
            requester: "uid 0".into(),
            northbound: None,
        }
    }

    fn line(r: Record) -> String {
        serde_json::to_string(&Entry { at_ms: 1, record: r }).unwrap()
    }

    #[test]
    fn a_held_northbound_commit_resumes_with_its_edits() {
        let Record::Held { change_id, intent, plan, fields, deadline_ms, on_timeout, requester, .. } =
            held(4, u64::MAX)
        else {
            unreachable!()
        };
        let recipe = crate::frr::proxy::HeldCommit {
            daemon: "staticd".into(),
            candidate: 9,
            comment: "c".into(),
            edits: vec![crate::frr::proxy::JournalEdit::Change {
                update: vec![],
                delete: vec![("/p".into(), String::new())],
            }],
        };
        let r = Record::Held {
            change_id,
            intent,
            plan,
            fields,
            deadline_ms,
            on_timeout,
            requester,
            northbound: Some(recipe.clone()),
        };
        let out = replay(std::io::Cursor::new(line(r)), 1).unwrap();
        let Record::Held { northbound, .. } = &out.resume[&4].held else { panic!("{out:?}") };
        assert_eq!(northbound.as_ref(), Some(&recipe));
        // Records written before the field existed still read.
        let old = line(held(5, u64::MAX));
        assert!(!old.contains("northbound"), "{old}");
        assert!(replay(std::io::Cursor::new(old), 1).unwrap().resume.contains_key(&5));
    }

    fn decision(id: u64) -> Entry {
        Entry {
            at_ms: 1,
            record: Record::Decision {
                change_id: id,
                intent: parse_sysctl("net.ipv6.conf.all.forwarding=1").unwrap(),
                verdict: "allow".into(),
                requester: "uid 0".into(),
                reasons: vec![],
                northbound: None,
            },
        }
    }

    fn done(id: u64) -> Entry {
        Entry { at_ms: 1, record: Record::Done { change_id: id, outcome: "applied".into(), message: String::new() } }
    }

    #[test]
    fn rotation_keeps_held_changes_ids_and_history() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open_with(dir.path(), 4096).unwrap();
        // Change 1 is held (never finishes); then finished changes until
        // the journal has rotated more than ARCHIVES times.
        j.append(&decision(1)).unwrap();
        j.append(&Entry { at_ms: 1, record: held(1, u64::MAX) }).unwrap();
        j.append(&Entry { at_ms: 1, record: Record::Step { change_id: 1, step: "s".into() } }).unwrap();
        let mut id = 2;
        while std::fs::metadata(archive(j.path(), ARCHIVES)).is_err() || id < 200 {
            j.append(&decision(id)).unwrap();
            j.append(&done(id)).unwrap();
            id += 1;
        }
        assert!(std::fs::metadata(j.path()).unwrap().len() < 4096 + 1024);
        assert!(std::fs::metadata(archive(j.path(), ARCHIVES + 1)).is_err(), "older archives are dropped");
        drop(j);
        let (_, r) = Journal::open_with(dir.path(), 4096).unwrap();
        assert_eq!(r.resume.keys().copied().collect::<Vec<_>>(), vec![1], "the held change survives rotation");
        assert_eq!(r.resume[&1].steps, vec!["s"]);
        assert_eq!(r.max_id, id - 1, "ids continue after rotation");
        // History: the held change whole (its records were carried), the
        // newest entries across files, no `rotated` records.
        let h1 = history(&dir.path().join(FILE), Some(1), 1000).unwrap();
        assert_eq!(h1.iter().map(Entry::state).collect::<Vec<_>>(), vec!["allowed", "held", "applying"]);
        let last = history(&dir.path().join(FILE), None, 50).unwrap();
        assert_eq!(last.len(), 50);
        assert_eq!(last.last().unwrap().record.change_id(), id - 1);
        assert!(last.windows(2).all(|w| w[0].record.change_id() <= w[1].record.change_id()), "oldest first");
        let all = history(&dir.path().join(FILE), None, 100_000).unwrap();
        assert!(all.iter().all(|e| e.state() != "rotated"));
        // Change 1 began in an archive dropped since: its carried copies
        // stand in, once each.
        assert!(all.iter().filter(|e| e.record.change_id() == 1).count() <= 3);
    }

    #[test]
    fn an_interrupted_rotation_is_undone_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        std::fs::write(&path, format!("{}\n{}\n", line(held(1, u64::MAX)), line(held(2, u64::MAX)))).unwrap();
        // Crashed after linking the archive, before the rename.
        std::fs::write(archive(&path, 1), "older\n").unwrap();
        std::fs::rename(archive(&path, 1), archive(&path, 2)).unwrap();
        std::fs::hard_link(&path, archive(&path, 1)).unwrap();
        std::fs::write(path.with_extension("jsonl.tmp"), "half").unwrap();
        let (_, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(r.resume.len(), 2);
        assert_eq!(std::fs::read_to_string(archive(&path, 1)).unwrap(), "older\n");
        assert!(!archive(&path, 2).exists() && !path.with_extension("jsonl.tmp").exists());
    }

    #[test]
    fn held_changes_resume_until_done_or_cancelled() {
        let text = [
            line(held(3, 10_000)),
            line(held(4, 20_000)),
            line(Record::Applying { change_id: 4, forced: false }),
            line(Record::Step { change_id: 4, step: "net.ipv6.fib_multipath_hash_fields=14".into() }),
            line(held(5, 30_000)),
            line(Record::Cancel { change_id: 5, who: "uid 0".into(), reason: String::new() }),
            line(held(6, 30_000)),
            line(Record::Done { change_id: 6, outcome: "applied".into(), message: String::new() }),
            line(Record::Decision {
                change_id: 9,
                intent: parse_sysctl("net.ipv6.conf.all.forwarding=1").unwrap(),
                verdict: "veto".into(),
                requester: "uid 0".into(),
                reasons: vec![],
                northbound: None,
            }),
            line(Record::Decision {
                change_id: 10,
                intent: parse_sysctl("net.ipv6.conf.all.forwarding=1").unwrap(),
                verdict: "veto".into(),
                requester: "uid 0".into(),
                reasons: vec![],
                northbound: None,
            }),
            line(Record::Approve { change_id: 10, who: "uid 0".into(), reason: "r".into() }),
        ]
        .join("\n");
        let r = replay(text.as_bytes(), 15_000).unwrap();
        assert_eq!(r.vetoed.keys().copied().collect::<Vec<_>>(), vec![9], "approved vetoes are not approvable again");
        assert_eq!(r.resume.keys().copied().collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(r.resume[&3].remaining, Duration::ZERO, "its deadline passed while the guard was down");
        assert_eq!(r.resume[&4].remaining, Duration::from_millis(5_000));
        assert!(r.resume[&4].was_applying && !r.resume[&3].was_applying);
        assert_eq!(r.resume[&4].steps, vec!["net.ipv6.fib_multipath_hash_fields=14".to_string()]);
        assert_eq!(r.max_id, 10);
        assert_eq!(r.records, 11);
        assert!(r.skipped.is_empty());
    }

    #[test]
    fn a_torn_last_line_and_garbage_lose_nothing_else() {
        let good = line(held(7, 50_000));
        let text = format!("{good}\nnot json at all\n{}\n{}", line(held(8, 50_000)), &good[..good.len() / 2]);
        let r = replay(text.as_bytes(), 0).unwrap();
        assert_eq!(r.resume.keys().copied().collect::<Vec<_>>(), vec![7, 8]);
        assert_eq!(r.skipped.len(), 2);
        assert_eq!(r.skipped[0].0, 2);
        assert!(r.skipped[1].1.starts_with("torn last line"), "{:?}", r.skipped);
    }

    #[test]
    fn append_then_reopen_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(r.records, 0);
        j.append(&Entry { at_ms: now_ms(), record: held(1, now_ms() + 60_000) }).unwrap();
        let approve = Record::Approve { change_id: 1, who: "alice".into(), reason: "maintenance window".into() };
        j.append(&Entry { at_ms: now_ms(), record: approve }).unwrap();
        assert_eq!(j.syncs(), 2);
        let done = Record::Done { change_id: 2, outcome: "applied".into(), message: String::new() };
        j.append_unsynced(&Entry { at_ms: now_ms(), record: done }).unwrap();
        assert_eq!(j.syncs(), 2, "an unsynced append does not sync");
        drop(j);
        let (_, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(r.records, 3);
        assert!(r.resume.contains_key(&1));
        assert!(r.resume[&1].remaining > Duration::from_secs(50));
        let all = read_entries(&dir.path().join(FILE)).unwrap();
        assert!(matches!(&all[1].record, Record::Approve { reason, .. } if reason == "maintenance window"));
    }

    #[test]
    fn an_unwritable_directory_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "x").unwrap();
        let e = Journal::open(&file).err().unwrap().to_string();
        assert!(e.contains("not-a-dir"), "{e}");
    }
}
