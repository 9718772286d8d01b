//! Quantized kernels.
