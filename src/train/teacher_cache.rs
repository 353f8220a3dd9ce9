//! `codistill lm|criteo teacher-cache`: the fixed teachers (`--teacher`) run once over one pass of
//! the training stream a run with the same options would read, and their top-k logits of every
//! item go to the `--teacher-logits` file (format in [`crate::distill::cache`] and
//! docs/teacher-cache.md), which a later run reads instead of running the teachers.

use super::run::{teacher_output, Setup, Task};
use super::RunConfig;
use crate::distill::cache::{CacheKey, TeacherCache};
use crate::distill::Topology;
use crate::params::ParamStore;
use crate::{bail, Result};
use std::path::PathBuf;
use std::time::Instant;

/// What `teacher-cache` wrote.
#[derive(Clone, Debug)]
pub struct CacheWritten {
    pub path: PathBuf,
    pub teachers: usize,
    pub items: usize,
    pub classes: usize,
    pub k: usize,
    pub bytes: u64,
    pub seconds: f64,
}

/// Run `cfg`'s fixed teachers over one pass of its training stream (as `train` with the same
/// options would batch it) and write their `top_k` logits of every item to `cfg`'s
/// `teacher_logits` file (every class where `top_k` is at least the number of classes).
pub fn write_teacher_cache<T: Task>(cfg: &T::Config, top_k: usize) -> Result<CacheWritten> {
    let started = Instant::now();
    let o = cfg.run_options();
    let Some(path) = o.teacher_logits.clone() else {
        bail!(Invalid, "teacher-cache writes the file --teacher-logits names: give it");
    };
    if o.teacher.is_empty() {
        bail!(Invalid, "teacher-cache runs the --teacher checkpoints: give at least one");
    }
    if o.models != 1 || o.world > 1 {
        bail!(Invalid, "teacher-cache: a cache follows one model's stream: --models 1 and one process (got --models {}, --world {})", o.models, o.world);
    }
    let (dev, be) = (o.device.resolve()?, o.backend()?);
    let task = T::prepare(cfg, &Setup { dev, total_models: 1, run: &o })?;
    let Some((layout, classes)) = task.cache_shape() else {
        bail!(Invalid, "teacher-cache: the {} task reads no teacher cache", T::NAME);
    };
    if !task.forward_teachers() {
        bail!(Invalid, "teacher-cache: this run brings its teachers' outputs with its batches (data_free): there is nothing to cache");
    }
    // The stream model 0 of a one-model run reads, shuffled (where the task shuffles) as it would be.
    let topo = Topology { models: 1, world: 1, rank: 0, same_data: o.same_data, shards: o.shards, shard: o.shard };
    let (n, i) = topo.shard_of(topo.index(0));
    let (mut stream, data_key) = task.stream(n, i)?;
    let mut rng = task.member_rng(0, 1);
    task.init(&mut ParamStore::new(), &mut rng)?;
    task.seed_stream(&mut stream, &rng);
    let mut carry = task.zero_carry(task.model())?;
    task.start(&mut stream, &mut carry, 0, None)?;
    let steps = task.epoch_steps(&stream);
    let items = task.cache_items(&stream, steps);
    let fixed = task.teachers();
    let sources = fixed.iter().map(|t| t.path.display().to_string()).collect::<Vec<_>>().join(",");
    let mut cache = TeacherCache::new(fixed.len(), items, classes, top_k, sources)?;
    let mut slots = vec![None; fixed.len()];
    let bar = crate::progress::bar(steps, 0, "teacher logits");
    for step in 0..steps {
        let (batch, fresh) = task.batch(&mut stream, step, steps)?;
        if fresh {
            slots = vec![None; fixed.len()];
        }
        let keys = task.cache_keys(&batch);
        for (j, (t, slot)) in fixed.iter().zip(slots.iter_mut()).enumerate() {
            let (out, _) = teacher_output(&be, &task, t.model, t.store, &batch, slot, false)?;
            cache.put(j, &keys, &out)?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    cache.save(&path, &CacheKey { task: T::NAME.into(), layout, data_key })?;
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    Ok(CacheWritten { path, teachers: fixed.len(), items, classes, k: cache.k(), bytes, seconds: started.elapsed().as_secs_f64() })
}
