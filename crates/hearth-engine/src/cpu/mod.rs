//! The CPU backend: weights in place from the mmap, the engine's own quantized kernels.

pub mod attention;
pub mod matmul;
pub mod ops;
pub mod weights;
