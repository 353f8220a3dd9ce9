//! What a run reports and how it holds its output directory: metrics as JSON lines, `result.json`,
//! step times, the exchange's health, the wait for peers, and the lock on `--out`.

use crate::data::text::write_atomic;
use crate::{bail, Error, Result};
use serde_json::{json, Value};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Metrics as JSON lines, one object per event, flushed as written.
pub struct MetricsLog {
    file: File,
    path: PathBuf,
    run: String,
    tensorboard: Option<super::tensorboard::EventWriter>,
}

impl MetricsLog {
    /// A run's metrics file. A fresh run (`resumed_at` None) starts it anew (saying so when it
    /// replaces an earlier run's); a resumed run keeps the complete events up to the checkpoint's
    /// step and drops the rest (what a killed run wrote after its last checkpoint, and a line torn
    /// by the kill), so that every step appears once. The kept part is rewritten through a rename.
    pub fn start(path: &Path, resumed_at: Option<u64>) -> Result<Self> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        let old = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(path, e)),
        };
        let kept = match resumed_at {
            None => {
                if !old.is_empty() {
                    eprintln!("{}: an earlier run's metrics are replaced by this run's", path.display());
                }
                String::new()
            }
            Some(step) => {
                let text = String::from_utf8_lossy(&old);
                // Only lines that end in a newline are whole; the last may be torn.
                let whole = text.rfind('\n').map_or("", |i| &text[..=i]);
                whole.lines().filter(|l| event_step(l).is_some_and(|s| s.is_none_or(|s| s <= step))).map(|l| format!("{l}\n")).collect()
            }
        };
        write_atomic(path, kept.as_bytes())?;
        let file = OpenOptions::new().append(true).open(path).map_err(|e| Error::io(path, e))?;
        Ok(MetricsLog { file, path: path.to_path_buf(), run: run_id(), tensorboard: None })
    }

    /// Append one event as one complete line, in a single write (a reader never meets half a line
    /// of a live run, and a kill leaves at most a torn last line, which a resume drops).
    /// Each line ends with `"time"` (Unix seconds) and `"run"` (this process's run id, see
    /// [`MetricsLog::run`]).
    pub fn write(&mut self, event: Value) -> Result<()> {
        let mut event = event;
        if let Value::Object(m) = &mut event {
            m.insert("time".into(), json!(unix_time()));
            m.insert("run".into(), json!(self.run));
        }
        let mut line = event.to_string();
        line.push('\n');
        self.file.write_all(line.as_bytes()).map_err(|e| Error::io(&self.path, e))?;
        if let Some(tb) = &mut self.tensorboard {
            tb.metrics_event(&event, unix_time())?;
        }
        Ok(())
    }

    /// The same log, every event also written to a TensorBoard event file in the log's folder.
    pub fn with_tensorboard(mut self) -> Result<Self> {
        let dir = self.path.parent().unwrap_or(Path::new(".")).to_path_buf();
        self.tensorboard = Some(super::tensorboard::EventWriter::create(&dir)?);
        Ok(self)
    }
}

/// This run's id: the process id and start time, hashed (a resumed run gets a new one, so the two
/// parts of a metrics file are told apart).
pub fn run_id() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| format!("{:012x}", xxhash_rust::xxh3::xxh3_64(format!("{}/{}", std::process::id(), unix_time()).as_bytes()) >> 16)).clone()
}

/// Seconds since the Unix epoch, to the millisecond.
pub fn unix_time() -> f64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    t as f64 / 1e3
}

impl MetricsLog {
    /// This process's run id (in every line, `result.json` and `config.toml`).
    pub fn run(&self) -> &str {
        &self.run
    }
}

/// A whole metrics line's `"step"` (`Some(None)` for an event without one); None for a line that
/// is not a JSON object (one torn by a kill).
fn event_step(line: &str) -> Option<Option<u64>> {
    let v: Value = serde_json::from_str(line).ok()?;
    Some(v.as_object()?.get("step").and_then(Value::as_u64))
}

/// Log a teacher swap: which model took which peer's snapshot, how stale, and the exchange wait.
pub fn log_teacher_swap(
    log: &mut MetricsLog,
    step: u64,
    model: usize,
    t: &crate::distill::exchange::Snapshot,
    staleness: u64,
    waited: std::time::Duration,
) -> Result<()> {
    log.write(json!({
        "event": "teacher",
        "step": step,
        "model": model,
        "teacher": t.rank,
        "teacher_step": t.step,
        "staleness": staleness,
        "exchange_wait_s": waited.as_secs_f64(),
    }))
}

/// Write a final result object atomically.
pub fn write_result(path: &Path, result: &Value) -> Result<()> {
    write_atomic(path, format!("{result}\n").as_bytes())
}

/// Each step's compute seconds and seconds in exchange calls (all models in the process), written
/// as `step_times.csv` with `--step-times true`: the within-run overlap measurement
/// (`scripts/overlap_steps.py`) compares the steps an exchange can touch with their neighbours.
pub struct StepTimes {
    first_step: u64,
    rows: Option<Vec<(f64, f64)>>,
    before: (f64, f64),
}

impl StepTimes {
    pub fn new(enabled: bool, first_step: u64) -> Self {
        StepTimes { first_step, rows: enabled.then(Vec::new), before: (0.0, 0.0) }
    }

    /// At the start of a step: the running totals of compute and exchange seconds.
    pub fn begin(&mut self, compute: f64, exchange: f64) {
        self.before = (compute, exchange);
    }

    /// At the end of a step: the running totals again; the step gets the differences.
    pub fn end(&mut self, compute: f64, exchange: f64) {
        if let Some(rows) = &mut self.rows {
            rows.push((compute - self.before.0, exchange - self.before.1));
        }
    }

    /// Write `step_times.csv` under `dir` (temporary name, then rename); nothing when disabled.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let Some(rows) = &self.rows else { return Ok(()) };
        let mut csv = String::from("step,compute_s,exchange_s\n");
        for (i, (c, e)) in rows.iter().enumerate() {
            csv.push_str(&format!("{},{c:.9},{e:.9}\n", self.first_step + i as u64 + 1));
        }
        write_atomic(&dir.join("step_times.csv"), csv.as_bytes())
    }
}

/// A trainer's hold on its output directory: an exclusive advisory lock (`flock`) on
/// `OUT/.codistill.lock`, which holds the holder's process id. The kernel drops the lock when the
/// process ends, however it ends, so a killed run never leaves the directory locked.
pub struct OutLock {
    _file: std::fs::File,
}

/// Take `out` for this run: create it, lock it (a second trainer on the same directory is refused
/// with the holder's process id), and remove what killed runs left there (`*.tmp<pid>` files of
/// checkpoints and results written through a rename, in `out` and its `model-*` folders).
pub fn lock_out(out: &Path) -> Result<OutLock> {
    use std::os::unix::io::AsRawFd;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let path = out.join(".codistill.lock");
    let mut file = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).map_err(|e| Error::io(&path, e))?;
    // SAFETY: flock on a descriptor this function owns; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        bail!(
            Invalid,
            "{}: another trainer is writing to this directory (process {}); give this run another --out, or wait for that one to finish",
            out.display(),
            holder.trim()
        );
    }
    file.set_len(0).and_then(|_| write!(file, "{}", std::process::id())).map_err(|e| Error::io(&path, e))?;
    let mut dirs = vec![out.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(out) {
        dirs.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("model-"))));
    }
    for dir in dirs {
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?.flatten() {
            let p = entry.path();
            if crate::data::text::is_write_temp(&p) && p.is_file() {
                std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
                eprintln!("removed {}, left by a run that was killed while writing it", p.display());
            }
        }
    }
    Ok(OutLock { _file: file })
}

/// The exchange's background problems since the last call, made visible: each on stderr (once per
/// kind: the same message with other numbers is not repeated) and as an `exchange_warning` event;
/// a failed publish stops the run (the peers would wait for checkpoints that cannot reach them).
pub(crate) fn exchange_health(
    exchange: &mut dyn crate::distill::exchange::Exchange,
    log: &mut MetricsLog,
    step: u64,
    said: &mut std::collections::HashSet<String>,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    for w in exchange.warnings() {
        if w.starts_with("publishing") {
            log.write(json!({"event": "exchange_error", "step": step, "message": w}))?;
            bail!(Invalid, "{w}; the peers cannot receive this model's checkpoints (is the exchange directory writable, and is there space?)");
        }
        log.write(json!({"event": "exchange_warning", "step": step, "message": w}))?;
        if said.insert(w.chars().filter(|c| !c.is_ascii_digit()).collect()) {
            bar.suspend(|| eprintln!("warning: {w}"));
        }
    }
    Ok(())
}

/// The wait of a codistillation through a directory for its peers: at the first step that
/// distills from them once they have had `exchange_every` steps to publish, wait (once) up to
/// `timeout_s` seconds for a first checkpoint of every model not trained in this process, so that
/// no model trains on without teachers it was meant to have.
pub(crate) struct PeerWait {
    /// The models trained in other processes (none: nothing to wait for).
    remote: Vec<usize>,
    timeout_s: u64,
    done: bool,
}

impl PeerWait {
    /// For a run of `total` models of which `local` are trained here; `codistill`: the term is on.
    pub fn new(codistill: bool, total: usize, local: &[usize], timeout_s: u64) -> Self {
        let remote = if codistill { (0..total).filter(|p| !local.contains(p)).collect() } else { Vec::new() };
        PeerWait { remote, timeout_s, done: false }
    }

    /// Before step `step`: wait if this is the step to, logging an `exchange_error` event when the
    /// wait fails. Returns the seconds waited.
    pub fn before_step(
        &mut self,
        exchange: &mut dyn crate::distill::exchange::Exchange,
        schedule: &crate::distill::CodistillSchedule,
        step: u64,
        log: &mut MetricsLog,
    ) -> Result<f64> {
        if self.done || self.remote.is_empty() || self.timeout_s == 0 || !schedule.distill_at(step) || step < schedule.exchange_every {
            return Ok(0.0);
        }
        let (r, waited) = crate::distill::exchange::timed(|| exchange.wait_for_peers(&self.remote, std::time::Duration::from_secs(self.timeout_s)));
        if let Err(e) = &r {
            log.write(json!({"event": "exchange_error", "step": step, "message": e.to_string()}))?;
        }
        r?;
        self.done = true;
        Ok(waited.as_secs_f64())
    }
}

/// The metrics formats of `--log-format`: whether CSV files and TensorBoard event files are
/// wanted (jsonl is always written); an unknown format is an error naming it.
pub(crate) fn log_formats(formats: &str) -> Result<(bool, bool)> {
    let (mut csv, mut tensorboard) = (false, false);
    for f in formats.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        match f {
            "jsonl" => {}
            "csv" => csv = true,
            "tensorboard" => tensorboard = true,
            other => bail!(Invalid, "--log-format: {other:?} is not a metrics format (jsonl, csv, tensorboard)"),
        }
    }
    Ok((csv, tensorboard))
}

/// `<event>.csv` for each kind of event in `dir/metrics.jsonl` (train, valid, test, teacher, ...):
/// one column per key in the order first seen, one row per event, missing and null values empty.
pub fn write_csv(dir: &Path) -> Result<()> {
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    // Per kind of event: its name, its columns, its rows.
    type Kind = (String, Vec<String>, Vec<serde_json::Map<String, Value>>);
    let mut kinds: Vec<Kind> = Vec::new();
    for line in text.lines() {
        let Ok(Value::Object(e)) = serde_json::from_str::<Value>(line) else { continue };
        let kind = e.get("event").and_then(Value::as_str).unwrap_or("other").to_string();
        let at = match kinds.iter().position(|k| k.0 == kind) {
            Some(i) => i,
            None => {
                kinds.push((kind, Vec::new(), Vec::new()));
                kinds.len() - 1
            }
        };
        let (_, cols, rows) = &mut kinds[at];
        for k in e.keys().filter(|k| *k != "event") {
            if !cols.contains(k) {
                cols.push(k.clone());
            }
        }
        rows.push(e);
    }
    for (kind, cols, rows) in kinds {
        let cell = |v: Option<&Value>| match v {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) if s.contains([',', '"', '\n']) => format!("\"{}\"", s.replace('"', "\"\"")),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(a)) => format!("\"{}\"", a.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" ")),
            Some(v) => v.to_string(),
        };
        let mut csv = cols.join(",") + "\n";
        for r in &rows {
            csv.push_str(&cols.iter().map(|c| cell(r.get(c))).collect::<Vec<_>>().join(","));
            csv.push('\n');
        }
        write_atomic(&dir.join(format!("{kind}.csv")), csv.as_bytes())?;
    }
    Ok(())
}

/// A progress bar over `total` steps (hidden when stderr is not a terminal), at `start`.
pub(crate) fn progress(total: u64, start: u64) -> indicatif::ProgressBar {
    crate::progress::bar(total, start, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_files_have_one_column_per_key_and_quote_what_needs_it() {
        let dir = crate::testdir::Scratch::new("train", "csv");
        let mut log = MetricsLog::start(&dir.join("metrics.jsonl"), None).unwrap();
        log.write(json!({"event": "train", "step": 1, "loss": 0.5})).unwrap();
        log.write(json!({"event": "valid", "step": 1, "model": 0, "loss": f64::NAN})).unwrap();
        log.write(json!({"event": "train", "step": 2, "loss": 0.25, "note": "a, \"b\""})).unwrap();
        write_csv(&dir).unwrap();
        let train = std::fs::read_to_string(dir.join("train.csv")).unwrap();
        let lines: Vec<&str> = train.lines().collect();
        assert_eq!(lines[0], "step,loss,time,run,note");
        assert!(lines[1].starts_with("1,0.5,") && lines[1].ends_with(','), "{train}");
        assert!(lines[2].starts_with("2,0.25,") && lines[2].ends_with(r#","a, ""b""""#), "{train}");
        let valid = std::fs::read_to_string(dir.join("valid.csv")).unwrap();
        assert!(valid.lines().nth(1).unwrap().starts_with("1,0,,"), "{valid}");
        assert_eq!(log_formats("jsonl,csv").unwrap(), (true, false));
        assert_eq!(log_formats("jsonl").unwrap(), (false, false));
        assert_eq!(log_formats("jsonl,tensorboard").unwrap(), (false, true));
        assert!(log_formats("jsonl,wandb").unwrap_err().to_string().contains("wandb"));
    }

    #[test]
    fn metrics_lines_keep_their_order_and_null_non_finite_numbers() {
        let dir = crate::testdir::Scratch::new("train", "metrics-lines");
        let path = dir.join("m.jsonl");
        let mut log = MetricsLog::start(&path, None).unwrap();
        log.write(json!({"event": "x", "step": 3, "b": "q\"\n", "a": f64::NAN, "l": [1.5, f64::INFINITY]})).unwrap();
        log.write(json!({"event": "y", "step": 9})).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        let keys: Vec<&String> = first.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["event", "step", "b", "a", "l", "time", "run"]);
        assert!(first["time"].as_f64().unwrap() > 1.7e9 && first["run"] == log.run());
        let shown = text.lines().next().unwrap();
        assert!(shown.starts_with(r#"{"event":"x","step":3,"b":"q\"\n","a":null,"l":[1.5,null],"time":"#), "{shown}");
        drop(log);
        // A resume at step 5 keeps the events up to it and drops a torn line.
        std::fs::write(&path, format!("{text}{{\"event\":\"z\",\"st")).unwrap();
        MetricsLog::start(&path, Some(5)).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    }

    #[test]
    fn step_times_record_each_steps_differences_from_the_first_step() {
        let dir = crate::testdir::Scratch::new("train", "step-times");
        let mut t = StepTimes::new(true, 7);
        t.begin(1.0, 0.5);
        t.end(1.25, 0.5);
        t.begin(1.25, 0.5);
        t.end(2.0, 0.625);
        t.write(&dir).unwrap();
        let csv = std::fs::read_to_string(dir.join("step_times.csv")).unwrap();
        assert_eq!(csv, "step,compute_s,exchange_s\n8,0.250000000,0.000000000\n9,0.750000000,0.125000000\n");
        std::fs::remove_file(dir.join("step_times.csv")).unwrap();
        let mut off = StepTimes::new(false, 0);
        off.begin(0.0, 0.0);
        off.end(1.0, 1.0);
        off.write(&dir).unwrap();
        assert!(!dir.join("step_times.csv").exists(), "disabled step times wrote a file");
    }
}
