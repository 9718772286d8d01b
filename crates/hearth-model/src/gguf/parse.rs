//! The header parser: a bounds-checked cursor over the file's bytes.
//!
//! Every count read from the file is checked against the bytes that remain before anything is
//! allocated for it, so a hostile header cannot make the parser allocate more than the file size.

use super::error::GgufError;
use super::value::{MetaValue, Metadata};
use super::{GgmlType, TensorInfo, MAX_DIMS};
use std::collections::HashSet;

pub(super) const MAGIC: &[u8; 4] = b"GGUF";
pub(super) const DEFAULT_ALIGNMENT: u64 = 32;
const MAX_ARRAY_NESTING: usize = 4;
/// Most items reserved up front for a list whose length comes from the file. A count that passes
/// the bytes-left check can still ask for many times the file size once each item is a full
/// in-memory value (and nested arrays reserve at every level), so larger lists grow as items
/// actually parse.
const MAX_PREALLOC: u64 = 4096;

/// Everything before the tensor data.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute file offset where the data section starts.
    pub data_offset: u64,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Length of the whole file, which `bytes` may be only a prefix of: counts are checked
    /// against the file, so a short prefix reads as truncated rather than as a bad count.
    file_len: u64,
}

impl<'a> Cursor<'a> {
    /// Bytes left in the file.
    fn remaining(&self) -> u64 {
        self.file_len - self.pos as u64
    }

    /// Bytes left in the buffer.
    fn available(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], GgufError> {
        if n > self.available() {
            return Err(GgufError::Truncated {
                what,
                offset: self.pos as u64,
                needed: n,
                available: self.available(),
            });
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, GgufError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, GgufError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items each at least `min_item_bytes` long, checked against what is left.
    fn count(&mut self, what: &'static str, min_item_bytes: u64) -> Result<u64, GgufError> {
        let offset = self.pos as u64;
        let count = self.u64(what)?;
        let available = self.remaining();
        if count.saturating_mul(min_item_bytes) > available {
            return Err(GgufError::CountOutOfRange {
                what,
                count,
                offset,
                available,
            });
        }
        Ok(count)
    }

    fn string(&mut self, what: &'static str) -> Result<String, GgufError> {
        let len = self.count(what, 1)?;
        let bytes = self.take(len, what)?;
        // Token strings in some vocabularies are not valid UTF-8; keep them readable rather than
        // refusing the model.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn value(&mut self, value_type: u32, depth: usize) -> Result<MetaValue, GgufError> {
        let offset = self.pos as u64;
        Ok(match value_type {
            0 => MetaValue::U8(self.u8("u8 value")?),
            1 => MetaValue::I8(self.u8("i8 value")? as i8),
            2 => MetaValue::U16(self.u16("u16 value")?),
            3 => MetaValue::I16(self.u16("i16 value")? as i16),
            4 => MetaValue::U32(self.u32("u32 value")?),
            5 => MetaValue::I32(self.u32("i32 value")? as i32),
            6 => MetaValue::F32(f32::from_bits(self.u32("f32 value")?)),
            7 => MetaValue::Bool(self.u8("bool value")? != 0),
            8 => MetaValue::String(self.string("string value")?),
            9 => {
                if depth >= MAX_ARRAY_NESTING {
                    return Err(GgufError::NestingTooDeep {
                        offset,
                        max: MAX_ARRAY_NESTING,
                    });
                }
                let item_type = self.u32("array item type")?;
                let min_bytes = min_value_bytes(item_type).ok_or(GgufError::UnknownValueType {
                    offset,
                    value_type: item_type,
                })?;
                let count = self.count("array item", min_bytes)?;
                let mut items = Vec::with_capacity(count.min(MAX_PREALLOC) as usize);
                for _ in 0..count {
                    items.push(self.value(item_type, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64("u64 value")?),
            11 => MetaValue::I64(self.u64("i64 value")? as i64),
            12 => MetaValue::F64(f64::from_bits(self.u64("f64 value")?)),
            other => {
                return Err(GgufError::UnknownValueType {
                    offset,
                    value_type: other,
                })
            }
        })
    }
}

/// The fewest bytes a value of this type can occupy (strings and arrays: their length field).
fn min_value_bytes(value_type: u32) -> Option<u64> {
    Some(match value_type {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,
        9 => 12,
        10..=12 => 8,
        _ => return None,
    })
}

/// Parses and validates the header of a GGUF file held in `bytes` (the whole file).
pub fn parse_header(bytes: &[u8]) -> Result<GgufHeader, GgufError> {
    parse(bytes, bytes.len() as u64)
}

/// Parses the header from the first bytes of a file that is `file_len` bytes long, for a file
/// that is still arriving. `Ok(None)` when `prefix` ends before the header does: read more and
/// call again. Tensor ranges are checked against `file_len`, so the result is the header
/// [`parse_header`] gives for the whole file. Bytes past `file_len` are ignored.
pub fn parse_header_prefix(prefix: &[u8], file_len: u64) -> Result<Option<GgufHeader>, GgufError> {
    let prefix = &prefix[..prefix
        .len()
        .min(usize::try_from(file_len).unwrap_or(usize::MAX))];
    let short = (prefix.len() as u64) < file_len;
    match parse(prefix, file_len) {
        Ok(header) => Ok(Some(header)),
        Err(GgufError::Truncated { .. }) if short => Ok(None),
        Err(GgufError::BadMagic { .. }) if short && prefix.len() < MAGIC.len() => Ok(None),
        Err(e) => Err(e),
    }
}

fn parse(bytes: &[u8], file_len: u64) -> Result<GgufHeader, GgufError> {
    let mut cur = Cursor {
        bytes,
        pos: 0,
        file_len,
    };
    if bytes.len() < 4 || &bytes[..4] != MAGIC {
        return Err(GgufError::BadMagic {
            found: bytes[..bytes.len().min(4)].to_vec(),
        });
    }
    cur.pos = 4;
    let version = cur.u32("version")?;
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion(version));
    }
    // A tensor info takes at least 8 (name length) + 4 (dims) + 4 (type) + 8 (offset) bytes;
    // a metadata entry at least 8 (key length) + 4 (type) + 1.
    let tensor_count = cur.u64("tensor count")?;
    let kv_count = cur.count("metadata entry", 13)?;
    if tensor_count.saturating_mul(24) > cur.remaining() {
        return Err(GgufError::CountOutOfRange {
            what: "tensor",
            count: tensor_count,
            offset: 8,
            available: cur.remaining(),
        });
    }

    let mut metadata = Metadata::default();
    for _ in 0..kv_count {
        let key = cur.string("metadata key")?;
        let value_type = cur.u32("metadata value type")?;
        let value = cur.value(value_type, 0)?;
        if !metadata.insert(key.clone(), value) {
            return Err(GgufError::DuplicateKey(key));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => {
            let a = v.as_u64().ok_or_else(|| GgufError::WrongMetadataType {
                key: "general.alignment".into(),
                expected: "unsigned integer",
            })?;
            if a == 0 || !a.is_power_of_two() {
                return Err(GgufError::BadAlignment(a));
            }
            a
        }
    };

    let reserve = tensor_count.min(MAX_PREALLOC) as usize;
    let mut tensors = Vec::with_capacity(reserve);
    let mut names = HashSet::with_capacity(reserve);
    for _ in 0..tensor_count {
        let info = tensor_info(&mut cur)?;
        if !names.insert(info.name.clone()) {
            return Err(GgufError::DuplicateTensor(info.name));
        }
        if !info.offset.is_multiple_of(alignment) {
            return Err(GgufError::Misaligned {
                name: info.name,
                offset: info.offset,
                alignment,
            });
        }
        tensors.push(info);
    }

    let data_offset = (cur.pos as u64).next_multiple_of(alignment);
    let data_len = file_len.saturating_sub(data_offset);
    check_tensor_ranges(&tensors, data_len)?;
    Ok(GgufHeader {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

fn tensor_info(cur: &mut Cursor<'_>) -> Result<TensorInfo, GgufError> {
    let name = cur.string("tensor name")?;
    let n_dims = cur.u32("tensor dimension count")?;
    if n_dims as usize > MAX_DIMS {
        return Err(GgufError::TooManyDimensions {
            name,
            n_dims,
            max: MAX_DIMS,
        });
    }
    let mut shape = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        shape.push(cur.u64("tensor dimension")?);
    }
    let type_id = cur.u32("tensor type")?;
    let offset = cur.u64("tensor offset")?;
    let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType {
        name: name.clone(),
        type_id,
    })?;
    let bad_shape = |reason| GgufError::BadShape {
        name: name.clone(),
        shape: shape.clone(),
        reason,
    };
    if shape.contains(&0) {
        return Err(bad_shape("a dimension is zero"));
    }
    let elements = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad_shape("element count overflows"))?;
    let row_len = shape.first().copied().unwrap_or(1);
    // Checked apart from `row_bytes` so that an overflowing size is not reported as a block
    // mismatch.
    if !row_len.is_multiple_of(ggml_type.block_len() as u64) {
        return Err(bad_shape("first dimension is not a whole number of blocks"));
    }
    let row_bytes = ggml_type
        .row_bytes(row_len)
        .ok_or_else(|| bad_shape("byte size overflows"))?;
    let bytes = row_bytes
        .checked_mul(elements / row_len)
        .ok_or_else(|| bad_shape("byte size overflows"))?;
    Ok(TensorInfo {
        name,
        shape,
        ggml_type,
        offset,
        bytes,
    })
}

fn check_tensor_ranges(tensors: &[TensorInfo], data_len: u64) -> Result<(), GgufError> {
    for t in tensors {
        let end = t.offset.saturating_add(t.bytes);
        if end > data_len {
            return Err(GgufError::TensorOutOfBounds {
                name: t.name.clone(),
                start: t.offset,
                end,
                data_len,
            });
        }
    }
    let mut order: Vec<&TensorInfo> = tensors.iter().collect();
    order.sort_by_key(|t| t.offset);
    for pair in order.windows(2) {
        if pair[0].offset + pair[0].bytes > pair[1].offset {
            return Err(GgufError::TensorsOverlap {
                first: pair[0].name.clone(),
                second: pair[1].name.clone(),
            });
        }
    }
    Ok(())
}
