//! Checkpoint exchange between codistilling models, off the compute path.
//!
//! A `Snapshot` is a model's weights at a step. Two deployments share one interface:
//! - `InProcess`: models in one process. A publish brings a standby copy of the weights up to
//!   date (only the rows written since it was last filled) on a helper thread while the models
//!   compute the next step, and the next step boundary swaps it in.
//! - `DirExchange`: one process per model and a shared directory (any shared filesystem). A
//!   background writer saves each published snapshot as safetensors to a temporary name and
//!   renames it to `model-<rank>.safetensors`; a background reader polls the peers' files, loads a
//!   newer one (checksum verified, so a torn or half-written file is never loaded) into a standby
//!   slot, and the trainer swaps it in at a step boundary without waiting on any I/O. With GPU
//!   weights a publish copies them into page-locked host memory on the copy stream after an event
//!   that marks the step's end (the writer waits for the copy; the compute stream waits for it,
//!   on the device, only before the next update), and the reader uploads a peer's snapshot on the
//!   copy stream, so the swap finds it on the GPU.

use crate::checkpoint::Checkpoint;
use crate::params::{ParamStore, WriteMark};
use crate::tensor::Device;
use crate::{bail, Error, Result};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A model's weights at a training step.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub rank: usize,
    pub step: u64,
    pub params: ParamStore,
}

pub trait Exchange {
    /// Make `params` at `step` available to the peers. The exchange may go on reading `params`
    /// after this returns (a copy in the background), until [`settle`](Exchange::settle).
    fn publish(&mut self, rank: usize, step: u64, params: &ParamStore) -> Result<()>;
    /// The publisher `rank` is about to write its weights: finish reading them. Called before
    /// every optimizer update; waits only if a background copy has not finished yet.
    fn settle(&mut self, _rank: usize) -> Result<()> {
        Ok(())
    }
    /// A step boundary of the whole process: snapshots published before the previous boundary
    /// become the ones `latest` serves (an in-process copy is in flight for one step, as on a copy
    /// stream). Deterministic: it never depends on how fast a copy ran.
    fn advance(&mut self) -> Result<()> {
        Ok(())
    }
    /// The newest snapshot of `peer` available now, if any. Never blocks on I/O.
    fn latest(&mut self, peer: usize) -> Option<Arc<Snapshot>>;
    /// Before training: allocate what publishing `params` as `rank` will need, so that the first
    /// publishes do not allocate (optional; nothing is published).
    fn prepare(&mut self, _rank: usize, _params: &ParamStore) -> Result<()> {
        Ok(())
    }
    /// Wait until every one of `peers` has a snapshot that `latest` can serve, for at most
    /// `timeout`; an error names the peers still missing and what the exchange saw of them. In one
    /// process every model publishes on the same steps, so there is nothing to wait for.
    fn wait_for_peers(&mut self, _peers: &[usize], _timeout: Duration) -> Result<()> {
        Ok(())
    }
    /// What went wrong in the background since the last call (refused peer files, failed
    /// publishes), one message each.
    fn warnings(&mut self) -> Vec<String> {
        Vec::new()
    }
}

/// A standby snapshot being brought up to date, and the mark it will be current to.
enum Copying {
    /// On a helper thread, reading the publisher's weights (CPU weights).
    Background(JoinHandle<Result<(Snapshot, usize)>>, WriteMark),
    /// Done (GPU weights are copied on the device at publish; the first fills are deep copies).
    Done(Snapshot, usize, WriteMark),
}

/// Models in one process. Each model has an active snapshot (what teachers read) and a standby
/// one; a publish brings the standby buffers up to date and the next step boundary (`advance`)
/// swaps them in. The standby holds the weights of two publishes ago, so only the rows written since
/// then are copied (an embedding table's touched rows, every dense weight); the first two
/// publishes allocate and copy everything. On the CPU the copy runs on a helper thread while the
/// models compute the next step (the weights are only read until the publisher's next update,
/// where `settle` waits for the copy), so the compute path pays only for starting it. The
/// trainer's own weights are never shared after `settle`, so its update writes in place.
pub struct InProcess {
    active: Vec<Option<(Arc<Snapshot>, WriteMark)>>,
    standby: Vec<Option<(Arc<Snapshot>, WriteMark)>>,
    /// Published, not yet settled.
    copying: Vec<Option<Copying>>,
    /// Settled, swapped in at the next `advance`.
    landed: Vec<Option<(Snapshot, WriteMark)>>,
    /// A second standby made by `prepare`, taken when the first swap leaves no old snapshot.
    spare: Vec<Option<(Arc<Snapshot>, WriteMark)>>,
    /// Values copied by publishes so far (for the overlap report and the tests).
    pub copied: usize,
}

impl InProcess {
    pub fn new(world: usize) -> Self {
        InProcess {
            active: vec![None; world],
            standby: vec![None; world],
            copying: (0..world).map(|_| None).collect(),
            landed: (0..world).map(|_| None).collect(),
            spare: vec![None; world],
            copied: 0,
        }
    }

    /// Publish, settle and swap in at once: the snapshot is served by `latest` right away.
    pub fn publish_now(&mut self, rank: usize, step: u64, params: &ParamStore) -> Result<()> {
        self.publish(rank, step, params)?;
        self.settle(rank)?;
        self.swap_in(rank);
        Ok(())
    }

    fn swap_in(&mut self, rank: usize) {
        if let Some((snap, mark)) = self.landed[rank].take() {
            self.standby[rank] = self.active[rank].take().or_else(|| self.spare[rank].take());
            self.active[rank] = Some((Arc::new(snap), mark));
        }
    }
}

/// Lower the calling thread to the idle scheduling class (Linux `SCHED_IDLE`): it runs only on a
/// core that nothing else wants, so the background copy of a publish fills the gaps of the
/// training step (its single-threaded stretches) instead of preempting the GEMM threads, which
/// would hold up the whole step. If the copy is not done by the publisher's next update, `settle`
/// blocks, which frees a core for it. Elsewhere, and if the call is refused, nothing changes.
fn idle_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 names the calling thread; `param` is a valid sched_param for SCHED_IDLE.
        unsafe {
            libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
        }
    }
}

/// A snapshot in its own buffers (a deep copy of the weights).
fn fresh_snapshot(rank: usize, step: u64, params: &ParamStore) -> Result<Snapshot> {
    Ok(Snapshot { rank, step, params: params.copy_of_weights()? })
}

impl Exchange for InProcess {
    fn publish(&mut self, rank: usize, step: u64, params: &ParamStore) -> Result<()> {
        // A publish before the previous one was swapped in replaces it; its buffers, current to
        // their mark, become the standby.
        self.settle(rank)?;
        if let Some((old, mark)) = self.landed[rank].take() {
            self.standby[rank] = Some((Arc::new(old), mark));
        }
        let view = params.weights_view();
        let mark = view.write_mark();
        // Reuse the standby buffers when no teacher still holds them.
        let reusable = self.standby[rank].take().and_then(|(snap, since)| Arc::try_unwrap(snap).ok().map(|s| (s, since)));
        let background = |job: Box<dyn FnOnce() -> Result<(Snapshot, usize)> + Send>| {
            std::thread::Builder::new()
                .name(format!("codistill-publish-{rank}"))
                .spawn(move || {
                    idle_priority();
                    job()
                })
                .map(|h| Copying::Background(h, mark))
                .map_err(|e| Error::Invalid(format!("could not start the publish thread: {e}")))
        };
        self.copying[rank] = Some(match reusable {
            Some((mut snap, since)) if view.on_cpu() && snap.params.device() == Device::Cpu => {
                snap.step = step;
                background(Box::new(move || {
                    let copied = snap.params.copy_weights_from_view(&view, Some(since))?;
                    Ok((snap, copied))
                }))?
            }
            Some((mut snap, since)) => {
                snap.step = step;
                let copied = snap.params.copy_weights_from_view(&view, Some(since))?;
                Copying::Done(snap, copied, mark)
            }
            // The first two publishes allocate their buffers (in the background on the CPU).
            None if view.on_cpu() => background(Box::new(move || {
                let params = view.to_store()?;
                let copied = params.num_elements();
                Ok((Snapshot { rank, step, params }, copied))
            }))?,
            None => Copying::Done(fresh_snapshot(rank, step, params)?, params.num_elements(), mark),
        });
        Ok(())
    }

    fn settle(&mut self, rank: usize) -> Result<()> {
        let (snap, copied, mark) = match self.copying[rank].take() {
            None => return Ok(()),
            Some(Copying::Done(s, c, m)) => (s, c, m),
            Some(Copying::Background(h, m)) => {
                let (s, c) = h.join().map_err(|_| Error::Invalid("the publish thread panicked".into()))??;
                (s, c, m)
            }
        };
        self.copied += copied;
        self.landed[rank] = Some((snap, mark));
        Ok(())
    }

    fn advance(&mut self) -> Result<()> {
        // Everything pending was published at an earlier boundary (trainers publish after
        // `advance`), so it has been in flight for at least one step.
        for rank in 0..self.active.len() {
            self.settle(rank)?;
            self.swap_in(rank);
        }
        Ok(())
    }

    fn latest(&mut self, peer: usize) -> Option<Arc<Snapshot>> {
        self.active[peer].as_ref().map(|(s, _)| s.clone())
    }

    fn prepare(&mut self, rank: usize, params: &ParamStore) -> Result<()> {
        let mark = params.write_mark();
        if self.standby[rank].is_none() && self.active[rank].is_none() {
            self.standby[rank] = Some((Arc::new(fresh_snapshot(rank, 0, params)?), mark));
            self.spare[rank] = Some((Arc::new(fresh_snapshot(rank, 0, params)?), mark));
        }
        Ok(())
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        for c in self.copying.iter_mut() {
            if let Some(Copying::Background(h, _)) = c.take() {
                let _ = h.join();
            }
        }
    }
}

/// What a publish hands the writer thread.
enum Outgoing {
    /// Host weights, copied at publish (training on the CPU).
    Host(ParamStore),
    /// GPU weights being copied into page-locked host memory on the copy stream; the writer waits
    /// for the copies, not the trainer.
    Pinned { names: Arc<Vec<(String, Vec<usize>)>>, mirror: crate::cuda::HostMirror },
}

impl Outgoing {
    fn checkpoint(&self) -> Result<Checkpoint> {
        let mut c = Checkpoint::new();
        match self {
            Outgoing::Host(params) => {
                for (name, p) in params.iter() {
                    c.tensors.insert(name.clone(), p.value.clone());
                }
            }
            Outgoing::Pinned { names, mirror } => {
                for ((name, shape), data) in names.iter().zip(mirror.wait()?) {
                    c.tensors.insert(name.clone(), crate::Tensor::from_f32(data.to_vec(), shape)?);
                }
            }
        }
        Ok(c)
    }
}

/// A host snapshot moved to `device`: on a GPU, uploaded on the copy stream by the calling
/// (reader) thread, so the trainer finds it there when it swaps it in.
fn snapshot_to(s: Snapshot, device: Device) -> Result<Snapshot> {
    let Device::Cuda(i) = device else { return Ok(s) };
    let gpu = crate::cuda::gpu(i)?;
    let mut params = s.params.clone();
    for (name, p) in s.params.iter() {
        let shape = p.value.shape().to_vec();
        let buf = gpu.upload_on_copy_stream(p.value.f32s()?)?;
        params.set(name, crate::Tensor::from_gpu_f32(buf, &shape)?)?;
    }
    Ok(Snapshot { rank: s.rank, step: s.step, params })
}

pub fn snapshot_path(dir: &Path, rank: usize) -> PathBuf {
    dir.join(format!("model-{rank}.safetensors"))
}

/// One process's end of a shared checkpoint directory.
pub struct DirExchange {
    writer: Option<Sender<(u64, Outgoing)>>,
    /// Buffers the writer has finished with, reused by the next publish (no allocation, and the
    /// trainer's weights are never shared with the writer).
    pool: Receiver<Outgoing>,
    /// The pool's other end, for `prepare` to put the first buffers in.
    pool_in: Sender<Outgoing>,
    /// The end of the last publish's device-to-host copies (GPU weights): the compute stream waits
    /// for it before the next update writes the weights.
    copying: Option<crate::cuda::CopyDone>,
    writer_thread: Option<JoinHandle<()>>,
    reader_thread: Option<JoinHandle<()>>,
    standby: Arc<Mutex<Vec<Option<Arc<Snapshot>>>>>,
    active: Vec<Option<Arc<Snapshot>>>,
    stop: Arc<Mutex<bool>>,
    /// Messages from the background threads (write failures, refused files), drained by `warnings`.
    notes: Arc<Mutex<Vec<String>>>,
    /// Where the trainer's weights live: peers' snapshots are read on the host and moved here when
    /// they are swapped in.
    device: Device,
    dir: PathBuf,
    rank: usize,
    /// The messages `warnings` has handed out (a wait still names them).
    reported: Vec<String>,
}

impl DirExchange {
    /// `template` gives the parameter names and shapes a peer's file must have.
    /// `compat` goes into every file this process publishes, and a peer's file must carry the
    /// same; a `fresh` run refuses a directory that holds its own rank's file already (an earlier
    /// run's, or another process's of the same rank).
    pub fn new(dir: &Path, rank: usize, world: usize, template: &ParamStore, poll: Duration, compat: &str, fresh: bool) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let own = snapshot_path(dir, rank);
        if fresh && own.exists() {
            let step = Checkpoint::load(&own).ok().and_then(|c| c.meta.get("step").cloned()).unwrap_or_else(|| "?".into());
            bail!(
                Invalid,
                "{}: this run's model {rank} would publish here, but the file exists already (step {step}): it is an earlier run's, or another process runs as rank {rank}; give each run a fresh --exchange-dir (or remove the file), or --resume this model",
                own.display()
            );
        }
        // A publish killed mid-write leaves its temporary file (`model-<rank>.tmp<pid>`): this
        // rank's are removed (no other process writes them).
        let stem = own.file_stem().map(|s| s.to_os_string());
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.flatten() {
            let p = entry.path();
            if crate::data::text::is_write_temp(&p) && p.file_stem().map(|s| s.to_os_string()) == stem {
                let _ = std::fs::remove_file(&p);
            }
        }
        let compat = compat.to_string();
        let wcompat = compat.clone();
        let notes = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = channel::<(u64, Outgoing)>();
        let (back, pool) = channel::<Outgoing>();
        let pool_in = back.clone();
        let (wdir, wnotes) = (dir.to_path_buf(), notes.clone());
        let writer_thread = std::thread::spawn(move || {
            // Only the newest pending snapshot matters: skip any that queued up behind a slow disk.
            while let Ok(mut item) = rx.recv() {
                while let Ok(newer) = rx.try_recv() {
                    let _ = back.send(std::mem::replace(&mut item, newer).1);
                }
                let (step, out) = item;
                let saved = out.checkpoint().and_then(|mut c| {
                    c.meta.insert("step".into(), step.to_string());
                    c.meta.insert("rank".into(), rank.to_string());
                    c.meta.insert("compat".into(), wcompat.clone());
                    c.save(&snapshot_path(&wdir, rank))
                });
                if let Err(e) = saved {
                    wnotes.lock().unwrap().push(format!("publishing step {step} failed: {e}"));
                }
                let _ = back.send(out);
            }
        });
        let standby: Arc<Mutex<Vec<Option<Arc<Snapshot>>>>> = Arc::new(Mutex::new(vec![None; world]));
        let stop = Arc::new(Mutex::new(false));
        // The reader checks names and shapes against a host copy (sharing the trainer's buffers would
        // make its first update copy them).
        let device = template.device();
        let (rdir, rstandby, rstop, rnotes, tmpl) =
            (dir.to_path_buf(), standby.clone(), stop.clone(), notes.clone(), template.copy_of_weights_on(Device::Cpu)?);
        let reader_thread = std::thread::spawn(move || {
            let mut seen: Vec<Option<std::time::SystemTime>> = vec![None; world];
            while !*rstop.lock().unwrap() {
                for peer in (0..world).filter(|&p| p != rank) {
                    let path = snapshot_path(&rdir, peer);
                    let Ok(mtime) = std::fs::metadata(&path).and_then(|m| m.modified()) else { continue };
                    if seen[peer] == Some(mtime) {
                        continue;
                    }
                    seen[peer] = Some(mtime);
                    match load_snapshot(&path, peer, &tmpl, &compat).and_then(|s| snapshot_to(s, device)) {
                        Ok(s) => {
                            let mut slots = rstandby.lock().unwrap();
                            if slots[peer].as_ref().map(|o: &Arc<Snapshot>| s.step > o.step).unwrap_or(true) {
                                slots[peer] = Some(Arc::new(s));
                            }
                        }
                        Err(e) => rnotes.lock().unwrap().push(format!("ignored peer checkpoint: {e}")),
                    }
                }
                std::thread::sleep(poll);
            }
        });
        Ok(DirExchange {
            writer: Some(tx),
            pool,
            pool_in,
            copying: None,
            writer_thread: Some(writer_thread),
            reader_thread: Some(reader_thread),
            standby,
            active: vec![None; world],
            stop,
            notes,
            device,
            dir: dir.to_path_buf(),
            rank,
            reported: Vec::new(),
        })
    }

    /// Wait until the writer has saved everything published so far (used at the end of a run).
    pub fn flush(&mut self) {
        self.writer.take();
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }
}

fn load_snapshot(path: &Path, peer: usize, template: &ParamStore, compat: &str) -> Result<Snapshot> {
    let c = Checkpoint::load(path)?;
    if let Some(theirs) = c.meta.get("compat").filter(|t| t.as_str() != compat) {
        let pairs = |s: &str| {
            s.split(';').map(|kv| kv.split_once('=').map_or((kv.to_string(), String::new()), |(k, v)| (k.to_string(), v.to_string()))).collect::<Vec<_>>()
        };
        let ours = pairs(compat);
        let diff: Vec<String> = pairs(theirs)
            .into_iter()
            .filter_map(|(k, v)| {
                let here = ours.iter().find(|(o, _)| *o == k).map_or("(none)", |(_, v)| v.as_str());
                (here != v).then(|| format!("{k} {v} there, {here} here"))
            })
            .collect();
        bail!(
            Invalid,
            "{}: model {peer} runs with other settings than this model ({}); every rank must be started with the same ones",
            path.display(),
            diff.join(", ")
        );
    }
    let step = c.meta("step", path)?.parse().map_err(|_| Error::Invalid(format!("{}: step is not a number", path.display())))?;
    let mut params = template.clone();
    for name in template.names() {
        let t = c.tensors.get(&name).ok_or_else(|| Error::Invalid(format!("{}: lacks parameter {name:?}", path.display())))?;
        params.set(&name, t.clone()).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    }
    Ok(Snapshot { rank: peer, step, params })
}

impl Exchange for DirExchange {
    fn publish(&mut self, rank: usize, step: u64, params: &ParamStore) -> Result<()> {
        self.settle(rank)?;
        let Some(tx) = &self.writer else { return Err(Error::Invalid("publish after flush".into())) };
        let out = fill(self.pool.try_recv().ok(), params, &mut self.copying)?;
        tx.send((step, out)).map_err(|_| Error::Invalid("the checkpoint writer thread has stopped".into()))
    }

    fn prepare(&mut self, _rank: usize, params: &ParamStore) -> Result<()> {
        // One set of host buffers made before training (page-locked for GPU weights), so that the
        // first publish allocates nothing.
        if params.is_empty() {
            return Ok(());
        }
        let _ = self.pool_in.send(host_buffers(params)?);
        Ok(())
    }

    fn settle(&mut self, _rank: usize) -> Result<()> {
        if let Some(done) = self.copying.take() {
            done.compute_waits()?;
        }
        Ok(())
    }

    fn warnings(&mut self) -> Vec<String> {
        let taken = std::mem::take(&mut *self.notes.lock().unwrap());
        self.reported.extend(taken.iter().cloned());
        taken
    }

    fn wait_for_peers(&mut self, peers: &[usize], timeout: Duration) -> Result<()> {
        let t0 = Instant::now();
        loop {
            let missing: Vec<usize> = {
                let slots = self.standby.lock().unwrap();
                peers.iter().copied().filter(|&p| self.active[p].is_none() && slots[p].is_none()).collect()
            };
            if missing.is_empty() {
                return Ok(());
            }
            // A peer's file is written whole (through a rename), so one that was refused is a peer
            // of another model or another kind of file: no wait makes it fit.
            let seen: Vec<String> = self.reported.iter().chain(self.notes.lock().unwrap().iter()).cloned().collect();
            let refused = missing.iter().any(|&p| seen.iter().any(|n| n.contains(&*snapshot_path(&self.dir, p).to_string_lossy())));
            if refused || t0.elapsed() >= timeout {
                bail!(
                    Invalid,
                    "model {}: no usable checkpoint from peer model(s) {missing:?} arrived in {} {}; start every rank with the same model options, --exchange-dir and --world, or set --peer-timeout 0 to train on without missing peers{}",
                    self.rank,
                    self.dir.display(),
                    if refused { "(it was refused)".to_string() } else { format!("within {} s (peer_timeout)", timeout.as_secs()) },
                    if seen.is_empty() { String::new() } else { format!(". The exchange reported: {}", seen.join("; ")) }
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn latest(&mut self, peer: usize) -> Option<Arc<Snapshot>> {
        // The swap: take a newer standby snapshot if the reader has one; never wait for the reader.
        if let Ok(mut slots) = self.standby.try_lock() {
            if let Some(s) = slots[peer].take() {
                if s.params.device() == self.device {
                    self.active[peer] = Some(s);
                } else {
                    let mut params = s.params.clone();
                    match params.to_device(self.device) {
                        Ok(()) => self.active[peer] = Some(Arc::new(Snapshot { rank: s.rank, step: s.step, params })),
                        Err(e) => self.notes.lock().unwrap().push(format!("peer {peer}'s step {} snapshot could not be moved to {}: {e}", s.step, self.device)),
                    }
                }
            }
        }
        self.active[peer].clone()
    }
}

/// New host buffers for publishing `params`: a host copy for CPU weights, page-locked buffers
/// (not yet filled) for GPU weights.
fn host_buffers(params: &ParamStore) -> Result<Outgoing> {
    Ok(match params.device() {
        Device::Cpu => Outgoing::Host(params.copy_of_weights_on(Device::Cpu)?),
        Device::Cuda(i) => {
            let lens: Vec<usize> = params.iter().map(|(_, p)| p.value.numel()).collect();
            let names = Arc::new(params.iter().map(|(n, p)| (n.clone(), p.value.shape().to_vec())).collect());
            Outgoing::Pinned { names, mirror: crate::cuda::HostMirror::new(&crate::cuda::gpu(i)?, &lens)? }
        }
    })
}

/// A publish's host copy of `params`, into `reuse` when it fits, else into new buffers. For GPU
/// weights the copy is started on the copy stream and `copying` gets the event of its end.
fn fill(reuse: Option<Outgoing>, params: &ParamStore, copying: &mut Option<crate::cuda::CopyDone>) -> Result<Outgoing> {
    let lens: Vec<usize> = params.iter().map(|(_, p)| p.value.numel()).collect();
    let (mut out, fresh) = match reuse {
        Some(o @ Outgoing::Host(_)) if params.device() == Device::Cpu => (o, false),
        Some(o @ Outgoing::Pinned { .. }) if params.device() != Device::Cpu && matches!(&o, Outgoing::Pinned { mirror, .. } if mirror.lens() == lens) => {
            (o, false)
        }
        _ => (host_buffers(params)?, true),
    };
    match &mut out {
        Outgoing::Host(b) if !fresh => b.copy_weights_from(params)?,
        Outgoing::Host(_) => {} // host_buffers copied the weights
        Outgoing::Pinned { mirror, .. } => {
            let bufs: Vec<&crate::cuda::GpuBuf<f32>> = params.iter().map(|(_, p)| p.value.cuda_f32()).collect::<Result<_>>()?;
            if bufs.is_empty() {
                return Err(Error::Invalid("publish of a model without parameters".into()));
            }
            *copying = Some(mirror.start(&bufs)?);
        }
    }
    Ok(out)
}

impl Drop for DirExchange {
    fn drop(&mut self) {
        self.flush();
        *self.stop.lock().unwrap() = true;
        if let Some(t) = self.reader_thread.take() {
            let _ = t.join();
        }
    }
}

/// Time spent in an exchange call, for the "waited on exchange" log.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tensor;

    fn store(v: f32) -> ParamStore {
        let mut s = ParamStore::new();
        s.insert("w", Tensor::full(&[2, 3], v)).unwrap();
        s
    }

    #[test]
    fn in_process_serves_the_newest_snapshot_without_sharing_the_publishers_weights() {
        let mut x = InProcess::new(2);
        assert!(x.latest(1).is_none());
        let mut own = store(1.0);
        x.publish_now(1, 10, &own).unwrap();
        x.publish_now(1, 20, &store(2.0)).unwrap();
        x.publish_now(1, 30, &store(3.0)).unwrap(); // reuses the step-10 buffers
        let s = x.latest(1).unwrap();
        assert_eq!((s.step, s.params.get("w").unwrap().f32s().unwrap()[0]), (30, 3.0));
        // The publisher's tensor is not shared: writing it does not touch the snapshot.
        let before = own.get("w").unwrap().f32s().unwrap().as_ptr();
        own.param_mut("w").unwrap().value.f32s_mut().unwrap()[0] = 9.0;
        assert_eq!(own.get("w").unwrap().f32s().unwrap().as_ptr(), before, "copy on write happened");
        assert_eq!(s.params.get("w").unwrap().f32s().unwrap()[0], 3.0);
    }

    /// Publishing after row-sparse optimizer steps copies only the touched rows (and the dense
    /// weights), and every published snapshot is bitwise the publisher's weights, also after a
    /// write the store cannot see row by row (`param_mut`) and after a dense update.
    #[test]
    fn in_process_publish_copies_only_changed_rows_and_stays_exact() {
        use crate::optim::{Optimizer, OptimizerKind};
        use crate::Rng;
        let (rows, width) = (1000, 8);
        let mut rng = Rng::new(5);
        let mut own = ParamStore::new();
        own.insert("table", Tensor::randn(&[rows, width], 1.0, &mut rng)).unwrap();
        own.insert("bias", Tensor::randn(&[4], 1.0, &mut rng)).unwrap();
        let mut opt = Optimizer::new(OptimizerKind::adam());
        let mut x = InProcess::new(2);
        for publish in 0..12u64 {
            for _ in 0..3 {
                own.zero_grads().unwrap();
                let ids: Vec<i32> = (0..20).map(|_| (rng.next_u64() % rows as u64) as i32).collect();
                let g = Tensor::randn(&[20, width], 1.0, &mut rng);
                own.accumulate_rows(&crate::Backend::default(), "table", &Tensor::from_i32(ids, &[20]).unwrap(), &g).unwrap();
                if publish % 5 == 4 {
                    let dense = Tensor::randn(&[rows, width], 1.0, &mut rng);
                    own.accumulate_grad("table", &dense).unwrap(); // a dense gradient: every row moves
                }
                own.accumulate_grad("bias", &Tensor::randn(&[4], 1.0, &mut rng)).unwrap();
                opt.step(&mut own, 1e-2, None).unwrap();
            }
            if publish == 7 {
                own.param_mut("table").unwrap().value.f32s_mut().unwrap()[rows * width - 1] = 42.0;
            }
            let before = x.copied;
            x.publish_now(1, publish, &own).unwrap();
            let copied = x.copied - before;
            let s = x.latest(1).unwrap();
            for name in ["table", "bias"] {
                let (a, b) = (s.params.get(name).unwrap().f32s().unwrap(), own.get(name).unwrap().f32s().unwrap());
                assert!(a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits()), "publish {publish}: {name} differs");
            }
            // Two publishes' worth of sparse steps touch at most 120 rows; the first two fill the buffers.
            let full = rows * width + 4;
            match publish {
                0 | 1 => assert_eq!(copied, full),
                4 | 5 | 7 | 8 | 9 | 10 => assert_eq!(copied, full, "publish {publish} follows a full write"),
                _ => assert!(copied <= 120 * width + 4, "publish {publish} copied {copied} of {full}"),
            }
        }
    }

    /// The trainers' protocol: a publish copies in the background while the publisher reads its
    /// weights, `settle` finishes it before the update, and the snapshot is served from the next
    /// `advance` on, never earlier (so what a teacher is does not depend on the copy's speed).
    #[test]
    fn in_process_copies_in_the_background_and_swaps_at_the_next_boundary() {
        use crate::optim::{Optimizer, OptimizerKind};
        use crate::Rng;
        let (rows, width) = (5000, 16);
        let mut rng = Rng::new(9);
        let mut own = ParamStore::new();
        own.insert("table", Tensor::randn(&[rows, width], 1.0, &mut rng)).unwrap();
        let mut opt = Optimizer::new(OptimizerKind::sgd());
        let mut x = InProcess::new(2);
        let mut expected: Vec<Vec<f32>> = Vec::new();
        for step in 0..8u64 {
            // The served snapshot is the one published two boundaries ago (published after step
            // s - 1, swapped in at the boundary after step s).
            match x.latest(0) {
                None => assert!(step < 2, "step {step}: nothing served"),
                Some(s) => {
                    assert_eq!(s.step, step - 1, "step {step}");
                    assert_eq!(s.params.get("table").unwrap().f32s().unwrap(), &expected[(step - 2) as usize][..], "step {step}");
                }
            }
            // Reads of the weights while the copy may run: allowed.
            let sum: f32 = own.get("table").unwrap().f32s().unwrap().iter().sum();
            assert!(sum.is_finite());
            x.settle(0).unwrap();
            let ptr = own.get("table").unwrap().f32s().unwrap().as_ptr();
            own.zero_grads().unwrap();
            let ids: Vec<i32> = (0..50).map(|_| (rng.next_u64() % rows as u64) as i32).collect();
            own.accumulate_rows(&crate::Backend::default(), "table", &Tensor::from_i32(ids, &[50]).unwrap(), &Tensor::randn(&[50, width], 1.0, &mut rng))
                .unwrap();
            opt.step(&mut own, 0.1, None).unwrap();
            assert_eq!(own.get("table").unwrap().f32s().unwrap().as_ptr(), ptr, "step {step}: the update copied the weights");
            x.advance().unwrap();
            expected.push(own.get("table").unwrap().f32s().unwrap().to_vec());
            x.publish(0, step + 1, &own).unwrap();
        }
        assert!(x.copied < 2 * rows * width + 6 * 100 * width, "copied {}", x.copied);
    }

    #[test]
    fn directory_exchange_delivers_and_never_loads_a_torn_file() {
        let dir = std::env::temp_dir().join(format!("codistill-x-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let poll = Duration::from_millis(5);
        let mut a = DirExchange::new(&dir, 0, 2, &store(0.0), poll, "", true).unwrap();
        let mut b = DirExchange::new(&dir, 1, 2, &store(0.0), poll, "", true).unwrap();
        a.publish(0, 7, &store(3.0)).unwrap();
        let t = Instant::now();
        let got = loop {
            if let Some(s) = b.latest(0) {
                break s;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "peer snapshot never arrived");
            std::thread::sleep(poll);
        };
        assert_eq!((got.step, got.params.get("w").unwrap().f32s().unwrap()[0]), (7, 3.0));
        // A torn file in place of the peer's checkpoint: refused with a warning, old teacher kept.
        let path = snapshot_path(&dir, 0);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let t = Instant::now();
        let warned = loop {
            let w = b.warnings();
            if !w.is_empty() {
                break w;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "torn file was not noticed");
            std::thread::sleep(poll);
        };
        assert!(warned[0].contains("model-0.safetensors"), "{warned:?}");
        assert_eq!(b.latest(0).unwrap().step, 7, "the last good teacher stays");
        drop((a, b));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
