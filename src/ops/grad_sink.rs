//! Parameter gradients handed past candle's gradient store during a training step's
//! backward pass.
//!
//! Why it exists: candle's backprop accumulates every gradient edge as
//! `store.or_insert(zeros).add(grad)`, so a parameter used once still costs a
//! zero-filled tensor and a full add the size of its weights: for R3D-18 about 33M
//! floats of each per step, most of them conv3d weights. Inside [`backward`], conv3d
//! hands the gradient of a weight that is a variable here instead and tells candle
//! there is none; [`backward`] then puts it into the store itself, adding it to
//! whatever candle accumulated for the same variable (a weight shared with other
//! ops). A weight used once gets exactly the value plain `loss.backward()` gives
//! (`0 + g` is `g`); one with several uses gets the same sum, possibly added in
//! another order. Outside [`backward`] (any other caller of candle's `backward`)
//! nothing changes.
//!
//! The state is per thread: candle runs the ops' backward functions on the thread
//! that called `backward`, and tests run many backward passes on parallel threads.

use std::cell::{Cell, RefCell};

use candle_core::backprop::GradStore;
use candle_core::Tensor;

use crate::Result;

thread_local! {
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    static SUNK: RefCell<Vec<(Tensor, Tensor)>> = const { RefCell::new(Vec::new()) };
}

/// Whether an op's backward may hand `param`'s gradient to [`sink`]: inside
/// [`backward`] on this thread, and `param` is a variable (a derived weight's gradient
/// must flow on through candle's graph).
pub(crate) fn takes(param: &Tensor) -> bool {
    ACTIVE.with(|a| a.get()) && param.is_variable()
}

/// Records `grad` as (part of) `param`'s gradient; only after [`takes`] said yes.
pub(crate) fn sink(param: &Tensor, grad: Tensor) {
    SUNK.with(|s| s.borrow_mut().push((param.clone(), grad)));
}

/// `loss.backward()`, with the parameter gradients the ops sank added to the store in
/// the order they were sunk.
pub fn backward(loss: &Tensor) -> Result<GradStore> {
    /// The sink switched on for this thread, and off and empty again however the
    /// backward pass returns.
    struct Active;
    impl Active {
        fn on() -> Self {
            SUNK.with(|s| s.borrow_mut().clear());
            ACTIVE.with(|a| a.set(true));
            Active
        }
    }
    impl Drop for Active {
        fn drop(&mut self) {
            ACTIVE.with(|a| a.set(false));
            SUNK.with(|s| s.borrow_mut().clear());
        }
    }
    let (mut grads, sunk) = {
        let _active = Active::on();
        let grads = loss.backward()?;
        (grads, SUNK.with(|s| s.take()))
    };
    for (param, g) in sunk {
        let g = match grads.remove(&param) {
            Some(prev) => prev.add(&g)?,
            None => g,
        };
        grads.insert(&param, g);
    }
    Ok(grads)
}
