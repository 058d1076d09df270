//! Operations computed directly on burn's flex backend, plain and under autodiff.
//!
//! The model is generic over the backend. This file recognises `Flex` and `Autodiff<Flex>` by
//! type at run time, hands an operation the f32 memory of its inputs, and, under autodiff,
//! registers the operation's own backward step with burn's graph. Any other backend, dtype or
//! shape the operation declines gets its inputs back, and the caller takes burn's own ops.

use std::any::{Any, TypeId};
use std::fmt::Debug;

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::NoCheckpointing};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::{Autodiff, Flex};
use burn::tensor::{backend::Backend, DType, Shape, Tensor, TensorPrimitive};

use crate::same_type::cast;

/// A backend's float tensor primitive.
pub(crate) type Float<B> = burn::tensor::ops::FloatTensor<B>;
/// The autodiff backend the attribution runs flex under.
type AutodiffFlex = Autodiff<Flex, NoCheckpointing>;

/// An operation on flex tensors with `N` differentiable inputs and its own gradient.
///
/// Constants (weights, masks, tables) are fields of the operation, taken with [`constant`].
pub(crate) trait FlexOp<const N: usize>: Debug + Send + Sized + 'static {
    /// What the backward step keeps from the forward (shared buffers, small statistics).
    type Saved: Clone + Send + Debug + 'static;

    /// The output and what the backward needs, or `None` when the inputs do not suit.
    fn forward(&self, inputs: [&FlexTensor; N]) -> Option<(FlexTensor, Self::Saved)>;

    /// The gradients of the inputs marked in `wanted`, from the output's gradient `grad`.
    fn backward(
        &self,
        saved: &Self::Saved,
        grad: &FlexTensor,
        wanted: [bool; N],
    ) -> [Option<FlexTensor>; N];
}

/// `op` on `inputs` when the backend is flex (plain or autodiff) and `op` accepts them;
/// otherwise the inputs come back untouched.
#[allow(clippy::result_large_err)]
pub(crate) fn run<B: Backend, Op: FlexOp<N>, const N: usize>(
    op: Op,
    inputs: [Float<B>; N],
) -> Result<Float<B>, [Float<B>; N]> {
    let backend = TypeId::of::<B>();
    if backend == TypeId::of::<Flex>() {
        let flex = inputs.each_ref().map(as_ref::<B, FlexTensor>);
        match op.forward(flex) {
            Some((y, _)) => Ok(cast::<FlexTensor, Float<B>>(y)),
            None => Err(inputs),
        }
    } else if backend == TypeId::of::<AutodiffFlex>() {
        let tracked = inputs.each_ref().map(as_ref::<B, Float<AutodiffFlex>>);
        let Some((y, saved)) = op.forward(tracked.map(|t| &t.primitive)) else {
            return Err(inputs);
        };
        let nodes = tracked.map(|t| t.node.clone());
        let y = match Step(op)
            .prepare::<NoCheckpointing>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(saved, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Ok(cast::<Float<AutodiffFlex>, Float<B>>(y))
    } else {
        Err(inputs)
    }
}

/// Whether `B` is flex, plain or under autodiff: the backends these operations run on.
pub fn recognised<B: Backend>() -> bool {
    let backend = TypeId::of::<B>();
    backend == TypeId::of::<Flex>() || backend == TypeId::of::<AutodiffFlex>()
}

/// The flex tensor behind a constant operand: `None` on other backends, and for a tensor that
/// requires a gradient (the operations here give constants none).
pub(crate) fn constant<B: Backend>(p: &Float<B>) -> Option<FlexTensor> {
    let backend = TypeId::of::<B>();
    if backend == TypeId::of::<Flex>() {
        Some(as_ref::<B, FlexTensor>(p).clone())
    } else if backend == TypeId::of::<AutodiffFlex>() {
        let t = as_ref::<B, Float<AutodiffFlex>>(p);
        (!t.is_tracked()).then(|| t.primitive.clone())
    } else {
        None
    }
}

/// The backward step burn's graph runs for a [`FlexOp`].
#[derive(Debug)]
struct Step<Op>(Op);

impl<Op: FlexOp<N>, const N: usize> Backward<Flex, N> for Step<Op> {
    type State = Op::Saved;

    fn backward(self, ops: Ops<Op::Saved, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let wanted = ops.parents.each_ref().map(Option::is_some);
        let input_grads = self.0.backward(&ops.state, &grad, wanted);
        for (parent, g) in ops.parents.into_iter().zip(input_grads) {
            if let (Some(parent), Some(g)) = (parent, g) {
                grads.register::<Flex>(parent.id, g);
            }
        }
    }
}

/// `t` with its f32 elements in row-major order: itself (shared) or one contiguous copy;
/// `None` for any other dtype.
pub(crate) fn dense(t: &FlexTensor) -> Option<FlexTensor> {
    if t.dtype() != DType::F32 {
        return None;
    }
    Some(match t.as_slice::<f32>() {
        Some(_) => t.clone(),
        None => t.to_contiguous(),
    })
}

/// A constant operand ([`constant`]) made [`dense`].
pub(crate) fn dense_constant<B: Backend>(p: &Float<B>) -> Option<FlexTensor> {
    dense(&constant::<B>(p)?)
}

/// The gradient of an op's f32 output, [`dense`].
pub(crate) fn dense_grad(grad: &FlexTensor) -> FlexTensor {
    dense(grad).expect("the gradient of an f32 output is f32")
}

/// The elements of a tensor [`dense`] returned.
pub(crate) fn elems(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("dense tensors are contiguous f32")
}

/// A tensor's dimensions.
pub(crate) fn dims(t: &FlexTensor) -> Vec<usize> {
    t.layout().shape().iter().copied().collect()
}

/// A contiguous f32 tensor of `shape` holding `data`.
pub(crate) fn from_vec(data: Vec<f32>, shape: &[usize]) -> FlexTensor {
    debug_assert_eq!(data.len(), shape.iter().product::<usize>());
    FlexTensor::new(
        burn::tensor::Bytes::from_elems(data),
        Layout::contiguous(Shape::from(shape.to_vec())),
        DType::F32,
    )
}

/// The primitive of a float tensor.
pub(crate) fn primitive<B: Backend, const D: usize>(t: Tensor<B, D>) -> Float<B> {
    t.into_primitive().tensor()
}

/// A float tensor from its primitive.
pub(crate) fn tensor<B: Backend, const D: usize>(p: Float<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// `p` as the concrete type `T` that the `TypeId` check found it to be.
fn as_ref<B: Backend, T: 'static>(p: &Float<B>) -> &T {
    (p as &dyn Any)
        .downcast_ref::<T>()
        .expect("the backend's tensor type was checked")
}

/// A pointer into an output buffer, shared by parallel tasks that write disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
// SAFETY: the tasks that share it write disjoint elements, and the buffer outlives them.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The element `offset` places further on.
    pub(crate) fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: the callers keep offsets inside the buffer.
        unsafe { self.0.add(offset) }
    }
}
