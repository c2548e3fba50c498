//! A `logfiles:` entry's pipeline: its tailer feeding a [`Stage`], the commits and saves of
//! its positions, and what the operator is told about its input.

use super::{Problem, Stage};
use crate::config::{Config, LogFile};
use crate::metrics::{FileMetrics, INPUT_GRACE, InputState, now_micros};
use crate::spool::{Class, Spool};
use crate::tail::access::{AUDIT_LOG_OFF, Reading};
use crate::tail::{TailConfig, Tailer};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Commits of filtered-only progress are saved at most this often.
const SAVE_EVERY: Duration = Duration::from_secs(1);

pub struct FilePipeline {
    pub(crate) name: String,
    pub(crate) tailer: Tailer,
    pub(crate) stage: Stage,
    pub(crate) last_save: Instant,
    /// What [`FilePipeline::observe_input`] last published.
    pub(crate) last_reading: Option<Reading>,
}

impl FilePipeline {
    pub(crate) fn open(
        cfg: &Config,
        logfile: &LogFile,
        host: &str,
    ) -> Result<FilePipeline, String> {
        let mut tc = TailConfig::new(&logfile.filepath, &cfg.state_dir);
        tc.start_at = cfg.start_at;
        tc.max_line = cfg.max_line_bytes;
        let id = tc
            .checkpoint_name
            .trim_start_matches("checkpoints-")
            .to_string();
        let spool_dir = crate::run::spool_dir(&cfg.state_dir, &logfile.filepath);
        let spool = Spool::open(&spool_dir, cfg.spool_share())
            .map_err(|e| format!("spool {}: {e}", spool_dir.display()))?;
        if !spool.is_empty() {
            log::info!(
                "{}: {} segments ({} bytes) left in the spool; sending them first",
                logfile.filepath,
                spool.segments(Class::Critical) + spool.segments(Class::Bulk),
                spool.bytes()
            );
        }
        let (tailer, problem) =
            Tailer::open(tc).map_err(|e| format!("{}: {e}", logfile.filepath))?;
        match problem {
            Some(crate::tail::cursor::LoadProblem::Missing) => log::info!(
                "{}: no checkpoint yet (state {id}); starting at the {}",
                logfile.filepath,
                match cfg.start_at {
                    crate::tail::StartAt::Beginning => "beginning",
                    crate::tail::StartAt::End => "end",
                }
            ),
            Some(crate::tail::cursor::LoadProblem::Corrupt { reason, moved_to }) => {
                log::error!(
                    "{}: checkpoint damaged ({reason}); moved to {}; starting over",
                    logfile.filepath,
                    moved_to.display()
                )
            }
            None => {}
        }
        let rules: Vec<String> = logfile.rules.iter().map(|r| r.name.clone()).collect();
        let m = Arc::new(FileMetrics::new(&logfile.filepath, &rules));
        let mut pipeline = FilePipeline {
            name: logfile.filepath.clone(),
            tailer,
            stage: Stage::new(cfg, logfile, spool, m, host),
            last_save: Instant::now(),
            last_reading: None,
        };
        // Health and the log know the input's state from the start, before /metrics serves.
        pipeline.observe_input();
        Ok(pipeline)
    }

    /// Reads what is there (up to a budget), seals what is due, stores, commits.
    /// Returns whether more is waiting to be read at once.
    pub(crate) fn step(&mut self) -> bool {
        let stage = &mut self.stage;
        stage.flush();
        self.tailer.set_paused(!stage.backlog.is_empty());
        let polled = self.tailer.poll(|ev| stage.handle(ev));
        stage.seal_due(Instant::now());
        stage.report_evictions();
        self.commit(false);
        self.observe_input();
        polled.more && self.stage.backlog.is_empty()
    }

    /// Publishes whether the `filepath` can be read (health) and logs what cannot,
    /// rate-limited: an operator's mistake (permissions, audit logging off) must be visible,
    /// and a scan every second must not turn it into a flood.
    pub(crate) fn observe_input(&mut self) {
        let now = now_micros();
        let access = self.tailer.access();
        let reading = access.reading();
        let also_unreadable = access.unreadable.first().cloned();
        let m = self.stage.m.clone();
        m.input.files_followed.set(access.following as u64);
        m.input.out_of_order.set(self.tailer.anomalies());
        let was = m.input.state.get();
        let pattern = &self.name;
        let state = match &reading {
            Reading::Following => InputState::Following,
            Reading::NoMatch { .. } => InputState::NoMatch,
            Reading::Blocked(_) => InputState::Blocked,
        };
        if self.last_reading.as_ref() != Some(&reading) {
            m.input.set(state, now, describe_input(pattern, &reading));
            self.last_reading = Some(reading.clone());
        }
        let lasted = Duration::from_micros(now.saturating_sub(m.input.since_micros.get()));
        match reading {
            Reading::Following => {
                if was != InputState::Following as u64 && self.stage.input_complained {
                    log::info!(
                        "{pattern}: following {} file(s) now",
                        m.input.files_followed.get()
                    );
                }
                self.stage.input_complained = false;
                if let Some(u) = also_unreadable {
                    self.stage.complain(Problem::InputUnreadable, || {
                        format!("{pattern}: cannot read {u}; {}", u.hint())
                    });
                }
            }
            Reading::Blocked(_) => {
                self.stage.input_complained = true;
                self.stage.complain(Problem::InputBlocked, || {
                    format!(
                        "{pattern}: nothing can be read, nothing is shipped: {}",
                        m.input.reason_text()
                    )
                });
            }
            // A rotation can leave no current file for an instant: only a lasting absence
            // is worth a line.
            Reading::NoMatch { .. } if lasted >= INPUT_GRACE => {
                self.stage.input_complained = true;
                self.stage.complain(Problem::NoMatch, || {
                    format!("{pattern}: {}; waiting for it", m.input.reason_text())
                });
            }
            Reading::NoMatch { .. } => {}
        }
    }

    pub(crate) fn commit(&mut self, force: bool) {
        let stage = &mut self.stage;
        let due = stage.stored || (stage.moved && self.last_save.elapsed() >= SAVE_EVERY);
        if !(due || force) {
            return;
        }
        for pos in stage.commit_points() {
            self.tailer.commit(pos);
        }
        match self.tailer.save() {
            Ok(()) => {
                stage.stored = false;
                stage.moved = false;
                self.last_save = Instant::now();
            }
            Err(e) => {
                stage.m.checkpoint_save_errors.inc();
                stage.complain(Problem::CheckpointSave, || {
                    format!("cannot save the checkpoint: {e}; retrying")
                });
            }
        }
    }

    /// Stop: seal and store what is open, commit, save.
    pub(crate) fn finish(&mut self) {
        let stage = &mut self.stage;
        stage.seal_everything();
        if !stage.backlog.is_empty() {
            log::warn!(
                "{}: {} batches could not be spooled (spool full); their lines stay uncommitted \
                 and are read again at the next start",
                self.name,
                stage.backlog.len()
            );
        }
        self.commit(true);
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.stage.batcher.next_deadline()
    }
}

/// The operator's explanation of a `filepath` that cannot be read or matches nothing (for
/// the log and `/healthz`).
fn describe_input(pattern: &str, reading: &Reading) -> String {
    match reading {
        Reading::Following => String::new(),
        Reading::Blocked(u) => format!("{u}; {}", u.hint()),
        Reading::NoMatch { missing: Some(dir) } => {
            format!("{} does not exist; {AUDIT_LOG_OFF}", dir.display())
        }
        Reading::NoMatch { missing: None } => format!("no file matches {pattern}; {AUDIT_LOG_OFF}"),
    }
}
