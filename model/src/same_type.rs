//! A value of a generic type as the concrete type a `TypeId` check found it to be: how the
//! backend-specific paths (`flex_ops`, `load::libtorch`) hand their results back to code that
//! is generic over the backend.

use std::any::Any;

/// `t` as `U`, which the caller's `TypeId` check found to be the same type.
pub(crate) fn cast<T: 'static, U: 'static>(t: T) -> U {
    *(Box::new(t) as Box<dyn Any>)
        .downcast::<U>()
        .unwrap_or_else(|_| unreachable!("the backend's type was checked"))
}
