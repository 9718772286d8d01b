//! Quantized kernels over GGUF's block formats, used in place from the mmap.
//!
//! Every weight type has one [`WeightKernel`] per instruction set: activations are first
//! quantized to the type the format's dot product wants ([`WeightKernel::activation`]: 8-bit
//! blocks for the quantized formats, as ggml does, so results agree with llama.cpp), then rows
//! of weights are multiplied with rows of activations. The instruction set is chosen once at run
//! time ([`Isa::detect`]); the scalar kernels are the reference every SIMD kernel is tested
//! against.

use hearth_model::GgmlType;

mod kquants;
mod legacy;

/// Instruction sets the kernels are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust, the reference for correctness.
    Scalar,
    /// x86-64 with AVX2, FMA and F16C.
    Avx2,
    /// x86-64 with AVX-512 F/BW/VL on top of AVX2.
    Avx512,
    /// aarch64 with NEON (always present there); the integer kernels use `sdot` where the CPU
    /// has the dot-product extension and widening multiplies where it does not.
    Neon,
}

impl Isa {
    /// The best instruction set this CPU supports, capped by the `HEARTH_ISA` environment
    /// variable (`scalar`, `avx2`, `avx512`, `neon`) when it is set, for comparing kernels.
    /// A cap naming another architecture's instruction set is ignored.
    pub fn detect() -> Isa {
        let best = Isa::detect_cpu();
        match std::env::var("HEARTH_ISA")
            .ok()
            .and_then(|v| Isa::from_name(&v))
        {
            Some(cap) if cap.rank() < best.rank() && Isa::available().contains(&cap) => cap,
            _ => best,
        }
    }

    pub fn from_name(name: &str) -> Option<Isa> {
        match name.trim().to_ascii_lowercase().as_str() {
            "scalar" => Some(Isa::Scalar),
            "avx2" => Some(Isa::Avx2),
            "avx512" => Some(Isa::Avx512),
            "neon" => Some(Isa::Neon),
            _ => None,
        }
    }

    fn rank(self) -> u8 {
        match self {
            Isa::Scalar => 0,
            Isa::Avx2 => 1,
            Isa::Avx512 => 2,
            Isa::Neon => 1,
        }
    }

    fn detect_cpu() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c");
            let avx512 = std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl");
            if avx2 && avx512 {
                return Isa::Avx512;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        // NEON is part of the aarch64 base architecture, so every aarch64 CPU gets it.
        if cfg!(target_arch = "aarch64") {
            return Isa::Neon;
        }
        Isa::Scalar
    }

    /// Every instruction set usable on this CPU, scalar first.
    pub fn available() -> Vec<Isa> {
        let mut isas = vec![Isa::Scalar];
        match Isa::detect_cpu() {
            Isa::Scalar => {}
            Isa::Avx2 => isas.push(Isa::Avx2),
            Isa::Avx512 => isas.extend([Isa::Avx2, Isa::Avx512]),
            Isa::Neon => isas.push(Isa::Neon),
        }
        isas
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }
}

/// Quantizes one row of f32 activations into `out` (exactly `activation.row_bytes(x.len())` bytes).
pub type QuantizeFn = fn(x: &[f32], out: &mut [u8]);

/// Expands one row of `out.len()` values stored in the weight format into f32.
pub type DequantizeFn = fn(src: &[u8], out: &mut [f32]);

/// `out[r * tokens + t] = dot(weight row r, activation row t)` for `r < rows`, `t < tokens`.
///
/// `n` is the row length in values; `w` holds `rows` consecutive weight rows and `act` holds
/// `tokens` consecutive activation rows, each in its own format's row size.
pub type MatmulFn = fn(n: usize, w: &[u8], rows: usize, act: &[u8], tokens: usize, out: &mut [f32]);

/// The kernels for one weight format on one instruction set.
#[derive(Clone, Copy)]
pub struct WeightKernel {
    pub weight: GgmlType,
    /// The format activations are converted to before the dot product.
    pub activation: GgmlType,
    pub quantize_activation: QuantizeFn,
    pub dequantize: DequantizeFn,
    pub matmul: MatmulFn,
}

impl std::fmt::Debug for WeightKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightKernel")
            .field("weight", &self.weight)
            .field("activation", &self.activation)
            .finish()
    }
}

/// The kernels for weights of type `t` on `isa`, or `None` if the engine cannot compute with
/// that type. A SIMD request falls back to the best slower kernel available for the type.
pub fn weight_kernel(t: GgmlType, isa: Isa) -> Option<WeightKernel> {
    legacy::weight_kernel(t, isa).or_else(|| kquants::weight_kernel(t, isa))
}

/// Quantizes `x` (a whole number of blocks) into `out` (exactly `t.row_bytes(x.len())` bytes)
/// with ggml's reference quantizer for `t`; `false` if the engine cannot write `t`.
pub fn quantize_weights(t: GgmlType, x: &[f32], out: &mut [u8]) -> bool {
    legacy::quantize_row(t, x, out) || kquants::quantize_row(t, x, out)
}

/// Weight types the engine computes with.
pub const SUPPORTED_WEIGHT_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];
