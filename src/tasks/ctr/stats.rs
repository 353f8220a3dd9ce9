//! The feature statistics a click model records into every checkpoint it writes, for data-free
//! distillation from it ([`super::dfkd`]): what FastDFKD and DeepInversion read from a network's
//! batch-norm layers, which this model does not have.
//!
//! - The per-unit mean and variance of the dense inputs (13 transformed values, 13 missing flags)
//!   and of each hidden layer (after its ReLU), measured with the weights being saved on the first
//!   [`SAMPLE_ROWS`] rows of the model's training shard (in file order; the same rows at every
//!   save); and on the same rows each hidden layer's covariance (its joint statistics).
//! - The categorical counterpart of those moments: per field, the [`TOP_IDS`] category rows used
//!   most in the shard and each one's share of its rows (the mean of the field's one-hot input,
//!   truncated to its largest entries).
//! - The shard's click rate.
//!
//! They describe the training data as a batch-norm layer's running moments do; a model's own
//! embedding table already tells which rows training touched. Checkpoints hold them as tensors
//! `stats.*` (ignored when a checkpoint is loaded as a model) and the entries `stats_rows`,
//! `stats_click_rate`.

use super::model::CtrModel;
use crate::autograd::Graph;
use crate::checkpoint::Checkpoint;
use crate::data::criteo::{CriteoCache, DENSE_WIDTH, NUM_CATS};
use crate::params::ParamStore;
use crate::tensor::Tensor;
use crate::{bail, Error, Result};
use std::ops::Range;
use std::path::Path;

/// Rows the moments are measured on (at most).
pub const SAMPLE_ROWS: usize = 16384;
/// Category rows recorded per field.
pub const TOP_IDS: usize = 1024;

/// Per field the most used rows of a shard, global (offset by `field * buckets`, as the
/// embedding table is indexed), most used first, and each one's share of the shard's rows; and
/// the shard's click rate.
#[derive(Clone, Debug)]
pub struct IdCounts {
    pub ids: Vec<Vec<i32>>,
    pub share: Vec<Vec<f32>>,
    pub click_rate: f64,
}

impl IdCounts {
    /// Count the rows `rows` of `data`.
    pub fn of(data: &CriteoCache, rows: Range<usize>) -> IdCounts {
        let b = data.buckets;
        let mut counts = vec![0u32; NUM_CATS * b];
        let mut clicks = 0f64;
        for i in rows.clone() {
            for (f, &c) in data.categories(i).iter().enumerate() {
                counts[f * b + c as usize] += 1;
            }
            clicks += data.label(i) as f64;
        }
        let n = rows.len().max(1) as f64;
        let (mut ids, mut share) = (Vec::new(), Vec::new());
        for f in 0..NUM_CATS {
            let field = &counts[f * b..(f + 1) * b];
            let mut used: Vec<usize> = (0..b).filter(|&c| field[c] > 0).collect();
            // Most used first; ties by row, so the order is a function of the counts alone.
            used.sort_by(|&x, &y| field[y].cmp(&field[x]).then(x.cmp(&y)));
            used.truncate(TOP_IDS);
            ids.push(used.iter().map(|&c| (f * b + c) as i32).collect());
            share.push(used.iter().map(|&c| (field[c] as f64 / n) as f32).collect());
        }
        IdCounts { ids, share, click_rate: clicks / n }
    }
}

/// A model's recorded statistics (see the module's comment).
#[derive(Clone, Debug)]
pub struct FeatureStats {
    /// Rows the moments were measured on.
    pub rows: usize,
    pub click_rate: f64,
    /// Mean and variance of each dense input `[26]`.
    pub dense: (Vec<f32>, Vec<f32>),
    /// Mean and variance of each hidden layer's units, first to last.
    pub hidden: Vec<(Vec<f32>, Vec<f32>)>,
    /// Each hidden layer's covariance `[w * w]` (empty where a checkpoint lacks it).
    pub cov: Vec<Vec<f32>>,
    pub ids: IdCounts,
}

/// Per-column mean and (biased) variance of a row-major `[rows, width]` matrix.
pub fn moments(x: &[f32], width: usize) -> (Vec<f32>, Vec<f32>) {
    let rows = x.len() / width.max(1);
    let (mut m, mut sq) = (vec![0f64; width], vec![0f64; width]);
    for r in x.chunks(width) {
        for ((a, b), &v) in m.iter_mut().zip(sq.iter_mut()).zip(r) {
            *a += v as f64;
            *b += v as f64 * v as f64;
        }
    }
    let n = rows.max(1) as f64;
    let mean: Vec<f32> = m.iter().map(|a| (a / n) as f32).collect();
    let var = m.iter().zip(&sq).map(|(a, b)| ((b / n) - (a / n) * (a / n)).max(0.0) as f32).collect();
    (mean, var)
}

impl FeatureStats {
    /// Measure `model` (weights in `store`) on the first [`SAMPLE_ROWS`] of `rows` of `data`.
    pub fn measure(be: &crate::Backend, model: &CtrModel, store: &ParamStore, data: &CriteoCache, rows: Range<usize>, ids: &IdCounts) -> Result<Self> {
        let idx: Vec<usize> = rows.take(SAMPLE_ROWS).collect();
        if idx.is_empty() {
            bail!(Invalid, "{}: no rows to record feature statistics on", data.source.display());
        }
        let (ids_t, dense, _) = data.batch(&idx)?;
        let dev = store.device();
        let mut g = Graph::no_grad().with_backend(*be);
        let (_, hidden) = model.forward_layers(&mut g, store, &ids_t.to_device(dev)?, &dense.to_device(dev)?)?;
        let (mut moments_of, mut cov) = (Vec::new(), Vec::new());
        for &h in &hidden {
            let v = g.value(h);
            let x = v.to_vec_f32()?;
            moments_of.push(moments(&x, v.dim(1)));
            cov.push(crate::ops::relation::covariance(&x, v.dim(0), v.dim(1)).1.iter().map(|&c| c as f32).collect());
        }
        Ok(FeatureStats { rows: idx.len(), click_rate: ids.click_rate, dense: moments(dense.f32s()?, DENSE_WIDTH), hidden: moments_of, cov, ids: ids.clone() })
    }

    /// Into a checkpoint's tensors and entries.
    pub fn write(&self, c: &mut Checkpoint) -> Result<()> {
        let v = |x: &[f32]| Tensor::from_f32(x.to_vec(), &[x.len()]);
        c.tensors.insert("stats.dense.mean".into(), v(&self.dense.0)?);
        c.tensors.insert("stats.dense.var".into(), v(&self.dense.1)?);
        for (l, (m, s)) in self.hidden.iter().enumerate() {
            c.tensors.insert(format!("stats.hidden.{l}.mean"), v(m)?);
            c.tensors.insert(format!("stats.hidden.{l}.var"), v(s)?);
            if let Some(cv) = self.cov.get(l).filter(|cv| cv.len() == m.len() * m.len()) {
                c.tensors.insert(format!("stats.hidden.{l}.cov"), Tensor::from_f32(cv.clone(), &[m.len(), m.len()])?);
            }
        }
        // Fields with fewer used rows than the widest are padded with -1 (share 0).
        let k = self.ids.ids.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut ids = vec![-1i32; NUM_CATS * k];
        let mut share = vec![0f32; NUM_CATS * k];
        for f in 0..NUM_CATS {
            ids[f * k..f * k + self.ids.ids[f].len()].copy_from_slice(&self.ids.ids[f]);
            share[f * k..f * k + self.ids.share[f].len()].copy_from_slice(&self.ids.share[f]);
        }
        c.tensors.insert("stats.ids".into(), Tensor::from_i32(ids, &[NUM_CATS, k])?);
        c.tensors.insert("stats.share".into(), Tensor::from_f32(share, &[NUM_CATS, k])?);
        c.meta.insert("stats_rows".into(), self.rows.to_string());
        c.meta.insert("stats_click_rate".into(), self.click_rate.to_string());
        Ok(())
    }

    /// From a checkpoint of a model with `layers` hidden layers; None when it records none.
    pub fn read(ck: &Checkpoint, path: &Path, layers: usize) -> Result<Option<Self>> {
        if !ck.tensors.contains_key("stats.dense.mean") {
            return Ok(None);
        }
        let get = |name: &str| {
            ck.tensors.get(name).ok_or_else(|| Error::Invalid(format!("{}: checkpoint lacks {name:?} (its statistics are incomplete)", path.display())))
        };
        let vec = |name: &str| -> Result<Vec<f32>> { get(name)?.to_vec_f32() };
        let pair = |stem: &str| -> Result<(Vec<f32>, Vec<f32>)> { Ok((vec(&format!("{stem}.mean"))?, vec(&format!("{stem}.var"))?)) };
        let num = |k: &str| -> Result<f64> { ck.meta(k, path)?.parse().map_err(|_| Error::Invalid(format!("{}: {k} is not a number", path.display()))) };
        let ids_t = get("stats.ids")?;
        let share_t = get("stats.share")?;
        let (ids, share) = (ids_t.i32s()?.to_vec(), share_t.to_vec_f32()?);
        let k = match ids_t.shape() {
            [f, k] if *f == NUM_CATS && share.len() == ids.len() => *k,
            s => bail!(Invalid, "{}: stats.ids has shape {s:?}, not [{NUM_CATS}, k] beside stats.share", path.display()),
        };
        let mut counts = IdCounts { ids: Vec::new(), share: Vec::new(), click_rate: num("stats_click_rate")? };
        for f in 0..NUM_CATS {
            let used = ids[f * k..(f + 1) * k].iter().take_while(|&&i| i >= 0).count();
            counts.ids.push(ids[f * k..f * k + used].to_vec());
            counts.share.push(share[f * k..f * k + used].to_vec());
        }
        Ok(Some(FeatureStats {
            rows: num("stats_rows")? as usize,
            click_rate: counts.click_rate,
            dense: pair("stats.dense")?,
            hidden: (0..layers).map(|l| pair(&format!("stats.hidden.{l}"))).collect::<Result<_>>()?,
            cov: (0..layers).map(|l| ck.tensors.get(&format!("stats.hidden.{l}.cov")).map_or(Ok(Vec::new()), |t| t.to_vec_f32())).collect::<Result<_>>()?,
            ids: counts,
        }))
    }
}

/// What [`record_into`] measured: the statistics and the rows counted.
#[derive(Debug)]
pub struct Recorded {
    pub stats: FeatureStats,
    pub counted: usize,
}

/// Measure the model of checkpoint `ckpt` on every row of `train` (its training file) and write
/// the checkpoint with those statistics to `out` (`codistill criteo record-stats`): for a
/// checkpoint written before click checkpoints recorded them. The weights are not changed.
pub fn record_into(ckpt: &Path, train: &Path, cache: &Path, out: &Path) -> Result<Recorded> {
    let mut ck = Checkpoint::load(ckpt)?;
    let (cfg, model, store) = super::load_checkpoint(ckpt)?;
    if !train.exists() {
        return Err(Error::io(train, std::io::Error::new(std::io::ErrorKind::NotFound, "file not found")));
    }
    let (data, _) = crate::data::criteo::cached(train, cfg.buckets, cfg.on_bad_line, cache)?;
    let rows = 0..data.rows();
    let ids = IdCounts::of(&data, rows.clone());
    let stats = FeatureStats::measure(&crate::Backend::from_env()?, &model, &store, &data, rows.clone(), &ids)?;
    stats.write(&mut ck)?;
    ck.save(out)?;
    Ok(Recorded { stats, counted: rows.len() })
}
