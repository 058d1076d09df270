//! `x · Wᵀ + b` on burn's flex backend, plain and under autodiff, as a [`FlexOp`] whose
//! backward step gives the input gradient `g · W` (the weight and bias are constants).
//!
//! On CPUs that have them, products with 1 ..= `MAX_FEW_ROWS` rows take the streaming kernels
//! and up to `MAX_BLOCKED_ROWS` the blocked ones; all others call gemm (the crate flex's own
//! matmul uses). The output is a buffer allocated here, with the bias written into it first
//! where the kernel adds to it. flex's matmul allocates its output through a path that
//! copies a zeroed buffer on the calling thread, which at 512 tokens cost more than a third of
//! the forward pass (every page of every product first touched by one thread).

use std::sync::Arc;

use burn::backend::flex::FlexTensor;
use burn::tensor::{backend::Backend, DType, Tensor};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::{avx2, blocked, heads, per_head, wide};
use super::{HeadNorms, HeadParts, MAX_BLOCKED_ROWS, MAX_FEW_ROWS};
#[cfg(target_arch = "x86_64")]
use crate::flex_ops::SendPtr;
use crate::flex_ops::{
    self, constant, dense, dense_constant, dense_grad, dims, elems, from_vec, primitive, tensor,
    FlexOp,
};
use crate::load::StoredBlocks;

/// Weight rows per task in the forward kernels (a multiple of their tiles' rows: three, and
/// eight for o_proj's).
#[cfg(target_arch = "x86_64")]
const ROWS_PER_TASK: usize = 48;

/// Products with fewer multiply-adds than this run on one thread.
const PARALLEL_ABOVE: usize = 1 << 21;

/// See [`super::try_linear`].
///
/// With `notes`, a one-row product of a bf16 weight notes its row norms where they are wanted
/// (see [`super::try_linear_noting`]); with `parts` (and no bias), an attention layer's o_proj
/// sums by head and notes the heads' contributions where asked (see
/// [`super::linear_heads`]).
#[allow(clippy::result_large_err)]
pub(super) fn try_linear<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    notes: Option<&Arc<HeadNorms>>,
    parts: Option<&Arc<HeadParts>>,
) -> Result<Tensor<B, 2>, super::LinearOperands<B>> {
    let weight = primitive(weight);
    let bias = bias.map(primitive);
    let parts = parts.filter(|_| bias.is_none()).cloned();
    if let Some(op) =
        super::flex_half::XWtHalf::new::<B>(&weight, bias.as_ref(), notes, parts.clone())
    {
        return run_linear(op, x, weight, bias);
    }
    let w = constant::<B>(&weight).filter(|w| weight_rows(w).is_some());
    let b = match &bias {
        Some(b) => dense_constant::<B>(b).map(Some),
        None => Some(None),
    };
    let op = w.zip(b).and_then(|(weight, bias)| {
        let n = dims(&weight)[0];
        let fits = bias.as_ref().is_none_or(|b| dims(b) == [n]);
        fits.then_some(XWt {
            weight,
            bias,
            parts,
        })
    });
    let Some(op) = op else {
        return Err((x, tensor(weight), bias.map(tensor)));
    };
    run_linear(op, x, weight, bias)
}

/// A linear layer's operation `op` on `x`; where it declines, the operands back as
/// [`try_linear`] returns them.
#[allow(clippy::result_large_err)]
fn run_linear<B: Backend, Op: FlexOp<1>>(
    op: Op,
    x: Tensor<B, 2>,
    weight: flex_ops::Float<B>,
    bias: Option<flex_ops::Float<B>>,
) -> Result<Tensor<B, 2>, super::LinearOperands<B>> {
    match flex_ops::run::<B, _, 1>(op, [primitive(x)]) {
        Ok(y) => Ok(tensor(y)),
        Err([x]) => Err((tensor(x), tensor(weight), bias.map(tensor))),
    }
}

/// See [`super::rank_rows`].
pub(super) fn rank_rows<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    target: usize,
    top: usize,
    notes: Option<&HeadNorms>,
    stored: Option<&StoredBlocks>,
) -> Option<Vec<super::Ranked>> {
    #[cfg(target_arch = "x86_64")]
    {
        use super::screen::Table;
        let weight = constant::<B>(&primitive(weight))?;
        // A bf16 head is screened as it is stored; any other is read as f32.
        let weight = match weight.dtype() {
            DType::BF16 => super::flex_half::contiguous(weight),
            _ => dense(&weight)?,
        };
        let (n, k) = match dims(&weight)[..] {
            [n, k] => (n, k),
            _ => return None,
        };
        let w = match weight.dtype() {
            DType::BF16 => Table::Bf16(super::flex_half::bits(&weight)),
            _ => {
                let table = elems(&weight);
                // Taken only as the weight the model was loaded with: its first row and the
                // target's decode to the table's bits.
                match stored.filter(|s| s.decodes_to(table, [n, k], &[0, target])) {
                    Some(stored) => Table::Blocks(stored),
                    None => Table::F32(table),
                }
            }
        };
        // A bf16 table's row norms, if the forward pass noted them.
        let norms = match w {
            Table::Bf16(bits) => notes.and_then(|notes| notes.of(bits.as_ptr(), n, k)),
            Table::F32(_) | Table::Blocks(_) => None,
        };
        let x = dense_constant::<B>(&primitive(x))?;
        let (x, m, kx) = weight_rows(&x)?;
        if kx != k {
            return None;
        }
        let ranked = super::screen::rank_rows(x, m, w, norms, n, k, target, top);
        if let (Some(_), Table::Blocks(stored)) = (&ranked, w) {
            stored.note_read();
        }
        ranked
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, weight, target, top, notes, stored);
        None
    }
}

/// See [`super::head_squares`].
pub(super) fn head_squares<B: Backend>(
    z: Tensor<B, 2>,
    g: Tensor<B, 2>,
    heads: usize,
    weight: Tensor<B, 2>,
    parts: Option<&HeadParts>,
) -> Option<Vec<f32>> {
    #[cfg(target_arch = "x86_64")]
    {
        if !avx2::available() || heads == 0 {
            return None;
        }
        // A bf16 or f16 weight is read as it is stored, widened in registers.
        let weight = constant::<B>(&primitive(weight))?;
        let weight = match weight.dtype() {
            DType::BF16 | DType::F16 => super::flex_half::contiguous(weight),
            _ => dense(&weight)?,
        };
        let (hidden, width) = match dims(&weight)[..] {
            [hidden, width] => (hidden, width),
            _ => return None,
        };
        let hd = width / heads;
        if hd * heads != width || !hd.is_multiple_of(heads::STEP) {
            return None;
        }
        let (z, g) = (
            dense_constant::<B>(&primitive(z))?,
            dense_constant::<B>(&primitive(g))?,
        );
        let (z, seq, z_width) = weight_rows(&z)?;
        let (g, g_seq, g_hidden) = weight_rows(&g)?;
        if (z_width, g_seq, g_hidden) != (width, seq, hidden) {
            return None;
        }
        // The contributions o_proj's product noted for this input, where it did.
        let key = (weight_address(&weight), hidden, width);
        let noted = parts.filter(|parts| parts.heads() == heads);
        if let Some(squares) = noted.and_then(|parts| parts.squares(key, z, g)) {
            return Some(squares);
        }
        // A few ranges of the weight's rows per thread, each summed into its own buffer.
        let per = hidden
            .div_ceil(4 * rayon::current_num_threads().max(1))
            .max(1);
        let sum = par_range_sums(hidden, per, heads * seq, |d0, rows, out| {
            // SAFETY: `available()`; `z` is `seq × width`, rows `d0 .. d0 + rows` of `w`
            // exist, `g` is `seq × hidden` read at `p·hidden + d0 + d`, and `out` holds
            // `heads × seq`.
            unsafe {
                let (z, g) = (z.as_ptr(), g.as_ptr().add(d0));
                let head = (heads, hd);
                match weight.dtype() {
                    DType::BF16 => {
                        let w = super::flex_half::bits(&weight)[d0 * width..].as_ptr();
                        let w = w as *const half::bf16;
                        heads::squares(z, seq, head, w, rows, g, hidden, out)
                    }
                    DType::F16 => {
                        let w = super::flex_half::bits(&weight)[d0 * width..].as_ptr();
                        let w = w as *const half::f16;
                        heads::squares(z, seq, head, w, rows, g, hidden, out)
                    }
                    _ => {
                        let w = elems(&weight)[d0 * width..].as_ptr();
                        heads::squares(z, seq, head, w, rows, g, hidden, out)
                    }
                }
            };
        });
        Some(sum)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (z, g, heads, weight, parts);
        None
    }
}

/// The address of a weight's first value, as the products see it (f32, bf16 or f16).
#[cfg(target_arch = "x86_64")]
fn weight_address(weight: &FlexTensor) -> usize {
    match weight.dtype() {
        DType::BF16 | DType::F16 => super::flex_half::bits(weight).as_ptr() as usize,
        _ => elems(weight).as_ptr() as usize,
    }
}

/// Whether a product with `m` rows takes the streaming kernels.
pub(super) fn streams(m: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    return (1..=MAX_FEW_ROWS).contains(&m) && avx2::available();
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (m, MAX_FEW_ROWS);
        false
    }
}

/// `y = x · Wᵀ + b` with constant `W` and `b`; the backward step gives `∂x = ∂y · W`.
#[derive(Debug)]
struct XWt {
    /// `[n, k]`, contiguous.
    weight: FlexTensor,
    /// `[n]`, contiguous.
    bias: Option<FlexTensor>,
    /// An attention layer's heads, for its o_proj (no bias): summed by head, and their
    /// contributions noted where asked ([`stream_x_wt_heads`]).
    parts: Option<Arc<HeadParts>>,
}

impl FlexOp<1> for XWt {
    type Saved = ();

    fn forward(&self, [x]: [&FlexTensor; 1]) -> Option<(FlexTensor, ())> {
        let (w, n, k) = weight_rows(&self.weight)?;
        let (m, kx) = f32_matrix(x)?;
        // One row without the streaming kernels: flex's own matrix-vector product.
        if kx != k || m == 0 || (m == 1 && !streams(1)) || n == 0 || k == 0 {
            return None;
        }
        let x = dense(x)?;
        let by_head = self.parts.as_ref();
        let y = by_head
            .and_then(|parts| stream_x_wt_heads(elems(&x), m, w, n, k, parts))
            .unwrap_or_else(|| product(elems(&x), m, w, n, k, self.bias.as_ref().map(elems)));
        Some((from_vec(y, &[m, n]), ()))
    }

    fn backward(&self, _: &(), grad: &FlexTensor, _: [bool; 1]) -> [Option<FlexTensor>; 1] {
        let (w, n, k) = weight_rows(&self.weight).expect("checked in the forward pass");
        let (m, _) = f32_matrix(grad).expect("the gradient of an f32 matrix");
        let g = dense_grad(grad);
        [Some(from_vec(input_grad(elems(&g), m, w, n, k), &[m, k]))]
    }
}

/// `y = x · Wᵀ + b` (`x` is `m × k`, `w` is `n × k`, `b` has `n`): the streaming kernels, the
/// blocked ones or gemm, whichever suits `m` on this CPU.
pub(super) fn product(
    x: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    k: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    few_rows_product(x, m, w, n, k, bias).unwrap_or_else(|| {
        // y = b + x · Wᵀ, Wᵀ read through its strides.
        let mut y = match bias {
            Some(b) => bias_rows(b, m),
            None => vec![0f32; m * n],
        };
        gemm_into(&mut y, bias.is_some(), x, w, (m, n, k), (1, k));
        y
    })
}

/// [`product`] by the streaming kernels when [`streams`]`(m)` and by the blocked ones when
/// [`blocks`]`(m)`, from f32, bf16 or f16 weights (the same bits from any); `None` otherwise.
#[cfg(target_arch = "x86_64")]
pub(super) fn few_rows_product<W: avx2::Weight>(
    x: &[f32],
    m: usize,
    w: &[W],
    n: usize,
    k: usize,
    bias: Option<&[f32]>,
) -> Option<Vec<f32>> {
    assert!(x.len() >= m * k && w.len() >= n * k);
    if streams(m) {
        let mut y = vec![0f32; m * n];
        stream_x_wt(x, m, w, n, k, &mut y);
        if let Some(b) = bias {
            y.par_chunks_mut(n)
                .for_each(|row| row.iter_mut().zip(b).for_each(|(y, b)| *y += b));
        }
        return Some(y);
    }
    if !blocks(m) {
        return None;
    }
    // The blocked kernels add to what is there: the bias, or zeros (written: see
    // `written_zeros`).
    let mut y = match bias {
        Some(b) => bias_rows(b, m),
        None => written_zeros(m * n),
    };
    blocked_x_wt(x, m, w, n, k, &mut y);
    Some(y)
}

/// `m` rows, each a copy of `bias`.
fn bias_rows(bias: &[f32], m: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * bias.len()];
    if !bias.is_empty() {
        y.par_chunks_mut(bias.len())
            .for_each(|row| row.copy_from_slice(bias));
    }
    y
}

/// Without the kernels, no product has few rows.
#[cfg(not(target_arch = "x86_64"))]
fn few_rows_product(
    _: &[f32],
    _: usize,
    _: &[f32],
    _: usize,
    _: usize,
    _: Option<&[f32]>,
) -> Option<Vec<f32>> {
    None
}

/// `∂x = g · W` (`g` is `m × n`, `w` is `n × k`): the backward step of [`product`].
pub(super) fn input_grad(g: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> Vec<f32> {
    few_rows_input_grad(g, m, w, n, k).unwrap_or_else(|| {
        let mut gx = vec![0f32; m * k];
        gemm_into(&mut gx, false, g, w, (m, k, n), (k, 1));
        gx
    })
}

/// [`input_grad`] by the streaming or blocked kernels, as [`few_rows_product`].
#[cfg(target_arch = "x86_64")]
pub(super) fn few_rows_input_grad<W: avx2::Weight>(
    g: &[f32],
    m: usize,
    w: &[W],
    n: usize,
    k: usize,
) -> Option<Vec<f32>> {
    stream_g_w(g, m, w, n, k).or_else(|| blocked_g_w(g, m, w, n, k))
}

/// Without the kernels, no product has few rows.
#[cfg(not(target_arch = "x86_64"))]
fn few_rows_input_grad(_: &[f32], _: usize, _: &[f32], _: usize, _: usize) -> Option<Vec<f32>> {
    None
}

/// `dst = (dst if accumulate) + lhs · rhs` for row-major `dst` (`m × n`) and `lhs` (`m × k`),
/// and `rhs` (`k × n`) read at `rhs[p·rs + j·cs]` with the given strides `(rs, cs)`.
fn gemm_into(
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    rhs: &[f32],
    (m, n, k): (usize, usize, usize),
    (rs, cs): (usize, usize),
) {
    assert!(dst.len() == m * n && lhs.len() == m * k);
    assert!(k == 0 || n == 0 || (k - 1) * rs + (n - 1) * cs < rhs.len());
    // SAFETY: the asserts above keep every element gemm reads or writes inside the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            cs as isize,
            rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism(m, n, k),
        );
    }
}

/// All threads for large products, one for small ones.
fn parallelism(m: usize, n: usize, k: usize) -> gemm::Parallelism {
    if m.saturating_mul(n).saturating_mul(k) >= PARALLEL_ABOVE {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    }
}

/// Rows and columns of a 2-D f32 tensor; `None` for any other.
fn f32_matrix(t: &FlexTensor) -> Option<(usize, usize)> {
    match dims(t)[..] {
        [rows, cols] if t.dtype() == DType::F32 => Some((rows, cols)),
        _ => None,
    }
}

/// `y = x · Wᵀ` with the streaming kernels (the caller checked [`streams`]`(m)`); `x` is
/// `m × k`, `w` is `n × k`, `y` is `m × n`.
#[cfg(target_arch = "x86_64")]
fn stream_x_wt<W: avx2::Weight>(x: &[f32], m: usize, w: &[W], n: usize, k: usize, y: &mut [f32]) {
    assert!(streams(m) && x.len() >= m * k && w.len() >= n * k && y.len() >= m * n);
    let out = SendPtr(y.as_mut_ptr());
    par_ranges(n, ROWS_PER_TASK, |c0, rows| {
        // SAFETY: `streams(m)` checked `available()`; `x` is `m × k`, `w[c0·k..]` holds
        // `rows × k`, and each task writes only its own columns `c0..c0 + rows` of `y`.
        unsafe { avx2::x_wt(x.as_ptr(), m, w[c0 * k..].as_ptr(), rows, k, out.at(c0), n) }
    });
}

/// `y = x · Wᵀ` for one row `x` of `k` floats ([`stream_x_wt`]'s bits) with each row of
/// `w`'s sum of squares, by [`wide::x_wt_squares`] on every core; `None` where the norms
/// are not noted ([`super::notes_head_norms`]).
#[cfg(target_arch = "x86_64")]
pub(super) fn stream_x_wt_squares<W: avx2::Weight>(
    x: &[f32],
    w: &[W],
    n: usize,
    k: usize,
) -> Option<(Vec<f32>, Vec<f32>)> {
    if !super::notes_head_norms() {
        return None;
    }
    assert!(x.len() >= k && w.len() >= n * k);
    let (mut y, mut squares) = (vec![0f32; n], vec![0f32; n]);
    let (out, sums) = (SendPtr(y.as_mut_ptr()), SendPtr(squares.as_mut_ptr()));
    par_ranges(n, ROWS_PER_TASK, |c0, rows| {
        // SAFETY: `notes_head_norms()` implies `wide::available()`; `x` holds `k` floats,
        // `w[c0·k..]` holds `rows × k` values, and each task writes only its own entries
        // `c0..c0 + rows` of `y` and `squares`.
        unsafe {
            wide::x_wt_squares(
                x.as_ptr(),
                w[c0 * k..].as_ptr(),
                rows,
                k,
                out.at(c0),
                sums.at(c0),
            )
        }
    });
    Some((y, squares))
}

/// `y = x · Wᵀ` for an attention layer's o_proj (`x` is `m × k`, `k` the heads' columns side
/// by side, `w` is `n × k`) by [`per_head::x_wt_heads`] on every core, summed by head; where
/// `parts` asks ([`HeadParts::ask`]), each head's contribution is noted there. `None` where
/// that kernel does not apply: more rows than [`streams`] takes, no AVX-512, or heads or
/// hidden size not in whole steps of eight (the product then sums as any other).
#[cfg(target_arch = "x86_64")]
pub(super) fn stream_x_wt_heads<W: avx2::Weight>(
    x: &[f32],
    m: usize,
    w: &[W],
    n: usize,
    k: usize,
    parts: &HeadParts,
) -> Option<Vec<f32>> {
    let heads = parts.heads();
    let hd = k.checked_div(heads).filter(|hd| hd * heads == k)?;
    let steps = hd.is_multiple_of(per_head::STEP) && n.is_multiple_of(per_head::TILE_ROWS);
    if !streams(m) || !wide::available() || !steps || hd == 0 || n == 0 {
        return None;
    }
    assert!(x.len() >= m * k && w.len() >= n * k);
    let keep = parts.take_ask();
    let mut y = vec![0f32; m * n];
    let mut noted = vec![0f32; if keep { heads * m * n } else { 0 }];
    let (out, at) = (SendPtr(y.as_mut_ptr()), SendPtr(noted.as_mut_ptr()));
    par_ranges(n, ROWS_PER_TASK, |c0, rows| {
        let at = if keep {
            at.at(c0)
        } else {
            std::ptr::null_mut()
        };
        // SAFETY: `streams(m)` and `wide::available()` were checked; `n`, `hd` (and so each
        // task's `rows`, `ROWS_PER_TASK` being a multiple of 8) are whole steps of eight and
        // `hd` divides `k`; `x` is `m × k`, `w[c0·k..]` holds `rows × k`, and each task writes
        // only its own columns `c0..c0 + rows` of `y` and of the `heads × m` rows of `noted`.
        unsafe {
            let w = w[c0 * k..].as_ptr();
            per_head::x_wt_heads(x.as_ptr(), m, w, rows, (k, hd), out.at(c0), n, at, (m, n))
        }
    });
    if keep {
        parts.note((w.as_ptr() as usize, n, k), &x[..m * k], noted);
    }
    Some(y)
}

/// Without the kernels, o_proj sums as any other product.
#[cfg(not(target_arch = "x86_64"))]
pub(super) fn stream_x_wt_heads(
    _: &[f32],
    _: usize,
    _: &[f32],
    _: usize,
    _: usize,
    _: &HeadParts,
) -> Option<Vec<f32>> {
    None
}

/// `g · W` with the streaming kernels when [`streams`]`(m)`; `g` is `m × n`, `w` is `n × k`
/// (f32, bf16 or f16, the same bits from any).
#[cfg(target_arch = "x86_64")]
fn stream_g_w<W: avx2::Weight>(
    g: &[f32],
    m: usize,
    w: &[W],
    n: usize,
    k: usize,
) -> Option<Vec<f32>> {
    if !streams(m) {
        return None;
    }
    assert!(g.len() >= m * n && w.len() >= n * k);
    // One range of W's rows per thread; every range starts inside W.
    let per = n.div_ceil(rayon::current_num_threads().max(1));
    let gx = par_range_sums(n, per, m * k, |c0, rows, gx| {
        // SAFETY: `streams(m)` checked `available()`; `g` is `m × n` (row stride n),
        // `w[c0·k..]` holds `rows × k`, and `gx` is this task's own `m × k`.
        let wc = w[c0 * k..].as_ptr();
        unsafe { avx2::g_w(g.as_ptr().add(c0), n, m, wc, rows, k, gx.as_mut_ptr()) }
    });
    Some(gx)
}

/// A matrix's elements, rows and columns (a weight's, mostly): `None` unless it is a
/// contiguous 2-D f32 tensor.
fn weight_rows(weight: &FlexTensor) -> Option<(&[f32], usize, usize)> {
    let (rows, cols) = f32_matrix(weight)?;
    Some((weight.as_slice::<f32>()?, rows, cols))
}

/// Whether a product with `m` rows takes the blocked kernels.
pub(super) fn blocks(m: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    return (MAX_FEW_ROWS + 1..=MAX_BLOCKED_ROWS).contains(&m) && avx2::available();
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (m, MAX_BLOCKED_ROWS);
        false
    }
}

/// `y += x · Wᵀ` with the blocked kernels (the caller checked [`blocks`]`(m)`); `x` is
/// `m × k`, `w` is `n × k`, `y` is `m × n`.
#[cfg(target_arch = "x86_64")]
fn blocked_x_wt<W: avx2::Weight>(x: &[f32], m: usize, w: &[W], n: usize, k: usize, y: &mut [f32]) {
    assert!(blocks(m) && y.len() >= m * n);
    let panels = blocked::panels(x, m, k);
    let out = SendPtr(y.as_mut_ptr());
    // A few ranges of W's rows per thread, each a whole number of tiles.
    let tasks = 4 * rayon::current_num_threads().max(1);
    let per = n.div_ceil(tasks).next_multiple_of(blocked::W_ROWS);
    par_ranges(n, per, |c0, rows| {
        // SAFETY: `blocks(m)` checked `available()`; `panels` holds x's ⌈m/16⌉·k lines,
        // `w[c0·k..]` holds `rows × k`, and each task adds only to its own columns
        // `c0..c0 + rows` of `y`.
        let (xp, wc) = (panels.as_ptr(), w[c0 * k..].as_ptr());
        unsafe { blocked::x_wt(xp, m, wc, rows, k, out.at(c0), n) }
    });
}

/// `g · W` with the blocked kernels when [`blocks`]`(m)`; `g` is `m × n`, `w` is `n × k`.
#[cfg(target_arch = "x86_64")]
fn blocked_g_w<W: avx2::Weight>(
    g: &[f32],
    m: usize,
    w: &[W],
    n: usize,
    k: usize,
) -> Option<Vec<f32>> {
    if !blocks(m) {
        return None;
    }
    let mut gx = written_zeros(m * k);
    let out = SendPtr(gx.as_mut_ptr());
    // Two ranges of gx's columns per thread, each a whole number of strips.
    let tasks = 2 * rayon::current_num_threads().max(1);
    let per = k.div_ceil(tasks).next_multiple_of(blocked::STRIP);
    par_ranges(k, per, |j0, cols| {
        // SAFETY: `blocks(m)` checked `available()`; `g` is `m × n`, `w` is `n × k`, `gx` is
        // `m × k`, and each task adds only to its own columns `j0..j0 + cols` of `gx`.
        unsafe { blocked::g_w(g.as_ptr(), m, w.as_ptr(), n, k, (j0, j0 + cols), out.at(0)) }
    });
    Some(gx)
}

/// `len` zeros, written by all threads. A fresh `vec![0.0; len]` maps the kernel's shared zero
/// page, so a kernel that adds to it (reads, then writes) takes two faults per page, the
/// second a copy-on-write that interrupts the other cores to flush their TLBs.
#[cfg(target_arch = "x86_64")]
fn written_zeros(len: usize) -> Vec<f32> {
    let mut zeros = Vec::with_capacity(len);
    (0..len)
        .into_par_iter()
        .map(|_| 0f32)
        .collect_into_vec(&mut zeros);
    zeros
}

/// `task(start, len)` in parallel for each range of `per` (the last one shorter) in `0..total`.
#[cfg(target_arch = "x86_64")]
fn par_ranges(total: usize, per: usize, task: impl Fn(usize, usize) + Sync + Send) {
    (0..total.div_ceil(per)).into_par_iter().for_each(|index| {
        let start = index * per;
        task(start, per.min(total - start));
    });
}

/// The element-wise sum of `len`-float buffers, one per range of `per` (the last one shorter)
/// in `0..total`, each filled from zeros by `task(start, rows, buffer)` in parallel; zeros
/// when `total` is 0.
#[cfg(target_arch = "x86_64")]
fn par_range_sums(
    total: usize,
    per: usize,
    len: usize,
    task: impl Fn(usize, usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let parts: Vec<Vec<f32>> = (0..total.div_ceil(per))
        .into_par_iter()
        .map(|index| {
            let start = index * per;
            let mut buffer = vec![0f32; len];
            task(start, per.min(total - start), &mut buffer);
            buffer
        })
        .collect();
    let mut parts = parts.into_iter();
    let mut sum = parts.next().unwrap_or_else(|| vec![0f32; len]);
    for part in parts {
        sum.iter_mut().zip(part).for_each(|(a, b)| *a += b);
    }
    sum
}
