//! The options every task's trainer shares ([`RunOptions`], declared once in
//! [`with_run_options`](crate::with_run_options)), and their checks: device, optimizer and
//! schedule, processes, memory, feature hints, the burn-in and a resume's data.

use crate::checkpoint::Checkpoint;
use crate::optim::LrSchedule;
use crate::tensor::Device;
use crate::{bail, Error, Result};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

crate::with_run_options!(@struct);

/// A task's config table: its own keys and the shared ones (`config_table!` with `shared`).
pub trait RunConfig: crate::config::ConfigTable + Clone {
    /// The options every task shares, as the training loop reads them.
    fn run_options(&self) -> RunOptions;
    /// Take the shared options from `o`.
    fn set_run_options(&mut self, o: &RunOptions);
}

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

crate::config_enum!(
    DeviceChoice,
    crate::data::text::Tokenizer,
    OptimizerChoice,
    crate::data::criteo::OnBadLine,
    crate::ops::softmax_kl::Divergence,
    crate::distill::Anneal,
    crate::ops::relation::HiddenLoss,
    crate::ops::quant::Quant,
    crate::distill::cache::CacheRest,
    crate::train::AdversarialInput
);

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

impl RunOptions {
    /// The backend context of a run: the GPU's options (`--matmul-f32`, `--deterministic`) and the
    /// CPU's (`--threads`, `--cpu-bf16`), on the environment's kernel choices
    /// ([`crate::Backend::from_env`], whose errors it returns).
    pub fn backend(&self) -> Result<crate::Backend> {
        use crate::cuda::MatmulPrecision;
        Ok(crate::Backend {
            threads: self.threads,
            cpu_bf16: self.cpu_bf16,
            deterministic: self.deterministic,
            matmul: if self.matmul_f32 { MatmulPrecision::F32 } else { MatmulPrecision::Bf16 },
            ..crate::Backend::from_env()?
        })
    }
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

/// This process's number of processes and rank ([`crate::distill::resolve_world`] over the
/// environment), said on stderr when a launcher's variables gave them.
pub(crate) fn process_world(world: usize, rank: usize, exchange_dir: bool) -> Result<(usize, usize)> {
    let (world, rank, launcher) = crate::distill::resolve_world(world, rank, exchange_dir, |k| std::env::var(k).ok())?;
    if let Some(line) = launcher {
        eprintln!("codistillation across processes: {line}");
    }
    Ok((world, rank))
}

/// The optimizer, the learning-rate schedule (ending at step `total`) and the clipping norm, checked before any data is
/// read: a learning rate, decay factor or weight decay that is not a finite number in its range, a
/// negative clip, or two decays at once would otherwise train on nonsense without a word.
pub(crate) fn optimizer_settings(a: &RunOptions, total: u64) -> Result<(crate::optim::OptimizerKind, LrSchedule, Option<f32>)> {
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
    let schedule =
        LrSchedule { base: lr, factor: decay, every: a.lr_decay_every, start: a.lr_decay_start, warmup: a.warmup, cosine: a.cosine.then_some(a.lr_min), total };
    Ok((kind, schedule, (clip > 0.0).then_some(clip)))
}

/// Whether a term on the teachers' hidden states is on (`option`, the term's weight, naming it and
/// `term` in errors: feature hints, relations): `weight` must be finite and >= 0, and above 0 needs
/// the teachers' states (`states`: Err says how to give them).
pub(crate) fn check_hints(option: &str, term: &str, weight: f32, states: std::result::Result<(), &str>) -> Result<bool> {
    if !(weight >= 0.0 && weight.is_finite()) {
        bail!(Invalid, "{option} must be a finite number >= 0, got {weight}");
    }
    if let (true, Err(what)) = (weight > 0.0, states) {
        bail!(Invalid, "{option}: {term} come from a fixed teacher's hidden states; {what}");
    }
    Ok(weight > 0.0)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optimizer_options_that_would_train_on_nonsense_are_refused() {
        use crate::optim::OptimizerKind;
        let args = |lr: f32| RunOptions { lr, ..RunOptions::default() };
        let optimizer_settings = |a: RunOptions| optimizer_settings(&a, 100);
        let (kind, s, clip) = optimizer_settings(RunOptions { lr_decay_every: 10, lr_decay_start: 5, ..args(0.01) }).unwrap();
        assert_eq!((kind, s.at(4), s.at(5), s.at(15), clip), (OptimizerKind::adam(), 0.01, 0.005, 0.0025, None));
        assert_eq!(
            optimizer_settings(RunOptions { lr_decay: 0.0, clip: 5.0, ..args(0.01) }).unwrap().2,
            Some(5.0),
            "a decay factor is unused without lr_decay_every"
        );
        let (kind, s, _) =
            optimizer_settings(RunOptions { optimizer: OptimizerChoice::Momentum, weight_decay: 1e-4, warmup: 10, cosine: true, ..args(0.1) }).unwrap();
        assert_eq!(kind, OptimizerKind::Sgd { momentum: 0.9, weight_decay: 1e-4 });
        assert!((s.at(0) - 0.01).abs() < 1e-7 && s.at(10) == 0.1 && s.at(100) == 0.0, "warm-up, then cosine to 0 at step 100");
        let adamw = optimizer_settings(RunOptions { weight_decay: 0.01, ..args(0.01) }).unwrap().0;
        assert!(matches!(adamw, OptimizerKind::Adam { weight_decay, .. } if weight_decay == 0.01));
        for (a, what) in [
            (args(-1.0), "lr"),
            (args(0.0), "lr"),
            (args(f32::NAN), "lr"),
            (args(f32::INFINITY), "lr"),
            (RunOptions { lr_decay: 0.0, lr_decay_every: 10, ..args(0.01) }, "lr_decay"),
            (RunOptions { lr_decay: f32::NAN, lr_decay_every: 10, ..args(0.01) }, "lr_decay"),
            (RunOptions { clip: -1.0, ..args(0.01) }, "clip"),
            (RunOptions { clip: f32::NAN, ..args(0.01) }, "clip"),
            (RunOptions { weight_decay: -0.1, ..args(0.01) }, "weight_decay"),
            (RunOptions { optimizer: OptimizerChoice::Adagrad, weight_decay: 0.1, ..args(0.01) }, "adagrad has none"),
            (RunOptions { cosine: true, lr_decay_every: 10, ..args(0.01) }, "choose one"),
            (RunOptions { cosine: true, lr_min: 0.1, ..args(0.01) }, "lr_min"),
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
}
