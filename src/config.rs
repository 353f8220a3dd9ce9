//! Configs: one table per trainer is the single source of every option's name, type, default and
//! help. From it come the struct, TOML loading (an unknown key is an error naming the file and
//! line), command-line flags (`--hidden-size 650` for `hidden_size`), and `--help` text that shows
//! each default. Precedence: defaults < config file < command line.

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// A config field's text form: parsed from TOML and the command line alike, printed for
/// `--help` and for the effective config stored in checkpoints.
pub trait ConfigValue: Sized {
    /// What `--help` shows for the value.
    const VALUE_NAME: &'static str = "VALUE";
    /// A switch: given bare (`--cosine`) it means true.
    const FLAG: bool = false;
    fn parse_value(s: &str) -> std::result::Result<Self, String>;
    fn show(&self) -> String;
}

macro_rules! via_fromstr {
    ($($t:ty: $name:literal, $flag:literal),*) => {$(
        impl ConfigValue for $t {
            const VALUE_NAME: &'static str = $name;
            const FLAG: bool = $flag;
            fn parse_value(s: &str) -> std::result::Result<Self, String> {
                s.trim().parse::<$t>().map_err(|e| format!("{s:?} is not a valid {}: {e}", stringify!($t)))
            }
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
via_fromstr!(u64: "N", false, usize: "N", false, f32: "X", false, bool: "true|false", true, String: "TEXT", false);

impl ConfigValue for PathBuf {
    const VALUE_NAME: &'static str = "PATH";
    fn parse_value(s: &str) -> std::result::Result<Self, String> {
        Ok(PathBuf::from(s))
    }
    fn show(&self) -> String {
        self.display().to_string()
    }
}

/// Optional paths: the empty string means none.
impl ConfigValue for Option<PathBuf> {
    const VALUE_NAME: &'static str = "PATH";
    fn parse_value(s: &str) -> std::result::Result<Self, String> {
        Ok(if s.is_empty() { None } else { Some(PathBuf::from(s)) })
    }
    fn show(&self) -> String {
        self.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
    }
}

/// An optional number: the empty string means none.
impl ConfigValue for Option<f32> {
    const VALUE_NAME: &'static str = "X";
    fn parse_value(s: &str) -> std::result::Result<Self, String> {
        if s.trim().is_empty() {
            return Ok(None);
        }
        s.trim().parse::<f32>().map(Some).map_err(|e| format!("{s:?} is not a valid f32: {e}"))
    }
    fn show(&self) -> String {
        self.map(|v| v.to_string()).unwrap_or_default()
    }
}

/// A list of paths: comma-separated in its text form (the empty string is none), a TOML array of
/// strings or one comma-separated string in a config file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Paths(pub Vec<PathBuf>);

impl Paths {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl ConfigValue for Paths {
    const VALUE_NAME: &'static str = "PATH[,PATH...]";
    fn parse_value(s: &str) -> std::result::Result<Self, String> {
        if s.trim().is_empty() {
            return Ok(Paths(Vec::new()));
        }
        s.split(',')
            .map(|p| match p.trim() {
                "" => Err(format!("{s:?} has an empty path in its comma-separated list")),
                p => Ok(PathBuf::from(p)),
            })
            .collect::<std::result::Result<_, _>>()
            .map(Paths)
    }
    fn show(&self) -> String {
        self.0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(",")
    }
}

/// A list of numbers (weights): comma-separated in its text form (the empty string is none), a
/// TOML array of numbers or one comma-separated string in a config file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Weights(pub Vec<f32>);

impl Weights {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl ConfigValue for Weights {
    const VALUE_NAME: &'static str = "W[,W...]";
    fn parse_value(s: &str) -> std::result::Result<Self, String> {
        if s.trim().is_empty() {
            return Ok(Weights(Vec::new()));
        }
        s.split(',')
            .map(|w| w.trim().parse::<f32>().map_err(|_| format!("{:?} in {s:?} is not a number", w.trim())))
            .collect::<std::result::Result<_, _>>()
            .map(Weights)
    }
    fn show(&self) -> String {
        self.0.iter().map(|w| w.to_string()).collect::<Vec<_>>().join(",")
    }
}

/// Pairs of layer indices `S:T`, each with an optional weight `S:T:W` (a student layer and a
/// teacher layer, 0 the lowest): comma-separated in its text form (the empty string is none).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayerPairs(pub Vec<(usize, usize, Option<f32>)>);

impl LayerPairs {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl ConfigValue for LayerPairs {
    const VALUE_NAME: &'static str = "S:T[:W][,S:T[:W]...]";
    fn parse_value(s: &str) -> std::result::Result<Self, String> {
        if s.trim().is_empty() {
            return Ok(LayerPairs(Vec::new()));
        }
        s.split(',')
            .map(|p| {
                let bad =
                    || format!("{:?} in {s:?} is not a pair of layer indices S:T or S:T:W (student layer, teacher layer, 0 the lowest; a weight)", p.trim());
                let parts: Vec<&str> = p.trim().split(':').map(str::trim).collect();
                let (a, b, w) = match parts.as_slice() {
                    [a, b] => (a, b, None),
                    [a, b, w] => (a, b, Some(w.parse::<f32>().map_err(|_| bad())?)),
                    _ => return Err(bad()),
                };
                Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?, w))
            })
            .collect::<std::result::Result<_, String>>()
            .map(LayerPairs)
    }
    fn show(&self) -> String {
        self.0.iter().map(|(a, b, w)| w.map_or(format!("{a}:{b}"), |w| format!("{a}:{b}:{w}"))).collect::<Vec<_>>().join(",")
    }
}

/// What every config table offers, so that code can load any of them the same way.
pub trait ConfigTable: Default {
    fn set(&mut self, key: &str, value: &str) -> std::result::Result<(), String>;
    fn entries(&self) -> Vec<(&'static str, String)>;
    fn apply_matches(&mut self, m: &clap::ArgMatches) -> Result<()>;
    fn apply_toml_file(&mut self, path: &Path) -> Result<()>;
    fn apply_toml_str(&mut self, text: &str, origin: &Path) -> Result<()>;
    /// The effective config as TOML (what a checkpoint stores).
    fn to_toml(&self) -> String {
        to_toml(&self.entries())
    }
}

/// Error unless `saved` and `now` agree on every key in `keys` (resuming from a checkpoint).
pub fn require_same(origin: &Path, keys: &[&str], saved: &[(&str, String)], now: &[(&str, String)]) -> Result<()> {
    for key in keys {
        let find = |e: &[(&str, String)]| e.iter().find(|x| x.0 == *key).map(|x| x.1.clone()).unwrap_or_default();
        let (a, b) = (find(saved), find(now));
        if a != b {
            return Err(Error::Invalid(format!("{}: checkpoint has {key} = {a:?} but this run has {b:?}; resuming needs the same value", origin.display())));
        }
    }
    Ok(())
}

/// The `--help` heading of an option every task shares: the optimizer, evaluation and output,
/// distillation, and the process (devices, threads, ranks), so that a command's help reads in
/// groups rather than as one list.
pub fn shared_heading(key: &str) -> &'static str {
    match key {
        "optimizer" | "lr" | "lr_decay" | "lr_decay_every" | "lr_decay_start" | "warmup" | "cosine" | "lr_min" | "weight_decay" | "clip" => {
            "Optimizer and schedule (every task)"
        }
        "eval_every" | "log_every" | "checkpoint_every" | "log_format" | "keep_checkpoints" | "out" | "cache" | "resume" | "step_times" => {
            "Evaluation, logs, checkpoints (every task)"
        }
        "label_smoothing"
        | "models"
        | "burn_in"
        | "exchange_every"
        | "max_publishes"
        | "distill_lambda"
        | "alpha"
        | "distill_loss"
        | "distill_ramp"
        | "distill_schedule"
        | "distill_final"
        | "distill_weight"
        | "same_data"
        | "teacher"
        | "teacher_logits"
        | "teacher_logits_rest"
        | "teacher_weights"
        | "teacher_confidence"
        | "generations"
        | "init_from"
        | "quantize"
        | "adversarial_weight"
        | "adversarial_hidden"
        | "adversarial_input"
        | "hint_weight"
        | "hint_loss"
        | "hint_layers"
        | "relation_weight"
        | "relation_loss"
        | "independent_control" => "Distillation and codistillation (every task)",
        _ => "Devices, processes and seeds (every task)",
    }
}

/// Implement `ConfigValue` for an enum that has `FromStr<Err = String>` and `Display`.
#[macro_export]
macro_rules! config_enum {
    ($($t:ty),*) => {$(
        impl $crate::config::ConfigValue for $t {
            const VALUE_NAME: &'static str = "CHOICE";
            fn parse_value(s: &str) -> std::result::Result<Self, String> {
                s.trim().parse::<$t>()
            }
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}

/// Declare a config table: `config_table! { pub struct LmConfig { /// help\n field: Type = default, ... } }`.
/// A trainer's table ends with `shared { key = default, ... }`: it then also holds every key of
/// [`crate::train::RunOptions`] (the options all tasks share, declared once in
/// [`with_run_options`](crate::with_run_options)), with the defaults given there changed as listed,
/// and `run_options()` / `set_run_options()` convert between the two.
#[macro_export]
macro_rules! config_table {
    ($(#[$meta:meta])* pub struct $name:ident { $( #[doc = $doc:literal] $field:ident : $ty:ty = $default:expr, )* }) => {
        $crate::__config_table_impl! { [$(#[$meta])*] $name [$( #[doc = $doc] $field : $ty = $default, )*] [] [] }
    };
    ($(#[$meta:meta])* pub struct $name:ident { $( #[doc = $doc:literal] $field:ident : $ty:ty = $default:expr, )* }
     shared { $( $ofield:ident = $oval:expr ),* $(,)? }) => {
        $crate::with_run_options! { @table [$(#[$meta])*] $name [$( #[doc = $doc] $field : $ty = $default, )*] [$( $ofield = $oval, )*] }
    };
}

/// The options every task's trainer shares (the loop's: optimizer, schedule, evaluation cadence,
/// output, device, shards, codistillation, fixed teachers, processes), declared once. Expands to
/// [`crate::train::RunOptions`] (`@struct`) and into each trainer's table (`@table`, through
/// [`config_table`]).
#[doc(hidden)]
#[macro_export]
macro_rules! with_run_options {
    (@expand struct [] [$( #[doc = $sdoc:literal] $sfield:ident : $sty:ty = $sdefault:expr, )*]) => {
        /// The options every task's trainer shares, declared once: each trainer's config holds
        /// these keys beside its own (the same names in `--help`, TOML files and checkpoints), and
        /// the training loop ([`train`](crate::train::train)) reads them from here.
        #[derive(Clone, Debug, PartialEq)]
        pub struct RunOptions { $( #[doc = $sdoc] pub $sfield: $sty, )* }

        impl Default for RunOptions {
            fn default() -> Self {
                RunOptions { $( $sfield: $sdefault, )* }
            }
        }
    };
    (@expand table [[$($meta:tt)*] $name:ident [$($fields:tt)*] [$( $ofield:ident = $oval:expr, )*]]
     [$( #[doc = $sdoc:literal] $sfield:ident : $sty:ty = $sdefault:expr, )*]) => {
        $crate::__config_table_impl! { [$($meta)*] $name [$($fields)*] [$( #[doc = $sdoc] $sfield : $sty = $sdefault, )*] [$( $ofield = $oval, )*] }

        impl $name {
            /// The options every task shares, as the training loop reads them.
            pub fn run_options(&self) -> $crate::train::RunOptions {
                $crate::train::RunOptions { $( $sfield: self.$sfield.clone(), )* }
            }

            /// Take the shared options from `o`.
            pub fn set_run_options(&mut self, o: &$crate::train::RunOptions) {
                $( self.$sfield = o.$sfield.clone(); )*
            }
        }

        impl $crate::train::RunConfig for $name {
            fn run_options(&self) -> $crate::train::RunOptions {
                $name::run_options(self)
            }
            fn set_run_options(&mut self, o: &$crate::train::RunOptions) {
                $name::set_run_options(self, o)
            }
        }
    };
    (@$mode:ident $($args:tt)*) => {
        $crate::with_run_options! { @expand $mode [$($args)*] [
        /// Optimizer: sgd, momentum, adagrad or adam (embeddings are updated sparsely)
        optimizer: $crate::train::OptimizerChoice = $crate::train::OptimizerChoice::Adam,
        /// Learning rate
        lr: f32 = 0.002,
        /// Multiply the learning rate by this every lr_decay_every steps after lr_decay_start
        lr_decay: f32 = 0.5,
        /// Steps between learning-rate decays (0: never decay)
        lr_decay_every: u64 = 0,
        /// Step of the first decay
        lr_decay_start: u64 = 0,
        /// Steps of linear learning-rate warm-up: step t < warmup trains at lr * (t + 1) / warmup
        warmup: u64 = 0,
        /// Cosine learning-rate decay from the end of the warm-up to lr_min at the last step (instead of the step decay)
        cosine: bool = false,
        /// Cosine decay: the learning rate at the last step
        lr_min: f32 = 0.0,
        /// Weight decay: L2 for sgd and momentum, decoupled for adam (AdamW); applied to what a step updates (an embedding row decays when a batch touches it); not for adagrad
        weight_decay: f32 = 0.0,
        /// Clip the global gradient norm to this (0: no clipping)
        clip: f32 = 0.0,
        /// Validate every this many steps (0: at the end of each pass over the training data), and at the end
        eval_every: u64 = 0,
        /// Log training metrics every this many steps
        log_every: u64 = 100,
        /// Write checkpoints every this many steps (0: none between), at the end of each pass over the training data and at the end
        checkpoint_every: u64 = 0,
        /// Metrics formats, comma-separated: jsonl (metrics.jsonl, always written), csv (one `<event>.csv` per kind of event, train.csv, valid.csv, ..., written from metrics.jsonl at the end of the run) and tensorboard (an events.out.tfevents file written live: `tensorboard --logdir OUT`)
        log_format: String = "jsonl".to_string(),
        /// Keep every checkpoint the cadence writes as `checkpoint-step<N>.safetensors` beside the last (snapshots over training, e.g. for noise-scale)
        keep_checkpoints: bool = false,
        /// Output directory: metrics.jsonl, checkpoints (the last and the best validated), result.json
        out: std::path::PathBuf = std::path::PathBuf::from("runs/train"),
        /// Cache directory for preprocessed files and the synthetic data
        cache: std::path::PathBuf = std::path::PathBuf::from(".codistill-cache"),
        /// Resume from this checkpoint (weights, optimizer, step, position in the data); one model per process
        resume: Option<std::path::PathBuf> = None,
        /// Random seed (initialisation, dropout, shuffling and the synthetic data)
        seed: u64 = 1,
        /// Device: auto (GPU if available, else CPU), cpu or cuda
        device: $crate::train::DeviceChoice = $crate::train::DeviceChoice::Auto,
        /// GPU: f32 matrix products on the CUDA cores (exact, slower) instead of bf16 operands on the tensor cores
        matmul_f32: bool = false,
        /// GPU: bitwise-reproducible embedding gradients (a sorted plan instead of atomics)
        deterministic: bool = false,
        /// CPU threads for the products and the loss (0: every core); processes sharing a machine should split its cores
        threads: usize = 0,
        /// CPU: bf16 operands with f32 accumulation in the matrix products, the GPU's default numerics (AVX-512 BF16 dot products where the CPU has them, up to 2x the f32 rate; elsewhere rounded copies of the operands on the f32 kernel, slower than f32)
        cpu_bf16: bool = false,
        /// Split the training data into this many disjoint shards...
        shards: usize = 1,
        /// ...and train on this one (0-based)
        shard: usize = 0,
        /// Label smoothing epsilon, the control baseline for codistillation (one model only)
        label_smoothing: f32 = 0.0,
        /// Models trained side by side in this process (1: one model; 2 or more: codistillation)
        models: usize = 1,
        /// Codistillation: steps with the distillation term off
        burn_in: u64 = 500,
        /// Codistillation: publish each model's checkpoint every this many steps
        exchange_every: u64 = 100,
        /// Codistillation: publish at most this many times (0: no limit; 1 freezes the teachers at the first exchange, the control run of the overlap measurement)
        max_publishes: u64 = 0,
        /// Weight lambda of the distillation term in the codistillation paper's form, task + lambda * distill (Anil et al. 2018; deep mutual learning), from burn_in on, toward the peers and fixed teachers (0: off; the task term keeps weight 1)
        distill_lambda: f32 = 1.0,
        /// Hinton's convex mix instead of the paper's form: (1 - alpha) * task + alpha * distill, alpha in (0, 1]; when above 0, distill_lambda is not used (0: the paper's form with distill_lambda)
        alpha: f32 = 0.0,
        /// What the distillation term measures between the teachers' averaged prediction and the student's: kl (KL(teachers || student), Hinton et al.; for click models the soft-target cross-entropy), reverse-kl (KL(student || teachers), mode-seeking), js (Jensen-Shannon) or mse (the logits against the teachers' mean logits; no temperature); in codistillation, offline and data-free distillation alike
        distill_loss: $crate::ops::softmax_kl::Divergence = $crate::ops::softmax_kl::Divergence::ForwardKl,
        /// The paper's form: lambda rises linearly from 0 to distill_lambda over this many steps after burn_in (0: at once)
        distill_ramp: u64 = 0,
        /// How the distillation weight (distill_lambda, or alpha) moves from the burn-in to the last step: constant, linear or cosine (a half cosine), toward distill_final; logged as distill_weight in the train events
        distill_schedule: $crate::distill::Anneal = $crate::distill::Anneal::Constant,
        /// The distillation weight at the last step with a linear or cosine distill_schedule (default 0: the term fades out, TextBrewer's linear_decay; above the start: it grows)
        distill_final: Option<f32> = None,
        /// Deprecated name of alpha (the convex mix, the only form before 2026-12-02): a value given here is taken as alpha, with a note
        distill_weight: Option<f32> = None,
        /// Codistillation: every model trains on all the training data (default: each on its own disjoint shard)
        same_data: bool = false,
        /// Offline distillation: checkpoints of trained models of this task, comma-separated, whose averaged prediction the model distills toward from burn_in on, with the distillation weight (distill_lambda, or alpha); a teacher may have other widths but must read the same inputs (a language model: the same vocabulary; a click model: the same buckets); with codistillation, these teachers and the peers are averaged together
        teacher: $crate::config::Paths = $crate::config::Paths::default(),
        /// Offline distillation from cached teacher outputs instead of --teacher's forward passes: a file written by `teacher-cache` (or by any program, docs/teacher-cache.md) holding each fixed teacher's top-k logits of every training item, checked against this run's data and batching; one model; no hints. With `teacher-cache` itself: the file to write
        teacher_logits: Option<std::path::PathBuf> = None,
        /// With --teacher-logits: where a row's top k leave the rest of the teacher's probability: uniform (spread evenly over the other classes, the teacher's mass on its top k exact) or drop (the top k renormalised, the other classes at ~0)
        teacher_logits_rest: $crate::distill::cache::CacheRest = $crate::distill::cache::CacheRest::Uniform,
        /// Weights of the fixed teachers, one per --teacher in its order (or per teacher of the --teacher-logits cache), normalised to sum 1: the teachers' distributions are mixed by them instead of averaged (empty: the average); not with codistilling peers or data_free
        teacher_weights: $crate::config::Weights = $crate::config::Weights::default(),
        /// Weigh each fixed teacher on each example also by its confidence there (its probability of its own top class, at temperature 1), renormalised per example (confidence-aware multi-teacher distillation)
        teacher_confidence: bool = false,
        /// Initialise the model from a trained checkpoint of this task instead of at random, as DistilBERT initialises its student: each weight from the checkpoint's, its leading units where the checkpoint is wider, layer i of L from the checkpoint's layer i * L_t / L where it is deeper (every other layer of one twice as deep); the same inputs (vocabulary, buckets) needed
        init_from: Option<std::path::PathBuf> = None,
        /// Quantized training (Polino et al. 2018's quantized distillation with --teacher): the model's weight matrices quantized per output channel to int8 or int4 in every forward pass (fake quantization), the gradient applied to full-precision shadow weights (straight-through estimator); validation and the end's scores use the quantized weights, and best.safetensors stores them as int8 levels and scales (none: f32)
        quantize: $crate::ops::quant::Quant = $crate::ops::quant::Quant::None,
        /// Adversarial distillation with --teacher: a discriminator (two layers, adversarial_hidden wide, over a row of outputs: a language model's logits, a click model's logit) learns to tell the first teacher's rows from the model's, and the model adds this weight times its loss for being told apart, beside the distillation term, from burn_in on; logged as adversarial_loss and discriminator_loss (0: off)
        adversarial_weight: f32 = 0.0,
        /// The discriminator's hidden width
        adversarial_hidden: usize = 64,
        /// What the discriminator reads of each row: logits (the raw outputs) or probs (a language model's softmax, a click model's sigmoid: the distribution, blind to a shift of a row's logits)
        adversarial_input: $crate::train::AdversarialInput = $crate::train::AdversarialInput::Logits,
        /// Born-again networks: train this many generations, each a fresh model of the same shape (the next seed) distilled from the previous generation's best checkpoint with the run's distillation settings (generation 0 as configured), into out/gen-G, with out/generations.json (1: one plain run)
        generations: usize = 1,
        /// Feature hints (FitNets) with --teacher: add this weight times the mean squared difference between the first teacher's last hidden layer (a language model's top LSTM layer) and a learned linear map (`lm.hint` or `ctr.hint`, trained with the model, kept in its checkpoints, ignored when one is loaded as a model) of the model's own, from burn_in on (0: off)
        hint_weight: f32 = 0.0,
        /// Feature hints between chosen layers: pairs S:T, the student's hidden layer S and the first teacher's layer T (0 the lowest: a language model's LSTM layers, a click model's hidden MLP layers), each with its own learned map and weight (S:T:W; hint_weight where W is not given) (empty: the last layer of each)
        hint_layers: $crate::config::LayerPairs = $crate::config::LayerPairs::default(),
        /// What the feature hint measures between the mapped student states and the teacher's: mse (FitNets) or cosine (1 - cosine similarity per row, DistilBERT's third term)
        hint_loss: $crate::ops::relation::HiddenLoss = $crate::ops::relation::HiddenLoss::Mse,
        /// Relation-based knowledge with --teacher: add this weight times a loss between the relations of the batch's rows in the student's last hidden layer and in the first teacher's (no map: widths may differ), from burn_in on; logged as relation_loss (0: off)
        relation_weight: f32 = 0.0,
        /// The relation the relation term compares: sp (similarity-preserving KD, the row-normalised Gram matrices), rkd (relational KD's distance term, pairwise distances over their mean, Huber), rkd-angle (its angle term: the angles of every triplet of 64 evenly spaced rows, Huber) or rkd-full (distance plus twice angle, the paper's weights)
        relation_loss: $crate::ops::relation::HiddenLoss = $crate::ops::relation::HiddenLoss::Sp,
        /// Experiment: also train the codistilled models without the term (the same shards and seeds, distill_lambda 0), the control for what the term does, into out/independent, and plot them
        independent_control: bool = false,
        /// Codistillation across processes: shared checkpoint directory (one process per model)
        exchange_dir: Option<std::path::PathBuf> = None,
        /// Codistillation across processes: at its first step that distills from peers (from burn_in, once peers have had exchange_every steps to publish), a model waits up to this many seconds for every peer's first checkpoint and stops with an error naming the missing ones (0: no wait; train on without them)
        peer_timeout: u64 = 600,
        /// Codistillation across processes: this process's model index (with world 0, the launcher's rank)
        rank: usize = 0,
        /// Codistillation across processes: number of processes (0: with --exchange-dir, from a launcher's variables, torchrun's WORLD_SIZE and RANK, Slurm's SLURM_NTASKS and SLURM_PROCID, Open MPI's OMPI_COMM_WORLD_SIZE and OMPI_COMM_WORLD_RANK or MPICH's PMI_SIZE and PMI_RANK, else 1)
        world: usize = 0,
        /// Write step_times.csv to the output directory: each step's compute seconds (all models here) and seconds in exchange calls, for the overlap measurement
        step_times: bool = false,
        ] }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __config_table_impl {
    ([$($meta:tt)*] $name:ident [$( #[doc = $doc:literal] $field:ident : $ty:ty = $default:expr, )*]
     [$( #[doc = $sdoc:literal] $sfield:ident : $sty:ty = $sdefault:expr, )*] [$( $ofield:ident = $oval:expr, )*]) => {
        $($meta)*
        #[derive(Clone, Debug, PartialEq)]
        pub struct $name { $( #[doc = $doc] pub $field: $ty, )* $( #[doc = $sdoc] pub $sfield: $sty, )* }

        impl Default for $name {
            #[allow(clippy::needless_update)]
            fn default() -> Self {
                #[allow(unused_mut)]
                let mut c = $name { $( $field: $default, )* $( $sfield: $sdefault, )* };
                $( c.$ofield = $oval; )*
                c
            }
        }

        impl $name {
            /// Every key, in declaration order (the task's own, then the shared ones).
            pub const KEYS: &'static [&'static str] = &[$(stringify!($field),)* $(stringify!($sfield),)*];
            /// The keys every task shares (see [`crate::train::RunOptions`]).
            pub const SHARED_KEYS: &'static [&'static str] = &[$(stringify!($sfield),)*];
            const HELP: &'static [&'static str] = &[$($doc.trim_ascii(),)* $($sdoc.trim_ascii(),)*];
            const VALUE_NAMES: &'static [&'static str] =
                &[$(<$ty as $crate::config::ConfigValue>::VALUE_NAME,)* $(<$sty as $crate::config::ConfigValue>::VALUE_NAME,)*];
            const FLAGS: &'static [bool] = &[$(<$ty as $crate::config::ConfigValue>::FLAG,)* $(<$sty as $crate::config::ConfigValue>::FLAG,)*];

            /// Set one field from its text form.
            pub fn set(&mut self, key: &str, value: &str) -> std::result::Result<(), String> {
                use $crate::config::ConfigValue;
                match key {
                    $( stringify!($field) => {
                        self.$field = <$ty>::parse_value(value).map_err(|e| format!("{key}: {e}"))?;
                        Ok(())
                    } )*
                    $( stringify!($sfield) => {
                        self.$sfield = <$sty>::parse_value(value).map_err(|e| format!("{key}: {e}"))?;
                        Ok(())
                    } )*
                    _ => Err(format!("unknown key {key:?} (known keys: {})", Self::KEYS.join(", "))),
                }
            }

            /// `(key, value as text)` for every field.
            pub fn entries(&self) -> Vec<(&'static str, String)> {
                use $crate::config::ConfigValue;
                vec![$( (stringify!($field), self.$field.show()), )* $( (stringify!($sfield), self.$sfield.show()), )*]
            }

            /// Command-line flags for every field, with the default in the help; the shared ones
            /// under the headings of [`shared_heading`]($crate::config::shared_heading).
            pub fn args() -> Vec<$crate::__clap::Arg> {
                let d = Self::default().entries();
                Self::KEYS.iter().zip(Self::HELP).zip(d).zip(Self::VALUE_NAMES.iter().zip(Self::FLAGS)).map(|(((k, h), (_, dv)), (v, flag))| {
                    let shown = if dv.is_empty() { "none".to_string() } else { dv };
                    let a = $crate::__clap::Arg::new(*k)
                        .long(k.replace('_', "-"))
                        .value_name(*v)
                        .help(format!("{h} [default: {shown}]"));
                    // A switch given bare is true (`--cosine`); `--cosine false` still parses.
                    let a = if *flag { a.num_args(0..=1).default_missing_value("true") } else { a };
                    if Self::SHARED_KEYS.contains(k) { a.help_heading($crate::config::shared_heading(k)) } else { a }
                }).collect()
            }

            /// Apply the flags that were given on the command line.
            pub fn apply_matches(&mut self, m: &$crate::__clap::ArgMatches) -> $crate::Result<()> {
                for k in Self::KEYS {
                    if let Some(v) = m.get_one::<String>(k) {
                        self.set(k, v).map_err(|e| $crate::Error::Invalid(format!("--{}: {e}", k.replace('_', "-"))))?;
                    }
                }
                Ok(())
            }

            /// Apply a TOML file's keys over the current values.
            pub fn apply_toml_file(&mut self, path: &std::path::Path) -> $crate::Result<()> {
                let text = std::fs::read_to_string(path).map_err(|e| $crate::Error::io(path, e))?;
                $crate::config::apply_toml(&text, path, |k, v| self.set(k, v))
            }

            /// Apply TOML text (a config stored in a checkpoint).
            pub fn apply_toml_str(&mut self, text: &str, origin: &std::path::Path) -> $crate::Result<()> {
                $crate::config::apply_toml(text, origin, |k, v| self.set(k, v))
            }

            /// The effective config as TOML.
            pub fn to_toml(&self) -> String {
                $crate::config::to_toml(&self.entries())
            }
        }

        impl $crate::config::ConfigTable for $name {
            fn set(&mut self, key: &str, value: &str) -> std::result::Result<(), String> {
                $name::set(self, key, value)
            }
            fn entries(&self) -> Vec<(&'static str, String)> {
                $name::entries(self)
            }
            fn apply_matches(&mut self, m: &$crate::__clap::ArgMatches) -> $crate::Result<()> {
                $name::apply_matches(self, m)
            }
            fn apply_toml_file(&mut self, path: &std::path::Path) -> $crate::Result<()> {
                $name::apply_toml_file(self, path)
            }
            fn apply_toml_str(&mut self, text: &str, origin: &std::path::Path) -> $crate::Result<()> {
                $name::apply_toml_str(self, text, origin)
            }
        }
    };
}

/// 1-based line of the first `key = ...` in a TOML text, for error messages.
fn key_line(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key).map(|r| r.trim_start().starts_with('=')).unwrap_or(false)
        })
        .map(|i| i + 1)
        .unwrap_or(0)
}

pub fn apply_toml(text: &str, path: &Path, mut set: impl FnMut(&str, &str) -> std::result::Result<(), String>) -> Result<()> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| Error::Data {
        path: path.to_path_buf(),
        line: e.span().map(|s| text[..s.start].lines().count().max(1)).unwrap_or(0),
        field: "toml".into(),
        message: e.message().to_string(),
    })?;
    for (k, v) in &table {
        let s = match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            // A list of paths; a string inside that is not one is the error below.
            toml::Value::Array(a) if a.iter().all(|x| x.is_str()) => a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(","),
            // A list of numbers (weights).
            toml::Value::Array(a) if a.iter().all(|x| x.is_integer() || x.is_float()) => {
                a.iter().map(|x| x.as_float().unwrap_or_else(|| x.as_integer().unwrap_or(0) as f64).to_string()).collect::<Vec<_>>().join(",")
            }
            other => {
                return Err(Error::Data {
                    path: path.to_path_buf(),
                    line: key_line(text, k),
                    field: k.clone(),
                    message: format!("expected a string, number, boolean, or array of strings or of numbers, got {}", other.type_str()),
                })
            }
        };
        set(k, &s).map_err(|message| Error::Data { path: path.to_path_buf(), line: key_line(text, k), field: k.clone(), message })?;
    }
    Ok(())
}

pub fn to_toml(entries: &[(&str, String)]) -> String {
    let mut t = toml::Table::new();
    for (k, v) in entries {
        t.insert(k.to_string(), toml::Value::String(v.clone()));
    }
    toml::to_string(&t).expect("a table of strings serialises")
}

#[cfg(test)]
#[allow(dead_code)]
mod tests {
    use std::path::Path;

    crate::config_table! {
        pub struct Demo {
            /// Hidden units
            hidden_size: usize = 200,
            /// Learning rate
            lr: f32 = 0.5,
            /// Where to write
            out: std::path::PathBuf = "runs/x".into(),
            /// Optional file
            resume: Option<std::path::PathBuf> = None,
            /// Files
            teacher: super::Paths = Default::default(),
        }
    }

    #[test]
    fn path_lists_from_the_command_line_and_toml() {
        use std::path::PathBuf;
        let mut c = Demo::default();
        c.set("teacher", "a.safetensors, b/c.safetensors").unwrap();
        assert_eq!(c.teacher.0, vec![PathBuf::from("a.safetensors"), PathBuf::from("b/c.safetensors")]);
        let mut d = Demo::default();
        d.apply_toml_str(&c.to_toml(), Path::new("saved")).unwrap();
        assert_eq!(c, d);
        let mut e = Demo::default();
        e.apply_toml_str("teacher = [\"x\", \"y\"]\n", Path::new("t.toml")).unwrap();
        assert_eq!(e.teacher.0.len(), 2);
        assert!(e.set("teacher", "a,,b").unwrap_err().contains("empty path"));
        e.set("teacher", "").unwrap();
        assert!(e.teacher.is_empty());
        let err = e.apply_toml_str("teacher = [true, 2]\n", Path::new("t.toml")).unwrap_err().to_string();
        assert!(err.contains("t.toml:1") && err.contains("array"), "{err}");
        // A list of numbers (teacher weights) is an array of numbers.
        let mut w = crate::train::RunOptions::default();
        let mut table = crate::tasks::ctr::CriteoConfig::default();
        table.apply_toml_str("teacher_weights = [0.7, 3]\n", Path::new("w.toml")).unwrap();
        w.teacher_weights = table.run_options().teacher_weights;
        assert_eq!(w.teacher_weights.0, vec![0.7, 3.0]);
        assert!(table.apply_toml_str("teacher_weights = \"0.7,x\"\n", Path::new("w.toml")).unwrap_err().to_string().contains("not a number"));
    }

    #[test]
    fn toml_overrides_defaults_and_round_trips() {
        let mut c = Demo::default();
        c.apply_toml_str("hidden_size = 650\nlr = 1e-3\nresume = \"a.safetensors\"\n", Path::new("x.toml")).unwrap();
        assert_eq!((c.hidden_size, c.lr), (650, 1e-3));
        let mut d = Demo::default();
        d.apply_toml_str(&c.to_toml(), Path::new("saved")).unwrap();
        assert_eq!(c, d);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = Demo::default().apply_toml_str("lr = 1.0\nhiden_size = 3\n", Path::new("cfg.toml")).unwrap_err().to_string();
        assert!(e.contains("cfg.toml:2") && e.contains("hiden_size") && e.contains("hidden_size"), "{e}");
    }

    #[test]
    fn bad_value_and_bad_syntax_are_errors() {
        let e = Demo::default().apply_toml_str("hidden_size = -3\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(e.contains("hidden_size") && e.contains("-3"), "{e}");
        assert!(Demo::default().apply_toml_str("lr = = 2\n", Path::new("c.toml")).is_err());
    }

    #[test]
    fn command_line_overrides_and_help_shows_defaults() {
        let cmd = clap::Command::new("t").args(Demo::args());
        let help = cmd.clone().render_help().to_string();
        assert!(help.contains("--hidden-size") && help.contains("[default: 200]"), "{help}");
        let m = cmd.try_get_matches_from(["t", "--lr", "0.25"]).unwrap();
        let mut c = Demo::default();
        c.apply_matches(&m).unwrap();
        assert_eq!(c.lr, 0.25);
    }
}
