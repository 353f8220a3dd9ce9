//! Optimizers over a `ParamStore`, with global-norm clipping folded into the update and learning-rate
//! schedules. State tensors are keyed by parameter name, so they checkpoint beside the weights.

use crate::ops::optim::{compact_rows, update, Compact, Grad, Rule};
use crate::ops::reduce::{sum_squares, sum_squares_cpu, sum_squares_many};
use crate::params::{GradState, ParamStore};
use crate::tensor::{Device, Tensor};
use crate::{bail, Result};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerKind {
    /// SGD with momentum (0 for plain SGD) and L2 weight decay.
    Sgd { momentum: f32, weight_decay: f32 },
    /// Adagrad with a starting accumulator value (0.1 as in TensorFlow keeps first steps bounded).
    Adagrad { eps: f32, initial_accumulator: f32 },
    /// Adam with decoupled weight decay (AdamW when weight_decay > 0).
    Adam { beta1: f32, beta2: f32, eps: f32, weight_decay: f32 },
}

impl OptimizerKind {
    pub fn sgd() -> Self {
        OptimizerKind::Sgd { momentum: 0.0, weight_decay: 0.0 }
    }
    pub fn adagrad() -> Self {
        OptimizerKind::Adagrad { eps: 1e-10, initial_accumulator: 0.1 }
    }
    pub fn adam() -> Self {
        OptimizerKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

pub struct Optimizer {
    pub kind: OptimizerKind,
    /// Per parameter: momentum (SGD), accumulator (Adagrad), or first and second moments (Adam).
    state: BTreeMap<String, Vec<Tensor>>,
    step: u64,
}

/// The global L2 norm of all gradients (f64 accumulation; row-sparse gradients cost their rows).
pub fn grad_norm(store: &ParamStore) -> Result<f64> {
    Ok(norm_squared(store, &BTreeMap::new())?.sqrt())
}

/// GPU row-sparse gradients compacted by [`compact_rows`], by parameter name.
type Compacted = BTreeMap<String, Compact>;

/// The squared global norm, taking GPU row-sparse gradients from `compacted` where present. GPU
/// gradients are reduced together, with one copy of the result to the host.
fn norm_squared(store: &ParamStore, compacted: &Compacted) -> Result<f64> {
    // GPU row-sparse gradients not compacted by the caller are compacted here.
    let mut local = Compacted::new();
    for (name, p) in store.iter() {
        if p.grad.device() != Device::Cpu && matches!(p.state, GradState::Rows(_)) && !compacted.contains_key(name) {
            local.insert(name.clone(), compact_rows(&p.grad, &p.touched_rows().unwrap_or_default())?);
        }
    }
    let mut s = 0.0;
    let mut on_gpu: Vec<&Tensor> = Vec::new();
    for (name, p) in store.iter() {
        match &p.state {
            GradState::Zero => {}
            _ if p.grad.device() != Device::Cpu => on_gpu.push(match compacted.get(name).or_else(|| local.get(name)) {
                Some(c) => &c.rows,
                None => &p.grad,
            }),
            GradState::Dense => s += sum_squares(&p.grad)?,
            GradState::Rows(_) => {
                let (w, g) = (p.grad.dim(1), p.grad.f32s()?);
                s += p.touched_rows().unwrap_or_default().iter().map(|&r| sum_squares_cpu(&g[r as usize * w..(r as usize + 1) * w])).sum::<f64>();
            }
        }
    }
    if !on_gpu.is_empty() {
        s += sum_squares_many(&on_gpu)?;
    }
    Ok(s)
}

impl Optimizer {
    pub fn new(kind: OptimizerKind) -> Self {
        Optimizer { kind, state: BTreeMap::new(), step: 0 }
    }

    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// The optimizer's state by `name/slot`, for checkpoints.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.state.iter().flat_map(|(n, ts)| ts.iter().enumerate().map(move |(i, t)| (format!("{n}/{i}"), t.clone()))).collect()
    }

    /// Restore state saved by `state_tensors` and the step count.
    pub fn load_state(&mut self, tensors: Vec<(String, Tensor)>, step: u64) -> Result<()> {
        self.state.clear();
        for (key, t) in tensors {
            let Some((name, slot)) = key.rsplit_once('/') else { bail!(Invalid, "optimizer state key {key:?} lacks a /slot suffix") };
            let slot: usize = slot.parse().map_err(|_| crate::Error::Invalid(format!("optimizer state key {key:?}: slot is not a number")))?;
            let v = self.state.entry(name.to_string()).or_default();
            if v.len() != slot {
                bail!(Invalid, "optimizer state for {name:?} has slot {slot} out of order");
            }
            v.push(t);
        }
        self.step = step;
        Ok(())
    }

    /// One update of every parameter from its gradient. With `clip = Some(max)`, gradients are
    /// scaled so that their global norm is at most `max`. Returns the norm before clipping; a
    /// non-finite norm is an error and leaves the weights untouched.
    ///
    /// A parameter without gradient is skipped (PyTorch's rule for `grad = None`); a row-sparse
    /// gradient updates only its rows: exact for SGD and Adagrad, "lazy" for momentum and Adam
    /// (the untouched rows' moments wait, as in TensorFlow's LazyAdam), which is how large
    /// embedding tables are trained.
    pub fn step(&mut self, store: &mut ParamStore, lr: f32, clip: Option<f32>) -> Result<f64> {
        // GPU row-sparse gradients are compacted once, for the norm and for the update.
        let mut compacted = Compacted::new();
        for (name, p) in store.iter() {
            if p.grad.device() != Device::Cpu && matches!(p.state, GradState::Rows(_)) {
                compacted.insert(name.clone(), compact_rows(&p.grad, &p.touched_rows().unwrap_or_default())?);
            }
        }
        let norm = norm_squared(store, &compacted)?.sqrt();
        if !norm.is_finite() {
            bail!(
                Invalid,
                "gradient norm is {norm} at optimizer step {}; the weights were not updated (lower the learning rate or enable clipping)",
                self.step + 1
            );
        }
        let scale = match clip {
            Some(max) if norm > max as f64 => (max as f64 / norm) as f32,
            _ => 1.0,
        };
        self.step += 1;
        let step = self.step;
        let (now, params) = store.iter_for_update();
        for (name, p) in params {
            let rule = match self.kind {
                OptimizerKind::Sgd { momentum, weight_decay } => Rule::Sgd { lr, momentum, weight_decay },
                OptimizerKind::Adagrad { eps, .. } => Rule::Adagrad { lr, eps },
                OptimizerKind::Adam { beta1, beta2, eps, weight_decay } => Rule::Adam { lr, beta1, beta2, eps, weight_decay, step },
            };
            let init = match self.kind {
                OptimizerKind::Adagrad { initial_accumulator, .. } => initial_accumulator,
                _ => 0.0,
            };
            if p.state == GradState::Zero {
                continue;
            }
            let dev = p.value.device();
            let st = match self.state.entry(name.clone()) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert((0..rule.slots()).map(|_| Tensor::full_on(p.value.shape(), init, dev)).collect::<Result<_>>()?)
                }
            };
            // State restored from a checkpoint arrives on the host: it follows its weights.
            for s in st.iter_mut() {
                if s.device() != dev {
                    *s = s.to_device(dev)?;
                }
            }
            let touched = p.touched_rows();
            p.mark_written(now, touched.as_deref());
            // One fused update per parameter; on the GPU a row-sparse gradient is compacted first.
            let sparse = compacted.remove(name.as_str());
            let grad = match (&sparse, &touched) {
                (Some(c), _) => Grad::Compact(c),
                (None, Some(rows)) => Grad::Rows(&p.grad, rows),
                (None, None) => Grad::Dense(&p.grad),
            };
            update(rule, &mut p.value, grad, st, scale)?;
        }
        Ok(norm)
    }
}

/// Learning rate as a function of the step: `base` before `start`, then multiplied by `factor`
/// at `start` and again every `every` steps (Zaremba et al.: from epoch 5, halve every epoch).
/// `every = 0` means no decay. With `cosine = Some(min)` the step decay gives way to a cosine
/// from `base` at the end of the warm-up to `min` at step `total`. A `warmup` of k steps scales
/// the first k steps' rate by (step + 1) / k.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    pub base: f32,
    pub factor: f32,
    pub every: u64,
    pub start: u64,
    pub warmup: u64,
    pub cosine: Option<f32>,
    /// The run's last step (the cosine's end).
    pub total: u64,
}

impl LrSchedule {
    pub fn constant(base: f32) -> Self {
        LrSchedule { base, factor: 1.0, every: 0, start: 0, warmup: 0, cosine: None, total: 0 }
    }

    pub fn at(&self, step: u64) -> f32 {
        let lr = match self.cosine {
            Some(min) if step >= self.warmup => {
                let span = self.total.saturating_sub(self.warmup).max(1);
                let p = ((step - self.warmup) as f64 / span as f64).min(1.0);
                (min as f64 + (self.base - min) as f64 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())) as f32
            }
            Some(_) => self.base,
            None if step < self.start || self.every == 0 => self.base,
            None => self.base * self.factor.powi(((step - self.start) / self.every + 1).min(i32::MAX as u64) as i32),
        };
        if step < self.warmup {
            lr * (step + 1) as f32 / self.warmup as f32
        } else {
            lr
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quadratic_store() -> ParamStore {
        let mut s = ParamStore::new();
        s.insert("w", Tensor::from_f32(vec![3.0, -4.0], &[2]).unwrap()).unwrap();
        s
    }

    #[test]
    fn every_optimizer_minimises_a_quadratic() {
        // Adagrad's steps shrink as 1/sqrt(t), so it gets a larger rate.
        for (kind, lr) in [(OptimizerKind::Sgd { momentum: 0.9, weight_decay: 0.0 }, 0.05), (OptimizerKind::adagrad(), 1.0), (OptimizerKind::adam(), 0.05)] {
            let mut s = quadratic_store();
            let mut opt = Optimizer::new(kind);
            for _ in 0..500 {
                s.zero_grads().unwrap();
                let w = s.get("w").unwrap().clone(); // loss = |w|^2 / 2, grad = w
                s.accumulate_grad("w", &w).unwrap();
                opt.step(&mut s, lr, None).unwrap();
            }
            let w = s.get("w").unwrap().f32s().unwrap().to_vec();
            assert!(w.iter().all(|x| x.abs() < 0.05), "{kind:?} ended at {w:?}");
        }
    }

    #[test]
    fn clipping_bounds_the_update_and_nan_is_refused() {
        let mut s = quadratic_store();
        s.accumulate_grad("w", &Tensor::from_f32(vec![30.0, -40.0], &[2]).unwrap()).unwrap();
        let mut opt = Optimizer::new(OptimizerKind::sgd());
        let norm = opt.step(&mut s, 1.0, Some(5.0)).unwrap();
        assert_eq!(norm, 50.0);
        assert_eq!(s.get("w").unwrap().f32s().unwrap(), &[0.0, 0.0]); // moved by exactly (3, -4)
        s.zero_grads().unwrap();
        s.accumulate_grad("w", &Tensor::from_f32(vec![f32::NAN, 0.0], &[2]).unwrap()).unwrap();
        let e = opt.step(&mut s, 1.0, Some(5.0)).unwrap_err().to_string();
        assert!(e.contains("NaN") && e.contains("step 2"), "{e}");
        assert_eq!(s.get("w").unwrap().f32s().unwrap(), &[0.0, 0.0]);
    }

    #[test]
    fn sparse_rows_update_like_dense_for_adagrad_and_clear_after() {
        let table = Tensor::from_f32((0..12).map(|x| x as f32 * 0.1).collect(), &[4, 3]).unwrap();
        let ids = Tensor::from_i32(vec![2, 0, 2], &[3]).unwrap();
        let rows = Tensor::from_f32(vec![1., 2., 3., 4., 5., 6., 7., 8., 9.], &[3, 3]).unwrap();
        let mut dense_grad = Tensor::zeros(&[4, 3]);
        crate::ops::embedding::scatter_add(&crate::Backend::default(), &rows, &ids, &mut dense_grad).unwrap();
        let (mut a, mut b) = (ParamStore::new(), ParamStore::new());
        a.insert("t", table.clone()).unwrap();
        b.insert("t", table).unwrap();
        a.accumulate_grad("t", &dense_grad).unwrap();
        b.accumulate_rows(&crate::Backend::default(), "t", &ids, &rows).unwrap();
        assert_eq!(grad_norm(&a).unwrap(), grad_norm(&b).unwrap());
        let (mut oa, mut ob) = (Optimizer::new(OptimizerKind::adagrad()), Optimizer::new(OptimizerKind::adagrad()));
        oa.step(&mut a, 0.1, Some(10.0)).unwrap();
        ob.step(&mut b, 0.1, Some(10.0)).unwrap();
        assert_eq!(a.get("t").unwrap(), b.get("t").unwrap());
        b.zero_grads().unwrap();
        assert!(b.param("t").unwrap().grad.f32s().unwrap().iter().all(|&v| v == 0.0));
        assert_eq!(b.param("t").unwrap().state, GradState::Zero);
    }

    /// AdamW (decoupled: the decay is no part of the moments) and SGD's L2 decay (part of the
    /// gradient, so of the momentum) against their exact updates in f64, over three steps of the
    /// optimizer's own dispatch. An Adam that folded the decay into its moments (L2-Adam), or a
    /// decay applied before or after the moment update, misses by more than f32 rounding.
    #[test]
    fn weight_decay_is_the_exact_decoupled_update() {
        let w0 = [0.8f64, -1.5, 0.3, 2.0];
        let grads = [[0.5f64, -0.25, 0.0, 1.0], [-0.3, 0.7, 0.1, 0.0], [0.2, 0.2, -0.4, 0.9]];
        let (lr, wd) = (0.05f64, 0.3f64);
        let run = |kind: OptimizerKind| {
            let mut s = ParamStore::new();
            s.insert("w", Tensor::from_f32(w0.iter().map(|&x| x as f32).collect(), &[4]).unwrap()).unwrap();
            let mut opt = Optimizer::new(kind);
            for g in &grads {
                s.zero_grads().unwrap();
                s.accumulate_grad("w", &Tensor::from_f32(g.iter().map(|&x| x as f32).collect(), &[4]).unwrap()).unwrap();
                opt.step(&mut s, lr as f32, None).unwrap();
            }
            s.get("w").unwrap().f32s().unwrap().iter().map(|&x| x as f64).collect::<Vec<_>>()
        };
        let close = |got: &[f64], want: &[f64], what: &str| {
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() <= 2e-6 * (1.0 + w.abs()), "{what}: {got:?} vs exact {want:?}");
            }
        };
        // AdamW: m, v from the gradient alone; w -= lr (m^ / (sqrt(v^) + eps) + wd w).
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let (mut w, mut m, mut v) = (w0.to_vec(), [0f64; 4], [0f64; 4]);
        for (t, g) in grads.iter().enumerate() {
            let t = t as i32 + 1;
            for i in 0..4 {
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                let (mh, vh) = (m[i] / (1.0 - b1.powi(t)), v[i] / (1.0 - b2.powi(t)));
                w[i] -= lr * (mh / (vh.sqrt() + eps) + wd * w[i]);
            }
        }
        close(&run(OptimizerKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: wd as f32 }), &w, "AdamW");
        // SGD with momentum and L2: g' = g + wd w; v = mu v + g'; w -= lr v.
        let mu = 0.9f64;
        let (mut w, mut vel) = (w0.to_vec(), [0f64; 4]);
        for g in &grads {
            for i in 0..4 {
                vel[i] = mu * vel[i] + g[i] + wd * w[i];
                w[i] -= lr * vel[i];
            }
        }
        close(&run(OptimizerKind::Sgd { momentum: mu as f32, weight_decay: wd as f32 }), &w, "SGD with L2");
    }

    #[test]
    fn step_decay_schedule() {
        let s = LrSchedule { factor: 0.5, every: 10, start: 20, ..LrSchedule::constant(1.0) };
        assert_eq!((s.at(0), s.at(19), s.at(20), s.at(29), s.at(30)), (1.0, 1.0, 0.5, 0.5, 0.25));
        assert_eq!(LrSchedule::constant(0.3).at(1_000_000), 0.3);
        let never = LrSchedule { factor: 0.5, ..LrSchedule::constant(0.3) };
        assert_eq!((never.at(0), never.at(1_000_000)), (0.3, 0.3));
    }

    #[test]
    fn warmup_then_cosine_schedule() {
        // Warm-up: 1/4, 2/4, 3/4 of the rate, then the rate; the step decay goes on after it.
        let w = LrSchedule { warmup: 4, factor: 0.5, every: 10, start: 20, ..LrSchedule::constant(1.0) };
        assert_eq!((w.at(0), w.at(1), w.at(3), w.at(4), w.at(20)), (0.25, 0.5, 1.0, 1.0, 0.5));
        // Cosine from the warm-up's end (step 10) to 0.1 at step 110: halfway at step 60.
        let c = LrSchedule { warmup: 10, cosine: Some(0.1), total: 110, ..LrSchedule::constant(1.0) };
        let close = |a: f32, b: f32| (a - b).abs() < 1e-6;
        assert!(close(c.at(4), 0.5) && close(c.at(10), 1.0) && close(c.at(60), 0.55) && close(c.at(110), 0.1) && close(c.at(500), 0.1));
        assert!((10..110).all(|t| c.at(t + 1) <= c.at(t)), "the cosine rises somewhere");
    }
}
