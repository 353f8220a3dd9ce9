//! Checkpoint exchange between codistilling models, off the compute path.
//!
//! A `Snapshot` is a model's weights at a step. Two deployments share one interface:
//! - `InProcess`: models in one process. Publishing shares the weight tensors (`Arc`), so it
//!   copies nothing; the publisher's next update copies on write.
//! - `DirExchange`: one process per model and a shared directory (any shared filesystem). A
//!   background writer saves each published snapshot as safetensors to a temporary name and
//!   renames it to `model-<rank>.safetensors`; a background reader polls the peers' files, loads a
//!   newer one (checksum verified, so a torn or half-written file is never loaded) into a standby
//!   slot, and the trainer swaps it in at a step boundary without waiting on any I/O.

use crate::checkpoint::Checkpoint;
use crate::params::{ParamStore, WriteMark};
use crate::tensor::Device;
use crate::{Error, Result};
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
    /// Make `params` at `step` available to the peers.
    fn publish(&mut self, rank: usize, step: u64, params: &ParamStore) -> Result<()>;
    /// The newest snapshot of `peer` available now, if any. Never blocks on I/O.
    fn latest(&mut self, peer: usize) -> Option<Arc<Snapshot>>;
}

/// Models in one process. Each model has an active snapshot (what teachers read) and a standby
/// one; a publish brings the standby buffers up to date and swaps. The standby holds the weights
/// of two publishes ago, so only the rows written since then are copied (an embedding table's
/// touched rows, every dense weight); the first two publishes allocate and copy everything. The
/// trainer's own weights are never shared, so its next update writes in place.
pub struct InProcess {
    active: Vec<Option<(Arc<Snapshot>, WriteMark)>>,
    standby: Vec<Option<(Arc<Snapshot>, WriteMark)>>,
    /// Values copied by publishes so far (for the overlap report and the tests).
    pub copied: usize,
}

impl InProcess {
    pub fn new(world: usize) -> Self {
        InProcess { active: vec![None; world], standby: vec![None; world], copied: 0 }
    }
}

/// A snapshot in its own buffers (a deep copy of the weights).
fn fresh_snapshot(rank: usize, step: u64, params: &ParamStore) -> Result<Snapshot> {
    Ok(Snapshot { rank, step, params: params.copy_of_weights()? })
}

impl Exchange for InProcess {
    fn publish(&mut self, rank: usize, step: u64, params: &ParamStore) -> Result<()> {
        let mut slot = self.standby[rank].take();
        // Reuse the standby buffers when no teacher still holds them.
        let reused = match &mut slot {
            Some((snap, mark)) => match Arc::get_mut(snap) {
                Some(s) => {
                    self.copied += s.params.copy_weights_changed_since(params, Some(*mark))?;
                    s.step = step;
                    *mark = params.write_mark();
                    true
                }
                None => false,
            },
            None => false,
        };
        if !reused {
            slot = Some((Arc::new(fresh_snapshot(rank, step, params)?), params.write_mark()));
            self.copied += params.num_elements();
        }
        self.standby[rank] = self.active[rank].take();
        self.active[rank] = slot;
        Ok(())
    }

    fn latest(&mut self, peer: usize) -> Option<Arc<Snapshot>> {
        self.active[peer].as_ref().map(|(s, _)| s.clone())
    }
}

pub fn snapshot_path(dir: &Path, rank: usize) -> PathBuf {
    dir.join(format!("model-{rank}.safetensors"))
}

/// One process's end of a shared checkpoint directory.
pub struct DirExchange {
    writer: Option<Sender<(u64, ParamStore)>>,
    /// Buffers the writer has finished with, reused by the next publish (no allocation, and the
    /// trainer's weights are never shared with the writer).
    pool: Receiver<ParamStore>,
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
}

impl DirExchange {
    /// `template` gives the parameter names and shapes a peer's file must have.
    pub fn new(dir: &Path, rank: usize, world: usize, template: &ParamStore, poll: Duration) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let notes = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = channel::<(u64, ParamStore)>();
        let (back, pool) = channel::<ParamStore>();
        let (wdir, wnotes) = (dir.to_path_buf(), notes.clone());
        let writer_thread = std::thread::spawn(move || {
            // Only the newest pending snapshot matters: skip any that queued up behind a slow disk.
            while let Ok(mut item) = rx.recv() {
                while let Ok(newer) = rx.try_recv() {
                    let _ = back.send(std::mem::replace(&mut item, newer).1);
                }
                let (step, params) = item;
                let mut c = Checkpoint::new();
                for (name, p) in params.iter() {
                    c.tensors.insert(name.clone(), p.value.clone());
                }
                c.meta.insert("step".into(), step.to_string());
                c.meta.insert("rank".into(), rank.to_string());
                if let Err(e) = c.save(&snapshot_path(&wdir, rank)) {
                    wnotes.lock().unwrap().push(format!("publishing step {step} failed: {e}"));
                }
                drop(c);
                let _ = back.send(params);
            }
        });
        let standby: Arc<Mutex<Vec<Option<Arc<Snapshot>>>>> = Arc::new(Mutex::new(vec![None; world]));
        let stop = Arc::new(Mutex::new(false));
        let (rdir, rstandby, rstop, rnotes, tmpl) = (dir.to_path_buf(), standby.clone(), stop.clone(), notes.clone(), template.weights_only());
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
                    match load_snapshot(&path, peer, &tmpl) {
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
        Ok(DirExchange { writer: Some(tx), pool, writer_thread: Some(writer_thread), reader_thread: Some(reader_thread), standby, active: vec![None; world], stop, notes, device: template.device() })
    }

    /// Messages from the background threads since the last call.
    pub fn warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut *self.notes.lock().unwrap())
    }

    /// Wait until the writer has saved everything published so far (used at the end of a run).
    pub fn flush(&mut self) {
        self.writer.take();
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }
}

fn load_snapshot(path: &Path, peer: usize, template: &ParamStore) -> Result<Snapshot> {
    let c = Checkpoint::load(path)?;
    let step = c.meta("step", path)?.parse().map_err(|_| Error::Invalid(format!("{}: step is not a number", path.display())))?;
    let mut params = template.clone();
    for name in template.names() {
        let t = c.tensors.get(&name).ok_or_else(|| Error::Invalid(format!("{}: lacks parameter {name:?}", path.display())))?;
        params.set(&name, t.clone()).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    }
    Ok(Snapshot { rank: peer, step, params })
}

impl Exchange for DirExchange {
    fn publish(&mut self, _rank: usize, step: u64, params: &ParamStore) -> Result<()> {
        match &self.writer {
            Some(tx) => {
                let buf = match self.pool.try_recv() {
                    Ok(mut b) => {
                        b.copy_weights_from(params)?;
                        b
                    }
                    // The writer's buffers live on the host, whatever device trains.
                    Err(_) => params.copy_of_weights_on(Device::Cpu)?,
                };
                tx.send((step, buf)).map_err(|_| Error::Invalid("the checkpoint writer thread has stopped".into()))
            }
            None => Err(Error::Invalid("publish after flush".into())),
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
        x.publish(1, 10, &own).unwrap();
        x.publish(1, 20, &store(2.0)).unwrap();
        x.publish(1, 30, &store(3.0)).unwrap(); // reuses the step-10 buffers
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
                own.accumulate_rows("table", &Tensor::from_i32(ids, &[20]).unwrap(), &g).unwrap();
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
            x.publish(1, publish, &own).unwrap();
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

    #[test]
    fn directory_exchange_delivers_and_never_loads_a_torn_file() {
        let dir = std::env::temp_dir().join(format!("codistill-x-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let poll = Duration::from_millis(5);
        let mut a = DirExchange::new(&dir, 0, 2, &store(0.0), poll).unwrap();
        let mut b = DirExchange::new(&dir, 1, 2, &store(0.0), poll).unwrap();
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
