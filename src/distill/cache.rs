//! Cached teacher outputs (`--teacher-logits FILE`, written by `codistill lm|criteo teacher-cache`
//! or by any program that follows docs/teacher-cache.md): each fixed teacher's top-k logits of
//! every training item, so a distillation reads them instead of running the teachers (TextBrewer's
//! `is_caching_logits`, torchdistill's `cache_output`).
//!
//! The file is safetensors. Per teacher `j`: `teacher{j}.logits` f32 `[items, k]`, and when `k` is
//! below the number of classes also `teacher{j}.index` i32 `[items, k]` (the classes of those
//! logits) and `teacher{j}.lse` f32 `[items]` (the log-sum-exp of the teacher's whole logit row).
//! Metadata: `format` = [`FORMAT`], `task`, `classes`, `top_k`, `teachers`, `layout` (the task's
//! batching that the items follow) and `data_key` (the training stream's fingerprint, the one
//! checkpoints record), so that a cache of other data or another batching is refused by name.
//!
//! A row is rebuilt dense: the k cached logits in place, and every other class the logit `lse +
//! ln(rest / (classes - k))`, where `rest` is the probability the k leave: at temperature 1 the
//! rebuilt distribution is the teacher's on its top k and spreads the remaining mass evenly over
//! the rest (at another temperature the tail is approximate). With k = classes the rebuilt row is
//! the teacher's logits, bit for bit, and a distillation from the cache is the live one.

use crate::checkpoint::Checkpoint;
use crate::tensor::{Device, Tensor};
use crate::{bail, Error, Result};
use std::path::{Path, PathBuf};

/// Where a cache's top k leave the rest of a teacher's probability when a row is rebuilt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheRest {
    /// Spread evenly over the other classes (the teacher's mass on its top k kept exactly).
    #[default]
    Uniform,
    /// Dropped: the top k renormalised to sum 1, the other classes at probability ~0 (e^-30 of
    /// the smallest kept), as caches that keep only the top k's softmax do.
    Drop,
}

crate::named_choices!(CacheRest, "the rest of a cached teacher's mass", { Uniform => "uniform", Drop => "drop" });

/// The `format` entry of a teacher cache.
pub const FORMAT: &str = "codistill-teacher-cache/1";

/// One teacher's cached rows.
#[derive(Clone, Debug)]
struct Cached {
    /// `[items * k]`, row-major.
    logits: Vec<f32>,
    /// `[items * k]`, the classes of `logits` (None when k covers every class: the row in order).
    index: Option<Vec<i32>>,
    /// `[items]`, the log-sum-exp of the whole row (None when dense).
    lse: Option<Vec<f32>>,
}

/// What a cache must agree on with the run that reads it, besides its own shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheKey {
    /// The task's name (`lm`, `criteo`).
    pub task: String,
    /// The task's batching of the items (`window=...` for a language model, `rows` for a click model).
    pub layout: String,
    /// The training stream's fingerprint, as checkpoints record it.
    pub data_key: Option<u64>,
}

/// Fixed teachers' top-k outputs of every training item, read from a file or being written.
#[derive(Clone, Debug)]
pub struct TeacherCache {
    teachers: Vec<Cached>,
    items: usize,
    classes: usize,
    k: usize,
    /// The teachers' checkpoints, as the writer named them.
    pub sources: String,
    path: PathBuf,
}

/// Top `k` of `row` by value (ties: the lower class first), with the row's log-sum-exp.
pub fn top_k(row: &[f32], k: usize) -> (Vec<i32>, Vec<f32>, f32) {
    let mut order: Vec<usize> = (0..row.len()).collect();
    if k < row.len() {
        order.select_nth_unstable_by(k, |&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        order.truncate(k);
    }
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let s: f64 = row.iter().map(|&x| ((x - m) as f64).exp()).sum();
    let lse = m + s.ln() as f32;
    (order.iter().map(|&c| c as i32).collect(), order.iter().map(|&c| row[c]).collect(), lse)
}

impl TeacherCache {
    /// An empty cache of `teachers` teachers for `items` items of `classes` classes, keeping `k`.
    pub fn new(teachers: usize, items: usize, classes: usize, k: usize, sources: String) -> Result<Self> {
        if k == 0 || classes == 0 {
            bail!(Invalid, "teacher-cache: top_k must be at least 1 (got {k}); the teachers have {classes} classes");
        }
        let k = k.min(classes);
        let dense = k == classes;
        let one = Cached { logits: vec![f32::NAN; items * k], index: (!dense).then(|| vec![-1; items * k]), lse: (!dense).then(|| vec![f32::NAN; items]) };
        Ok(TeacherCache { teachers: vec![one; teachers], items, classes, k, sources, path: PathBuf::new() })
    }

    pub fn teachers(&self) -> usize {
        self.teachers.len()
    }
    pub fn items(&self) -> usize {
        self.items
    }
    pub fn classes(&self) -> usize {
        self.classes
    }
    pub fn k(&self) -> usize {
        self.k
    }

    /// Store teacher `j`'s logits `[keys.len(), classes]` (on any device) as the items `keys`.
    pub fn put(&mut self, j: usize, keys: &[usize], logits: &Tensor) -> Result<()> {
        let v = logits.to_vec_f32()?;
        let (classes, k) = (self.classes, self.k);
        if v.len() != keys.len() * classes {
            bail!(Invalid, "teacher-cache: teacher {j} gave {} values for {} items of {classes} classes", v.len(), keys.len());
        }
        for (row, &key) in v.chunks_exact(classes).zip(keys) {
            if key >= self.items {
                bail!(Invalid, "teacher-cache: item {key} is past the {} items the cache holds", self.items);
            }
            if let Some(bad) = row.iter().position(|x| !x.is_finite()) {
                bail!(Invalid, "teacher-cache: teacher {j} gave {} for class {bad} of item {key}; its checkpoint is not usable", row[bad]);
            }
        }
        let t = &mut self.teachers[j];
        match (&mut t.index, &mut t.lse) {
            (Some(index), Some(lse)) => {
                // The rows' top k on every core (a language model's row is the vocabulary), then
                // written in order.
                let rows: Vec<&[f32]> = v.chunks_exact(classes).collect();
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                let tops = crate::par::map(rows.len(), threads, |i| top_k(rows[i], k));
                for ((ix, val, l), &key) in tops.into_iter().zip(keys) {
                    index[key * k..(key + 1) * k].copy_from_slice(&ix);
                    t.logits[key * k..(key + 1) * k].copy_from_slice(&val);
                    lse[key] = l;
                }
            }
            _ => {
                for (row, &key) in v.chunks_exact(classes).zip(keys) {
                    t.logits[key * k..(key + 1) * k].copy_from_slice(row);
                }
            }
        }
        Ok(())
    }

    /// Write the cache to `path` (safetensors, whole or not at all), recording `key`.
    pub fn save(&self, path: &Path, key: &CacheKey) -> Result<()> {
        if let Some(j) = self.teachers.iter().position(|t| t.logits.iter().any(|x| x.is_nan())) {
            bail!(Invalid, "teacher-cache: teacher {j} has items that were never filled; nothing was written to {}", path.display());
        }
        let mut c = Checkpoint::new();
        for (j, t) in self.teachers.iter().enumerate() {
            c.tensors.insert(format!("teacher{j}.logits"), Tensor::from_f32(t.logits.clone(), &[self.items, self.k])?);
            if let (Some(index), Some(lse)) = (&t.index, &t.lse) {
                c.tensors.insert(format!("teacher{j}.index"), Tensor::from_i32(index.clone(), &[self.items, self.k])?);
                c.tensors.insert(format!("teacher{j}.lse"), Tensor::from_f32(lse.clone(), &[self.items])?);
            }
        }
        let m = &mut c.meta;
        m.insert("format".into(), FORMAT.into());
        m.insert("task".into(), key.task.clone());
        m.insert("layout".into(), key.layout.clone());
        m.insert("classes".into(), self.classes.to_string());
        m.insert("top_k".into(), self.k.to_string());
        m.insert("teachers".into(), self.sources.clone());
        if let Some(d) = key.data_key {
            m.insert("data_key".into(), format!("{d:016x}"));
        }
        c.save(path)
    }

    /// Read a cache from `path` and check it against this run's `key` and `classes` (a language
    /// model's vocabulary size, 1 for a click model); every disagreement is an error naming the
    /// file and the entry.
    pub fn load(path: &Path, key: &CacheKey, classes: usize) -> Result<Self> {
        let c = Checkpoint::load_plain(path)?;
        let bad = |what: String| Error::Invalid(format!("{}: {what}", path.display()));
        let meta = |k: &str| c.meta.get(k).ok_or_else(|| bad(format!("lacks the {k:?} entry: not a teacher cache (see docs/teacher-cache.md)")));
        let format = meta("format")?;
        if format != FORMAT {
            return Err(bad(format!("format {format:?} is not a teacher cache ({FORMAT})")));
        }
        let num = |k: &str| -> Result<usize> { meta(k)?.parse().map_err(|_| bad(format!("{k} is not a whole number"))) };
        let (file_classes, k) = (num("classes")?, num("top_k")?);
        let same = |entry: &str, theirs: &str, ours: &str, hint: &str| {
            if theirs != ours {
                return Err(bad(format!("{entry} is {theirs:?} but this run has {ours:?}: the cache was written for {hint}")));
            }
            Ok(())
        };
        same("task", meta("task")?, &key.task, "another task")?;
        same("classes", &file_classes.to_string(), &classes.to_string(), "another vocabulary or model")?;
        same("layout", meta("layout")?, &key.layout, "another batching (batch, bptt); write it with the options of this run")?;
        let theirs = c.meta.get("data_key").cloned().unwrap_or_default();
        let ours = key.data_key.map(|d| format!("{d:016x}")).unwrap_or_default();
        same("data_key", &theirs, &ours, "other training data (another file, shard or shard_block)")?;
        if k == 0 || k > file_classes {
            return Err(bad(format!("top_k {k} is not in 1..={file_classes}")));
        }
        let dense = k == file_classes;
        let mut teachers = Vec::new();
        let mut items = None;
        for j in 0.. {
            let Some(logits) = c.tensors.get(&format!("teacher{j}.logits")) else { break };
            let shape_of = |name: &str, t: &Tensor, want: &[usize]| {
                if t.shape() != want {
                    return Err(bad(format!("{name} has shape {:?}, expected {want:?}", t.shape())));
                }
                Ok(())
            };
            let n = *items.get_or_insert(logits.shape().first().copied().unwrap_or(0));
            shape_of(&format!("teacher{j}.logits"), logits, &[n, k])?;
            let logits = logits.f32s().map_err(|_| bad(format!("teacher{j}.logits is not f32")))?.to_vec();
            if let Some(i) = logits.iter().position(|x| !x.is_finite()) {
                return Err(bad(format!("teacher{j}.logits holds {} at item {}", logits[i], i / k)));
            }
            let (index, lse) = if dense {
                (None, None)
            } else {
                let get = |name: String| c.tensors.get(&name).ok_or_else(|| bad(format!("lacks {name} (top_k {k} is below classes {file_classes})")));
                let (it, lt) = (get(format!("teacher{j}.index"))?, get(format!("teacher{j}.lse"))?);
                shape_of(&format!("teacher{j}.index"), it, &[n, k])?;
                shape_of(&format!("teacher{j}.lse"), lt, &[n])?;
                let index = it.i32s().map_err(|_| bad(format!("teacher{j}.index is not i32")))?.to_vec();
                if let Some(i) = index.iter().position(|&x| x < 0 || x as usize >= file_classes) {
                    return Err(bad(format!("teacher{j}.index holds class {} at item {}, outside 0..{file_classes}", index[i], i / k)));
                }
                let lse = lt.f32s().map_err(|_| bad(format!("teacher{j}.lse is not f32")))?.to_vec();
                (Some(index), Some(lse))
            };
            teachers.push(Cached { logits, index, lse });
        }
        if teachers.is_empty() {
            return Err(bad("holds no teacher0.logits: not a teacher cache (see docs/teacher-cache.md)".into()));
        }
        Ok(TeacherCache {
            teachers,
            items: items.unwrap_or(0),
            classes: file_classes,
            k,
            sources: c.meta.get("teachers").cloned().unwrap_or_default(),
            path: path.to_path_buf(),
        })
    }

    /// Teacher `j`'s logits of the items `keys`, rebuilt dense `[keys.len(), classes]` on `dev`,
    /// the rest of the mass spread evenly.
    pub fn dense(&self, j: usize, keys: &[usize], dev: Device) -> Result<Tensor> {
        self.dense_with(j, keys, dev, CacheRest::Uniform)
    }

    /// As [`dense`](Self::dense), the rest of the mass placed by `rest`.
    pub fn dense_with(&self, j: usize, keys: &[usize], dev: Device, rest: CacheRest) -> Result<Tensor> {
        let (t, c, k) = (&self.teachers[j], self.classes, self.k);
        let mut out = vec![0f32; keys.len() * c];
        for (row, &key) in out.chunks_exact_mut(c).zip(keys) {
            if key >= self.items {
                bail!(Invalid, "{}: item {key} is needed but the cache holds {} items: it was written for a shorter stream", self.path.display(), self.items);
            }
            let vals = &t.logits[key * k..(key + 1) * k];
            match (&t.index, &t.lse) {
                (Some(index), Some(lse)) => {
                    let lse = lse[key];
                    let kept: f64 = vals.iter().map(|&v| ((v - lse) as f64).exp()).sum();
                    // The mass the top k leave, spread evenly over the other classes (at least a
                    // sliver, so that no class is impossible).
                    let fill = match rest {
                        CacheRest::Uniform => lse + ((1.0 - kept).max(1e-12) / (c - k) as f64).ln() as f32,
                        CacheRest::Drop => vals.iter().copied().fold(f32::INFINITY, f32::min) - 30.0,
                    };
                    row.fill(fill);
                    for (&i, &v) in index[key * k..(key + 1) * k].iter().zip(vals) {
                        row[i as usize] = v;
                    }
                }
                _ => row.copy_from_slice(vals),
            }
        }
        Tensor::from_f32(out, &[keys.len(), c])?.to_device(dev)
    }

    /// Every teacher's rows of `keys`.
    pub fn dense_all(&self, keys: &[usize], dev: Device, rest: CacheRest) -> Result<Vec<Tensor>> {
        (0..self.teachers.len()).map(|j| self.dense_with(j, keys, dev, rest)).collect()
    }

    /// The items, classes and k as one line, with the file.
    pub fn describe(&self) -> String {
        let kept = if self.k == self.classes { "every class".to_string() } else { format!("top {} of {} classes", self.k, self.classes) };
        format!("{} teacher(s) from {} ({} items, {kept})", self.teachers.len(), self.path.display(), self.items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    fn key() -> CacheKey {
        CacheKey { task: "lm".into(), layout: "batch=2;bptt=3".into(), data_key: Some(7) }
    }

    fn random_rows(rng: &mut Rng, items: usize, classes: usize) -> Vec<f32> {
        (0..items * classes).map(|_| 3.0 * rng.normal() as f32).collect()
    }

    #[test]
    fn every_class_kept_rebuilds_the_logits_bit_for_bit() {
        let d = crate::testdir::Scratch::new("codistill", "cache-dense");
        let (items, classes) = (5, 7);
        let mut rng = Rng::new(3);
        let mut c = TeacherCache::new(2, items, classes, 100, "a,b".into()).unwrap();
        let rows: Vec<Vec<f32>> = (0..2).map(|_| random_rows(&mut rng, items, classes)).collect();
        // Items written out of order, as a click model's shuffled batches are.
        for (j, r) in rows.iter().enumerate() {
            for key in [3, 0, 4, 1, 2] {
                c.put(j, &[key], &Tensor::from_f32(r[key * classes..(key + 1) * classes].to_vec(), &[1, classes]).unwrap()).unwrap();
            }
        }
        let path = d.join("c.safetensors");
        c.save(&path, &key()).unwrap();
        let back = TeacherCache::load(&path, &key(), classes).unwrap();
        assert_eq!((back.k(), back.items(), back.teachers()), (classes, items, 2));
        for (j, r) in rows.iter().enumerate() {
            let got = back.dense(j, &[4, 0], Device::Cpu).unwrap().to_vec_f32().unwrap();
            let want: Vec<f32> = r[4 * classes..5 * classes].iter().chain(&r[..classes]).copied().collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn top_k_keeps_the_heads_probabilities_and_spreads_the_rest_evenly() {
        let (items, classes, k) = (4, 11, 3);
        let mut rng = Rng::new(5);
        let rows = random_rows(&mut rng, items, classes);
        let mut c = TeacherCache::new(1, items, classes, k, String::new()).unwrap();
        c.put(0, &[0, 1, 2, 3], &Tensor::from_f32(rows.clone(), &[items, classes]).unwrap()).unwrap();
        let dense = c.dense(0, &[0, 1, 2, 3], Device::Cpu).unwrap().to_vec_f32().unwrap();
        let softmax = |r: &[f32]| -> Vec<f64> {
            let m = r.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let e: Vec<f64> = r.iter().map(|&x| (x as f64 - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|x| x / s).collect()
        };
        for i in 0..items {
            let (p, q) = (softmax(&rows[i * classes..(i + 1) * classes]), softmax(&dense[i * classes..(i + 1) * classes]));
            let mut order: Vec<usize> = (0..classes).collect();
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
            for &cl in &order[..k] {
                assert!((p[cl] - q[cl]).abs() < 1e-5, "item {i} class {cl}: {} vs {}", p[cl], q[cl]);
            }
            let rest: f64 = order[k..].iter().map(|&cl| p[cl]).sum();
            for &cl in &order[k..] {
                assert!((q[cl] - rest / (classes - k) as f64).abs() < 1e-5, "item {i} class {cl}");
            }
        }
    }

    #[test]
    fn dropping_the_rest_renormalises_the_top_k() {
        let rows = vec![2.0, 1.0, 0.5, -1.0, 0.0, 3.0];
        let mut c = TeacherCache::new(1, 1, 6, 2, String::new()).unwrap();
        c.put(0, &[0], &Tensor::from_f32(rows, &[1, 6]).unwrap()).unwrap();
        let d = c.dense_with(0, &[0], Device::Cpu, CacheRest::Drop).unwrap().to_vec_f32().unwrap();
        let m = d.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let e: Vec<f64> = d.iter().map(|&v| (v as f64 - m).exp()).collect();
        let sum: f64 = e.iter().sum();
        // Classes 5 and 0 (logits 3 and 2): e / (e + 1) and 1 / (e + 1); the others about 0.
        let p5 = std::f64::consts::E / (std::f64::consts::E + 1.0);
        assert!((e[5] / sum - p5).abs() < 1e-6 && (e[0] / sum - (1.0 - p5)).abs() < 1e-6);
        assert!(e[1] / sum < 1e-12);
        assert!("keep".parse::<CacheRest>().unwrap_err().contains("uniform or drop"));
    }

    #[test]
    fn a_cache_of_other_data_batching_or_vocabulary_is_refused_by_name() {
        let d = crate::testdir::Scratch::new("codistill", "cache-refused");
        let mut c = TeacherCache::new(1, 2, 4, 2, String::new()).unwrap();
        let path = d.join("c.safetensors");
        // Unfilled items are not written.
        assert!(c.save(&path, &key()).unwrap_err().to_string().contains("never filled"));
        assert!(!path.exists());
        c.put(0, &[0, 1], &Tensor::from_f32(vec![0.5; 8], &[2, 4]).unwrap()).unwrap();
        c.save(&path, &key()).unwrap();
        let other = |f: &dyn Fn(&mut CacheKey)| {
            let mut k = key();
            f(&mut k);
            TeacherCache::load(&path, &k, 4).unwrap_err().to_string()
        };
        assert!(other(&|k| k.data_key = Some(8)).contains("data_key"));
        assert!(other(&|k| k.layout = "batch=4;bptt=3".into()).contains("layout"));
        assert!(other(&|k| k.task = "criteo".into()).contains("task"));
        let e = TeacherCache::load(&path, &key(), 5).unwrap_err().to_string();
        assert!(e.contains("classes") && e.contains("c.safetensors"), "{e}");
        // A short cache is an error when an item past its end is asked for.
        let c = TeacherCache::load(&path, &key(), 4).unwrap();
        assert!(c.dense(0, &[2], Device::Cpu).unwrap_err().to_string().contains("holds 2 items"));
        // A non-finite teacher logit is refused when cached.
        let mut c = TeacherCache::new(1, 1, 2, 2, String::new()).unwrap();
        assert!(c.put(0, &[0], &Tensor::from_f32(vec![0.0, f32::NAN], &[1, 2]).unwrap()).is_err());
    }
}
