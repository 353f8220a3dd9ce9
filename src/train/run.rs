//! The training loop, written once for every task: the models of this process, their optimizers
//! and data streams; burn-in, teacher refresh and staleness, the distillation and hint terms,
//! clipping and the update; the evaluation, logging and checkpoint cadence; resume; one process or
//! one process per model through an exchange directory; fixed teachers; the ensemble and churn at
//! the end. What differs between a language model and a click model is a [`Task`].

use super::options::{check_burn_in, check_loss, check_same_data, optimizer_settings, process_world, RunConfig, RunOptions, DATA_KEY};
use super::report::{exchange_health, lock_out, log_teacher_swap, progress, write_result, MetricsLog, PeerWait, StepTimes};
use crate::autograd::{Graph, Var};
use crate::checkpoint::Checkpoint;
use crate::config::ConfigTable;
use crate::distill::cache::{CacheKey, TeacherCache};
use crate::distill::exchange::timed;
use crate::distill::{end_step, Anneal, CodistillSchedule, DistillForm, Mix, TeacherTracker, Topology};
use crate::nn::Linear;
use crate::ops::elementwise::Unary;
use crate::optim::Optimizer;
use crate::params::ParamStore;
use crate::tensor::{Device, Tensor};
use crate::{bail, Error, Result, Rng};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Validation figures of one model: the loss the run keeps its best checkpoint by, and the
/// fields of its metrics line.
pub trait Score {
    /// The field of [`fields`](Self::fields) that is [`loss`](Self::loss) (experiment curves).
    const KEY: &'static str = "loss";
    /// Lower is better (the best checkpoint is the lowest).
    fn loss(&self) -> f64;
    /// The figures as a JSON object, in the order a metrics line shows them.
    fn fields(&self) -> Value {
        json!({ "loss": self.loss() })
    }
    /// One line for the terminal.
    fn describe(&self) -> String {
        self.fields().to_string()
    }
}

/// What the loop knows before a task reads its data.
pub struct Setup<'a> {
    pub dev: Device,
    /// Models in the whole run (every process).
    pub total_models: usize,
    pub run: &'a RunOptions,
}

/// A fixed teacher (`--teacher`): where it came from, its structure and its weights.
pub struct TeacherRef<'a, M> {
    pub path: &'a Path,
    pub model: &'a M,
    pub store: &'a ParamStore,
}

/// A task the loop trains: its data, model, losses, evaluation and checkpoint contents. The loop
/// calls these in the order of a step; an implementation holds only what is its own.
pub trait Task: Sized {
    /// The task's config table: its own keys and the shared ones ([`RunOptions`]).
    type Config: RunConfig;
    /// A model's structure; its weights live in a [`ParamStore`].
    type Model;
    /// One training batch, on the device.
    type Batch;
    /// One model's place in its shard of the training data.
    type Stream;
    /// What a model carries from one batch of a stream to the next (a language model's LSTM
    /// state; `()` when nothing).
    type Carry: Clone + Default;
    /// Validation figures.
    type Eval: Score;
    /// What [`train`] returns.
    type Summary;

    /// The command's name, in messages (`lm`, `criteo`).
    const NAME: &'static str;
    /// The task in a title (`Language model`).
    const TITLE: &'static str;
    /// What a checkpoint of the task is, in messages (`a language model`).
    const WHAT: &'static str;
    /// The checkpoint format.
    const FORMAT: &'static str;
    /// The parameter-name prefix (the feature-hint map is `<prefix>.hint`).
    const PREFIX: &'static str;
    /// What a batch counts (`tokens`, `rows`): the train events' `<unit>_per_s`.
    const UNIT: &'static str;
    /// The task's config keys a resume must agree on (the model and the data order), beside the
    /// shared ones.
    const RESUME_KEYS: &'static [&'static str];

    /// Check the task's options, read its data and load its fixed teachers.
    fn prepare(cfg: &Self::Config, setup: &Setup) -> Result<Self>;
    /// The config the run goes on with (the world and rank it took).
    fn config(&self) -> &Self::Config;
    /// The structure of the run's models (each model's weights are its own store).
    fn model(&self) -> &Self::Model;
    /// The fixed teachers (`--teacher`), loaded by `prepare`; none where the task loads none (a
    /// run given teachers then stops with an error).
    fn teachers(&self) -> Vec<TeacherRef<'_, Self::Model>> {
        Vec::new()
    }
    /// Whether the fixed teachers run on each batch (a data-free run's batches bring their outputs).
    fn forward_teachers(&self) -> bool {
        true
    }
    /// A teacher cache's layout (how its items follow the batching: a cache of another batching is
    /// refused) and the teachers' classes per item (a vocabulary; 1 for a click logit). None: the
    /// task reads no teacher cache.
    fn cache_shape(&self) -> Option<(String, usize)> {
        None
    }
    /// The items a teacher cache of `stream` holds: one pass, `epoch_steps` batches.
    fn cache_items(&self, _stream: &Self::Stream, _epoch_steps: u64) -> usize {
        0
    }
    /// The items of `batch` in a teacher cache, in the order of its rows.
    fn cache_keys(&self, _batch: &Self::Batch) -> Vec<usize> {
        Vec::new()
    }
    /// Whether the first fixed teacher's hidden states are computed on each batch (what feature
    /// hints and relations compare); Err says how to give them.
    fn teacher_states(&self) -> std::result::Result<(), &'static str> {
        if self.hint_widths().is_some() {
            Ok(())
        } else {
            Err("give --teacher")
        }
    }
    /// The feature-hint map's widths: the model's last hidden layer, the first teacher's (None:
    /// no hints).
    fn hint_widths(&self) -> Option<(usize, usize)> {
        self.layer_widths().and_then(|(s, t)| Some((*s.last()?, *t.last()?)))
    }
    /// The widths of the model's hidden layers and the first teacher's, bottom to top (None: no
    /// hints).
    fn layer_widths(&self) -> Option<(Vec<usize>, Vec<usize>)> {
        None
    }
    /// The random stream that initialises model `index` of `total`.
    fn member_rng(&self, index: usize, total: usize) -> Rng {
        let _ = total;
        Rng::new(self.config().run_options().seed).fork(index as u64)
    }
    /// A fresh model's weights in `store`.
    fn init(&self, store: &mut ParamStore, rng: &mut Rng) -> Result<()>;
    /// Shard `shard` of `shards` of the training data, and its fingerprint (checkpoints record it).
    fn stream(&self, shards: usize, shard: usize) -> Result<(Self::Stream, Option<u64>)>;
    /// The model's random stream after its initialisation, for the stream's shuffling.
    fn seed_stream(&self, _stream: &mut Self::Stream, _rng: &Rng) {}
    /// Steps in one pass over a stream (`u64::MAX`: endless).
    fn epoch_steps(&self, stream: &Self::Stream) -> u64;
    /// The run's last step, the shortest stream taking `epoch_steps` a pass.
    fn total_steps(&self, epoch_steps: u64) -> u64;
    /// How a resume that is already at the end says the run's length and how to extend it:
    /// (detail after "ends at step N", option).
    fn length_help(&self, epoch_steps: u64) -> (String, &'static str) {
        (format!(" ({epoch_steps} steps a pass)"), "the run's length")
    }
    /// Before the first step (fresh, or resumed at `step` from `ck`): the stream's position and
    /// the carried state (nothing to do where a batch follows from its step alone).
    fn start(&self, _stream: &mut Self::Stream, _carry: &mut Self::Carry, _step: u64, _ck: Option<(&Checkpoint, &Path)>) -> Result<()> {
        Ok(())
    }
    /// What a checkpoint holds beside weights, optimizer, step and config (what `start` reads, and
    /// what the task records of the model whose weights are `store`); `resumable` is false for a
    /// weights-only checkpoint (the best one), which needs nothing only a resume reads.
    fn save_extra(&self, _c: &mut Checkpoint, _stream: &Self::Stream, _carry: &Self::Carry, _store: &ParamStore, _resumable: bool) -> Result<()> {
        Ok(())
    }
    /// A resumed checkpoint's config (`saved`) against the run's data, beyond the resume keys.
    fn check_resume(&self, _saved: &Self::Config, _ck: &Checkpoint, _path: &Path) -> Result<()> {
        Ok(())
    }
    /// The training data, in messages.
    fn data_name(&self) -> String {
        "the training data".into()
    }
    /// The zero state a model starts a stream with.
    fn zero_carry(&self, _model: &Self::Model) -> Result<Self::Carry> {
        Ok(Self::Carry::default())
    }
    /// What a stream does with the model at hand (weights `store`) before its batch of `step`: a
    /// data-free run synthesises rows against the student. Nothing by default.
    fn before_batch(&self, _model: &Self::Model, _stream: &mut Self::Stream, _store: &ParamStore, _step: u64) -> Result<()> {
        Ok(())
    }
    /// The batch of `step` from a stream (the run's passes are `epoch_steps` long), and whether it
    /// starts the stream afresh (the carried states are reset).
    fn batch(&self, stream: &mut Self::Stream, step: u64, epoch_steps: u64) -> Result<(Self::Batch, bool)>;
    /// What a batch counts (tokens, rows).
    fn batch_items(&self, batch: &Self::Batch) -> usize;
    /// The model's outputs (logits), its hidden layers bottom to top (what feature hints compare) and the
    /// state it carries on; `train` is (step, model index) in training (dropout), None otherwise.
    fn forward(
        &self,
        model: &Self::Model,
        g: &mut Graph,
        store: &ParamStore,
        batch: &Self::Batch,
        carry: &Self::Carry,
        train: Option<(u64, usize)>,
    ) -> Result<(Var, Vec<Var>, Self::Carry)>;
    /// The loss of a batch: the task loss alone, or with `mix` (the distillation form's weights at
    /// this step, see [`DistillForm::scheduled`]) the distillation term toward the peers' and fixed
    /// teachers' outputs: `mix.scale * ((1 - mix.mix) * task + mix.mix * distill)`.
    fn loss(&self, g: &mut Graph, out: Var, batch: &Self::Batch, peers: &[Tensor], fixed: &[Tensor], mix: Option<Mix>) -> Result<Var>;
    /// The fixed teachers' outputs of a batch folded into one, their distributions mixed by
    /// `weights` (normalised) and, with `confidence`, by each teacher's confidence per example, at
    /// `progress` through the distilling steps (a scheduled temperature); see
    /// [`crate::ops::softmax_kl::mix`]. None: the task does not weigh teachers.
    fn mix_teachers(&self, _teachers: &[Tensor], _weights: &[f32], _confidence: bool, _progress: f32) -> Option<Result<Tensor>> {
        None
    }
    /// Fill a fresh model's weights in `store` from a trained checkpoint of the task (`--init-from`):
    /// the leading units of a wider model, every other layer of a deeper one; returns what was
    /// taken, for the terminal. None: the task cannot.
    fn init_from(&self, _store: &mut ParamStore, _ck: &Checkpoint, _path: &Path) -> Option<Result<String>> {
        None
    }
    /// The task's own scheduled distillation settings at `progress` (0 at the burn-in, 1 at the
    /// last step), for the train events: (name, value).
    fn schedule_fields(&self, _progress: f32) -> Vec<(&'static str, f64)> {
        Vec::new()
    }
    /// A model's validation figures (None without validation data).
    fn validate(&self, model: &Self::Model, store: &ParamStore) -> Result<Option<Self::Eval>>;
    /// The validation loss of a prediction that knows nothing of the inputs (a click model's: the
    /// validation click rate for every row; a language model's: the uniform distribution), where
    /// the task has one: a teacher that does no better is warned about (trained on other data?).
    fn chance_loss(&self) -> Option<f64> {
        None
    }
    /// The models' averaged prediction scored, and the churn between models 0 and 1 where the
    /// task measures it, from the stores and their last validations.
    fn ensemble(&self, members: &[(&ParamStore, Option<&Self::Eval>)]) -> Result<Option<(Self::Eval, Option<f64>)>>;
    /// What peers in other processes must agree on beyond the parameters' names and shapes (which
    /// the loop compares): the model's part (a vocabulary), and the loss's beyond the distillation
    /// form (a temperature).
    fn compat(&self) -> (String, String) {
        (String::new(), String::new())
    }
    /// An experiment's codistilled models, each on 1/`models` of the data, against a baseline on all
    /// of it: what makes each take the baseline's steps (a click model's epochs times `models`;
    /// nothing where the run's length is in steps).
    fn pair_config(_cfg: &mut Self::Config, _models: usize) {}
    /// What no model can beat, for `result.json` and experiment plots: (name, validation loss).
    fn floor(&self) -> Option<(&'static str, f64)> {
        None
    }
    /// The run's size in the opening line.
    fn describe(&self, _first: &Self::Stream, epoch_steps: u64, total_steps: u64) -> String {
        format!("{epoch_steps} steps a pass, {total_steps} steps")
    }
    /// Where model `index`'s checkpoint (or best checkpoint) goes under `out`: `checkpoint.safetensors`
    /// and `best.safetensors`, in `model-<index>/` when this process trains `several`.
    fn checkpoint_path(&self, out: &Path, index: usize, several: bool, best: bool) -> PathBuf {
        let dir = if several { out.join(format!("model-{index}")) } else { out.to_path_buf() };
        dir.join(if best { "best.safetensors" } else { "checkpoint.safetensors" })
    }
    /// Fields of a train event beside the mean loss (a perplexity), as a JSON object.
    fn train_fields(&self, _mean: f64) -> Value {
        json!({})
    }
    /// The progress bar's message.
    fn progress(&self, mean: f64, rate: f64) -> String {
        format!("loss {mean:.4} {rate:.0} {}/s", Self::UNIT)
    }
    /// The end of a run: the task's own reports (a test set), its summary and its `result.json`
    /// fields (a JSON object).
    fn finish(&self, log: &mut MetricsLog, run: &Finished<Self>) -> Result<(Self::Summary, Value)>;
}

/// One model of a run: its weights, optimizer, stream, carried states and records.
pub struct Member<T: Task> {
    /// Global model index: shard and exchange rank.
    pub index: usize,
    pub store: ParamStore,
    pub opt: Optimizer,
    pub stream: T::Stream,
    pub carry: T::Carry,
    /// The state each peer's snapshot carries on this model's stream.
    pub peer_carry: Vec<Option<T::Carry>>,
    /// The same for each fixed teacher.
    pub fixed_carry: Vec<Option<T::Carry>>,
    pub teachers: TeacherTracker,
    /// Best validation loss, and the last validation.
    pub best: Option<f64>,
    pub last: Option<T::Eval>,
    /// Fingerprint of this model's training data.
    pub data_key: Option<u64>,
    /// The last step with a finite training loss, and that loss.
    pub last_loss: Option<(u64, f64)>,
    /// Training figures since the last train event.
    interval: Interval,
}

/// One model's training figures since its last train event: the loss summed over its steps, the
/// steps, the weighted hint term (sum, count); and of the last step, the teachers' staleness (sum,
/// count) and the gradient norm.
#[derive(Default)]
struct Interval {
    loss: f64,
    steps: u64,
    hint: (f64, u64),
    /// The weighted relation term (sum, count).
    relation: (f64, u64),
    /// The adversarial terms: the model's weighted one and the discriminator's (sums, count).
    adversarial: (f64, f64, u64),
    staleness: (u64, u64),
    norm: f64,
}

/// What the loop hands a task at the end of a run.
pub struct Finished<T: Task> {
    pub steps: u64,
    pub members: Vec<Member<T>>,
    pub ensemble: Option<(T::Eval, Option<f64>)>,
    /// Items (tokens, rows) trained on, over all models, and the seconds of compute and exchange.
    pub items: f64,
    pub train_secs: f64,
    pub exchange_wait: f64,
    pub started: Instant,
}

impl<T: Task> Finished<T> {
    /// Items per second of compute.
    pub fn rate(&self) -> f64 {
        self.items / self.train_secs.max(1e-9)
    }
}

/// `scale * loss` on the tape (the distillation forms' scale; nothing recorded when it is 1).
pub fn scaled(g: &mut Graph, loss: Var, scale: f32) -> Result<Var> {
    if scale == 1.0 {
        Ok(loss)
    } else {
        g.unary(Unary::Scale(scale), loss)
    }
}

/// The fields of JSON objects `head`, then `tail`, as one object.
fn event(head: Value, tail: Value) -> Value {
    let mut v = head;
    if let (Value::Object(m), Value::Object(t)) = (&mut v, tail) {
        m.extend(t);
    }
    v
}

/// Each parameter of `store` from checkpoint `ck` (loaded from `path`), by name.
pub(crate) fn load_weights(store: &mut ParamStore, ck: &Checkpoint, path: &Path) -> Result<()> {
    for name in store.names() {
        let t = ck.tensors.get(&name).ok_or_else(|| Error::Invalid(format!("{}: checkpoint lacks parameter {name:?}", path.display())))?;
        store.set(&name, t.clone()).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

/// A checkpoint's config, its format checked against `format` (`what` names it in the error).
pub(crate) fn checkpoint_config<C: crate::config::ConfigTable>(ck: &Checkpoint, path: &Path, format: &str, what: &str) -> Result<C> {
    let saved = ck.meta("format", path)?;
    if saved != format {
        bail!(Invalid, "{}: checkpoint format {saved:?} is not {what} ({format})", path.display());
    }
    let mut cfg = C::default();
    cfg.apply_toml_str(ck.meta("config", path)?, path)?;
    Ok(cfg)
}

/// A teacher's output for `batch` (no tape), its state carried in `slot` (zeros when empty), and
/// with `hidden` its hidden layers (feature hints' targets).
pub(super) fn teacher_output<T: Task>(
    be: &crate::Backend,
    task: &T,
    model: &T::Model,
    store: &ParamStore,
    batch: &T::Batch,
    slot: &mut Option<T::Carry>,
    hidden: bool,
) -> Result<(Tensor, Option<Vec<Tensor>>)> {
    let carry = match slot.take() {
        Some(c) => c,
        None => task.zero_carry(model)?,
    };
    let mut g = Graph::no_grad().with_backend(*be);
    let (out, h, next) = task.forward(model, &mut g, store, batch, &carry, None)?;
    *slot = Some(next);
    Ok((g.value(out).clone(), hidden.then(|| h.iter().map(|&v| g.value(v).clone()).collect())))
}

/// A model's checkpoint: weights, step, config and records, and with `resumable` the optimizer
/// state and the stream's position (a best-validation checkpoint holds the weights only).
fn save<T: Task>(task: &T, path: &Path, m: &Member<T>, step: u64, resumable: bool, quant: Option<u32>) -> Result<()> {
    let mut c = Checkpoint::new();
    for (name, p) in m.store.iter() {
        c.tensors.insert(name.clone(), p.value.clone());
    }
    if resumable {
        for (name, t) in m.opt.state_tensors() {
            c.tensors.insert(format!("optim/{name}"), t);
        }
        c.meta.insert("optimizer_steps".into(), m.opt.steps_taken().to_string());
    }
    c.meta.insert("format".into(), T::FORMAT.into());
    c.meta.insert("step".into(), step.to_string());
    c.meta.insert("config".into(), task.config().to_toml());
    if let Some(b) = m.best {
        c.meta.insert("best_valid".into(), b.to_string());
    }
    if let Some(d) = m.data_key {
        c.meta.insert(DATA_KEY.into(), format!("{d:016x}"));
    }
    task.save_extra(&mut c, &m.stream, &m.carry, &m.store, resumable)?;
    // A quantized run's weights-only checkpoint holds the quantized model (the resumable one keeps
    // the shadow weights the optimizer trains).
    if let (Some(bits), false) = (quant, resumable) {
        c.quantize_weights(bits)?;
    }
    c.save(path)
}

/// The shared keys a resume must agree on: the data order, the models and the processes.
const RESUME_KEYS: &[&str] = &["shards", "shard", "seed", "optimizer", "models", "world", "rank", "same_data"];

/// A step is due for a cadence of `every` steps (0: at the ends of passes) at step `step`.
fn due(step: u64, every: u64, epoch_end: bool, last: bool) -> bool {
    last || (every > 0 && step.is_multiple_of(every)) || (every == 0 && epoch_end)
}

/// Train as configured: one model, or `models` codistilling models in this process, or this
/// process's model of a `world`-process codistillation through `exchange_dir`; with fixed
/// teachers, distilled from them too. Prints progress on stderr (a bar on a terminal), writes
/// metrics, checkpoints and `result.json` under `out`.
pub fn train<T: Task>(cfg: &T::Config) -> Result<T::Summary> {
    let started = Instant::now();
    let mut o = cfg.run_options();
    if o.generations > 1 {
        return super::generations::train_generations::<T>(cfg, o.generations).map(|(_, s)| s);
    }
    if o.generations == 0 {
        bail!(Invalid, "generations must be at least 1 (1: one plain run)");
    }
    let dev = o.device.resolve()?;
    let be = o.backend()?;
    // The run goes on, and its checkpoints record, the world and rank it took.
    (o.world, o.rank) = process_world(o.world, o.rank, o.exchange_dir.is_some())?;
    let mut cfg = cfg.clone();
    cfg.set_run_options(&o);
    let topo = Topology { models: o.models, world: o.world, rank: o.rank, same_data: o.same_data, shards: o.shards, shard: o.shard };
    let form = DistillForm::from_options(o.distill_lambda, o.alpha, o.distill_ramp, o.distill_weight)?;
    topo.check(o.exchange_dir.as_deref(), form.weight(), o.exchange_every, o.label_smoothing)?;
    let top = if matches!(form, DistillForm::Convex { .. }) { 1.0 } else { f32::MAX };
    o.distill_schedule.check("distill", o.distill_final, 0.0..=top)?;
    let (optimizer, mut lr_schedule, clip) = optimizer_settings(&o, 0)?;
    let total_models = topo.total();
    if !o.teacher.is_empty() && o.label_smoothing > 0.0 {
        bail!(Invalid, "label_smoothing is the control for distillation; use it or --teacher, not both");
    }
    if o.independent_control {
        bail!(
            Invalid,
            "independent_control is an option of experiment (it trains the control pair beside the codistilled one); train and codistill would ignore it"
        );
    }
    if o.models > 1 && o.resume.is_some() {
        bail!(Invalid, "resume works for one model per process; run codistillation with --world and --exchange-dir to resume a model");
    }
    let (csv, tensorboard) = super::report::log_formats(&o.log_format)?;
    let task = T::prepare(&cfg, &Setup { dev, total_models, run: &o })?;
    if o.teacher_logits.is_none() && o.teacher_logits_rest != crate::distill::cache::CacheRest::Uniform {
        bail!(Invalid, "teacher_logits_rest places the rest of a cached teacher's mass: give --teacher-logits");
    }
    if o.teacher_logits.is_some() {
        let refuse = |what: &str| Err(Error::Invalid(format!("--teacher-logits: {what}")));
        if !o.teacher.is_empty() {
            return refuse("the cache replaces --teacher's forward passes: give one of the two (`teacher-cache` writes the cache from --teacher)");
        }
        if total_models > 1 {
            return refuse("a cache follows one model's stream: train one model (no codistillation)");
        }
        if o.hint_weight > 0.0 {
            return refuse("feature hints need the teachers' hidden states, which a cache does not hold: give --teacher for hints");
        }
        if o.label_smoothing > 0.0 {
            return refuse("label_smoothing is the control for distillation; use it or a teacher, not both");
        }
    }
    let has_teachers = total_models > 1 || !o.teacher.is_empty() || o.teacher_logits.is_some();
    let schedule = CodistillSchedule {
        burn_in: o.burn_in,
        exchange_every: o.exchange_every,
        max_publishes: o.max_publishes,
        weight: if has_teachers { form.weight() } else { 0.0 },
    };
    // Peers exchange checkpoints only when there are peers and the term is on.
    let codistill = total_models > 1 && schedule.weight > 0.0;
    let fixed = task.teachers();
    if fixed.len() != o.teacher.0.len() {
        bail!(Invalid, "--teacher: {} checkpoint(s) given, {} loaded: the {} task does not load fixed teachers", o.teacher.0.len(), fixed.len(), T::NAME);
    }
    let hints = super::options::check_hints("hint_weight", "feature hints", o.hint_weight, task.teacher_states())?;
    if o.hint_loss.relational() {
        bail!(Invalid, "hint_loss {} compares relations, not mapped units: give it as relation_loss (with relation_weight)", o.hint_loss);
    }
    if !o.relation_loss.relational() {
        bail!(Invalid, "relation_loss must be sp, rkd, rkd-angle or rkd-full (got {}); mse and cosine are hint_loss's", o.relation_loss);
    }
    if o.relation_weight > 0.0 && o.teacher_logits.is_some() {
        bail!(Invalid, "relation_weight needs the teachers' hidden states, which a cache does not hold: give --teacher");
    }
    // The relation term reads the same teacher states as a hint (and is refused where hints are).
    let relation = super::options::check_hints("relation_weight", "relations", o.relation_weight, task.teacher_states())?;
    // A feature hint maps a hidden layer of the model to a layer of the first teacher, of its
    // width: by default the last of each (the map `<prefix>.hint`), or the pairs of hint_layers
    // (`<prefix>.hint.<S>_<T>`).
    let pairs: Vec<(usize, usize, String, f32)> = match (hints, task.layer_widths()) {
        (false, _) | (_, None) => {
            if !o.hint_layers.is_empty() && !hints {
                bail!(Invalid, "hint_layers chooses the layers of feature hints: give hint_weight above 0 with --teacher");
            }
            Vec::new()
        }
        (true, Some((own, theirs))) if o.hint_layers.is_empty() => vec![(own.len() - 1, theirs.len() - 1, format!("{}.hint", T::PREFIX), o.hint_weight)],
        (true, Some((own, theirs))) => {
            let mut v = Vec::new();
            for &(a, b, w) in &o.hint_layers.0 {
                if a >= own.len() || b >= theirs.len() {
                    bail!(
                        Invalid,
                        "hint_layers {a}:{b}: the model has {} hidden layer(s) (0..{}) and the first teacher {} (0..{})",
                        own.len(),
                        own.len() - 1,
                        theirs.len(),
                        theirs.len() - 1
                    );
                }
                if v.iter().any(|(x, y, _, _)| (*x, *y) == (a, b)) {
                    bail!(Invalid, "hint_layers names the pair {a}:{b} twice");
                }
                let w = w.unwrap_or(o.hint_weight);
                if !(w >= 0.0 && w.is_finite()) {
                    bail!(Invalid, "hint_layers {a}:{b}: the weight must be a finite number >= 0, got {w}");
                }
                v.push((a, b, format!("{}.hint.{a}_{b}", T::PREFIX), w));
            }
            v
        }
    };
    let hint_map = |store: &mut ParamStore, rng: &mut Rng| -> Result<Vec<(usize, usize, Linear, f32)>> {
        let Some((own, theirs)) = task.layer_widths() else { return Ok(Vec::new()) };
        pairs.iter().map(|(a, b, name, w)| Linear::new(store, name, own[*a], theirs[*b], true, rng).map(|l| (*a, *b, l, *w))).collect()
    };
    let hint = hint_map(&mut ParamStore::new(), &mut Rng::new(0))?;
    // Adversarial distillation's discriminator, over a row of the model's outputs.
    if !(o.adversarial_weight >= 0.0 && o.adversarial_weight.is_finite()) {
        bail!(Invalid, "adversarial_weight must be a finite number >= 0, got {}", o.adversarial_weight);
    }
    let adversarial = o.adversarial_weight > 0.0;
    if adversarial && fixed.is_empty() && o.teacher_logits.is_none() {
        bail!(Invalid, "adversarial_weight: the discriminator tells a fixed teacher's outputs from the model's: give --teacher or --teacher-logits");
    }
    if adversarial && !task.forward_teachers() {
        bail!(Invalid, "adversarial_weight: a data-free run's teachers are not run on its batches; not with data_free");
    }
    if adversarial && o.adversarial_hidden == 0 {
        bail!(Invalid, "adversarial_hidden must be at least 1");
    }
    let disc_map = |store: &mut ParamStore, rng: &mut Rng| -> Result<Option<super::Discriminator>> {
        match (adversarial, task.cache_shape()) {
            (true, Some((_, width))) => super::Discriminator::new(store, T::PREFIX, width, o.adversarial_hidden, rng).map(Some),
            (true, None) => bail!(Invalid, "adversarial_weight: the {} task does not say its output width", T::NAME),
            (false, _) => Ok(None),
        }
    };
    let disc = disc_map(&mut ParamStore::new(), &mut Rng::new(0))?;
    let quant = o.quantize.bits();
    let init_ck = o.init_from.as_ref().map(|p| Checkpoint::load(p).map(|c| (c, p.clone()))).transpose()?;
    let mut members: Vec<Member<T>> = Vec::new();
    for local in 0..o.models {
        let index = topo.index(local);
        let (n, i) = topo.shard_of(index);
        let (mut stream, data_key) = task.stream(n, i)?;
        let mut store = ParamStore::new();
        let mut rng = task.member_rng(index, total_models);
        task.init(&mut store, &mut rng)?;
        if let Some((ck, path)) = &init_ck {
            let said = task.init_from(&mut store, ck, path).ok_or_else(|| Error::Invalid(format!("--init-from: the {} task cannot", T::NAME)))??;
            if local == 0 {
                eprintln!("initialised from {}: {said}", path.display());
            }
        }
        hint_map(&mut store, &mut rng)?;
        disc_map(&mut store, &mut rng)?;
        task.seed_stream(&mut stream, &rng);
        members.push(Member {
            index,
            store,
            opt: Optimizer::new(optimizer),
            stream,
            carry: task.zero_carry(task.model())?,
            peer_carry: vec![None; total_models],
            fixed_carry: vec![None; fixed.len()],
            teachers: TeacherTracker::new(total_models, o.exchange_every),
            best: None,
            last: None,
            data_key,
            last_loss: None,
            interval: Interval::default(),
        });
    }
    let cache = match &o.teacher_logits {
        Some(path) => {
            let (layout, classes) =
                task.cache_shape().ok_or_else(|| Error::Invalid(format!("--teacher-logits: the {} task reads no teacher cache", T::NAME)))?;
            let key = CacheKey { task: T::NAME.into(), layout, data_key: members[0].data_key };
            let c = TeacherCache::load(path, &key, classes)?;
            let need = task.cache_items(&members[0].stream, task.epoch_steps(&members[0].stream));
            if c.items() < need {
                bail!(Invalid, "{}: holds {} items, and a pass over this run's training stream needs {need}", path.display(), c.items());
            }
            Some(c)
        }
        None => None,
    };
    // Weighted fixed teachers: their outputs folded into one per batch.
    let teacher_weights = if o.teacher_weights.is_empty() && !o.teacher_confidence {
        None
    } else {
        let n = fixed.len() + cache.as_ref().map_or(0, |c| c.teachers());
        if n == 0 {
            bail!(Invalid, "teacher_weights and teacher_confidence weigh fixed teachers: give --teacher or --teacher-logits");
        }
        if total_models > 1 {
            bail!(Invalid, "teacher_weights and teacher_confidence weigh fixed teachers, and codistilling peers are averaged with them: train one model");
        }
        let w = if o.teacher_weights.is_empty() { vec![1.0; n] } else { o.teacher_weights.0.clone() };
        Some(crate::ops::softmax_kl::mix::normalise_weights(&w, n)?)
    };
    let mut step = 0u64;
    let resumed = match &o.resume {
        Some(path) => {
            let m = &mut members[0];
            let ck = Checkpoint::load(path)?;
            let saved: T::Config = checkpoint_config(&ck, path, T::FORMAT, T::WHAT)?;
            if !ck.meta.contains_key("optimizer_steps") {
                bail!(
                    Invalid,
                    "{}: a best-validation checkpoint holds the weights only (no optimizer state); resume from the run's last checkpoint",
                    path.display()
                );
            }
            let keys: Vec<&str> = T::RESUME_KEYS.iter().chain(RESUME_KEYS).copied().collect();
            crate::config::require_same(path, &keys, &saved.entries(), &cfg.entries())?;
            task.check_resume(&saved, &ck, path)?;
            check_same_data(path, &ck, m.data_key, &task.data_name())?;
            let mut store = ParamStore::new();
            task.init(&mut store, &mut Rng::new(0))?;
            load_weights(&mut store, &ck, path)?;
            // The hint map is no part of the model: restored apart.
            for (_, _, h, _) in &hint {
                super::restore_hint(&mut store, h, &ck, path, "feature hints on these layers (hint_weight 0, or other hint_layers)")?;
            }
            if let Some(d) = &disc {
                d.restore(&mut store, &ck, path)?;
            }
            m.store = store;
            let num = |k: &str| -> Result<u64> { ck.meta(k, path)?.parse().map_err(|_| Error::Invalid(format!("{}: {k} is not a number", path.display()))) };
            step = num("step")?;
            m.opt.load_state(
                ck.tensors.iter().filter_map(|(k, t)| k.strip_prefix("optim/").map(|n| (n.to_string(), t.clone()))).collect(),
                num("optimizer_steps")?,
            )?;
            m.best = ck.meta.get("best_valid").and_then(|b| b.parse().ok());
            Some((ck, path.clone()))
        }
        None => None,
    };
    for (k, m) in members.iter_mut().enumerate() {
        let ck = resumed.as_ref().filter(|_| k == 0).map(|(c, p)| (c, p.as_path()));
        task.start(&mut m.stream, &mut m.carry, step, ck)?;
        m.store.to_device(dev)?;
    }
    let epoch_steps = members.iter().map(|m| task.epoch_steps(&m.stream)).min().unwrap_or(0);
    let total = task.total_steps(epoch_steps);
    // The cosine ends at the last step, known once the shards are read.
    lr_schedule.total = total;
    check_burn_in(&schedule, has_teachers, total)?;
    if let Some(path) = o.resume.as_ref() {
        if step >= total {
            let (detail, option) = task.length_help(epoch_steps);
            bail!(
                Invalid,
                "{}: the checkpoint is at step {step} and this run ends at step {total}{detail}: nothing is left to train, and nothing was changed; raise {option} to train on",
                path.display()
            );
        }
        eprintln!("resumed from {} at step {step}", path.display());
    }
    // What peers in other processes must agree on, written into every published checkpoint.
    let (model_compat, loss_compat) = task.compat();
    let mut shapes = crate::hash::Hasher64::new();
    for (name, p) in members[0].store.iter() {
        shapes.update(format!("{name}{:?};", p.value.shape()).as_bytes());
    }
    let compat = format!(
        "{model_compat};params={:016x};world={};burn_in={};exchange_every={};distill={}{}{loss_compat};same_data={}",
        shapes.finish(),
        o.world,
        o.burn_in,
        o.exchange_every,
        form.describe(),
        match o.distill_schedule {
            Anneal::Constant => String::new(),
            a => format!("({a} to {})", o.distill_final.unwrap_or(0.0)),
        },
        o.same_data
    );
    let mut exchange = topo.exchange(o.exchange_dir.as_deref(), &members[0].store, &compat, o.resume.is_none())?;
    let mut exchange_said = std::collections::HashSet::new();
    if codistill {
        // The snapshot buffers are allocated now, not inside the first publishes.
        for m in &members {
            exchange.prepare(m.index, &m.store)?;
        }
    }
    let _out_lock = lock_out(&o.out)?;
    let mut log = MetricsLog::start(&o.out.join("metrics.jsonl"), o.resume.is_some().then_some(step))?;
    if tensorboard {
        log = log.with_tensorboard()?;
    }
    // The effective configuration, beside the results (`--config` takes it back).
    crate::data::text::write_atomic(&o.out.join("config.toml"), task.config().to_toml().as_bytes())?;
    let bar = progress(total, step);
    eprintln!(
        "{}: {} model(s) here of {total_models}, {} parameters each, {}",
        T::NAME,
        o.models,
        members[0].store.num_elements(),
        task.describe(&members[0].stream, epoch_steps, total)
    );
    for (k, t) in fixed.iter().enumerate() {
        // What the students are pulled toward, scored as they will be.
        if let Some(v) = bar.suspend(|| task.validate(t.model, t.store))? {
            eprintln!("teacher {k} ({}): validation {}", t.path.display(), v.describe());
            log.write(event(json!({"event": "teacher_valid", "teacher": k, "step": step}), v.fields()))?;
            if let Some(chance) = task.chance_loss().filter(|&c| v.loss() >= c) {
                let warning = format!(
                    "teacher {k} ({}) scores {:.5} on this run's validation data, no better than a prediction that ignores the inputs ({chance:.5}): \
                     was it trained on other data? The students will be pulled toward it",
                    t.path.display(),
                    v.loss()
                );
                eprintln!("warning: {warning}");
                log.write(event(json!({"event": "warning", "step": step, "message": warning}), json!({})))?;
            }
        }
    }
    if let Some(c) = &cache {
        eprintln!("distilling from cached outputs of {}", c.describe());
    }
    let model = task.model();
    let peers: Vec<usize> = (0..total_models).collect();
    // Items trained on by every model here since the last train event, and since when.
    let (mut interval_items, mut interval_t) = (0.0, Instant::now());
    let (mut items, mut train_secs, mut exchange_wait) = (0.0, 0.0, 0.0);
    let mut step_times = StepTimes::new(o.step_times, step);
    // Models trained in other processes, and whether their first checkpoints have been seen.
    let mut peer_wait = PeerWait::new(codistill, total_models, &members.iter().map(|m| m.index).collect::<Vec<_>>(), o.peer_timeout);
    while step < total {
        exchange_wait += peer_wait.before_step(exchange.as_mut(), &schedule, step, &mut log)?;
        step_times.begin(train_secs, exchange_wait);
        let lr = lr_schedule.at(step);
        let distill = schedule.distill_at(step);
        for m in members.iter_mut() {
            let (ts, mut waited_here) = (Instant::now(), 0.0);
            m.interval.staleness = (0, 0);
            task.before_batch(model, &mut m.stream, &m.store, step)?;
            let (batch, fresh) = task.batch(&mut m.stream, step, epoch_steps)?;
            if fresh {
                m.carry = task.zero_carry(model)?;
                m.peer_carry = vec![None; total_models];
                m.fixed_carry = vec![None; fixed.len()];
            }
            // Teachers: the newest snapshots of the other models, and the fixed teachers.
            let (mut peer_out, mut fixed_out, mut hint_target) = (Vec::new(), Vec::new(), None);
            if distill {
                let (snapshots, waited) = timed(|| peers.iter().filter(|&&p| p != m.index).filter_map(|&p| exchange.latest(p)).collect::<Vec<_>>());
                waited_here += waited.as_secs_f64();
                for t in &snapshots {
                    peer_out.push(teacher_output(&be, &task, model, &t.params, &batch, &mut m.peer_carry[t.rank], false)?.0);
                    let u = m.teachers.observe(m.index, t, step);
                    m.interval.staleness = (m.interval.staleness.0 + u.staleness, m.interval.staleness.1 + 1);
                    if u.swapped {
                        log_teacher_swap(&mut log, step, m.index, t, u.staleness, waited)?;
                    }
                    if let Some(w) = u.warning {
                        bar.suspend(|| eprintln!("{w}"));
                    }
                }
                if task.forward_teachers() {
                    for (k, (t, slot)) in fixed.iter().zip(m.fixed_carry.iter_mut()).enumerate() {
                        let (out, h) = teacher_output(&be, &task, t.model, t.store, &batch, slot, k == 0 && (hints || relation))?;
                        fixed_out.push(out);
                        hint_target = h.or(hint_target);
                    }
                }
                if let Some(c) = &cache {
                    fixed_out.extend(c.dense_all(&task.cache_keys(&batch), dev, o.teacher_logits_rest)?);
                }
            }
            let mut g = Graph::new().with_backend(be);
            // A quantized run's forward pass reads the quantized weights; their gradients go to the
            // shadow weights by name (the straight-through estimator).
            let quantized = quant.map(|bits| m.store.quantized_copy(bits)).transpose()?;
            let (out, hidden, next) = task.forward(model, &mut g, quantized.as_ref().unwrap_or(&m.store), &batch, &m.carry, Some((step, m.index)))?;
            if let (Some(w), false) = (&teacher_weights, fixed_out.is_empty()) {
                let folded = task.mix_teachers(&fixed_out, w, o.teacher_confidence, Anneal::progress(step, o.burn_in, total));
                fixed_out = vec![folded.ok_or_else(|| Error::Invalid(format!("teacher_weights: the {} task does not weigh teachers", T::NAME)))??];
            }
            let mix = distill.then(|| form.scheduled(step, o.burn_in, total, o.distill_schedule, o.distill_final));
            let loss = task.loss(&mut g, out, &batch, &peer_out, &fixed_out, mix)?;
            let hint_term = match &hint_target {
                Some(target) if !hint.is_empty() => {
                    let mut sum = None;
                    for (a, b, map, w) in &hint {
                        let t = super::hint_loss(&mut g, quantized.as_ref().unwrap_or(&m.store), map, hidden[*a], &target[*b], *w, o.hint_loss)?;
                        sum = Some(match sum {
                            Some(s) => g.add(s, t)?,
                            None => t,
                        });
                    }
                    sum
                }
                _ => None,
            };
            let relation_term = match (&hint_target, relation) {
                (Some(target), true) => {
                    let (own, theirs) = (*hidden.last().expect("a hidden layer"), target.last().expect("a hidden layer"));
                    let l = g.hidden_loss(o.relation_loss, own, theirs)?;
                    Some(g.unary(crate::ops::elementwise::Unary::Scale(o.relation_weight), l)?)
                }
                _ => None,
            };
            // The discriminator against the first (or the weighted) teacher's outputs.
            let adv_terms = match (&disc, fixed_out.first()) {
                (Some(d), Some(t)) if distill => {
                    Some(d.terms(&mut g, quantized.as_ref().unwrap_or(&m.store), out, t, o.adversarial_weight, o.adversarial_input)?)
                }
                _ => None,
            };
            let mut loss = loss;
            for term in [hint_term, relation_term, adv_terms.map(|t| t.0), adv_terms.map(|t| t.1)].into_iter().flatten() {
                loss = g.add(loss, term)?;
            }
            let lv = g.value(loss).item()? as f64;
            // Read after the loss, whose read already waited for the device.
            if let Some(term) = hint_term {
                m.interval.hint = (m.interval.hint.0 + g.value(term).item()? as f64, m.interval.hint.1 + 1);
            }
            if let Some((student, disc)) = adv_terms {
                let (a, b) = (g.value(student).item()? as f64, g.value(disc).item()? as f64);
                m.interval.adversarial = (m.interval.adversarial.0 + a, m.interval.adversarial.1 + b, m.interval.adversarial.2 + 1);
            }
            if let Some(term) = relation_term {
                m.interval.relation = (m.interval.relation.0 + g.value(term).item()? as f64, m.interval.relation.1 + 1);
            }
            check_loss(lv, step, m.index, &mut m.last_loss)?;
            let grads = g.backward(loss)?;
            m.store.zero_grads()?;
            g.accumulate_grads(&grads, &mut m.store)?;
            // The tape holds references to the weights; drop it so the update writes in place
            // instead of copying every parameter.
            drop(g);
            // The quantized forward store shares the other weights' buffers: gone before the update.
            drop(quantized);
            m.carry = next;
            // Compute time excludes the time spent in exchange calls, which is accounted apart.
            train_secs += ts.elapsed().as_secs_f64() - waited_here;
            exchange_wait += waited_here;
            let n = task.batch_items(&batch) as f64;
            (items, interval_items) = (items + n, interval_items + n);
            m.interval.loss += lv;
            m.interval.steps += 1;
        }
        // The updates come after every model's gradients, so that a publish's background copy of
        // a model's weights (which must end before that model's update) has the whole step.
        for m in members.iter_mut() {
            let (r, waited) = timed(|| exchange.settle(m.index));
            r?;
            exchange_wait += waited.as_secs_f64();
            let (r, took) = timed(|| m.opt.step(&mut m.store, lr, clip));
            m.interval.norm = r?;
            train_secs += took.as_secs_f64();
        }
        if codistill {
            exchange_wait += end_step(exchange.as_mut(), step + 1, schedule.publish_after(step), members.iter().map(|m| (m.index, &m.store)))?.as_secs_f64();
            exchange_health(exchange.as_mut(), &mut log, step + 1, &mut exchange_said, &bar)?;
        }
        step_times.end(train_secs, exchange_wait);
        step += 1;
        bar.set_position(step);
        let last = step == total;
        // Every log_every steps only (not at a last step between): a run cut in two by a resume
        // logs what the whole run does.
        if step.is_multiple_of(o.log_every.max(1)) {
            let rate = interval_items / interval_t.elapsed().as_secs_f64();
            let means: Vec<f64> = members.iter().map(|m| m.interval.loss / m.interval.steps as f64).collect();
            bar.set_message(task.progress(means.iter().sum::<f64>() / means.len() as f64, rate));
            for (m, mean) in members.iter_mut().zip(means) {
                let i = std::mem::take(&mut m.interval);
                let stale = if i.staleness.1 > 0 { i.staleness.0 as f64 / i.staleness.1 as f64 } else { f64::NAN };
                let hint_loss = if i.hint.1 > 0 { i.hint.0 / i.hint.1 as f64 } else { f64::NAN };
                let relation_loss = if i.relation.1 > 0 { i.relation.0 / i.relation.1 as f64 } else { f64::NAN };
                let (adversarial_loss, discriminator_loss) = if i.adversarial.2 > 0 {
                    (i.adversarial.0 / i.adversarial.2 as f64, i.adversarial.1 / i.adversarial.2 as f64)
                } else {
                    (f64::NAN, f64::NAN)
                };
                let mut tail = json!({"lr": lr as f64, "grad_norm": i.norm});
                if schedule.weight > 0.0 {
                    // The term's weight and the task's scheduled settings at this step.
                    let on = schedule.distill_at(step);
                    tail["distill_weight"] = json!(if on { form.weight_at(step, o.burn_in, total, o.distill_schedule, o.distill_final) as f64 } else { 0.0 });
                    for (k, v) in task.schedule_fields(Anneal::progress(step, o.burn_in, total)) {
                        tail[k] = json!(v);
                    }
                }
                // The process's rate: every model here.
                tail[format!("{}_per_s", T::UNIT)] = json!(rate);
                let tail =
                    event(tail, json!({"mean_staleness": stale, "exchange_wait_s": exchange_wait, "hint_loss": hint_loss, "relation_loss": relation_loss}));
                let tail =
                    if adversarial { event(tail, json!({"adversarial_loss": adversarial_loss, "discriminator_loss": discriminator_loss})) } else { tail };
                let head = event(json!({"event": "train", "step": step, "model": m.index, "loss": mean}), task.train_fields(mean));
                log.write(event(head, tail))?;
            }
            (interval_items, interval_t) = (0.0, Instant::now());
        }
        let epoch_end = epoch_steps > 0 && step.is_multiple_of(epoch_steps);
        if due(step, o.eval_every, epoch_end, last) {
            for m in members.iter_mut() {
                // Suspended: the evaluation draws its own progress bar.
                let quantized = quant.map(|bits| m.store.quantized_copy(bits)).transpose()?;
                let Some(v) = bar.suspend(|| task.validate(model, quantized.as_ref().unwrap_or(&m.store)))? else { continue };
                let improved = m.best.is_none_or(|b| v.loss() < b);
                if improved {
                    m.best = Some(v.loss());
                }
                bar.suspend(|| eprintln!("step {step}: model {} validation {}{}", m.index, v.describe(), if improved { " (best)" } else { "" }));
                log.write(event(json!({"event": "valid", "step": step, "model": m.index}), v.fields()))?;
                m.last = Some(v);
                if improved {
                    save(&task, &task.checkpoint_path(&o.out, m.index, o.models > 1, true), m, step, false, quant)?;
                }
            }
        }
        if due(step, o.checkpoint_every, epoch_end, last) || epoch_end {
            for m in &members {
                let path = task.checkpoint_path(&o.out, m.index, o.models > 1, false);
                save(&task, &path, m, step, true, quant)?;
                if o.keep_checkpoints {
                    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("checkpoint");
                    // A copy of the file just written (serialising the model again would cost as much).
                    let snapshot = path.with_file_name(format!("{stem}-step{step}.safetensors"));
                    // Under a temporary name, then renamed: a kill leaves no half snapshot.
                    let tmp = crate::data::text::write_temp_name(&snapshot);
                    std::fs::copy(&path, &tmp).and_then(|_| std::fs::rename(&tmp, &snapshot)).map_err(|e| Error::io(&snapshot, e))?;
                }
            }
        }
    }
    bar.finish_and_clear();
    drop(exchange);
    if let Some(bits) = quant {
        // The last checkpoint holds the shadow weights; what is scored from here on is the
        // quantized model.
        for m in members.iter_mut() {
            let q = m.store.quantized_copy(bits)?;
            m.store.copy_weights_from(&q)?;
        }
    }
    step_times.write(&o.out)?;
    let ensemble = match members.len() {
        0 | 1 => None,
        _ => task.ensemble(&members.iter().map(|m| (&m.store, m.last.as_ref())).collect::<Vec<_>>())?,
    };
    if let Some((e, churn)) = &ensemble {
        eprintln!(
            "ensemble of {} models: validation {}{}",
            members.len(),
            e.describe(),
            churn.map(|c| format!("; churn between models 0 and 1: {c:.5}")).unwrap_or_default()
        );
        let churn = churn.map_or(json!({}), |c| json!({ "churn": c }));
        log.write(event(event(json!({"event": "ensemble", "step": step}), e.fields()), churn))?;
    }
    let run = Finished { steps: step, members, ensemble, items, train_secs, exchange_wait, started };
    let (summary, fields) = task.finish(&mut log, &run)?;
    let result = event(
        json!({"run": log.run(), "steps": step, "models": run.members.len(), "teachers": fixed.len() + cache.as_ref().map_or(0, |c| c.teachers())}),
        fields,
    );
    let result = match task.floor() {
        Some((name, y)) => event(result, json!({"floor_name": name, "floor": y})),
        None => result,
    };
    let result = event(
        result,
        json!({
            "train_s": train_secs,
            "exchange_wait_s": exchange_wait,
            "seconds": started.elapsed().as_secs_f64(),
            "teacher_refreshes": run.members.iter().map(|m| m.teachers.refreshes as f64).collect::<Vec<_>>(),
            "mean_staleness": run.members.iter().map(|m| m.teachers.mean_staleness().unwrap_or(f64::NAN)).collect::<Vec<_>>(),
        }),
    );
    write_result(&o.out.join("result.json"), &result)?;
    if csv {
        super::report::write_csv(&o.out)?;
    }
    Ok(summary)
}
