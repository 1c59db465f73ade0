//! ONNX input: decode the protobuf, fold the constant part of the graph, and match the chain of
//! nodes from the one input to the one output against the layers bnfold has.
//!
//! What is matched (each node's non-data inputs must be constants: initializers, `Constant` nodes,
//! or constants derived from them by `Cast`, `Transpose` or `Identity`):
//!
//! | ONNX | bnfold |
//! |---|---|
//! | `Gemm` (`transA=0`, `transB` 0 or 1, any `alpha`/`beta`) | Dense |
//! | `MatMul` by an `[in, out]` constant, then optionally `Add` of a per-feature constant | Dense |
//! | `BatchNormalization` (inference form) | BatchNorm, with its eps |
//! | `Mul` / `Div` by, `Add` / `Sub` of a per-feature or scalar constant (a run of them) | Affine |
//! | `Relu`, `LeakyRelu`, `Tanh`, `Sigmoid`, `Gelu`, `Softmax` on the last axis | Activation |
//! | the exact-GELU (`Erf`) and tanh-GELU elementwise subgraphs | Activation `gelu` / `gelu_tanh` |
//! | `Identity`, `Dropout`, `Flatten` of a 2-D value, `Reshape` to the same 2-D shape, `Cast` to a float type | nothing |
//!
//! Everything else is refused, with every offending node listed in one error.

pub mod proto;
pub mod tensor;

mod graph;

pub use graph::import;
