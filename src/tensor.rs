//! A tensor is a shape, a dtype and storage on one device. Storage is shared (`Arc`) so that the
//! autograd tape can keep inputs for backward without copying; writing goes through
//! [`Tensor::f32s_mut`] or [`Tensor::cuda_f32_mut`], which copy only when the storage is shared.
//!
//! Moving between devices is explicit ([`Tensor::to_device`]); every op in `ops/` dispatches on
//! the device its inputs share and refuses mixed devices with an error naming both. Scalars that
//! ops return (losses, sums) come back to the host: they are read there anyway.

use crate::cuda::{self, GpuBuf};
use crate::{bail, Error, Result};
use half::bf16;
use std::borrow::Cow;
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

#[derive(Debug)]
pub enum CudaStorage {
    F32(GpuBuf<f32>),
    BF16(GpuBuf<bf16>),
    I32(GpuBuf<i32>),
}

#[derive(Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    /// On a GPU. `host` keeps the host copy of an index tensor that was uploaded from the host, so
    /// that what ops do with ids on the host (bounds checks, the rows a sparse gradient touched,
    /// the deterministic scatter plan) needs no device-to-host copy and no sync.
    Cuda {
        data: CudaStorage,
        host: Option<Arc<Vec<i32>>>,
    },
}

/// Large f32 host buffers of dropped tensors, kept for the next tensor of the same length that
/// will be overwritten in full (`Tensor::uninit_on`, the loss gradient). A language model's step
/// frees and allocates the same `[tokens, vocabulary]` buffers (logits, their gradient) every
/// step: reusing them skips zeroing 60 MB twice a step and, since the allocator maps buffers this
/// large afresh each time, the page faults of touching them. The values a reused buffer holds
/// are stale but initialised (no unsafe code); the pool keeps at most `MAX_BUFFERS` buffers.
pub(crate) mod recycle {
    use std::sync::Mutex;

    /// Smaller buffers come and go through the allocator's own free lists.
    const MIN_LEN: usize = 1 << 18;
    const MAX_BUFFERS: usize = 8;
    static FREE: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

    /// A buffer of `len` values that the caller overwrites in full: a reused one of that length
    /// (stale values), else zeros.
    pub fn take(len: usize) -> Vec<f32> {
        if len >= MIN_LEN {
            let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = free.iter().rposition(|v| v.len() == len) {
                return free.swap_remove(i);
            }
        }
        vec![0.0; len]
    }

    /// Keep `v` for reuse when it is large; the oldest kept buffer goes when the pool is full.
    pub fn give(v: Vec<f32>) {
        if v.len() >= MIN_LEN {
            let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
            if free.len() == MAX_BUFFERS {
                free.remove(0);
            }
            free.push(v);
        }
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Storage::Cpu(CpuStorage::F32(v)) = self {
            recycle::give(std::mem::take(v));
        }
    }
}

impl Storage {
    fn try_clone(&self) -> Result<Storage> {
        Ok(match self {
            Storage::Cpu(c) => Storage::Cpu(c.clone()),
            Storage::Cuda { data, host } => Storage::Cuda {
                data: match data {
                    CudaStorage::F32(b) => CudaStorage::F32(b.try_clone()?),
                    CudaStorage::BF16(b) => CudaStorage::BF16(b.try_clone()?),
                    CudaStorage::I32(b) => CudaStorage::I32(b.try_clone()?),
                },
                host: host.clone(),
            },
        })
    }
}

#[derive(Clone)]
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

/// Equal shapes, dtypes and values (GPU tensors are compared on the host; a failed copy is unequal).
impl PartialEq for Tensor {
    fn eq(&self, other: &Tensor) -> bool {
        if self.shape != other.shape || self.dtype() != other.dtype() {
            return false;
        }
        if Arc::ptr_eq(&self.storage, &other.storage) {
            return true;
        }
        match (self.cpu_storage(), other.cpu_storage()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }
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
            Storage::Cpu(CpuStorage::F32(_)) | Storage::Cuda { data: CudaStorage::F32(_), .. } => DType::F32,
            Storage::Cpu(CpuStorage::BF16(_)) | Storage::Cuda { data: CudaStorage::BF16(_), .. } => DType::BF16,
            Storage::Cpu(CpuStorage::I32(_)) | Storage::Cuda { data: CudaStorage::I32(_), .. } => DType::I32,
        }
    }

    pub fn device(&self) -> Device {
        match &*self.storage {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda { data: CudaStorage::F32(b), .. } => Device::Cuda(b.gpu().ordinal()),
            Storage::Cuda { data: CudaStorage::BF16(b), .. } => Device::Cuda(b.gpu().ordinal()),
            Storage::Cuda { data: CudaStorage::I32(b), .. } => Device::Cuda(b.gpu().ordinal()),
        }
    }

    /// `shape` of zeros on `device`.
    pub fn zeros_on(shape: &[usize], device: Device) -> Result<Tensor> {
        Tensor::full_on(shape, 0.0, device)
    }

    /// `shape` filled with `v` on `device` (filled by a kernel on the GPU).
    pub fn full_on(shape: &[usize], v: f32, device: Device) -> Result<Tensor> {
        match device {
            Device::Cpu => Ok(Tensor::full(shape, v)),
            Device::Cuda(i) => Tensor::from_gpu_f32(cuda::gpu(i)?.full(numel(shape), v)?, shape),
        }
    }

    /// An f32 tensor whose values the caller is about to overwrite in full: on the CPU a reused
    /// buffer of a dropped tensor (stale values) or zeros, on the GPU uninitialised memory from
    /// Fills `device`'s cache of free buffers with NaN blocks of `len` f32s, so that the next
    /// outputs of that many elements start poisoned: how the tests see an output element an op
    /// fails to write. On the CPU only lengths the buffer pool keeps (2^18 elements and more) are
    /// poisoned; smaller CPU outputs start as zeros.
    #[doc(hidden)]
    pub fn poison_free_buffers(device: Device, len: usize) -> Result<()> {
        match device {
            Device::Cpu => (0..4).for_each(|_| recycle::give(vec![f32::NAN; len])),
            Device::Cuda(i) => {
                let gpu = cuda::gpu(i)?;
                let bufs: Vec<GpuBuf<f32>> = (0..4)
                    .map(|_| {
                        let mut b = gpu.alloc::<f32>(len.max(1))?;
                        b.memset(0xFF)?;
                        Ok(b)
                    })
                    .collect::<Result<_>>()?;
                gpu.sync()?;
                drop(bufs);
            }
        }
        Ok(())
    }

    /// the caching allocator.
    pub fn uninit_on(shape: &[usize], device: Device) -> Result<Tensor> {
        match device {
            Device::Cpu => Tensor::from_f32(recycle::take(numel(shape)), shape),
            Device::Cuda(i) => Tensor::from_gpu_f32(cuda::gpu(i)?.alloc::<f32>(numel(shape))?, shape),
        }
    }

    fn from_cuda(shape: &[usize], len: usize, data: CudaStorage, host: Option<Arc<Vec<i32>>>) -> Result<Tensor> {
        if len != numel(shape) {
            bail!(Shape, "a device buffer of {len} elements does not fill shape {:?} ({} elements)", shape, numel(shape));
        }
        Ok(Tensor { shape: shape.to_vec(), storage: Arc::new(Storage::Cuda { data, host }) })
    }

    /// Wraps a device buffer of exactly `numel(shape)` values.
    pub fn from_gpu_f32(buf: GpuBuf<f32>, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_cuda(shape, buf.len(), CudaStorage::F32(buf), None)
    }

    pub fn from_gpu_bf16(buf: GpuBuf<bf16>, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_cuda(shape, buf.len(), CudaStorage::BF16(buf), None)
    }

    pub fn from_gpu_i32(buf: GpuBuf<i32>, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_cuda(shape, buf.len(), CudaStorage::I32(buf), None)
    }

    /// The device buffer of an f32 tensor on the GPU.
    pub fn cuda_f32(&self) -> Result<&GpuBuf<f32>> {
        match &*self.storage {
            Storage::Cuda { data: CudaStorage::F32(b), .. } => Ok(b),
            _ => bail!(DType, "expected an f32 tensor on a GPU, got {:?} on {}", self.dtype(), self.device()),
        }
    }

    pub fn cuda_bf16(&self) -> Result<&GpuBuf<bf16>> {
        match &*self.storage {
            Storage::Cuda { data: CudaStorage::BF16(b), .. } => Ok(b),
            _ => bail!(DType, "expected a bf16 tensor on a GPU, got {:?} on {}", self.dtype(), self.device()),
        }
    }

    pub fn cuda_i32(&self) -> Result<&GpuBuf<i32>> {
        match &*self.storage {
            Storage::Cuda { data: CudaStorage::I32(b), .. } => Ok(b),
            _ => bail!(DType, "expected an i32 index tensor on a GPU, got {:?} on {}", self.dtype(), self.device()),
        }
    }

    /// Unique access to the storage, copying it first (on its device) if another tensor shares it.
    fn storage_mut(&mut self) -> Result<&mut Storage> {
        if Arc::get_mut(&mut self.storage).is_none() {
            self.storage = Arc::new(self.storage.try_clone()?);
        }
        Ok(Arc::get_mut(&mut self.storage).expect("storage is unique after the copy"))
    }

    /// The device buffer of an f32 GPU tensor, for writing; copies first if the storage is shared.
    pub fn cuda_f32_mut(&mut self) -> Result<&mut GpuBuf<f32>> {
        let (dt, dev) = (self.dtype(), self.device());
        match self.storage_mut()? {
            Storage::Cuda { data: CudaStorage::F32(b), .. } => Ok(b),
            _ => bail!(DType, "expected an f32 tensor on a GPU, got {dt:?} on {dev}"),
        }
    }

    /// The ids of an index tensor on the host: borrowed on the CPU and for GPU tensors uploaded
    /// from the host (which keep their host copy), else copied back from the device.
    pub fn host_i32s(&self) -> Result<Cow<'_, [i32]>> {
        match &*self.storage {
            Storage::Cpu(CpuStorage::I32(v)) => Ok(Cow::Borrowed(v)),
            Storage::Cuda { host: Some(h), .. } => Ok(Cow::Borrowed(h.as_slice())),
            Storage::Cuda { data: CudaStorage::I32(b), .. } => Ok(Cow::Owned(b.download()?)),
            _ => bail!(DType, "expected an i32 index tensor, got {:?} on {}", self.dtype(), self.device()),
        }
    }

    /// The values as host storage (a copy from the device for GPU tensors).
    fn cpu_storage(&self) -> Result<Cow<'_, CpuStorage>> {
        Ok(match &*self.storage {
            Storage::Cpu(c) => Cow::Borrowed(c),
            Storage::Cuda { data: CudaStorage::F32(b), .. } => Cow::Owned(CpuStorage::F32(b.download()?)),
            Storage::Cuda { data: CudaStorage::BF16(b), .. } => Cow::Owned(CpuStorage::BF16(b.download()?)),
            Storage::Cuda { data: CudaStorage::I32(b), .. } => Cow::Owned(CpuStorage::I32(b.download()?)),
        })
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

    /// A copy in buffers of its own, on the same device.
    pub fn deep_copy(&self) -> Result<Tensor> {
        Ok(Tensor { shape: self.shape.clone(), storage: Arc::new(self.storage.try_clone()?) })
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
        if dev != Device::Cpu {
            bail!(DType, "expected an f32 tensor on the cpu, got {dt:?} on {dev}");
        }
        match self.storage_mut()? {
            Storage::Cpu(CpuStorage::F32(v)) => Ok(v),
            _ => bail!(DType, "expected an f32 tensor on the cpu, got {dt:?} on {dev}"),
        }
    }

    /// Sets every f32 value to zero, on the tensor's device.
    pub fn zero_(&mut self) -> Result<()> {
        match self.device() {
            Device::Cpu => self.f32s_mut()?.fill(0.0),
            Device::Cuda(_) => self.cuda_f32_mut()?.memset(0)?,
        }
        Ok(())
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
        match &*self.cpu_storage()? {
            CpuStorage::F32(v) => Ok(v.clone()),
            CpuStorage::BF16(v) => Ok(v.iter().map(|x| x.to_f32()).collect()),
            CpuStorage::I32(_) => bail!(DType, "index tensor {:?} has no f32 values", self.shape),
        }
    }

    /// Round to bf16 (nearest even), the tensor cores' operand format; on the tensor's device.
    pub fn to_bf16(&self) -> Result<Tensor> {
        if let Storage::Cuda { data: CudaStorage::F32(b), .. } = &*self.storage {
            let mut out = b.gpu().alloc::<bf16>(b.len())?;
            cuda::f32_to_bf16(b, &mut out)?;
            return Tensor::from_gpu_bf16(out, &self.shape);
        }
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

    /// This tensor on `device`: itself (shared) when it is already there, else a copy. An index
    /// tensor uploaded from the host keeps its host copy (see [`Storage::Cuda`]).
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        match device {
            Device::Cpu => Ok(Tensor::new(&self.shape, self.cpu_storage()?.into_owned())),
            Device::Cuda(i) => {
                let gpu = cuda::gpu(i).map_err(|e| Error::Device(format!("cannot move a {:?} tensor to {device}: {e}", self.shape)))?;
                let n = self.numel();
                match &*self.cpu_storage()? {
                    CpuStorage::F32(v) => Tensor::from_cuda(&self.shape, n, CudaStorage::F32(gpu.upload(v)?), None),
                    CpuStorage::BF16(v) => Tensor::from_cuda(&self.shape, n, CudaStorage::BF16(gpu.upload(v)?), None),
                    CpuStorage::I32(v) => Tensor::from_cuda(&self.shape, n, CudaStorage::I32(gpu.upload(v)?), Some(Arc::new(v.clone()))),
                }
            }
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

    /// Conversion to bf16 rounds to nearest, ties to even, as the GPU does: a value halfway between
    /// two bf16 neighbours goes to the one with an even last bit (truncation, or ties away from
    /// zero, fail here), and a value just past halfway goes up.
    #[test]
    fn bf16_conversion_rounds_to_nearest_even_on_ties() {
        let cases: [(u32, u16); 7] = [
            (0x3F80_8000, 0x3F80), // 1 + 2^-8: halfway between 0x3F80 (even) and 0x3F81
            (0x3F81_8000, 0x3F82), // halfway between 0x3F81 and 0x3F82 (even): up
            (0xBF81_8000, 0xBF82), // the same below zero
            (0x3F80_8001, 0x3F81), // just past halfway: up
            (0x3F80_7FFF, 0x3F80), // just below halfway: down
            (0x7F7F_FFFF, 0x7F80), // f32::MAX rounds to infinity, as in IEEE
            (0x0000_8000, 0x0000), // a subnormal tie: to even (zero)
        ];
        let a = Tensor::from_f32(cases.iter().map(|&(b, _)| f32::from_bits(b)).collect(), &[cases.len()]).unwrap();
        let got: Vec<u16> = a.to_bf16().unwrap().bf16s().unwrap().iter().map(|h| h.to_bits()).collect();
        let want: Vec<u16> = cases.iter().map(|&(_, h)| h).collect();
        assert_eq!(got, want, "bf16 rounding is not round-to-nearest-even");
        let nan = Tensor::from_f32(vec![f32::NAN], &[1]).unwrap().to_bf16().unwrap().to_vec_f32().unwrap();
        assert!(nan[0].is_nan(), "NaN did not stay NaN");
    }

    /// A dropped large tensor's buffer comes back for the next tensor of its length that will be
    /// overwritten, and what it held (NaNs here) never shows in a product or a loss gradient.
    /// The lengths are this test's own, so tests running beside it cannot take the buffers.
    #[test]
    fn large_buffers_are_reused_and_their_stale_values_never_show() {
        use crate::ops::matmul::matmul;
        use crate::ops::softmax_kl::{softmax_kl, DistillParams};
        let (m, n) = (3, 87_383); // 262,149 values, above the pool's minimum
        let poison = Tensor::from_f32(vec![f32::NAN; m * n], &[m, n]).unwrap();
        let at = poison.f32s().unwrap().as_ptr();
        drop(poison);
        let reused = Tensor::uninit_on(&[m, n], Device::Cpu).unwrap();
        assert_eq!(reused.f32s().unwrap().as_ptr(), at, "the dropped buffer was not reused");
        drop(reused);
        let a = Tensor::from_f32((0..m * 2).map(|i| i as f32 - 2.5).collect(), &[m, 2]).unwrap();
        let b = Tensor::from_f32((0..2 * n).map(|i| ((i % 7) as f32 - 3.0) * 0.25).collect(), &[2, n]).unwrap();
        let c = matmul(&crate::Backend::default(), &a, false, &b, false).unwrap();
        assert_eq!(c.f32s().unwrap().as_ptr(), at, "the product did not take the reused buffer");
        let cv = c.f32s().unwrap();
        for (i, &x) in cv.iter().enumerate() {
            let (r, j) = (i / n, i % n);
            let want = (a.f32s().unwrap()[r * 2] * b.f32s().unwrap()[j] + a.f32s().unwrap()[r * 2 + 1] * b.f32s().unwrap()[n + j]) as f64;
            assert!((x as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()), "({r}, {j}): {x} vs {want}");
        }
        let y = Tensor::from_i32(vec![0, 5, n as i32 - 1], &[m]).unwrap();
        drop(Tensor::from_f32(vec![f32::NAN; m * n], &[m, n]).unwrap());
        let (loss, grad) =
            softmax_kl(&crate::Backend::default(), &c, &[], Some(&y), DistillParams { temperature: 1.0, alpha: 0.0, ..Default::default() }).unwrap();
        assert!(loss.total.is_finite() && grad.f32s().unwrap().iter().all(|g| g.is_finite()), "a stale NaN leaked into the gradient");
    }
}
