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
            | Record::Cancel { change_id, .. } => *change_id,
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
}

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
    syncs: u64,
}

impl Journal {
    /// Opens (creating) `<dir>/journal.jsonl` and replays it.
    pub fn open(dir: &Path) -> Result<(Journal, Replay), JournalError> {
        let path = dir.join(FILE);
        let io = |source| JournalError::Io { path: path.clone(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let replay = match File::open(&path) {
            Ok(f) => replay(BufReader::new(f), now_ms()).map_err(io)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Replay::default(),
            Err(e) => return Err(io(e)),
        };
        for (line, why) in &replay.skipped {
            warn!(path = %path.display(), line, error = %why, "journal line skipped");
        }
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io)?;
        Ok((Journal { path, file, syncs: 0 }, replay))
    }

    /// Appends one entry and syncs it to disk before returning.
    pub fn append(&mut self, entry: &Entry) -> Result<(), JournalError> {
        self.write(entry)?;
        self.syncs += 1;
        self.file.sync_data().map_err(|source| JournalError::Io { path: self.path.clone(), source })
    }

    /// Appends one entry without waiting for the disk: for a record that
    /// nothing is decided on after a restart (the outcome of a change that
    /// was never held; replay only resumes held changes). It survives a
    /// crash of the guard at once (it is in the page cache) and a crash of
    /// the machine once the next [`Journal::append`] returns (syncing the
    /// file flushes all of it) or the kernel has written it back.
    pub fn append_unsynced(&mut self, entry: &Entry) -> Result<(), JournalError> {
        self.write(entry)
    }

    fn write(&mut self, entry: &Entry) -> Result<(), JournalError> {
        let mut line = serde_json::to_string(entry).expect("journal records serialize");
        line.push('\n');
        // One write(2) per line: a crash leaves at most a torn last line.
        self.file.write_all(line.as_bytes()).map_err(|source| JournalError::Io { path: self.path.clone(), source })
    }

    /// Syncs done since the journal was opened.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
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
            }
            Record::Decision { .. } | Record::Approve { .. } => {}
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
            }),
        ]
        .join("\n");
        let r = replay(text.as_bytes(), 15_000).unwrap();
        assert_eq!(r.resume.keys().copied().collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(r.resume[&3].remaining, Duration::ZERO, "its deadline passed while the guard was down");
        assert_eq!(r.resume[&4].remaining, Duration::from_millis(5_000));
        assert!(r.resume[&4].was_applying && !r.resume[&3].was_applying);
        assert_eq!(r.resume[&4].steps, vec!["net.ipv6.fib_multipath_hash_fields=14".to_string()]);
        assert_eq!(r.max_id, 9);
        assert_eq!(r.records, 9);
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
