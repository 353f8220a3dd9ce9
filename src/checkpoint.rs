//! Checkpoints in safetensors (so `safetensors.torch.load_file` opens them), written to a
//! temporary name and renamed, so a reader never sees half a file.
//!
//! Beside the tensors, the header's metadata holds string entries (the config, the vocabulary,
//! the step) and a checksum of every tensor's name, shape and bytes. safetensors itself rejects a
//! truncated file or a malformed header; the checksum catches a corrupted payload, which the
//! format alone would load silently.

use crate::data::text::write_atomic;
use crate::hash::Hasher64;
use crate::tensor::{DType, Tensor};
use crate::{bail, Error, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub const CHECKSUM_KEY: &str = "codistill.checksum";

#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// Tensors in name order.
    pub tensors: BTreeMap<String, Tensor>,
    pub meta: BTreeMap<String, String>,
}

fn checksum<'a>(items: impl Iterator<Item = (&'a String, &'a [usize], &'a [u8])>) -> String {
    let mut h = Hasher64::new();
    for (name, shape, bytes) in items {
        h.update(name.as_bytes());
        for d in shape {
            h.update(&(*d as u64).to_le_bytes());
        }
        h.update(bytes);
    }
    format!("{:016x}", h.finish())
}

impl Checkpoint {
    pub fn new() -> Self {
        Checkpoint { tensors: BTreeMap::new(), meta: BTreeMap::new() }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let mut bytes: Vec<(String, Vec<usize>, Vec<u8>, Dtype)> = Vec::with_capacity(self.tensors.len());
        for (name, t) in &self.tensors {
            // Tensors on a GPU are copied to the host first.
            let t = &t.to_device(crate::tensor::Device::Cpu)?;
            let (data, dt) = match t.dtype() {
                DType::F32 => (bytemuck::cast_slice(t.f32s()?).to_vec(), Dtype::F32),
                DType::I32 => (bytemuck::cast_slice(t.i32s()?).to_vec(), Dtype::I32),
                DType::BF16 => (bytemuck::cast_slice(t.bf16s()?).to_vec(), Dtype::BF16),
            };
            bytes.push((name.clone(), t.shape().to_vec(), data, dt));
        }
        let mut meta: HashMap<String, String> = self.meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        meta.insert(CHECKSUM_KEY.into(), checksum(bytes.iter().map(|(n, s, b, _)| (n, s.as_slice(), b.as_slice()))));
        let views = bytes
            .iter()
            .map(|(n, s, b, dt)| Ok((n.clone(), TensorView::new(*dt, s.clone(), b).map_err(|e| Error::Invalid(format!("tensor {n}: {e}")))?)))
            .collect::<Result<Vec<_>>>()?;
        let out = safetensors::serialize(views, Some(meta)).map_err(|e| Error::Invalid(format!("{}: cannot serialise checkpoint: {e}", path.display())))?;
        write_atomic(path, &out)
    }

    pub fn load(path: &Path) -> Result<Checkpoint> {
        Self::read(path, true)
    }

    /// Any safetensors file (one written by PyTorch's `safetensors.torch.save_file`, say): its
    /// tensors (f32, i32, bf16) and metadata, with no codistill checksum required (one present is
    /// still checked).
    pub fn load_plain(path: &Path) -> Result<Checkpoint> {
        Self::read(path, false)
    }

    fn read(path: &Path, ours: bool) -> Result<Checkpoint> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |what: String| Error::Invalid(format!("{}: not a usable checkpoint: {what}", path.display()));
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("{e} (the file is truncated or corrupted)")))?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let mut meta: BTreeMap<String, String> = header.metadata().clone().unwrap_or_default().into_iter().collect();
        let want = meta.remove(CHECKSUM_KEY);
        if want.is_none() && ours {
            return Err(bad("it has no codistill checksum (not written by codistill? a PyTorch state dict goes through `codistill import`)".into()));
        }
        let mut tensors = BTreeMap::new();
        let mut named: Vec<(String, TensorView)> = st.tensors();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(want) = want {
            let got = checksum(named.iter().map(|(n, v)| (n, v.shape(), v.data())));
            if got != want {
                return Err(bad(format!("checksum {got} does not match the recorded {want}: the file is corrupted")));
            }
        }
        for (name, v) in named {
            let t = match v.dtype() {
                Dtype::F32 => Tensor::from_f32(bytemuck::pod_collect_to_vec(v.data()), v.shape())?,
                Dtype::I32 => Tensor::from_i32(bytemuck::pod_collect_to_vec(v.data()), v.shape())?,
                Dtype::BF16 => Tensor::from_bf16(bytemuck::pod_collect_to_vec(v.data()), v.shape())?,
                other => bail!(DType, "{}: tensor {name} has dtype {other:?}, which codistill does not use", path.display()),
            };
            tensors.insert(name, t);
        }
        Ok(Checkpoint { tensors, meta })
    }

    /// A metadata entry, or an error naming the checkpoint and the key.
    pub fn meta(&self, key: &str, path: &Path) -> Result<&str> {
        match self.meta.get(key) {
            Some(v) => Ok(v),
            None => bail!(Invalid, "{}: checkpoint lacks the {key:?} entry", path.display()),
        }
    }
}

impl Default for Checkpoint {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    fn sample(dir: &Path) -> std::path::PathBuf {
        let mut c = Checkpoint::new();
        c.tensors.insert("w".into(), Tensor::randn(&[3, 5], 1.0, &mut Rng::new(1)));
        c.tensors.insert("ids".into(), Tensor::from_i32(vec![1, 2, 3], &[3]).unwrap());
        c.meta.insert("step".into(), "42".into());
        let p = dir.join("c.safetensors");
        c.save(&p).unwrap();
        p
    }

    fn dir(name: &str) -> crate::testdir::Scratch {
        crate::testdir::Scratch::new("ckpt", name)
    }

    #[test]
    fn round_trip_keeps_tensors_and_metadata() {
        let d = dir("rt");
        let p = sample(&d);
        let c = Checkpoint::load(&p).unwrap();
        assert_eq!(c.meta("step", &p).unwrap(), "42");
        assert_eq!(c.tensors["w"], Tensor::randn(&[3, 5], 1.0, &mut Rng::new(1)));
        assert_eq!(c.tensors["ids"].i32s().unwrap(), &[1, 2, 3]);
        assert!(c.meta("absent", &p).unwrap_err().to_string().contains("absent"));
    }

    #[test]
    fn truncated_and_corrupted_files_are_refused_with_the_path() {
        let d = dir("bad");
        let p = sample(&d);
        let bytes = std::fs::read(&p).unwrap();
        let t = d.join("trunc.safetensors");
        std::fs::write(&t, &bytes[..bytes.len() - 7]).unwrap();
        let e = Checkpoint::load(&t).unwrap_err().to_string();
        assert!(e.contains("trunc.safetensors") && e.contains("truncated"), "{e}");
        let mut flipped = bytes.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x10;
        let c = d.join("corrupt.safetensors");
        std::fs::write(&c, &flipped).unwrap();
        let e = Checkpoint::load(&c).unwrap_err().to_string();
        assert!(e.contains("corrupt.safetensors") && e.contains("checksum"), "{e}");
        let g = d.join("garbage.safetensors");
        std::fs::write(&g, b"not a checkpoint at all").unwrap();
        assert!(Checkpoint::load(&g).is_err());
    }
}
