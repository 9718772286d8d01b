//! Weights borrowed in place from the memory-mapped model file.

use crate::error::EngineError;
use crate::quant::{weight_kernel, Isa, WeightKernel, SUPPORTED_WEIGHT_TYPES};
use hearth_model::gguf::GgufFile;
use hearth_model::GgmlType;

/// A weight matrix: `rows` rows of `cols` values in the file's format.
pub struct Matrix {
    pub data: &'static [u8],
    pub rows: usize,
    pub cols: usize,
    pub kernel: WeightKernel,
}

impl Matrix {
    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.rows
    }

    pub fn rows_data(&self, rows: std::ops::Range<usize>) -> &[u8] {
        let rb = self.row_bytes();
        &self.data[rows.start * rb..rows.end * rb]
    }
}

/// Borrows tensor data for the lifetime of the program's use of `file`.
///
/// SAFETY (upheld by callers): the returned slice must not outlive `file`; `Shard` keeps the
/// `Arc<GgufFile>` alive for as long as it holds any `Matrix`.
fn borrow_static(file: &GgufFile, name: &str) -> Option<(&'static [u8], Vec<u64>, GgmlType)> {
    let info = file.tensor(name)?;
    let data = file.tensor_data(info);
    let data: &'static [u8] = unsafe { std::slice::from_raw_parts(data.as_ptr(), data.len()) };
    Some((data, info.shape.clone(), info.ggml_type))
}

fn missing(name: &str) -> EngineError {
    EngineError::Config(hearth_model::config::ConfigError::MissingTensor(
        name.to_string(),
    ))
}

pub fn load_matrix(file: &GgufFile, name: &str, isa: Isa) -> Result<Matrix, EngineError> {
    let (data, shape, ggml_type) = borrow_static(file, name).ok_or_else(|| missing(name))?;
    let kernel = weight_kernel(ggml_type, isa).ok_or_else(|| EngineError::UnsupportedType {
        tensor: name.to_string(),
        ggml_type,
        supported: SUPPORTED_WEIGHT_TYPES
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", "),
    })?;
    let cols = shape.first().copied().unwrap_or(1) as usize;
    let rows = shape.iter().skip(1).product::<u64>() as usize;
    Ok(Matrix {
        data,
        rows,
        cols,
        kernel,
    })
}

/// A vector of f32 values (norm weights, biases), converted once at load.
pub fn load_vector(file: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>, EngineError> {
    let (data, shape, ggml_type) = borrow_static(file, name).ok_or_else(|| missing(name))?;
    let elements: u64 = shape.iter().product();
    if elements != len as u64 {
        return Err(EngineError::BadTensor {
            tensor: name.to_string(),
            shape,
        });
    }
    let kernel =
        weight_kernel(ggml_type, Isa::Scalar).ok_or_else(|| EngineError::UnsupportedType {
            tensor: name.to_string(),
            ggml_type,
            supported: "F32, F16".into(),
        })?;
    let mut out = vec![0f32; len];
    (kernel.dequantize)(data, &mut out);
    Ok(out)
}

/// The weights of one transformer block.
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub wq: Matrix,
    pub wk: Matrix,
    pub wv: Matrix,
    pub q_bias: Option<Vec<f32>>,
    pub k_bias: Option<Vec<f32>>,
    pub v_bias: Option<Vec<f32>>,
    pub wo: Matrix,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Matrix,
    pub w_up: Matrix,
    pub w_down: Matrix,
}

impl LayerWeights {
    pub fn load(
        file: &GgufFile,
        layer: usize,
        n_embd: usize,
        q_dim: usize,
        kv_dim: usize,
        isa: Isa,
    ) -> Result<LayerWeights, EngineError> {
        let name = |n: &str| format!("blk.{layer}.{n}");
        let bias = |n: &str, len| -> Result<Option<Vec<f32>>, EngineError> {
            let full = name(n);
            match file.tensor(&full) {
                Some(_) => load_vector(file, &full, len).map(Some),
                None => Ok(None),
            }
        };
        Ok(LayerWeights {
            attn_norm: load_vector(file, &name("attn_norm.weight"), n_embd)?,
            wq: load_matrix(file, &name("attn_q.weight"), isa)?,
            wk: load_matrix(file, &name("attn_k.weight"), isa)?,
            wv: load_matrix(file, &name("attn_v.weight"), isa)?,
            q_bias: bias("attn_q.bias", q_dim)?,
            k_bias: bias("attn_k.bias", kv_dim)?,
            v_bias: bias("attn_v.bias", kv_dim)?,
            wo: load_matrix(file, &name("attn_output.weight"), isa)?,
            ffn_norm: load_vector(file, &name("ffn_norm.weight"), n_embd)?,
            w_gate: load_matrix(file, &name("ffn_gate.weight"), isa)?,
            w_up: load_matrix(file, &name("ffn_up.weight"), isa)?,
            w_down: load_matrix(file, &name("ffn_down.weight"), isa)?,
        })
    }

    /// Bytes of weight data this layer maps.
    pub fn bytes(&self) -> u64 {
        [
            &self.wq,
            &self.wk,
            &self.wv,
            &self.wo,
            &self.w_gate,
            &self.w_up,
            &self.w_down,
        ]
        .iter()
        .map(|m| m.data.len() as u64)
        .sum()
    }
}
