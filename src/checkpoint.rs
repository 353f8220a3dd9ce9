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
    /// Quantized weights (written as I8, each with its F32 `<name>.scale` in `tensors`: shape
    /// `[rows, 1]` for one scale per row, `[1, cols]` per column); reading a file turns them back
    /// into `tensors` (`q * scale`), so every loader sees the quantized model's weights.
    pub int8: BTreeMap<String, (Vec<i8>, Vec<usize>)>,
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
        Checkpoint { tensors: BTreeMap::new(), meta: BTreeMap::new(), int8: BTreeMap::new() }
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
        for (name, (q, shape)) in &self.int8 {
            bytes.push((name.clone(), shape.clone(), bytemuck::cast_slice(q).to_vec(), Dtype::I8));
        }
        bytes.sort_by(|a, b| a.0.cmp(&b.0));
        let mut meta: HashMap<String, String> = self.meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        meta.insert(CHECKSUM_KEY.into(), checksum(bytes.iter().map(|(n, s, b, _)| (n, s.as_slice(), b.as_slice()))));
        let views = bytes
            .iter()
            .map(|(n, s, b, dt)| Ok((n.clone(), TensorView::new(*dt, s.clone(), b).map_err(|e| Error::Invalid(format!("tensor {n}: {e}")))?)))
            .collect::<Result<Vec<_>>>()?;
        let out = safetensors::serialize(views, Some(meta)).map_err(|e| Error::Invalid(format!("{}: cannot serialise checkpoint: {e}", path.display())))?;
        write_atomic(path, &out)
    }

    /// Store every quantized parameter (see [`crate::ops::quant::quantized_param`]) as `bits`-bit
    /// levels and scales instead of f32 (a quantized model's weights-only checkpoint).
    pub fn quantize_weights(&mut self, bits: u32) -> Result<()> {
        let names: Vec<String> =
            self.tensors.iter().filter(|(n, t)| crate::ops::quant::quantized_param(n, t.shape()).is_some()).map(|(n, _)| n.clone()).collect();
        for name in names {
            let t = self.tensors.remove(&name).expect("listed").to_device(crate::tensor::Device::Cpu)?;
            let per_row = crate::ops::quant::quantized_param(&name, t.shape()).unwrap_or(false);
            let (rows, cols) = t.expect_2d(&name)?;
            let (q, scales) = crate::ops::quant::quantize(t.f32s()?, rows, cols, bits, per_row);
            let shape = if per_row { [rows, 1] } else { [1, cols] };
            self.tensors.insert(format!("{name}.scale"), Tensor::from_f32(scales, &shape)?);
            self.int8.insert(name, (q, vec![rows, cols]));
        }
        self.meta.insert("quantized".into(), format!("int{bits}"));
        Ok(())
    }

    /// The bit width of a quantized model's weights (the `quantized` entry [`quantize_weights`]
    /// writes), None for an f32 model; `path` names the file in the error for another value.
    ///
    /// [`quantize_weights`]: Checkpoint::quantize_weights
    pub fn quantized_bits(&self, path: &Path) -> Result<Option<u32>> {
        match self.meta.get("quantized").map(String::as_str) {
            None => Ok(None),
            Some("int8") => Ok(Some(8)),
            Some("int4") => Ok(Some(4)),
            Some(other) => bail!(Invalid, "{}: quantized = {other:?}, not int8 or int4", path.display()),
        }
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
        let mut int8 = BTreeMap::new();
        for (name, v) in named {
            if v.dtype() == Dtype::I8 {
                int8.insert(name, (bytemuck::cast_slice::<u8, i8>(v.data()).to_vec(), v.shape().to_vec()));
                continue;
            }
            let t = match v.dtype() {
                Dtype::F32 => Tensor::from_f32(bytemuck::pod_collect_to_vec(v.data()), v.shape())?,
                Dtype::I32 => Tensor::from_i32(bytemuck::pod_collect_to_vec(v.data()), v.shape())?,
                Dtype::BF16 => Tensor::from_bf16(bytemuck::pod_collect_to_vec(v.data()), v.shape())?,
                other => bail!(DType, "{}: tensor {name} has dtype {other:?}, which codistill does not use", path.display()),
            };
            tensors.insert(name, t);
        }
        // Quantized weights back to f32, q times the scale of their row or column.
        for (name, (q, shape)) in int8 {
            let scale = tensors.remove(&format!("{name}.scale")).ok_or_else(|| bad(format!("the I8 tensor {name} has no {name}.scale")))?;
            let (rows, cols) = match shape.as_slice() {
                [r, c] => (*r, *c),
                s => return Err(bad(format!("the I8 tensor {name} has shape {s:?}, not a matrix"))),
            };
            let per_row = match scale.shape() {
                [r, 1] if *r == rows => true,
                [1, c] if *c == cols => false,
                s => return Err(bad(format!("{name}.scale has shape {s:?}, not [{rows}, 1] or [1, {cols}]"))),
            };
            let w = crate::ops::quant::dequantize(&q, scale.f32s()?, rows, cols, per_row);
            tensors.insert(name, Tensor::from_f32(w, &shape)?);
        }
        Ok(Checkpoint { tensors, meta, int8: BTreeMap::new() })
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
    fn quantized_weights_are_stored_as_int8_and_read_back_as_their_levels() {
        let d = dir("quantized");
        let mut c = Checkpoint::new();
        let w = Tensor::randn(&[60, 40], 1.0, &mut Rng::new(3));
        c.tensors.insert("m.embedding.weight".into(), w.clone());
        c.tensors.insert("m.out.weight".into(), w.clone());
        c.tensors.insert("m.out.bias".into(), Tensor::randn(&[40], 1.0, &mut Rng::new(4)));
        let full = c.clone();
        c.quantize_weights(8).unwrap();
        let path = d.join("q.safetensors");
        c.save(&path).unwrap();
        let plain = std::fs::metadata(d.join("q.safetensors")).unwrap().len();
        full.save(&d.join("f.safetensors")).unwrap();
        // Two 60 x 40 matrices at a byte a weight, against four.
        assert!(plain * 3 < std::fs::metadata(d.join("f.safetensors")).unwrap().len() * 2);
        let back = Checkpoint::load(&path).unwrap();
        assert_eq!(back.tensors.keys().collect::<Vec<_>>(), full.tensors.keys().collect::<Vec<_>>());
        assert_eq!(back.meta["quantized"], "int8");
        // Embedding rows and matrix columns each have their scale; the bias is kept as it was.
        let wv = w.to_vec_f32().unwrap();
        for (name, per_row) in [("m.embedding.weight", true), ("m.out.weight", false)] {
            let (q, s) = crate::ops::quant::quantize(&wv, 60, 40, 8, per_row);
            assert_eq!(back.tensors[name].to_vec_f32().unwrap(), crate::ops::quant::dequantize(&q, &s, 60, 40, per_row), "{name}");
        }
        assert_eq!(back.tensors["m.out.bias"].to_vec_f32().unwrap(), full.tensors["m.out.bias"].to_vec_f32().unwrap());
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
