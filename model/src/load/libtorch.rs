//! Weights straight into libtorch (burn-tch, plain or under `Autodiff`).
//!
//! burn's `Tensor::from_data` on burn-tch builds a zero-filled CPU tensor, copies the data
//! into it and then moves it to the device, after converting the data to the device's
//! precision on the CPU. Here libtorch wraps the checkpoint's bytes where they are (the memory
//! map) and copies them once, onto the device, converting the precision there.

use std::any::{Any, TypeId};

use burn::backend::libtorch::{LibTorch, LibTorchDevice, TchTensor};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};

use crate::same_type::cast;

type Tch = LibTorch<f32>;

/// `data` as a tensor of `B` on `device` in precision `dtype`, when `B` is burn-tch and the
/// data is f32, f16 or bf16 aligned to its element size; `None` otherwise.
pub(crate) fn from_data<B: Backend, const D: usize>(
    data: &TensorData,
    device: &B::Device,
    dtype: DType,
) -> Option<Tensor<B, D>> {
    let backend = TypeId::of::<B>();
    let tracked = backend == TypeId::of::<Autodiff<Tch>>();
    if backend != TypeId::of::<Tch>() && !tracked {
        return None;
    }
    let (source, target) = (kind(data.dtype)?, kind(dtype)?);
    let bytes: &[u8] = &data.bytes;
    if !(bytes.as_ptr() as usize).is_multiple_of(data.dtype.size()) {
        return None;
    }
    let dims: Vec<i64> = data.shape.iter().map(|&d| d as i64).collect();
    let mut strides = vec![1i64; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * dims[i + 1];
    }
    let device: tch::Device = (*(device as &dyn Any).downcast_ref::<LibTorchDevice>()?).into();
    // SAFETY: `bytes` holds the tensor's elements, contiguous, of `source`'s size and aligned
    // to it, and outlives `host`, which is dropped below once its values have been copied.
    let host = unsafe {
        tch::Tensor::from_blob(bytes.as_ptr(), &dims, &strides, source, tch::Device::Cpu)
    };
    // A weight larger than one step (so not a scalar, and with rows) is converted by rows.
    let moved = if device != tch::Device::Cpu && source != target && bytes.len() > CONVERT_BYTES {
        let row_bytes = bytes.len() / dims[0] as usize;
        by_rows(
            &host,
            device,
            target,
            (CONVERT_BYTES / row_bytes).max(1) as i64,
        )
    } else {
        host.to_device(device).to_kind(target)
    };
    // On the CPU, in the same precision, both steps return `host` itself: copy it out (into
    // uninitialised memory; tch's `copy` would zero-fill it first).
    let owned = if device == tch::Device::Cpu && source == target {
        let mut owned = moved.empty_like();
        owned.copy_(&moved);
        owned
    } else {
        moved
    };
    drop(host);
    let plain = Tensor::<Tch, D>::from_primitive(TensorPrimitive::Float(TchTensor::new(owned)));
    if tracked {
        Some(cast(Tensor::<Autodiff<Tch>, D>::from_inner(plain)))
    } else {
        Some(cast(plain))
    }
}

/// Bytes of the checkpoint's precision moved to the device per step of a conversion there.
const CONVERT_BYTES: usize = 64 << 20;

/// `host` on `device` in precision `target`, moved and converted `rows` rows at a time: a
/// weight converted whole passes through the device in its checkpoint precision, and
/// libtorch's allocator keeps that buffer (for Qwen2.5-1.5B's embedding 0.9 GB in f32) cached
/// after it is freed, where these steps leave at most `rows` rows of it.
fn by_rows(host: &tch::Tensor, device: tch::Device, target: tch::Kind, rows: i64) -> tch::Tensor {
    let total = host.size()[0];
    let out = tch::Tensor::empty(host.size(), (target, device));
    let mut start = 0;
    while start < total {
        let n = rows.min(total - start);
        let part = host.narrow(0, start, n).to_device(device).to_kind(target);
        out.narrow(0, start, n).copy_(&part);
        start += n;
    }
    out
}

/// libtorch's element kind for a float dtype this loader handles.
fn kind(dtype: DType) -> Option<tch::Kind> {
    match dtype {
        DType::F32 => Some(tch::Kind::Float),
        DType::F16 => Some(tch::Kind::Half),
        DType::BF16 => Some(tch::Kind::BFloat16),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converting_by_rows_equals_converting_whole() {
        let values: Vec<f32> = (0..7 * 5).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let host = tch::Tensor::from_slice(&values).reshape([7, 5]);
        let whole = host.to_kind(tch::Kind::BFloat16);
        for rows in [1, 3, 7, 10] {
            let parts = by_rows(&host, tch::Device::Cpu, tch::Kind::BFloat16, rows);
            assert_eq!(parts.kind(), tch::Kind::BFloat16);
            assert_eq!(parts.size(), [7, 5]);
            assert!(parts.equal(&whole), "{rows} rows at a time");
        }
    }
}
