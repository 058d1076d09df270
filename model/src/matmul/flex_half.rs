//! `x · Wᵀ + b` on flex with a bf16 or f16 weight: the operands widened to f32, the product
//! computed by the f32 kernels, the result rounded back when the model runs in half precision
//! (`--dtype bf16|f16`) and left in f32 when it runs in f32 with the weights a bf16
//! checkpoint stores (read in place, see `load`).
//!
//! flex's own bf16 and f16 matmul converts both operands to f32 on one thread on every call
//! and reads the weight through a transposed copy: a 5-token forward pass of the 1.5B model
//! took 7-9 s in bf16 against 0.3 s in f32. Here a bf16 or f16 weight is read as it is by the
//! streaming and blocked kernels (up to `MAX_BLOCKED_ROWS` rows), which widen it in registers.
//! The other products (more rows, or a CPU without those kernels) widen the weight a block of
//! rows at a time first (64 MiB of f32, in a buffer reused from one product to the next), on
//! every core. Widening is exact and each output's sum runs as in f32, so the values are those
//! of an f32 product of the half-precision operands, rounded once where the output is half.

use burn::backend::flex::{FlexTensor, Layout};
use burn::tensor::{backend::Backend, DType, Shape};

#[cfg(target_arch = "x86_64")]
use super::flex::{blocks, few_rows_input_grad, few_rows_product, streams};
use super::flex::{input_grad, product};
#[cfg(target_arch = "x86_64")]
use super::flex::{stream_x_wt_heads, stream_x_wt_squares};
use super::{HeadNorms, HeadParts};
use crate::flex_ops::{constant, dense, dims, elems, FlexOp, Float};
use crate::halves::{halve_values, widen_into};
#[cfg(target_arch = "x86_64")]
use half::{bf16, f16, slice::HalfBitsSliceExt};
use std::sync::Arc;

/// Weight values widened to f32 at a time (64 MiB: every weight of the 1.5B model but
/// the embeddings in one; a few rows in the tests, so that their small weights span several
/// blocks).
const BLOCK_VALUES: usize = if cfg!(test) { 1 << 10 } else { 1 << 24 };

/// `y = x · Wᵀ + b` with constant half-precision `W` (and `b`); the backward step gives
/// `∂x = ∂y · W`, each in the input's precision (the weight's, or f32).
#[derive(Debug)]
pub(super) struct XWtHalf {
    /// `[n, k]`, contiguous.
    weight: FlexTensor,
    /// `[n]`, contiguous, in the weight's precision or in f32.
    bias: Option<FlexTensor>,
    /// bf16 or f16: the weight's.
    dtype: DType,
    /// The LM head's row norms, noted by a one-row product where wanted
    /// ([`super::try_linear_noting`]).
    notes: Option<Arc<HeadNorms>>,
    /// An attention layer's heads, for its o_proj: summed by head, and their contributions
    /// noted where asked ([`super::linear_heads`]).
    parts: Option<Arc<HeadParts>>,
}

impl XWtHalf {
    /// The operation for a half-precision weight (and a bias of the same type or f32) on flex;
    /// `None` for anything else.
    pub(super) fn new<B: Backend>(
        weight: &Float<B>,
        bias: Option<&Float<B>>,
        notes: Option<&Arc<HeadNorms>>,
        parts: Option<Arc<HeadParts>>,
    ) -> Option<Self> {
        let weight = constant::<B>(weight)?;
        let dtype = weight.dtype();
        if !matches!(dtype, DType::BF16 | DType::F16) || dims(&weight).len() != 2 {
            return None;
        }
        let bias = match bias {
            Some(b) => {
                let b = constant::<B>(b)?;
                let precision = b.dtype() == dtype || b.dtype() == DType::F32;
                (precision && dims(&b) == [dims(&weight)[0]]).then_some(())?;
                Some(contiguous(b))
            }
            None => None,
        };
        Some(Self {
            weight: contiguous(weight),
            bias,
            dtype,
            notes: notes.cloned(),
            parts,
        })
    }

    /// `[n, k]`.
    fn shape(&self) -> (usize, usize) {
        let d = dims(&self.weight);
        (d[0], d[1])
    }

    /// Rows `rows` of the weight, widened into `out`.
    fn widen_rows(&self, rows: std::ops::Range<usize>, out: &mut Vec<f32>) {
        let (_, k) = self.shape();
        let bits = &bits(&self.weight)[rows.start * k..rows.end * k];
        out.resize(bits.len(), 0.0);
        widen_into(bits, self.dtype, out);
    }

    /// The product straight from the half-precision weight by the streaming or blocked
    /// kernels (x86-64 with AVX2, FMA and F16C, up to `MAX_BLOCKED_ROWS` rows), which widen it
    /// in registers: half the bytes an f32 weight streams, the same bits, no widened copy;
    /// `None` where they do not apply.
    fn direct(&self, x: &[f32], m: usize, bias: Option<&[f32]>) -> Option<Vec<f32>> {
        let (n, k) = self.shape();
        #[cfg(target_arch = "x86_64")]
        if streams(m) || blocks(m) {
            if let Some(y) = self.noting(x, m, bias) {
                return Some(y);
            }
            let w = bits(&self.weight);
            if let Some(parts) = self.parts.as_ref() {
                let y = match self.dtype {
                    DType::BF16 => {
                        stream_x_wt_heads(x, m, w.reinterpret_cast::<bf16>(), n, k, parts)
                    }
                    _ => stream_x_wt_heads(x, m, w.reinterpret_cast::<f16>(), n, k, parts),
                };
                if y.is_some() {
                    return y;
                }
            }
            return match self.dtype {
                DType::BF16 => few_rows_product(x, m, w.reinterpret_cast::<bf16>(), n, k, bias),
                _ => few_rows_product(x, m, w.reinterpret_cast::<f16>(), n, k, bias),
            };
        }
        let _ = (x, m, bias, n, k);
        None
    }

    /// [`Self::direct`]'s product where it notes the row norms: one row, no bias, a bf16
    /// weight, norms wanted, and a CPU whose screen reads them; `None` otherwise.
    #[cfg(target_arch = "x86_64")]
    fn noting(&self, x: &[f32], m: usize, bias: Option<&[f32]>) -> Option<Vec<f32>> {
        let notes = self.notes.as_ref().filter(|notes| notes.wanted())?;
        if m != 1 || bias.is_some() || self.dtype != DType::BF16 {
            return None;
        }
        let (n, k) = self.shape();
        let w = bits(&self.weight);
        let (y, squares) = stream_x_wt_squares(x, w.reinterpret_cast::<bf16>(), n, k)?;
        notes.note(w.as_ptr(), n, k, &squares);
        Some(y)
    }

    /// The input gradient as [`Self::direct`] computes the product.
    fn direct_grad(&self, g: &[f32], m: usize) -> Option<Vec<f32>> {
        let (n, k) = self.shape();
        #[cfg(target_arch = "x86_64")]
        if streams(m) || blocks(m) {
            let w = bits(&self.weight);
            return match self.dtype {
                DType::BF16 => few_rows_input_grad(g, m, w.reinterpret_cast::<bf16>(), n, k),
                _ => few_rows_input_grad(g, m, w.reinterpret_cast::<f16>(), n, k),
            };
        }
        let _ = (g, m, n, k);
        None
    }

    /// Weight rows per widened block: as many as [`BLOCK_VALUES`] holds, since gemm packs its
    /// operands anew for every call. (Products the streaming and blocked kernels take read the
    /// weight directly, see [`Self::direct`].)
    fn block_rows(&self) -> usize {
        let (n, k) = self.shape();
        (BLOCK_VALUES / k.max(1)).clamp(1, n.max(1))
    }
}

thread_local! {
    /// The widened block, kept from one product to the next on this thread: a buffer allocated
    /// anew for each product would have its pages zeroed by the kernel every time.
    static BLOCK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl FlexOp<1> for XWtHalf {
    type Saved = ();

    fn forward(&self, [x]: [&FlexTensor; 1]) -> Option<(FlexTensor, ())> {
        let (n, k) = self.shape();
        let [m, kx] = dims(x)[..] else { return None };
        // The input in the weight's precision (the model runs in it), or in f32 (the model
        // computes in f32 with half-precision weights): the output is in the input's.
        let out = x.dtype();
        if !(out == self.dtype || out == DType::F32) || kx != k || m == 0 || n == 0 || k == 0 {
            return None;
        }
        let x = widened(x);
        let bias = self.bias.as_ref().map(widened);
        if let Some(y) = self.direct(&x, m, bias.as_deref()) {
            return Some((in_precision(y, out, &[m, n]), ()));
        }
        let per = self.block_rows();
        // Taken, not borrowed: a product that waits on rayon may run another one meanwhile on
        // this thread, which then widens into a buffer of its own.
        let mut block = BLOCK.take();
        let y = if per >= n {
            // One block: its product is the output.
            self.widen_rows(0..n, &mut block);
            product(&x, m, &block, n, k, bias.as_deref())
        } else {
            let mut y = vec![0f32; m * n];
            for r0 in (0..n).step_by(per) {
                let rows = r0..(r0 + per).min(n);
                let nb = rows.len();
                self.widen_rows(rows.clone(), &mut block);
                let yb = product(&x, m, &block, nb, k, bias.as_ref().map(|b| &b[rows]));
                for (y, yb) in y.chunks_mut(n).zip(yb.chunks(nb)) {
                    y[r0..r0 + nb].copy_from_slice(yb);
                }
            }
            y
        };
        BLOCK.set(block);
        Some((in_precision(y, out, &[m, n]), ()))
    }

    fn backward(&self, _: &(), grad: &FlexTensor, _: [bool; 1]) -> [Option<FlexTensor>; 1] {
        let (n, k) = self.shape();
        let m = dims(grad)[0];
        let g = widened(grad);
        if let Some(gx) = self.direct_grad(&g, m) {
            return [Some(in_precision(gx, grad.dtype(), &[m, k]))];
        }
        let per = self.block_rows();
        let mut block = BLOCK.take();
        if per >= n {
            // One block: its input gradient is the whole.
            self.widen_rows(0..n, &mut block);
            let gx = input_grad(&g, m, &block, n, k);
            BLOCK.set(block);
            return [Some(in_precision(gx, grad.dtype(), &[m, k]))];
        }
        let mut gx = vec![0f32; m * k];
        let mut gb = Vec::new();
        for r0 in (0..n).step_by(per) {
            let rows = r0..(r0 + per).min(n);
            let nb = rows.len();
            gb.clear();
            for row in g.chunks(n) {
                gb.extend_from_slice(&row[r0..r0 + nb]);
            }
            // Rows whose gradient is zero add nothing (the LM head under a logit target: one
            // row of the table has a gradient).
            if gb.iter().all(|&v| v == 0.0) {
                continue;
            }
            self.widen_rows(rows, &mut block);
            for (gx, part) in gx.iter_mut().zip(input_grad(&gb, m, &block, nb, k)) {
                *gx += part;
            }
        }
        BLOCK.set(block);
        [Some(in_precision(gx, grad.dtype(), &[m, k]))]
    }
}

/// A constant bf16 or f16 flex tensor widened to f32 (`dtype`) on every core; `None` on other
/// backends, for other types, or for a tensor that requires a gradient.
pub(super) fn widened_tensor<B: Backend>(
    t: &burn::tensor::Tensor<B, 2>,
    dtype: DType,
) -> Option<burn::tensor::Tensor<B, 2>> {
    let primitive = crate::flex_ops::primitive(t.clone());
    let flex = constant::<B>(&primitive)?;
    if dtype != DType::F32 || !matches!(flex.dtype(), DType::BF16 | DType::F16) {
        return None;
    }
    let Wide::Widened(values) = widened(&flex) else {
        return None;
    };
    let data = burn::tensor::TensorData::new(values, dims(&flex));
    Some(burn::tensor::Tensor::from_data(
        data,
        (&t.device(), DType::F32),
    ))
}

/// `t` with its elements in row-major order.
pub(super) fn contiguous(t: FlexTensor) -> FlexTensor {
    match t.is_contiguous() {
        true => t,
        false => t.to_contiguous(),
    }
}

/// The bits of a contiguous bf16 or f16 tensor.
pub(super) fn bits(t: &FlexTensor) -> &[u16] {
    use half::slice::HalfFloatSliceExt;
    let contiguous = "a contiguous tensor";
    match t.dtype() {
        DType::BF16 => t
            .as_slice::<half::bf16>()
            .expect(contiguous)
            .reinterpret_cast(),
        DType::F16 => t
            .as_slice::<half::f16>()
            .expect(contiguous)
            .reinterpret_cast(),
        other => panic!("{other:?} is not a half type"),
    }
}

/// A tensor's values as f32, in row-major order.
enum Wide {
    /// An f32 tensor, shared (or made contiguous once).
    Shared(FlexTensor),
    /// A bf16 or f16 tensor widened (exactly).
    Widened(Vec<f32>),
}

impl std::ops::Deref for Wide {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match self {
            Wide::Shared(t) => elems(t),
            Wide::Widened(v) => v,
        }
    }
}

/// `t`'s values as f32: an f32 tensor as it is (the input of a model computing in f32 is not
/// copied for every product), a half-precision one widened.
fn widened(t: &FlexTensor) -> Wide {
    if let Some(t) = dense(t) {
        return Wide::Shared(t);
    }
    let t = contiguous(t.clone());
    let bits = bits(&t);
    let mut out = vec![0f32; bits.len()];
    widen_into(bits, t.dtype(), &mut out);
    Wide::Widened(out)
}

/// `values` as a contiguous tensor of `shape` in `dtype`: as they are in f32, else rounded.
fn in_precision(values: Vec<f32>, dtype: DType, shape: &[usize]) -> FlexTensor {
    let layout = Layout::contiguous(Shape::from(shape.to_vec()));
    match dtype {
        DType::F32 => FlexTensor::new(burn::tensor::Bytes::from_elems(values), layout, dtype),
        _ => FlexTensor::new(
            halve_values(&values, dtype).expect("a half type"),
            layout,
            dtype,
        ),
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
    use half::{bf16, f16};

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// `values` as a `dtype` tensor of `shape` on flex, and the values it holds, widened.
    fn half<B: Backend, const D: usize>(
        values: &[f32],
        shape: [usize; D],
        dtype: DType,
    ) -> (Tensor<B, D>, Vec<f64>) {
        let device = Default::default();
        let (data, held): (TensorData, Vec<f64>) = match dtype {
            DType::BF16 => {
                let h: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
                let held = h.iter().map(|v| v.to_f64()).collect();
                (TensorData::new(h, shape), held)
            }
            _ => {
                let h: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
                let held = h.iter().map(|v| v.to_f64()).collect();
                (TensorData::new(h, shape), held)
            }
        };
        (Tensor::from_data(data, (&device, dtype)), held)
    }

    fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
        let data = t.into_data().convert::<f32>();
        data.to_vec::<f32>()
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect()
    }

    /// Each value within `tolerance` of the f64 reference, relative to the sum of the
    /// magnitudes that made it (the output's rounding to the half type included).
    fn assert_close(got: &[f64], want: &[f64], scale: &[f64], tolerance: f64, label: &str) {
        assert_eq!(got.len(), want.len(), "{label}");
        for (i, ((g, w), s)) in got.iter().zip(want).zip(scale).enumerate() {
            let err = (g - w).abs() / s.max(1e-30);
            assert!(err < tolerance, "{label} [{i}]: {g} vs {w} ({err:.1e})");
        }
    }

    /// `x · Wᵀ + b` and its input gradient `c · W` (the gradient of `Σ c ⊙ y`) against f64,
    /// for row counts that take the streaming kernels, the blocked ones and gemm, and a
    /// weight in one widened block or spread over several (the last one short).
    #[test]
    fn half_precision_products_and_gradients_equal_f64_on_the_half_operands() {
        type B = Autodiff<Flex>;
        let k = 64;
        // 12 rows fit one block of the tests' size (1,024 values), 40 take three.
        for (n, dtype) in [
            (12, DType::BF16),
            (40, DType::BF16),
            (12, DType::F16),
            (40, DType::F16),
        ] {
            // Half of the rounding unit: bf16 keeps 8 bits, f16 11.
            let unit = if dtype == DType::BF16 {
                2f64.powi(-8)
            } else {
                2f64.powi(-11)
            };
            for m in [1, 5, 12, 130] {
                let label = format!("{dtype:?} m = {m}, n = {n}");
                let (x, xh) = half::<B, 2>(&values(m * k, 1), [m, k], dtype);
                let (w, wh) = half::<B, 2>(&values(n * k, 2), [n, k], dtype);
                let (b, bh) = half::<B, 1>(&values(n, 3), [n], dtype);
                let (c, ch) = half::<B, 2>(&values(m * n, 4), [m, n], dtype);
                let x = x.require_grad();
                let y = super::super::try_linear(x.clone(), w, Some(b))
                    .unwrap_or_else(|_| panic!("{label}: the half-precision op declined"));
                assert_eq!(y.dtype(), dtype, "{label}");
                let (mut want, mut scale) = (vec![0f64; m * n], vec![0f64; m * n]);
                for i in 0..m {
                    for j in 0..n {
                        want[i * n + j] = bh[j];
                        scale[i * n + j] = bh[j].abs();
                        for p in 0..k {
                            want[i * n + j] += xh[i * k + p] * wh[j * k + p];
                            scale[i * n + j] += (xh[i * k + p] * wh[j * k + p]).abs();
                        }
                    }
                }
                assert_close(&host(y.clone()), &want, &scale, unit, &label);
                let grads = (y * c).sum().backward();
                let gx = x.grad(&grads).expect("x's gradient");
                let (mut want, mut scale) = (vec![0f64; m * k], vec![0f64; m * k]);
                for i in 0..m {
                    for p in 0..k {
                        for j in 0..n {
                            want[i * k + p] += ch[i * n + j] * wh[j * k + p];
                            scale[i * k + p] += (ch[i * n + j] * wh[j * k + p]).abs();
                        }
                    }
                }
                let gx = host::<Flex, 2>(gx);
                assert_close(&gx, &want, &scale, 2.0 * unit, &format!("{label} gradient"));
            }
        }
    }

    /// A model computing in f32 with a bf16 or f16 weight: for the rows the streaming and
    /// blocked kernels take, the product and its input gradient read the weight as it is and
    /// give the bits of the same product with the weight converted to f32, with and without a
    /// tail of columns (`k` not a multiple of 8 or 16) and over a weight larger than one
    /// widened block.
    #[test]
    fn half_weights_read_as_stored_give_the_bits_of_their_f32_conversion() {
        type B = Autodiff<Flex>;
        let device = Default::default();
        let n = 40;
        for (k, dtype) in [64, 61]
            .into_iter()
            .flat_map(|k| [(k, DType::BF16), (k, DType::F16)])
        {
            let (w, held) = half::<B, 2>(&values(n * k, 5), [n, k], dtype);
            let wide: Vec<f32> = held.iter().map(|&v| v as f32).collect();
            let wide = Tensor::<B, 2>::from_data(TensorData::new(wide, [n, k]), &device);
            let bias = Tensor::<B, 1>::from_data(TensorData::new(values(n, 6), [n]), &device);
            for m in (1..=super::super::MAX_FEW_ROWS).chain([8, 21, 96]) {
                let label = format!("{dtype:?} m = {m}, k = {k}");
                let x = Tensor::<B, 2>::from_data(
                    TensorData::new(values(m * k, 7 + m as u64), [m, k]),
                    &device,
                );
                let c =
                    Tensor::<B, 2>::from_data(TensorData::new(values(m * n, 8), [m, n]), &device);
                let run = |weight: Tensor<B, 2>| {
                    let x = x.clone().require_grad();
                    let y = super::super::try_linear(x.clone(), weight, Some(bias.clone()))
                        .unwrap_or_else(|_| panic!("{label}: declined"));
                    let grads = (y.clone() * c.clone()).sum().backward();
                    let gx = x.grad(&grads).expect("x's gradient");
                    (host(y), host::<Flex, 2>(gx))
                };
                let (y, gx) = run(w.clone());
                let (y32, gx32) = run(wide.clone());
                assert_eq!(y, y32, "{label}");
                assert_eq!(gx, gx32, "{label} gradient");
            }
        }
    }
}
