//! A student initialised from a trained model's layers (`--init-from CKPT`), as DistilBERT
//! initialises its student from every other layer of its teacher: each weight of the student is
//! taken from the teacher's matching weight, its leading units where the teacher is wider, and the
//! student's layer `i` of `L_s` from the teacher's layer `i * L_t / L_s` where the teacher is
//! deeper. The mapping per task is the task's ([`crate::train::Task::init_from`]); this is the
//! shared gather.

use crate::checkpoint::Checkpoint;
use crate::params::ParamStore;
use crate::tensor::Tensor;
use crate::{bail, Result};
use std::path::Path;

/// The student's weight `name` (its own shape: `[rows.len(), cols.len()]`, or `[cols.len()]` with
/// no rows) filled from the checkpoint's tensor `from`: element `(i, j)` is the teacher's
/// `(rows[i], cols[j])`. Errors name the checkpoint and the tensor.
pub fn take(store: &mut ParamStore, name: &str, ck: &Checkpoint, from: &str, rows: Option<&[usize]>, cols: &[usize], path: &Path) -> Result<()> {
    let Some(t) = ck.tensors.get(from) else { bail!(Invalid, "{}: init_from: the checkpoint lacks {from}", path.display()) };
    let src = t.to_vec_f32()?;
    let own = store.get(name)?.shape().to_vec();
    let (tr, tc) = match t.shape() {
        [c] => (1, *c),
        [r, c] => (*r, *c),
        s => bail!(Invalid, "{}: init_from: {from} has shape {s:?}, not a matrix or a vector", path.display()),
    };
    let want: Vec<usize> = match rows {
        Some(r) => vec![r.len(), cols.len()],
        None => vec![cols.len()],
    };
    if own != want {
        bail!(Invalid, "init_from: {name} has shape {own:?} but {want:?} was mapped to it (a bug in the task's mapping)");
    }
    let rows = rows.map(<[usize]>::to_vec).unwrap_or_else(|| vec![0]);
    if let Some(&r) = rows.iter().find(|&&r| r >= tr) {
        bail!(Invalid, "{}: init_from: {from} has {tr} rows and row {r} is needed for {name}: the checkpoint is narrower than this model", path.display());
    }
    if let Some(&c) = cols.iter().find(|&&c| c >= tc) {
        bail!(
            Invalid,
            "{}: init_from: {from} has {tc} columns and column {c} is needed for {name}: the checkpoint is narrower than this model",
            path.display()
        );
    }
    let mut out = Vec::with_capacity(rows.len() * cols.len());
    for &r in &rows {
        out.extend(cols.iter().map(|&c| src[r * tc + c]));
    }
    store.set(name, Tensor::from_f32(out, &own)?)
}

/// The columns of `4 * h` gate-blocked units (an LSTM's i, f, g, o) that keep the first `h` units
/// of each gate of a teacher with `h_t` units.
pub fn gate_columns(h: usize, h_t: usize) -> Vec<usize> {
    (0..4).flat_map(|g| (0..h).map(move |u| g * h_t + u)).collect()
}

/// The teacher layer that student layer `i` of `student` layers takes, of `teacher` layers (every
/// other layer of a teacher twice as deep, as DistilBERT's).
pub fn layer_of(i: usize, student: usize, teacher: usize) -> usize {
    i * teacher / student.max(1)
}
