//! Named parameters and their gradients. A checkpoint is this map from name to tensor.

use crate::ops::elementwise::axpy;
use crate::ops::embedding::scatter_add;
use crate::tensor::{Device, Tensor};
use crate::{bail, Result};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Which part of a gradient may be non-zero: lets an embedding table of millions of rows be
/// cleared, clipped and updated at the cost of the rows a batch touched.
#[derive(Clone, Debug, PartialEq)]
pub enum GradState {
    /// No gradient since the last `zero_grads` (optimizers skip the parameter, as PyTorch does
    /// for a `None` grad).
    Zero,
    /// Any element may be non-zero.
    Dense,
    /// Only these rows (of a 2-D parameter) may be non-zero; may hold repeats.
    Rows(Vec<u32>),
}

#[derive(Clone, Debug)]
pub struct Param {
    pub value: Tensor,
    /// Same shape as `value`; accumulated by `Graph::accumulate_grads`, cleared by `zero_grads`.
    pub grad: Tensor,
    pub state: GradState,
    /// When the value was last written, on its store's write clock.
    written: Written,
}

/// When each part of a weight was last written, on the store's write clock: lets a publish into
/// a reused buffer copy only the rows written since that buffer was filled (an embedding table
/// of millions of rows changes in the few thousand a window of batches touched).
#[derive(Clone, Debug, Default)]
struct Written {
    /// The last write of the whole value.
    all: u64,
    /// Per row of a 2-D value, the last row-sparse update (empty until the first one). Shared
    /// with a [`WeightsView`] while a background copy reads it; the next update then owns it again
    /// (the exchange finishes its copy before the publisher's next update, so no copy is made).
    rows: Arc<Vec<u64>>,
}

/// A point in one store's write history: what a copy of its weights is current to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteMark {
    store: u64,
    clock: u64,
}

/// A store's weights and write history as of a [`ParamStore::weights_view`] call, sharing its
/// buffers; `Send`, so a background thread can copy from it.
#[derive(Clone, Debug)]
pub struct WeightsView {
    store: u64,
    clock: u64,
    params: Vec<(String, Tensor, Written)>,
}

impl WeightsView {
    /// The point of the store's write history this view shows.
    pub fn write_mark(&self) -> WriteMark {
        WriteMark { store: self.store, clock: self.clock }
    }

    /// A new store holding a copy of these weights in its own buffers (no gradients).
    pub fn to_store(&self) -> Result<ParamStore> {
        let mut out = ParamStore::new();
        let t = out.tick();
        for (k, value, _) in &self.params {
            out.params.insert(
                k.clone(),
                Param { value: value.deep_copy()?, grad: Tensor::zeros(&[0]), state: GradState::Zero, written: Written { all: t, rows: Arc::default() } },
            );
        }
        Ok(out)
    }

    /// Whether every weight is in host memory.
    pub fn on_cpu(&self) -> bool {
        self.params.iter().all(|(_, t, _)| t.device() == Device::Cpu)
    }
}

static NEXT_STORE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn new_store_id() -> u64 {
    NEXT_STORE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Param {
    /// Record that the optimizer wrote `rows` (all of the value when `None`) at time `t`.
    pub(crate) fn mark_written(&mut self, t: u64, rows: Option<&[u32]>) {
        match rows {
            Some(rows) if self.value.rank() == 2 => {
                let n = self.value.dim(0);
                if self.written.rows.len() != n {
                    self.written.rows = Arc::new(vec![0; n]);
                }
                let stamps = Arc::make_mut(&mut self.written.rows);
                for &r in rows {
                    stamps[r as usize] = t;
                }
            }
            _ => self.written.all = t,
        }
    }

    /// The touched rows, sorted and without repeats, when the gradient is row-sparse.
    pub fn touched_rows(&self) -> Option<Vec<u32>> {
        match &self.state {
            GradState::Rows(r) => {
                let mut r = r.clone();
                r.sort_unstable();
                r.dedup();
                Some(r)
            }
            _ => None,
        }
    }
}

/// `dst = src` for two f32 tensors of one shape, on or between devices, into dst's own buffer.
fn copy_value(src: &Tensor, dst: &mut Tensor) -> Result<()> {
    match (src.device(), dst.device()) {
        (Device::Cpu, Device::Cpu) => dst.f32s_mut()?.copy_from_slice(src.f32s()?),
        (Device::Cpu, Device::Cuda(_)) => dst.cuda_f32_mut()?.copy_from_host(src.f32s()?)?,
        (Device::Cuda(_), Device::Cpu) => dst.f32s_mut()?.copy_from_slice(&src.cuda_f32()?.download()?),
        (Device::Cuda(a), Device::Cuda(b)) if a == b => crate::cuda::copy(src.cuda_f32()?, dst.cuda_f32_mut()?)?,
        (Device::Cuda(_), Device::Cuda(_)) => *dst = src.to_device(Device::Cpu)?.to_device(dst.device())?,
    }
    Ok(())
}

/// Parameters by name, in name order (so iteration, checkpoints and norms are deterministic).
///
/// Every write to a value is recorded on the store's write clock (exactly, per row, for the
/// optimizer's row-sparse updates; as a write of everything for `set`, `param_mut` and `iter_mut`,
/// which may write anything), so `copy_weights_changed_since` can bring a copy up to date by
/// copying only what changed. A clone is a new store with its own history.
#[derive(Debug)]
pub struct ParamStore {
    params: BTreeMap<String, Param>,
    id: u64,
    clock: u64,
}

impl Default for ParamStore {
    fn default() -> Self {
        ParamStore { params: BTreeMap::new(), id: new_store_id(), clock: 0 }
    }
}

impl Clone for ParamStore {
    fn clone(&self) -> Self {
        ParamStore { params: self.params.clone(), id: new_store_id(), clock: self.clock }
    }
}

impl ParamStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Advance the write clock; the new time stamps the writes about to happen.
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The present point of this store's write history.
    pub fn write_mark(&self) -> WriteMark {
        WriteMark { store: self.id, clock: self.clock }
    }

    /// Add a parameter; a name may be used once.
    pub fn insert(&mut self, name: &str, value: Tensor) -> Result<()> {
        if self.params.contains_key(name) {
            bail!(Invalid, "parameter {name:?} is already defined");
        }
        let grad = Tensor::zeros_on(value.shape(), value.device())?;
        let written = Written { all: self.tick(), rows: Arc::default() };
        self.params.insert(name.to_string(), Param { value, grad, state: GradState::Zero, written });
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        match self.params.get(name) {
            Some(p) => Ok(&p.value),
            None => bail!(Invalid, "no parameter named {name:?}"),
        }
    }

    pub fn param(&self, name: &str) -> Result<&Param> {
        match self.params.get(name) {
            Some(p) => Ok(p),
            None => bail!(Invalid, "no parameter named {name:?}"),
        }
    }

    /// Mutable access to one parameter; its value counts as written.
    pub fn param_mut(&mut self, name: &str) -> Result<&mut Param> {
        let t = self.tick();
        let p = self.grad_mut(name)?;
        p.written.all = t;
        Ok(p)
    }

    /// A parameter whose gradient, not value, is about to change.
    fn grad_mut(&mut self, name: &str) -> Result<&mut Param> {
        match self.params.get_mut(name) {
            Some(p) => Ok(p),
            None => bail!(Invalid, "no parameter named {name:?}"),
        }
    }

    /// Replace a value, keeping the shape (loading a checkpoint, swapping in a teacher).
    pub fn set(&mut self, name: &str, value: Tensor) -> Result<()> {
        let p = self.param_mut(name)?;
        value.expect_shape(&format!("parameter {name:?}"), p.value.shape())?;
        p.value = value;
        Ok(())
    }

    pub fn accumulate_grad(&mut self, name: &str, g: &Tensor) -> Result<()> {
        let p = self.grad_mut(name)?;
        axpy(1.0, g, &mut p.grad)?;
        p.state = GradState::Dense;
        Ok(())
    }

    /// `grad[ids[i]] += rows[i]`: the embedding backward, without a dense temporary.
    pub fn accumulate_rows(&mut self, be: &crate::Backend, name: &str, ids: &Tensor, rows: &Tensor) -> Result<()> {
        let p = self.grad_mut(name)?;
        scatter_add(be, rows, ids, &mut p.grad)?;
        match &mut p.state {
            GradState::Dense => {}
            GradState::Rows(r) => r.extend(ids.host_i32s()?.iter().map(|&i| i as u32)),
            st @ GradState::Zero => *st = GradState::Rows(ids.host_i32s()?.iter().map(|&i| i as u32).collect()),
        }
        Ok(())
    }

    /// Clear every gradient, touching only the rows a sparse gradient used.
    pub fn zero_grads(&mut self) -> Result<()> {
        for p in self.params.values_mut() {
            match std::mem::replace(&mut p.state, GradState::Zero) {
                GradState::Zero => {}
                GradState::Dense => p.grad.zero_()?,
                GradState::Rows(rows) => crate::ops::optim::zero_rows(&mut p.grad, &rows)?,
            }
        }
        Ok(())
    }

    /// The device the weights live on (the CPU for an empty store).
    pub fn device(&self) -> Device {
        self.params.values().next().map_or(Device::Cpu, |p| p.value.device())
    }

    /// Moves every weight and gradient to `device` (a no-op for those already there); every value
    /// counts as written.
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        let t = self.tick();
        for p in self.params.values_mut() {
            p.value = p.value.to_device(device)?;
            if p.grad.numel() > 0 || p.value.numel() == 0 {
                p.grad = p.grad.to_device(device)?;
            }
            p.written.all = t;
        }
        Ok(())
    }

    /// The weights without gradient buffers (a teacher's copy: forward passes only). Values are
    /// shared, so this copies nothing until the original is updated; gradients are empty, so
    /// accumulating into a snapshot is a shape error rather than a silent copy.
    pub fn weights_only(&self) -> ParamStore {
        let params = self
            .params
            .iter()
            .map(|(k, p)| (k.clone(), Param { value: p.value.clone(), grad: Tensor::zeros(&[0]), state: GradState::Zero, written: p.written.clone() }))
            .collect();
        ParamStore { params, id: new_store_id(), clock: self.clock }
    }

    /// The weights in buffers of their own (a deep copy), without gradient buffers: a standby
    /// teacher's first fill. Its write history starts at one write of everything.
    pub fn copy_of_weights(&self) -> Result<ParamStore> {
        self.copy_of_weights_on(self.device())
    }

    /// [`copy_of_weights`](Self::copy_of_weights) with the copy on `device` (a host copy of GPU
    /// weights for a checkpoint writer, say).
    pub fn copy_of_weights_on(&self, device: Device) -> Result<ParamStore> {
        let mut out = ParamStore::new();
        let t = out.tick();
        for (k, p) in &self.params {
            let value = if p.value.device() == device { p.value.deep_copy()? } else { p.value.to_device(device)? };
            out.params.insert(k.clone(), Param { value, grad: Tensor::zeros(&[0]), state: GradState::Zero, written: Written { all: t, rows: Arc::default() } });
        }
        Ok(out)
    }

    /// The weights with every quantized parameter (see [`crate::ops::quant::quantized_param`])
    /// fake-quantized to `bits`: what the forward pass of a quantized run reads. The other weights
    /// share this store's buffers (nothing is copied twice); drop the result before this store's
    /// weights are updated, or the update copies them.
    pub fn quantized_copy(&self, bits: u32) -> Result<ParamStore> {
        let mut out = ParamStore::new();
        let t = out.tick();
        for (k, p) in &self.params {
            let value = match crate::ops::quant::quantized_param(k, p.value.shape()) {
                Some(per_row) => crate::ops::quant::fake_quant(&p.value, bits, per_row)?,
                None => p.value.clone(),
            };
            out.params.insert(k.clone(), Param { value, grad: Tensor::zeros(&[0]), state: GradState::Zero, written: Written { all: t, rows: Arc::default() } });
        }
        Ok(out)
    }

    /// Copy the weights of `src` (same names and shapes) into this store's own buffers, in place
    /// when no one else holds them: a publish into a reused standby buffer allocates nothing.
    pub fn copy_weights_from(&mut self, src: &ParamStore) -> Result<()> {
        self.copy_weights_changed_since(src, None).map(|_| ())
    }

    /// Bring this store's weights up to date with `src` when they were last made equal to it at
    /// `since` (a `src.write_mark()`): copies only the rows `src` wrote after that mark, or every
    /// weight when `since` is `None` or marks another store. Returns the number of values copied.
    /// The caller guarantees this store's weights were not written since they matched `since`.
    pub fn copy_weights_changed_since(&mut self, src: &ParamStore, since: Option<WriteMark>) -> Result<usize> {
        self.copy_weights_from_view(&src.weights_view(), since)
    }

    /// The weights and their write history, sharing the buffers (no copy): what a background copy
    /// reads while the store's owner goes on reading the same weights. The owner must not write
    /// the weights while a view is alive (a write would copy the shared buffer first, which is
    /// correct but costs a copy of the whole parameter).
    pub fn weights_view(&self) -> WeightsView {
        WeightsView { store: self.id, clock: self.clock, params: self.params.iter().map(|(k, p)| (k.clone(), p.value.clone(), p.written.clone())).collect() }
    }

    /// [`copy_weights_changed_since`](Self::copy_weights_changed_since) from a view of the source.
    pub fn copy_weights_from_view(&mut self, src: &WeightsView, since: Option<WriteMark>) -> Result<usize> {
        let since = since.filter(|m| m.store == src.store).map(|m| m.clock);
        if self.params.len() != src.params.len() {
            bail!(Invalid, "copy of weights: {} parameters into a store of {}", src.params.len(), self.params.len());
        }
        let t = self.tick();
        let mut copied = 0;
        for ((name, p), (from_name, from_value, from_written)) in self.params.iter_mut().zip(&src.params) {
            if name != from_name {
                bail!(Invalid, "copy of weights: parameter {from_name:?} where {name:?} was expected");
            }
            from_value.expect_shape(&format!("parameter {name:?}"), p.value.shape())?;
            if (p.value.device(), from_value.device()) != (Device::Cpu, Device::Cpu) {
                // On a GPU the changed rows are not copied one by one (a driver call per row
                // would cost more than the bytes): a parameter that changed at all is copied whole,
                // on the device or across the bus.
                let changed = match since {
                    Some(c) => from_written.all > c || from_written.rows.iter().any(|&w| w > c),
                    None => true,
                };
                if changed {
                    copy_value(from_value, &mut p.value)?;
                    copied += p.value.numel();
                }
                p.written.all = t;
                continue;
            }
            let (dst, srcv) = (p.value.f32s_mut()?, from_value.f32s()?);
            match since {
                Some(c) if from_written.all <= c && from_value.rank() == 2 => {
                    let width = from_value.dim(1);
                    for (r, &w) in from_written.rows.iter().enumerate() {
                        if w > c {
                            let span = r * width..(r + 1) * width;
                            dst[span.clone()].copy_from_slice(&srcv[span]);
                            copied += width;
                        }
                    }
                }
                Some(c) if from_written.all <= c => {}
                _ => {
                    dst.copy_from_slice(srcv);
                    copied += dst.len();
                }
            }
            p.written.all = t;
        }
        Ok(copied)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Param)> {
        self.params.iter()
    }

    /// Mutable access to every parameter; every value counts as written.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut Param)> {
        let t = self.tick();
        self.params.iter_mut().map(move |(k, p)| {
            p.written.all = t;
            (k, p)
        })
    }

    /// For an optimizer step: every parameter, and the time to stamp the writes with through
    /// [`Param::mark_written`].
    pub(crate) fn iter_for_update(&mut self) -> (u64, impl Iterator<Item = (&String, &mut Param)>) {
        let t = self.tick();
        (t, self.params.iter_mut())
    }

    pub fn names(&self) -> Vec<String> {
        self.params.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// Total number of scalar parameters.
    pub fn num_elements(&self) -> usize {
        self.params.values().map(|p| p.value.numel()).sum()
    }
}
