//! A third task through the same training loop, with no change to the loop: a 5-class classifier
//! of points from a Gaussian mixture (an MLP, cross-entropy, accuracy). Two models codistill on
//! disjoint halves and are compared with the same pair trained independently (`distill_lambda` 0).
//! `cargo run --release --example mixture_task` (CI runs it).

use codistill::nn::Mlp;
use codistill::train::{self, Finished, MetricsLog, Score, Setup, Task};
use codistill::{DistillParams, Graph, ParamStore, Result, Rng, Tensor, Var};
use serde_json::{json, Value};
use std::ops::Range;
use std::path::PathBuf;

const D: usize = 8;
const K: usize = 5;
const HIDDEN: usize = 64;
const BATCH: usize = 32;

codistill::config_table! {
    /// The mixture classifier's own options; the shared ones (optimizer, codistillation, ...) come with them.
    pub struct MixConfig {
        /// Training points (validation gets as many)
        points: usize = 4000,
        /// Passes over each model's points
        epochs: usize = 6,
    }
    shared { out = PathBuf::from("runs/mixture"), burn_in = 100, exchange_every = 20, eval_every = 125, device = train::DeviceChoice::Cpu, models = 2 }
}

/// Points of 5 overlapping Gaussian classes in 8 dimensions (the centres fixed), and their labels.
fn points(n: usize, seed: u64) -> (Tensor, Tensor) {
    let centres = Rng::new(7).normal_vec(K * D, 0.8);
    let mut r = Rng::new(seed);
    let y: Vec<i32> = (0..n).map(|_| (r.uniform() * K as f64) as i32 % K as i32).collect();
    let noise = r.normal_vec(n * D, 1.0);
    let x = (0..n * D).map(|i| centres[y[i / D] as usize * D + i % D] + noise[i]).collect();
    (Tensor::from_f32(x, &[n, D]).unwrap(), Tensor::from_i32(y, &[n]).unwrap())
}

/// Validation cross-entropy and accuracy, with the predicted probabilities `[n, K]`.
struct Eval(f64, f64, Vec<f32>);

impl Score for Eval {
    fn loss(&self) -> f64 {
        self.0
    }
    fn fields(&self) -> Value {
        json!({"loss": self.0, "accuracy": self.1})
    }
}

struct Mixture {
    cfg: MixConfig,
    train: (Tensor, Tensor),
    valid: (Tensor, Tensor),
    model: Mlp,
}

/// Probabilities `p` `[n, K]` scored against labels `y`.
fn score(p: Vec<f32>, y: &[i32]) -> Eval {
    let row = |i: usize| &p[i * K..(i + 1) * K];
    let ce = y.iter().enumerate().map(|(i, &c)| -(row(i)[c as usize].max(1e-12) as f64).ln()).sum::<f64>() / y.len() as f64;
    let argmax = |r: &[f32]| (0..K).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap_or(0);
    let hits = y.iter().enumerate().filter(|(i, &c)| argmax(row(*i)) == c as usize).count();
    Eval(ce, hits as f64 / y.len() as f64, p)
}

impl Task for Mixture {
    type Config = MixConfig;
    type Model = Mlp;
    type Batch = (Tensor, Tensor);
    type Stream = Range<usize>;
    type Carry = ();
    type Eval = Eval;
    type Summary = Vec<(f64, f64)>;
    const NAME: &'static str = "mixture";
    const TITLE: &'static str = "Mixture";
    const WHAT: &'static str = "a mixture classifier";
    const FORMAT: &'static str = "mixture-example-v1";
    const PREFIX: &'static str = "mix";
    const UNIT: &'static str = "points";
    const RESUME_KEYS: &'static [&'static str] = &["points"];

    fn prepare(cfg: &MixConfig, _: &Setup) -> Result<Self> {
        let model = Mlp::new(&mut ParamStore::new(), "mix", &[D, HIDDEN, K], &mut Rng::new(0))?;
        Ok(Mixture { cfg: cfg.clone(), train: points(cfg.points, 1), valid: points(cfg.points, 2), model })
    }
    fn config(&self) -> &MixConfig {
        &self.cfg
    }
    fn model(&self) -> &Mlp {
        &self.model
    }
    fn init(&self, store: &mut ParamStore, rng: &mut Rng) -> Result<()> {
        Mlp::new(store, "mix", &[D, HIDDEN, K], rng).map(drop)
    }
    fn stream(&self, shards: usize, shard: usize) -> Result<(Range<usize>, Option<u64>)> {
        Ok((shard * self.cfg.points / shards..(shard + 1) * self.cfg.points / shards, None))
    }
    fn epoch_steps(&self, s: &Range<usize>) -> u64 {
        s.len().div_ceil(BATCH) as u64
    }
    fn total_steps(&self, epoch_steps: u64) -> u64 {
        epoch_steps * self.cfg.epochs as u64
    }
    /// The batch follows from the step (a resume needs no saved position).
    fn batch(&self, s: &mut Range<usize>, step: u64, _: u64) -> Result<((Tensor, Tensor), bool)> {
        let rows: Vec<usize> = (0..BATCH).map(|k| s.start + (step as usize * BATCH + k) % s.len()).collect();
        let (x, y) = (self.train.0.f32s()?, self.train.1.i32s()?);
        let xb = rows.iter().flat_map(|&r| x[r * D..(r + 1) * D].iter().copied()).collect();
        Ok(((Tensor::from_f32(xb, &[rows.len(), D])?, Tensor::from_i32(rows.iter().map(|&r| y[r]).collect(), &[rows.len()])?), false))
    }
    fn batch_items(&self, b: &(Tensor, Tensor)) -> usize {
        b.1.numel()
    }
    fn forward(&self, m: &Mlp, g: &mut Graph, s: &ParamStore, b: &(Tensor, Tensor), _: &(), _: Option<(u64, usize)>) -> Result<(Var, Vec<Var>, ())> {
        let x = g.constant(b.0.clone());
        m.forward(g, s, x).map(|logits| (logits, vec![logits], ()))
    }
    fn loss(&self, g: &mut Graph, logits: Var, b: &(Tensor, Tensor), peers: &[Tensor], fixed: &[Tensor], mix: Option<codistill::distill::Mix>) -> Result<Var> {
        let teachers: Vec<Tensor> = peers.iter().chain(fixed).cloned().collect();
        match mix {
            Some(m) if !teachers.is_empty() => {
                let l = g.softmax_kl(logits, &teachers, Some(&b.1), DistillParams { temperature: 1.0, alpha: m.mix, ..Default::default() })?.0;
                train::scaled(g, l, m.scale)
            }
            _ => g.softmax_xent(logits, &b.1),
        }
    }
    fn validate(&self, m: &Mlp, s: &ParamStore) -> Result<Option<Eval>> {
        let mut g = Graph::no_grad();
        let x = g.constant(self.valid.0.clone());
        let logits = m.forward(&mut g, s, x)?;
        let z = g.value(logits).to_vec_f32()?;
        let p = z.chunks(K).flat_map(|r| {
            let e: Vec<f32> = r.iter().map(|v| (v - r.iter().fold(f32::MIN, |a, &b| a.max(b))).exp()).collect();
            e.iter().map(|v| v / e.iter().sum::<f32>()).collect::<Vec<_>>()
        });
        Ok(Some(score(p.collect(), self.valid.1.i32s()?)))
    }
    fn ensemble(&self, members: &[(&ParamStore, Option<&Eval>)]) -> Result<Option<(Eval, Option<f64>)>> {
        let Some(e) = members.iter().map(|m| m.1).collect::<Option<Vec<_>>>() else { return Ok(None) };
        let mean = (0..e[0].2.len()).map(|i| e.iter().map(|v| v.2[i]).sum::<f32>() / e.len() as f32).collect();
        let churn = e[0].2.iter().zip(&e[1].2).map(|(a, b)| (a - b).abs() as f64).sum::<f64>() / e[0].2.len() as f64;
        Ok(Some((score(mean, self.valid.1.i32s()?), Some(churn))))
    }
    fn finish(&self, _: &mut MetricsLog, run: &Finished<Self>) -> Result<(Vec<(f64, f64)>, Value)> {
        let mut figures: Vec<(f64, f64)> = run.members.iter().filter_map(|m| m.last.as_ref().map(|e| (e.0, e.1))).collect();
        figures.extend(run.ensemble.as_ref().map(|(e, c)| (e.0, c.unwrap_or(f64::NAN))));
        Ok((figures, json!({})))
    }
}

fn main() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("codistill-mixture-{}", std::process::id()));
    let co = MixConfig { out: dir.join("codistilled"), ..MixConfig::default() };
    let alone = MixConfig { out: dir.join("independent"), distill_lambda: 0.0, ..co.clone() };
    for (name, cfg) in [("codistilled", co), ("independent", alone)] {
        let f = train::train::<Mixture>(&cfg)?;
        println!("{name}: loss {:.4} / {:.4}, accuracy {:.3} / {:.3}, ensemble {:.4}, churn {:.4}", f[0].0, f[1].0, f[0].1, f[1].1, f[2].0, f[2].1);
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
