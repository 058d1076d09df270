//! The streaming kernels on burn's flex backend, plain and under autodiff.
//!
//! The model is generic over the backend; this file recognises `Flex` and `Autodiff<Flex>`
//! by type at run time, reaches their tensors' memory, and gives the autodiff graph a
//! backward step of its own (`g · W` for the input; the weight is a constant).

use std::any::{Any, TypeId};
use std::borrow::Cow;

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::NoCheckpointing};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::{Autodiff, Flex};
use burn::tensor::{backend::Backend, DType, Shape, Tensor, TensorPrimitive};
use rayon::prelude::*;

use super::avx2;

type Float<B> = burn::tensor::ops::FloatTensor<B>;
type AutodiffFlex = Autodiff<Flex, NoCheckpointing>;

/// Weight rows per task in the forward kernel (a multiple of its three-row tile).
const ROWS_PER_TASK: usize = 48;

/// See [`super::try_x_wt`]; `x` has 2 ..= `MAX_ROWS` rows and the CPU has the kernels.
#[allow(clippy::result_large_err)]
pub(super) fn try_x_wt<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
) -> Result<Tensor<B, 2>, (Tensor<B, 2>, Tensor<B, 2>)> {
    let backend = TypeId::of::<B>();
    if backend == TypeId::of::<Flex>() {
        let (xp, wp) = (primitive(x), primitive(weight));
        let (xf, wf) = (as_ref::<B, FlexTensor>(&xp), as_ref::<B, FlexTensor>(&wp));
        match forward(xf, wf) {
            Some(y) => Ok(tensor(cast::<FlexTensor, Float<B>>(y))),
            None => Err((tensor(xp), tensor(wp))),
        }
    } else if backend == TypeId::of::<AutodiffFlex>() {
        let (xp, wp) = (primitive(x), primitive(weight));
        let xa = as_ref::<B, Float<AutodiffFlex>>(&xp);
        let wa = as_ref::<B, Float<AutodiffFlex>>(&wp);
        if wa.is_tracked() {
            return Err((tensor(xp), tensor(wp)));
        }
        let Some(y) = forward(&xa.primitive, &wa.primitive) else {
            return Err((tensor(xp), tensor(wp)));
        };
        let state = wa.primitive.clone();
        let node = xa.node.clone();
        let y = match XWtBackward
            .prepare::<NoCheckpointing>([node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Ok(tensor(cast::<Float<AutodiffFlex>, Float<B>>(y)))
    } else {
        Err((x, weight))
    }
}

/// The backward step of `y = x · Wᵀ`: `∂x = ∂y · W`. The state is `W`.
#[derive(Debug)]
struct XWtBackward;

impl Backward<Flex, 1> for XWtBackward {
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let [parent] = ops.parents;
        if let Some(parent) = parent {
            let dx = backward(&grad, &ops.state)
                .unwrap_or_else(|| fallback_backward(grad, ops.state.clone()));
            grads.register::<Flex>(parent.id, dx);
        }
    }
}

/// `g · W` with flex's own matmul, for a gradient the kernels cannot take.
fn fallback_backward(grad: FlexTensor, weight: FlexTensor) -> FlexTensor {
    use burn::tensor::ops::FloatTensorOps;
    Flex::float_matmul(grad, weight)
}

/// Rows and columns of a 2-D f32 tensor; `None` for any other.
fn f32_matrix(t: &FlexTensor) -> Option<(usize, usize)> {
    let dims = t.layout().shape();
    (t.dtype() == DType::F32 && dims.num_dims() == 2).then(|| (dims[0], dims[1]))
}

/// `t` itself when its elements lie in row-major order, else one contiguous copy.
fn contiguous(t: &FlexTensor) -> Cow<'_, FlexTensor> {
    match t.as_slice::<f32>() {
        Some(_) => Cow::Borrowed(t),
        None => Cow::Owned(t.to_contiguous()),
    }
}

/// `x · Wᵀ`, or `None` when the shapes or types do not fit the kernels. `W` must already be
/// contiguous: a copy of a weight would cost more than the product.
fn forward(x: &FlexTensor, weight: &FlexTensor) -> Option<FlexTensor> {
    let (w, n, k) = weight_rows(weight)?;
    let (m, kx) = f32_matrix(x)?;
    let x = contiguous(x);
    let x = x.as_slice::<f32>()?;
    if kx != k || m == 0 || n == 0 {
        return None;
    }
    let mut y = vec![0f32; m * n];
    let out = SendPtr(y.as_mut_ptr());
    (0..n.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .for_each(|task| {
            let c0 = task * ROWS_PER_TASK;
            let rows = ROWS_PER_TASK.min(n - c0);
            // SAFETY: `available()` was checked by the caller; `x` is `m × k`, `w[c0·k..]` holds
            // `rows × k`, and each task writes only its own columns `c0..c0 + rows` of `y`.
            unsafe {
                avx2::x_wt(
                    x.as_ptr(),
                    m,
                    w.as_ptr().add(c0 * k),
                    rows,
                    k,
                    out.at(c0),
                    n,
                );
            }
        });
    Some(from_rows(y, m, n))
}

/// `g · W`, or `None` when the shapes or types do not fit the kernels.
fn backward(grad: &FlexTensor, weight: &FlexTensor) -> Option<FlexTensor> {
    let (w, n, k) = weight_rows(weight)?;
    let (m, ng) = f32_matrix(grad)?;
    let g = contiguous(grad);
    let g = g.as_slice::<f32>()?;
    if ng != n || m == 0 || n == 0 {
        return None;
    }
    // One range of W's rows per thread; every range starts inside W.
    let per = n.div_ceil(rayon::current_num_threads().max(1));
    let sums: Vec<Vec<f32>> = (0..n.div_ceil(per))
        .into_par_iter()
        .map(|part| {
            let c0 = part * per;
            let rows = per.min(n - c0);
            let mut gx = vec![0f32; m * k];
            // SAFETY: `available()` was checked by the caller; `g` is `m × n` (row stride n),
            // `w[c0·k..]` holds `rows × k`, and `gx` is this task's own `m × k`.
            unsafe {
                avx2::g_w(
                    g.as_ptr().add(c0),
                    n,
                    m,
                    w.as_ptr().add(c0 * k),
                    rows,
                    k,
                    gx.as_mut_ptr(),
                );
            }
            gx
        })
        .collect();
    let mut sums = sums.into_iter();
    let mut gx = sums.next()?;
    for part in sums {
        gx.iter_mut().zip(part).for_each(|(a, b)| *a += b);
    }
    Some(from_rows(gx, m, k))
}

/// A weight's elements, rows and columns: `None` unless it is a contiguous 2-D f32 tensor.
fn weight_rows(weight: &FlexTensor) -> Option<(&[f32], usize, usize)> {
    let (rows, cols) = f32_matrix(weight)?;
    Some((weight.as_slice::<f32>()?, rows, cols))
}

fn from_rows(data: Vec<f32>, rows: usize, cols: usize) -> FlexTensor {
    FlexTensor::new(
        burn::tensor::Bytes::from_elems(data),
        Layout::contiguous(Shape::from(vec![rows, cols])),
        DType::F32,
    )
}

/// The output pointer, shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the tasks that share it write disjoint elements, and it outlives them.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: offsets stay inside the output, as the callers above state.
        unsafe { self.0.add(offset) }
    }
}

fn primitive<B: Backend>(t: Tensor<B, 2>) -> Float<B> {
    t.into_primitive().tensor()
}

fn tensor<B: Backend>(p: Float<B>) -> Tensor<B, 2> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// `p` as the concrete type `T` that the `TypeId` check above found it to be.
fn as_ref<B: Backend, T: 'static>(p: &Float<B>) -> &T {
    (p as &dyn Any)
        .downcast_ref::<T>()
        .expect("the backend's tensor type was checked")
}

/// `t` as `U`, which the `TypeId` check above found to be the same type.
fn cast<T: 'static, U: 'static>(t: T) -> U {
    *(Box::new(t) as Box<dyn Any>)
        .downcast::<U>()
        .unwrap_or_else(|_| unreachable!("the backend's tensor type was checked"))
}
