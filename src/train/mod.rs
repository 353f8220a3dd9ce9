//! Training loops, evaluation, metrics and the device choice shared by the trainers.

pub mod criteo;
pub mod experiment;
pub mod lm;
pub mod metrics;
pub mod plot;
pub mod sample;

use crate::autograd::{Graph, Var};
use crate::checkpoint::Checkpoint;
use crate::data::text::write_atomic;
use crate::nn::Linear;
use crate::ops::elementwise::{Binary, Unary};
use crate::optim::LrSchedule;
use crate::params::ParamStore;
use crate::tensor::{Device, Tensor};
use crate::{bail, Error, Result};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// `--device auto|cpu|cuda`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            _ => Err(format!("device must be auto, cpu or cuda, got {s:?}")),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceChoice::Auto => "auto",
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Cuda => "cuda",
        })
    }
}

crate::config_enum!(DeviceChoice, crate::data::text::Tokenizer, OptimizerChoice, crate::data::criteo::OnBadLine);

impl DeviceChoice {
    /// The device to train on: `cuda` is the first GPU or an error that says why there is none;
    /// `auto` is the first GPU when there is one, else the CPU, and says which on stderr.
    pub fn resolve(self) -> Result<Device> {
        let gpu = crate::cuda::probe();
        let name = || crate::cuda::gpu(0).and_then(|g| g.name()).unwrap_or_else(|e| format!("name unknown: {e}"));
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda => match gpu {
                Err(e) => Err(Error::Device(format!("--device cuda was asked for, but there is no usable GPU ({e}); use --device cpu or auto"))),
                Ok(_) => {
                    eprintln!("device: training on cuda:0 ({})", name());
                    Ok(Device::Cuda(0))
                }
            },
            DeviceChoice::Auto => match gpu {
                Err(e) => {
                    eprintln!("device auto: no GPU ({e}); training on the CPU");
                    Ok(Device::Cpu)
                }
                Ok(_) => {
                    eprintln!("device auto: training on cuda:0 ({})", name());
                    Ok(Device::Cuda(0))
                }
            },
        }
    }
}

/// The process-wide backend options of a run: the GPU's (`--matmul-f32`, `--deterministic`) and
/// the CPU's (`--threads`, `--cpu-bf16`).
pub(crate) fn backend_settings(matmul_f32: bool, deterministic: bool, cpu_threads: usize, cpu_bf16: bool) {
    use crate::cuda::{set_deterministic, set_matmul_precision, MatmulPrecision};
    set_matmul_precision(if matmul_f32 { MatmulPrecision::F32 } else { MatmulPrecision::Bf16 });
    set_deterministic(deterministic);
    crate::set_cpu_threads(cpu_threads);
    crate::set_cpu_bf16(cpu_bf16);
}

/// `--optimizer sgd|momentum|adagrad|adam`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerChoice {
    Sgd,
    Momentum,
    Adagrad,
    Adam,
}

impl FromStr for OptimizerChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "sgd" => Ok(OptimizerChoice::Sgd),
            "momentum" => Ok(OptimizerChoice::Momentum),
            "adagrad" => Ok(OptimizerChoice::Adagrad),
            "adam" => Ok(OptimizerChoice::Adam),
            _ => Err(format!("optimizer must be sgd, momentum, adagrad or adam, got {s:?}")),
        }
    }
}

impl fmt::Display for OptimizerChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OptimizerChoice::Sgd => "sgd",
            OptimizerChoice::Momentum => "momentum",
            OptimizerChoice::Adagrad => "adagrad",
            OptimizerChoice::Adam => "adam",
        })
    }
}

impl OptimizerChoice {
    pub fn kind(self) -> crate::optim::OptimizerKind {
        use crate::optim::OptimizerKind;
        match self {
            OptimizerChoice::Sgd => OptimizerKind::sgd(),
            OptimizerChoice::Momentum => OptimizerKind::Sgd { momentum: 0.9, weight_decay: 0.0 },
            OptimizerChoice::Adagrad => OptimizerKind::adagrad(),
            OptimizerChoice::Adam => OptimizerKind::adam(),
        }
    }
}

/// A JSON value for a metrics line.
pub enum J<'a> {
    N(f64),
    I(u64),
    S(&'a str),
    /// A list of numbers (non-finite ones as null).
    A(Vec<f64>),
}

/// Metrics as JSON lines, one object per event, flushed as written.
pub struct MetricsLog {
    file: File,
    path: PathBuf,
}

fn json_string(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// One JSON object from key/value pairs (non-finite numbers become null: JSON has no NaN).
pub fn json_object(fields: &[(&str, J)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| {
            let val = match v {
                J::N(x) if x.is_finite() => format!("{x}"),
                J::N(_) => "null".into(),
                J::I(i) => i.to_string(),
                J::S(s) => json_string(s),
                J::A(v) => format!("[{}]", v.iter().map(|x| if x.is_finite() { format!("{x}") } else { "null".into() }).collect::<Vec<_>>().join(",")),
            };
            format!("{}:{val}", json_string(k))
        })
        .collect();
    format!("{{{}}}", body.join(","))
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
                whole.lines().filter(|l| l.starts_with('{') && l.ends_with('}') && event_step(l).is_none_or(|s| s <= step)).map(|l| format!("{l}\n")).collect()
            }
        };
        write_atomic(path, kept.as_bytes())?;
        let file = OpenOptions::new().append(true).open(path).map_err(|e| Error::io(path, e))?;
        Ok(MetricsLog { file, path: path.to_path_buf() })
    }

    /// Append one event as one complete line, in a single write (a reader never meets half a line
    /// of a live run, and a kill leaves at most a torn last line, which a resume drops).
    pub fn write(&mut self, fields: &[(&str, J)]) -> Result<()> {
        let mut line = json_object(fields);
        line.push('\n');
        self.file.write_all(line.as_bytes()).map_err(|e| Error::io(&self.path, e))
    }
}

/// The `"step"` of a metrics line, if it has one.
fn event_step(line: &str) -> Option<u64> {
    let rest = &line[line.find("\"step\":")? + 7..];
    rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len())].parse().ok()
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
    log.write(&[
        ("event", J::S("teacher")),
        ("step", J::I(step)),
        ("model", J::I(model as u64)),
        ("teacher", J::I(t.rank as u64)),
        ("teacher_step", J::I(t.step)),
        ("staleness", J::I(staleness)),
        ("exchange_wait_ms", J::N(waited.as_secs_f64() * 1e3)),
    ])
}

/// Write a final result object atomically.
pub fn write_result(path: &Path, fields: &[(&str, J)]) -> Result<()> {
    write_atomic(path, format!("{}\n", json_object(fields)).as_bytes())
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

/// A feature hint (FitNets): `weight` times the mean squared difference between `map(h)`, the
/// model's top hidden states mapped to the teacher's width, and the teacher's, `target`.
pub fn hint_loss(g: &mut Graph, store: &ParamStore, map: &Linear, h: Var, target: &Tensor, weight: f32) -> Result<Var> {
    let p = map.forward(g, store, h)?;
    let t = g.constant(target.clone());
    let d = g.binary(Binary::Sub, p, t)?;
    let sq = g.mul(d, d)?;
    let mse = g.mean(sq)?;
    g.unary(Unary::Scale(weight), mse)
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
            log.write(&[("event", J::S("exchange_error")), ("step", J::I(step)), ("message", J::S(&w))])?;
            bail!(Invalid, "{w}; the peers cannot receive this model's checkpoints (is the exchange directory writable, and is there space?)");
        }
        log.write(&[("event", J::S("exchange_warning")), ("step", J::I(step)), ("message", J::S(&w))])?;
        if said.insert(w.chars().filter(|c| !c.is_ascii_digit()).collect()) {
            bar.suspend(|| eprintln!("warning: {w}"));
        }
    }
    Ok(())
}

/// Bytes free for a model on `dev`: the kernel's MemAvailable on the CPU (Linux), the driver's
/// free memory on a GPU; None where it cannot be read.
fn available_memory(dev: Device) -> Option<u128> {
    match dev {
        Device::Cpu => {
            let info = std::fs::read_to_string("/proc/meminfo").ok()?;
            let kb: u128 = info.lines().find(|l| l.starts_with("MemAvailable:"))?.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        }
        Device::Cuda(i) => crate::cuda::gpu(i).and_then(|g| g.memory()).ok().map(|(free, _)| free as u128),
    }
}

/// Refuse, before anything is allocated, `models` models of `params` parameters each whose
/// weights, gradients and optimizer state (f32) do not fit in what `dev` has free, with the
/// figures, instead of an allocator's abort. (Activations come on top: this is a floor.)
pub(crate) fn check_model_memory(params: u128, models: usize, optimizer: OptimizerChoice, dev: Device, what: &str) -> Result<()> {
    // Adam keeps two moments; SGD (its velocity, also at momentum 0), momentum and Adagrad one.
    let slots: u128 = if optimizer == OptimizerChoice::Adam { 2 } else { 1 };
    let need = params * 4 * (2 + slots) * models as u128;
    let gib = |b: u128| b as f64 / (1u128 << 30) as f64;
    match available_memory(dev) {
        Some(have) if need > have => bail!(
            Invalid,
            "the model needs at least {:.1} GiB ({} model(s) of {params} parameters: weights, gradients and {optimizer} state in f32) and {dev} has {:.1} GiB free; make it smaller ({what})",
            gib(need),
            models,
            gib(have)
        ),
        _ => Ok(()),
    }
}

/// The checkpoint meta key of the training data's fingerprint.
pub(crate) const DATA_KEY: &str = "train_fingerprint";

/// On resume: the checkpoint's training data (its fingerprint, when it recorded one) must be the
/// run's, or the error names both (another file, or the same file changed, would silently train
/// the second half on other data).
pub(crate) fn check_same_data(path: &Path, ck: &Checkpoint, now: Option<u64>, what: &str) -> Result<()> {
    match (ck.meta.get(DATA_KEY), now) {
        (Some(saved), Some(now)) if *saved != format!("{now:016x}") => bail!(
            Invalid,
            "{}: the checkpoint was trained on other training data than {what} (fingerprint {saved}, now {now:016x}); resume with the training data and shard layout it was trained on",
            path.display()
        ),
        _ => Ok(()),
    }
}

/// A run whose distillation term would never be on: peers or fixed teachers are there and the
/// weight is positive, but the burn-in ends at or after the last step (`total` steps). An error,
/// so that such a run does not train without its teachers and exit as if it had distilled.
pub(crate) fn check_burn_in(schedule: &crate::distill::CodistillSchedule, teachers: bool, total: u64) -> Result<()> {
    if teachers && schedule.weight > 0.0 && schedule.burn_in >= total && !(schedule.burn_in == 0 && total == 0) {
        bail!(
            Invalid,
            "burn_in {} is at or past the run's last step ({total} steps): no step would distill from the teachers; lower --burn-in or train longer",
            schedule.burn_in
        );
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
            log.write(&[("event", J::S("exchange_error")), ("step", J::I(step)), ("message", J::S(&e.to_string()))])?;
        }
        r?;
        self.done = true;
        Ok(waited.as_secs_f64())
    }
}

/// A model's training loss at `step`, checked: a non-finite one stops the run naming the model,
/// the step and the last finite loss (`last`, which a finite one updates).
pub(crate) fn check_loss(loss: f64, step: u64, model: usize, last: &mut Option<(u64, f64)>) -> Result<()> {
    if !loss.is_finite() {
        let before = match *last {
            Some((s, v)) => format!("the last finite loss was {v} at step {s}"),
            None => "no step had a finite loss".to_string(),
        };
        bail!(Invalid, "training loss of model {model} is {loss} at step {step} ({before}); lower --lr or set --clip");
    }
    *last = Some((step, loss));
    Ok(())
}

/// `scale * loss` on the tape (the distillation forms' scale; nothing recorded when it is 1).
pub(crate) fn scaled(g: &mut Graph, loss: Var, scale: f32) -> Result<Var> {
    if scale == 1.0 {
        Ok(loss)
    } else {
        g.unary(Unary::Scale(scale), loss)
    }
}

/// A trainer's optimizer options (the same keys in both trainers' configs).
pub(crate) struct OptimArgs {
    pub optimizer: OptimizerChoice,
    pub lr: f32,
    pub lr_decay: f32,
    pub lr_decay_every: u64,
    pub lr_decay_start: u64,
    pub warmup: u64,
    pub cosine: bool,
    pub lr_min: f32,
    pub weight_decay: f32,
    pub clip: f32,
    /// The run's last step, when it is known before the data is read (the click trainer's comes later).
    pub total: u64,
}

/// A trainer config's optimizer options (the same keys in both trainers) as [`OptimArgs`], the run
/// ending at step `$total`.
macro_rules! optim_args {
    ($cfg:expr, $total:expr) => {
        $crate::train::OptimArgs {
            optimizer: $cfg.optimizer,
            lr: $cfg.lr,
            lr_decay: $cfg.lr_decay,
            lr_decay_every: $cfg.lr_decay_every,
            lr_decay_start: $cfg.lr_decay_start,
            warmup: $cfg.warmup,
            cosine: $cfg.cosine,
            lr_min: $cfg.lr_min,
            weight_decay: $cfg.weight_decay,
            clip: $cfg.clip,
            total: $total,
        }
    };
}
pub(crate) use optim_args;

/// This process's number of processes and rank ([`crate::distill::resolve_world`] over the
/// environment), said on stderr when a launcher's variables gave them.
fn process_world(world: usize, rank: usize, exchange_dir: bool) -> Result<(usize, usize)> {
    let (world, rank, launcher) = crate::distill::resolve_world(world, rank, exchange_dir, |k| std::env::var(k).ok())?;
    if let Some(line) = launcher {
        eprintln!("codistillation across processes: {line}");
    }
    Ok((world, rank))
}

/// The optimizer, the learning-rate schedule and the clipping norm, checked before any data is
/// read: a learning rate, decay factor or weight decay that is not a finite number in its range, a
/// negative clip, or two decays at once would otherwise train on nonsense without a word.
fn optimizer_settings(a: OptimArgs) -> Result<(crate::optim::OptimizerKind, LrSchedule, Option<f32>)> {
    use crate::optim::OptimizerKind;
    let (lr, decay, clip, wd) = (a.lr, a.lr_decay, a.clip, a.weight_decay);
    if !(lr > 0.0 && lr.is_finite()) {
        bail!(Invalid, "lr must be a positive finite number, got {lr}");
    }
    if a.lr_decay_every > 0 && !(decay > 0.0 && decay.is_finite()) {
        bail!(Invalid, "lr_decay must be a positive finite number when lr_decay_every is on, got {decay}");
    }
    if a.cosine && a.lr_decay_every > 0 {
        bail!(Invalid, "cosine and lr_decay_every are two decays of the learning rate; choose one");
    }
    if a.cosine && !(a.lr_min >= 0.0 && a.lr_min <= lr) {
        bail!(Invalid, "lr_min must be in [0, lr] (lr {lr}), got {}", a.lr_min);
    }
    if !(clip >= 0.0 && clip.is_finite()) {
        bail!(Invalid, "clip must be a finite number >= 0 (0: no clipping), got {clip}");
    }
    if !(wd >= 0.0 && wd.is_finite()) {
        bail!(Invalid, "weight_decay must be a finite number >= 0, got {wd}");
    }
    let kind = match (a.optimizer.kind(), wd > 0.0) {
        (OptimizerKind::Sgd { momentum, .. }, _) => OptimizerKind::Sgd { momentum, weight_decay: wd },
        (OptimizerKind::Adam { beta1, beta2, eps, .. }, _) => OptimizerKind::Adam { beta1, beta2, eps, weight_decay: wd },
        (OptimizerKind::Adagrad { .. }, true) => bail!(Invalid, "weight_decay is for sgd, momentum and adam (AdamW); adagrad has none"),
        (k, false) => k,
    };
    let schedule = LrSchedule {
        base: lr,
        factor: decay,
        every: a.lr_decay_every,
        start: a.lr_decay_start,
        warmup: a.warmup,
        cosine: a.cosine.then_some(a.lr_min),
        total: a.total,
    };
    Ok((kind, schedule, (clip > 0.0).then_some(clip)))
}

/// Whether feature hints are on: `weight` must be finite and >= 0, and above 0 needs a fixed teacher
/// (`has_teacher`; `what` says how to give one).
fn check_hints(weight: f32, has_teacher: bool, what: &str) -> Result<bool> {
    if !(weight >= 0.0 && weight.is_finite()) {
        bail!(Invalid, "hint_weight must be a finite number >= 0, got {weight}");
    }
    if weight > 0.0 && !has_teacher {
        bail!(Invalid, "hint_weight: feature hints come from a fixed teacher's hidden states; {what}");
    }
    Ok(weight > 0.0)
}

/// Puts a checkpoint's feature-hint map (no part of the model its loader builds) back into `store`
/// on resume; a checkpoint trained without hints lacks it, and the error says so.
fn restore_hint(store: &mut ParamStore, map: &Linear, ck: &Checkpoint, path: &Path) -> Result<()> {
    for name in std::iter::once(&map.weight).chain(map.bias.as_ref()) {
        let t = ck
            .tensors
            .get(name)
            .ok_or_else(|| Error::Invalid(format!("{}: checkpoint lacks {name:?}: it was trained without feature hints (hint_weight 0)", path.display())))?;
        store.insert(name, t.clone())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_escape_strings_and_null_non_finite() {
        let s = json_object(&[("a", J::N(1.5)), ("b", J::S("x\"y\n")), ("c", J::N(f64::NAN)), ("d", J::I(3))]);
        assert_eq!(s, r#"{"a":1.5,"b":"x\"y\u000a","c":null,"d":3}"#);
    }

    #[test]
    fn optimizer_options_that_would_train_on_nonsense_are_refused() {
        use crate::optim::OptimizerKind;
        let args = |lr: f32| OptimArgs {
            optimizer: OptimizerChoice::Adam,
            lr,
            lr_decay: 0.5,
            lr_decay_every: 0,
            lr_decay_start: 0,
            warmup: 0,
            cosine: false,
            lr_min: 0.0,
            weight_decay: 0.0,
            clip: 0.0,
            total: 100,
        };
        let (kind, s, clip) = optimizer_settings(OptimArgs { lr_decay_every: 10, lr_decay_start: 5, ..args(0.01) }).unwrap();
        assert_eq!((kind, s.at(4), s.at(5), s.at(15), clip), (OptimizerKind::adam(), 0.01, 0.005, 0.0025, None));
        assert_eq!(
            optimizer_settings(OptimArgs { lr_decay: 0.0, clip: 5.0, ..args(0.01) }).unwrap().2,
            Some(5.0),
            "a decay factor is unused without lr_decay_every"
        );
        let (kind, s, _) =
            optimizer_settings(OptimArgs { optimizer: OptimizerChoice::Momentum, weight_decay: 1e-4, warmup: 10, cosine: true, ..args(0.1) }).unwrap();
        assert_eq!(kind, OptimizerKind::Sgd { momentum: 0.9, weight_decay: 1e-4 });
        assert!((s.at(0) - 0.01).abs() < 1e-7 && s.at(10) == 0.1 && s.at(100) == 0.0, "warm-up, then cosine to 0 at step 100");
        let adamw = optimizer_settings(OptimArgs { weight_decay: 0.01, ..args(0.01) }).unwrap().0;
        assert!(matches!(adamw, OptimizerKind::Adam { weight_decay, .. } if weight_decay == 0.01));
        for (a, what) in [
            (args(-1.0), "lr"),
            (args(0.0), "lr"),
            (args(f32::NAN), "lr"),
            (args(f32::INFINITY), "lr"),
            (OptimArgs { lr_decay: 0.0, lr_decay_every: 10, ..args(0.01) }, "lr_decay"),
            (OptimArgs { lr_decay: f32::NAN, lr_decay_every: 10, ..args(0.01) }, "lr_decay"),
            (OptimArgs { clip: -1.0, ..args(0.01) }, "clip"),
            (OptimArgs { clip: f32::NAN, ..args(0.01) }, "clip"),
            (OptimArgs { weight_decay: -0.1, ..args(0.01) }, "weight_decay"),
            (OptimArgs { optimizer: OptimizerChoice::Adagrad, weight_decay: 0.1, ..args(0.01) }, "adagrad has none"),
            (OptimArgs { cosine: true, lr_decay_every: 10, ..args(0.01) }, "choose one"),
            (OptimArgs { cosine: true, lr_min: 0.1, ..args(0.01) }, "lr_min"),
        ] {
            let e = optimizer_settings(a).unwrap_err().to_string();
            assert!(e.contains(what), "{what}: {e}");
        }
    }

    #[test]
    fn cuda_is_the_gpu_or_a_clear_error_and_auto_falls_back() {
        match crate::cuda::probe() {
            Err(_) => {
                let e = DeviceChoice::Cuda.resolve().unwrap_err().to_string();
                assert!(e.contains("no usable GPU") && e.contains("--device cpu"), "{e}");
                assert_eq!(DeviceChoice::Auto.resolve().unwrap(), Device::Cpu);
            }
            Ok(_) => {
                assert_eq!(DeviceChoice::Cuda.resolve().unwrap(), Device::Cuda(0));
                assert_eq!(DeviceChoice::Auto.resolve().unwrap(), Device::Cuda(0));
            }
        }
        assert_eq!(DeviceChoice::Cpu.resolve().unwrap(), Device::Cpu);
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
