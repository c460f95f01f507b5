//! CPU kernels for fleet's networks and their optimiser, as candle custom ops: the operations
//! where candle's own CPU implementation cost the learner most, each with a
//! forward and a one-pass backward, and each falling back to candle's own
//! ops for tensors it does not handle (off the CPU, other dtypes). It knows nothing of networks, specs or
//! RL: `agent` builds its layers from these.
//!
//! Layout: [`conv`] (im2col + gemm 2-D convolution whose backward can skip
//! the input gradient), [`pool`] (max-pooling with any stride, backward
//! included), [`activation`] (vectorised tanh, ReLU with a one-pass
//! backward, and a fused LSTM cell), [`lstm`] (an LSTM unrolled over a
//! sequence, resets included, in one op), [`bias`] (a bias add whose
//! gradient is one contiguous pass), [`optim`] (Adam and RMSProp steps
//! applied in place), and a private `cpu` module (reading a
//! tensor's storage as a slice, and running the element-wise loops on the
//! widest vector instructions the CPU has, chosen at run time).
//!
//! Every `unsafe` block of the project's libraries lives here, so that the
//! other crates can forbid `unsafe` outright (the two other blocks in the
//! project are in the `fleet` binary's `main`, before any other thread
//! exists: an environment write, and setting an option of the allocator).
//! There is one here: in [`conv`], the call into
//! the `gemm` crate's matrix product, which takes raw pointers and strides
//! (that is what lets it multiply strided views of the column buffers in
//! place; [`lstm`] calls the same function). Every view is bounds-checked
//! against its slice just before the call, under the one
//! `#[allow(unsafe_code)]` that the workspace's `unsafe_code = "deny"` lint
//! requires.

pub mod activation;
pub mod bias;
pub mod conv;
mod cpu;
pub mod lstm;
pub mod optim;
pub mod pool;
