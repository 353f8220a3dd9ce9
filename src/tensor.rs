//! A tensor is a shape, a dtype and storage on one device. Storage is shared (`Arc`) so that the
//! autograd tape can keep inputs for backward without copying; writing goes through
//! `Arc::make_mut`, which copies only when the storage is shared.
//!
//! Moving between devices is explicit. The CPU is the only device until the CUDA backend lands:
//! `Storage` then gains a `Cuda` variant and every op in `ops/` a match arm for it.

use crate::{bail, Error, Result};
use half::bf16;
use std::fmt;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    BF16,
    /// Indices: token ids, category ids, class labels.
    I32,
}

impl DType {
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::BF16 => 2,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    /// A CUDA device by ordinal; arrives with the CUDA backend.
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum CpuStorage {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    I32(Vec<i32>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Storage {
    Cpu(CpuStorage),
}

#[derive(Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Arc<Storage>,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({:?}, {:?}, {})", self.shape, self.dtype(), self.device())
    }
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    fn new(shape: &[usize], s: CpuStorage) -> Tensor {
        Tensor { shape: shape.to_vec(), storage: Arc::new(Storage::Cpu(s)) }
    }

    pub fn from_f32(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        if data.len() != numel(shape) {
            bail!(Shape, "{} values do not fill shape {:?} ({} elements)", data.len(), shape, numel(shape));
        }
        Ok(Tensor::new(shape, CpuStorage::F32(data)))
    }

    pub fn from_i32(data: Vec<i32>, shape: &[usize]) -> Result<Tensor> {
        if data.len() != numel(shape) {
            bail!(Shape, "{} indices do not fill shape {:?} ({} elements)", data.len(), shape, numel(shape));
        }
        Ok(Tensor::new(shape, CpuStorage::I32(data)))
    }

    pub fn from_bf16(data: Vec<bf16>, shape: &[usize]) -> Result<Tensor> {
        if data.len() != numel(shape) {
            bail!(Shape, "{} values do not fill shape {:?} ({} elements)", data.len(), shape, numel(shape));
        }
        Ok(Tensor::new(shape, CpuStorage::BF16(data)))
    }

    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor::new(shape, CpuStorage::F32(vec![0.0; numel(shape)]))
    }

    pub fn full(shape: &[usize], v: f32) -> Tensor {
        Tensor::new(shape, CpuStorage::F32(vec![v; numel(shape)]))
    }

    pub fn scalar(v: f32) -> Tensor {
        Tensor::new(&[], CpuStorage::F32(vec![v]))
    }

    pub fn randn(shape: &[usize], std: f32, rng: &mut crate::Rng) -> Tensor {
        Tensor::new(shape, CpuStorage::F32(rng.normal_vec(numel(shape), std)))
    }

    pub fn uniform(shape: &[usize], lo: f32, hi: f32, rng: &mut crate::Rng) -> Tensor {
        Tensor::new(shape, CpuStorage::F32(rng.uniform_vec(numel(shape), lo, hi)))
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn dim(&self, i: usize) -> usize {
        self.shape[i]
    }

    pub fn dtype(&self) -> DType {
        match &*self.storage {
            Storage::Cpu(CpuStorage::F32(_)) => DType::F32,
            Storage::Cpu(CpuStorage::BF16(_)) => DType::BF16,
            Storage::Cpu(CpuStorage::I32(_)) => DType::I32,
        }
    }

    pub fn device(&self) -> Device {
        match &*self.storage {
            Storage::Cpu(_) => Device::Cpu,
        }
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The same storage seen with another shape of the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            bail!(Shape, "cannot reshape {:?} ({} elements) to {:?}", self.shape, self.numel(), shape);
        }
        Ok(Tensor { shape: shape.to_vec(), storage: self.storage.clone() })
    }

    /// The f32 values of a CPU tensor.
    pub fn f32s(&self) -> Result<&[f32]> {
        match &*self.storage {
            Storage::Cpu(CpuStorage::F32(v)) => Ok(v),
            _ => bail!(DType, "expected an f32 tensor on the cpu, got {:?} on {}", self.dtype(), self.device()),
        }
    }

    /// Mutable f32 values; copies the storage first if another tensor shares it.
    pub fn f32s_mut(&mut self) -> Result<&mut [f32]> {
        let (dt, dev) = (self.dtype(), self.device());
        match Arc::make_mut(&mut self.storage) {
            Storage::Cpu(CpuStorage::F32(v)) => Ok(v),
            _ => bail!(DType, "expected an f32 tensor on the cpu, got {dt:?} on {dev}"),
        }
    }

    pub fn i32s(&self) -> Result<&[i32]> {
        match &*self.storage {
            Storage::Cpu(CpuStorage::I32(v)) => Ok(v),
            _ => bail!(DType, "expected an i32 index tensor on the cpu, got {:?} on {}", self.dtype(), self.device()),
        }
    }

    pub fn bf16s(&self) -> Result<&[bf16]> {
        match &*self.storage {
            Storage::Cpu(CpuStorage::BF16(v)) => Ok(v),
            _ => bail!(DType, "expected a bf16 tensor on the cpu, got {:?} on {}", self.dtype(), self.device()),
        }
    }

    /// A copy of the values as f32 (bf16 widened exactly).
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        match &*self.storage {
            Storage::Cpu(CpuStorage::F32(v)) => Ok(v.clone()),
            Storage::Cpu(CpuStorage::BF16(v)) => Ok(v.iter().map(|x| x.to_f32()).collect()),
            Storage::Cpu(CpuStorage::I32(_)) => bail!(DType, "index tensor {:?} has no f32 values", self.shape),
        }
    }

    /// Round to bf16 (nearest even), the tensor cores' operand format.
    pub fn to_bf16(&self) -> Result<Tensor> {
        let v = self.f32s()?;
        Ok(Tensor::new(&self.shape, CpuStorage::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect())))
    }

    /// The single value of a one-element f32 tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            bail!(Shape, "item() needs one element, tensor has shape {:?}", self.shape);
        }
        Ok(self.to_vec_f32()?[0])
    }

    /// Copy to a device. Only the CPU exists until the CUDA backend lands.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        match device {
            Device::Cpu => Ok(self.clone()),
            Device::Cuda(_) => Err(Error::Device(format!(
                "tensors do not live on the GPU yet (the kernels run on codistill::cuda::GpuBuf); cannot move {:?} to {device}",
                self.shape
            ))),
        }
    }

    /// Shape check used by ops: `what` names the argument in the message.
    pub fn expect_shape(&self, what: &str, shape: &[usize]) -> Result<()> {
        if self.shape != shape {
            bail!(Shape, "{what} should be {:?}, got {:?}", shape, self.shape);
        }
        Ok(())
    }

    /// Rank and dtype check: returns the shape for destructuring.
    pub fn expect_2d(&self, what: &str) -> Result<(usize, usize)> {
        if self.rank() != 2 {
            bail!(Shape, "{what} should be 2-D, got {:?}", self.shape);
        }
        Ok((self.shape[0], self.shape[1]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_check_element_count() {
        let e = Tensor::from_f32(vec![1.0; 5], &[2, 3]).unwrap_err().to_string();
        assert!(e.contains("[2, 3]") && e.contains('5'), "{e}");
        assert!(Tensor::from_i32(vec![1; 6], &[2, 3]).is_ok());
    }

    #[test]
    fn mutation_copies_shared_storage() {
        let a = Tensor::from_f32(vec![1.0, 2.0], &[2]).unwrap();
        let mut b = a.clone();
        b.f32s_mut().unwrap()[0] = 9.0;
        assert_eq!(a.f32s().unwrap(), &[1.0, 2.0]);
        assert_eq!(b.f32s().unwrap(), &[9.0, 2.0]);
    }

    #[test]
    fn dtype_errors_name_the_dtype() {
        let a = Tensor::from_i32(vec![1, 2], &[2]).unwrap();
        let e = a.f32s().unwrap_err().to_string();
        assert!(e.contains("I32"), "{e}");
    }

    #[test]
    fn bf16_round_trip_is_within_half_ulp() {
        let a = Tensor::from_f32(vec![1.0, 2.71, -1e-3, 65504.0], &[4]).unwrap();
        let back = a.to_bf16().unwrap().to_vec_f32().unwrap();
        for (x, y) in a.f32s().unwrap().iter().zip(&back) {
            assert!(((x - y) / x).abs() <= 1.0 / 256.0, "{x} -> {y}");
        }
    }
}
