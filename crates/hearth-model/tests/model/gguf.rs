//! The GGUF header parser against malformed input: every defect must come back as the matching
//! typed error, without a panic and without allocating what a header field merely claims.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hearth_model::gguf::{
    parse_header, parse_header_prefix, GgmlType, GgufError, GgufFile, GgufWriter, MetaValue,
};

// ---------------------------------------------------------------------------------------------
// Allocation tracking. Tests run on many threads at once, so the high-water mark is kept per
// thread; const-initialised thread locals without destructors are safe to touch from inside the
// allocator.

struct Tracking;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Runs `f` and returns its result with the most heap memory this thread held at once during the
/// call, above what it held before.
pub fn peak_heap<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    let peak = PEAK.with(Cell::get);
    (out, (peak - base).max(0) as usize)
}

// ---------------------------------------------------------------------------------------------
// Building files.

/// Hand-assembled bytes, for fields `GgufWriter` never writes wrong.
#[derive(Clone)]
pub struct Raw(pub Vec<u8>);

const F32: u32 = 0;
const Q4_0: u32 = 2;
const Q4_K: u32 = 12;
const T_U32: u32 = 4;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;

impl Raw {
    pub fn header(version: u32, tensors: u64, kvs: u64) -> Raw {
        Raw(b"GGUF".to_vec()).u32(version).u64(tensors).u64(kvs)
    }
    pub fn u32(mut self, v: u32) -> Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn str(self, s: &str) -> Raw {
        let mut r = self.u64(s.len() as u64);
        r.0.extend_from_slice(s.as_bytes());
        r
    }
    pub fn kv_u32(self, key: &str, v: u32) -> Raw {
        self.str(key).u32(T_U32).u32(v)
    }
    pub fn tensor(self, name: &str, dims: &[u64], type_id: u32, offset: u64) -> Raw {
        let mut r = self.str(name).u32(dims.len() as u32);
        for &d in dims {
            r = r.u64(d);
        }
        r.u32(type_id).u64(offset)
    }
    pub fn pad(mut self, alignment: usize) -> Raw {
        let len = self.0.len().next_multiple_of(alignment);
        self.0.resize(len, 0);
        self
    }
    pub fn zeros(mut self, n: usize) -> Raw {
        self.0.resize(self.0.len() + n, 0);
        self
    }
}

/// A file with one tensor and `data` bytes of tensor data after the aligned header.
fn one_tensor(dims: &[u64], type_id: u32, offset: u64, data: usize) -> Vec<u8> {
    Raw::header(3, 1, 0)
        .tensor("t", dims, type_id, offset)
        .pad(32)
        .zeros(data)
        .0
}

/// Metadata covering every value type, nested arrays and odd strings.
pub fn sample_metadata() -> Vec<(String, MetaValue)> {
    use MetaValue::*;
    let s = |v: &str| String(v.to_string());
    vec![
        ("general.architecture".into(), s("test")),
        ("t.u8".into(), U8(200)),
        ("t.i8".into(), I8(-7)),
        ("t.u16".into(), U16(65535)),
        ("t.i16".into(), I16(-300)),
        ("t.u32".into(), U32(1 << 31)),
        ("t.i32".into(), I32(-1)),
        ("t.u64".into(), U64(u64::MAX)),
        ("t.i64".into(), I64(i64::MIN)),
        ("t.f32".into(), F32(1.5)),
        ("t.f64".into(), F64(-2.25e300)),
        ("t.true".into(), Bool(true)),
        ("t.false".into(), Bool(false)),
        ("t.string".into(), s("héllo wörld ▁")),
        ("t.empty_string".into(), s("")),
        ("".into(), s("an empty key is legal")),
        ("t.u32s".into(), Array(vec![U32(1), U32(2), U32(3)])),
        ("t.strings".into(), Array(vec![s("a"), s(""), s("ccc")])),
        ("t.bools".into(), Array(vec![Bool(true), Bool(false)])),
        ("t.f64s".into(), Array(vec![F64(0.5), F64(-0.0)])),
        ("t.empty_array".into(), Array(vec![])),
        (
            "t.nested".into(),
            Array(vec![
                Array(vec![U8(1)]),
                Array(vec![U8(2), U8(3)]),
                Array(vec![]),
            ]),
        ),
        (
            "t.deep".into(),
            Array(vec![Array(vec![Array(vec![Array(vec![s("x"), s("yz")])])])]),
        ),
    ]
}

pub type TensorSpec = (&'static str, Vec<u64>, GgmlType, Vec<u8>);

/// Three tensors of different types; the middle one's size is not a multiple of the alignment.
pub fn sample_tensors() -> Vec<TensorSpec> {
    let pattern = |n: usize, salt: u8| (0..n).map(|i| (i as u8).wrapping_mul(31) ^ salt).collect();
    vec![
        ("a.f32", vec![4, 2], GgmlType::F32, pattern(32, 1)),
        ("b.f16", vec![3], GgmlType::F16, pattern(6, 2)),
        ("c.q8_0", vec![32, 2], GgmlType::Q8_0, pattern(68, 3)),
    ]
}

pub fn writer_for(metadata: &[(String, MetaValue)], tensors: &[TensorSpec]) -> GgufWriter {
    let mut w = GgufWriter::new();
    for (k, v) in metadata {
        w.metadata(k.clone(), v.clone());
    }
    for (name, shape, ty, data) in tensors {
        w.tensor(*name, shape, *ty, data.clone());
    }
    w
}

pub fn sample_file() -> Vec<u8> {
    writer_for(&sample_metadata(), &sample_tensors()).to_bytes()
}

/// A file in the system temp dir, removed when dropped.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(tag: &str, bytes: &[u8]) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("hearth-test-{}-{tag}.gguf", std::process::id()));
        std::fs::write(&path, bytes).expect("temp file written");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Parses `bytes`, insists on an error matching the pattern whose message mentions `needle`,
/// and hands the error back for closer checks.
macro_rules! rejects {
    ($bytes:expr, $pat:pat $(if $guard:expr)?, $needle:expr) => {{
        let bytes: &[u8] = &$bytes;
        let err = parse_header(bytes).expect_err("malformed file must be rejected");
        assert!(matches!(&err, $pat $(if $guard)?), "unexpected error: {err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains($needle),
            "message {msg:?} should mention {:?}",
            $needle
        );
        err
    }};
}

// ---------------------------------------------------------------------------------------------
// Magic, version, empty and truncated files.

#[test]
fn bad_magic() {
    let mut bytes = sample_file();
    bytes[..4].copy_from_slice(b"GGML");
    let err = rejects!(bytes, GgufError::BadMagic { .. }, "not a GGUF file");
    assert!(matches!(err, GgufError::BadMagic { found } if found == b"GGML"));
    // Byte-swapped magic, as a big-endian writer would produce.
    rejects!(*b"FUGG\x03\0\0\0", GgufError::BadMagic { .. }, "magic");
    rejects!(*b"GG", GgufError::BadMagic { found } if found == b"GG", "magic");
}

#[test]
fn unsupported_version() {
    for version in [0, 1, 4, u32::MAX] {
        let mut bytes = sample_file();
        bytes[4..8].copy_from_slice(&version.to_le_bytes());
        let err = rejects!(
            bytes,
            GgufError::UnsupportedVersion(v) if *v == version,
            "unsupported GGUF version"
        );
        assert!(err.to_string().contains(&version.to_string()));
    }
    // Version 2 has the same layout for everything this reader supports.
    let mut bytes = sample_file();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(parse_header(&bytes).expect("v2 accepted").version, 2);
}

#[test]
fn empty_file() {
    rejects!([], GgufError::BadMagic { found } if found.is_empty(), "not a GGUF file");
    let tmp = TempFile::new("empty", &[]);
    let err = GgufFile::open(&tmp.0).expect_err("empty file must be rejected");
    assert!(
        matches!(err, GgufError::BadMagic { .. } | GgufError::Io { .. }),
        "{err:?}"
    );
    assert!(!err.to_string().is_empty());
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() {
    let path = std::env::temp_dir().join("hearth-test-no-such-file.gguf");
    let err = GgufFile::open(&path).expect_err("missing file");
    assert!(matches!(err, GgufError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("hearth-test-no-such-file.gguf"));
}

#[test]
fn truncation_at_every_offset() {
    let full = sample_file();
    let header = parse_header(&full).expect("sample parses");
    let needed = header.data_offset
        + header
            .tensors
            .iter()
            .map(|t| t.offset + t.bytes)
            .max()
            .unwrap();
    assert!(needed < full.len() as u64, "sample should end in padding");

    // The first prefix length at which the header itself is complete.
    let mut header_end = None;
    for len in 0..full.len() {
        let result = parse_header(&full[..len]);
        if len as u64 >= needed {
            // Only padding after the last tensor is missing.
            assert!(result.is_ok(), "prefix {len}: {:?}", result.err());
            continue;
        }
        let err = result.expect_err("truncated file must be rejected");
        assert!(!err.to_string().is_empty());
        match err {
            GgufError::BadMagic { .. } => assert!(len < 4, "prefix {len}: {err:?}"),
            GgufError::Truncated { .. } | GgufError::CountOutOfRange { .. } => {
                assert!(len >= 4 && header_end.is_none(), "prefix {len}: {err:?}")
            }
            GgufError::TensorOutOfBounds { .. } => {
                header_end.get_or_insert(len as u64);
            }
            other => panic!("prefix {len}: unexpected error {other:?}"),
        }
    }
    let header_end = header_end.expect("some prefixes end inside the tensor data");
    assert!(header_end <= header.data_offset && header_end + 32 > header.data_offset);
}

#[test]
fn truncated_errors_name_the_field() {
    let full = sample_file();
    // Cut inside the tensor count.
    rejects!(
        full[..12],
        GgufError::Truncated {
            what: "tensor count",
            offset: 8,
            needed: 8,
            available: 4
        },
        "tensor count"
    );
    rejects!(
        full[..20],
        GgufError::Truncated {
            what: "metadata entry",
            ..
        },
        "truncated"
    );
}

// ---------------------------------------------------------------------------------------------
// Counts and lengths beyond the file.

/// Checks that a hostile file is rejected fast and without a large allocation.
fn rejects_cheaply(bytes: &[u8]) -> GgufError {
    let start = Instant::now();
    let (result, peak) = peak_heap(|| parse_header(bytes));
    let elapsed = start.elapsed();
    let err = result.expect_err("hostile count must be rejected");
    assert!(
        peak <= 64 * 1024 + bytes.len(),
        "{err}: peak heap {peak} bytes for a {}-byte file",
        bytes.len()
    );
    assert!(
        elapsed < Duration::from_millis(200),
        "{err}: took {elapsed:?}"
    );
    err
}

#[test]
fn huge_counts_are_out_of_range() {
    for count in [u64::MAX, u64::MAX / 24 + 1, 1 << 40, 3] {
        let bytes = Raw::header(3, count, 0).zeros(40).0;
        let err = rejects_cheaply(&bytes);
        assert!(
            matches!(err, GgufError::CountOutOfRange { what: "tensor", count: c, .. } if c == count),
            "{err:?}"
        );
        assert!(err.to_string().contains("tensor count"));

        let bytes = Raw::header(3, 0, count).zeros(30).0;
        let err = rejects_cheaply(&bytes);
        assert!(
            matches!(err, GgufError::CountOutOfRange { what: "metadata entry", count: c, .. } if c == count),
            "{err:?}"
        );
    }
}

#[test]
fn huge_lengths_are_out_of_range() {
    let cases: [(Vec<u8>, &str); 6] = [
        (
            Raw::header(3, 0, 1).u64(u64::MAX).zeros(16).0,
            "metadata key",
        ),
        (
            Raw::header(3, 0, 1).str("k").u32(T_STRING).u64(u64::MAX).0,
            "string value",
        ),
        (
            Raw::header(3, 0, 1)
                .str("k")
                .u32(T_ARRAY)
                .u32(T_U32)
                .u64(u64::MAX)
                .0,
            "array item",
        ),
        // Just one item more than the bytes left can hold.
        (
            Raw::header(3, 0, 1)
                .str("k")
                .u32(T_ARRAY)
                .u32(T_U32)
                .u64(3)
                .zeros(11)
                .0,
            "array item",
        ),
        (
            Raw::header(3, 0, 1)
                .str("k")
                .u32(T_ARRAY)
                .u32(T_ARRAY)
                .u64(1 << 62)
                .0,
            "array item",
        ),
        (
            Raw::header(3, 1, 0).u64(u64::MAX).zeros(24).0,
            "tensor name",
        ),
    ];
    for (bytes, what) in cases {
        let err = rejects_cheaply(&bytes);
        match err {
            GgufError::CountOutOfRange { what: w, .. } | GgufError::Truncated { what: w, .. } => {
                assert_eq!(w, what, "{err}")
            }
            other => panic!("{what}: unexpected error {other:?}"),
        }
        assert!(err.to_string().contains(what), "{err}");
    }
}

#[test]
fn plausible_counts_that_run_out_of_bytes_are_truncated() {
    // The count fits the bytes left, but the items are longer than their minimum size.
    let bytes = Raw::header(3, 0, 1)
        .str("k")
        .u32(T_ARRAY)
        .u32(T_STRING)
        .u64(2)
        .str("long enough to eat the rest")
        .0;
    rejects!(bytes, GgufError::Truncated { .. }, "truncated");
}

/// Big files whose counts pass the bytes-left check but whose items are bogus: reserving the
/// claimed number of in-memory values up front would cost several times the file size.
#[test]
fn plausible_huge_counts_do_not_reserve_memory() {
    const MIB: usize = 1 << 20;
    // Arrays of arrays four deep, each claiming as many items as the rest of the file could hold,
    // ending in an array of strings whose first string is impossibly long.
    let mut raw = Raw::header(3, 0, 1).str("k").u32(T_ARRAY);
    for _ in 0..3 {
        raw = raw.u32(T_ARRAY).u64((MIB / 12) as u64);
    }
    raw = raw.u32(T_STRING).u64((MIB / 8) as u64).u64(u64::MAX);
    let bytes = raw.zeros(MIB).0;
    let err = rejects_cheaply(&bytes);
    assert!(
        matches!(
            err,
            GgufError::CountOutOfRange {
                what: "string value",
                ..
            }
        ),
        "{err:?}"
    );

    // A tensor table claiming a tensor for every 24 bytes, whose first name is impossibly long.
    let bytes = Raw::header(3, (MIB / 24) as u64, 0)
        .u64(u64::MAX)
        .zeros(MIB)
        .0;
    let err = rejects_cheaply(&bytes);
    assert!(
        matches!(
            err,
            GgufError::CountOutOfRange {
                what: "tensor name",
                ..
            }
        ),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Metadata.

#[test]
fn unknown_value_type() {
    for value_type in [13, 99, u32::MAX] {
        let bytes = Raw::header(3, 0, 1).str("k").u32(value_type).zeros(16).0;
        rejects!(
            bytes,
            GgufError::UnknownValueType { value_type: v, offset: 37 } if *v == value_type,
            "unknown value type"
        );
        let bytes = Raw::header(3, 0, 1)
            .str("k")
            .u32(T_ARRAY)
            .u32(value_type)
            .u64(1)
            .zeros(16)
            .0;
        rejects!(
            bytes,
            GgufError::UnknownValueType { value_type: v, .. } if *v == value_type,
            &value_type.to_string()
        );
    }
}

fn nested(depth: usize) -> MetaValue {
    (0..depth).fold(MetaValue::U8(1), |inner, _| MetaValue::Array(vec![inner]))
}

#[test]
fn arrays_nested_too_deep() {
    let file = |depth| {
        let mut w = GgufWriter::new();
        w.metadata("k", nested(depth));
        w.to_bytes()
    };
    let header = parse_header(&file(4)).expect("four levels are allowed");
    assert_eq!(header.metadata.get("k"), Some(&nested(4)));
    for depth in [5, 6, 40] {
        rejects!(
            file(depth),
            GgufError::NestingTooDeep { max: 4, .. },
            "nested deeper than 4"
        );
    }
}

#[test]
fn duplicate_key() {
    let mut w = GgufWriter::new();
    w.metadata("general.name", MetaValue::String("a".into()));
    w.metadata("x", MetaValue::U8(1));
    w.metadata("general.name", MetaValue::U32(2));
    let err = rejects!(
        w.to_bytes(),
        GgufError::DuplicateKey(_),
        "duplicate metadata key"
    );
    assert!(matches!(err, GgufError::DuplicateKey(k) if k == "general.name"));
}

#[test]
fn bad_alignment() {
    for a in [0u32, 3, 48, u32::MAX] {
        let bytes = Raw::header(3, 0, 1).kv_u32("general.alignment", a).0;
        let err = rejects!(
            bytes,
            GgufError::BadAlignment(v) if *v == u64::from(a),
            "power of two"
        );
        assert!(err.to_string().contains(&a.to_string()));
    }
    let wrong_types = [
        MetaValue::String("32".into()),
        MetaValue::F32(32.0),
        MetaValue::I32(-32),
        MetaValue::Bool(true),
        MetaValue::Array(vec![MetaValue::U32(32)]),
    ];
    for value in wrong_types {
        let mut w = GgufWriter::new();
        w.metadata("general.alignment", value);
        rejects!(
            w.to_bytes(),
            GgufError::WrongMetadataType { key, .. } if key == "general.alignment",
            "general.alignment"
        );
    }
}

#[test]
fn custom_alignment_is_honoured() {
    // 64-byte alignment: the data section and every offset move to multiples of 64.
    let bytes = Raw::header(3, 2, 1)
        .kv_u32("general.alignment", 64)
        .tensor("a", &[8], F32, 0)
        .tensor("b", &[8], F32, 64)
        .pad(64)
        .zeros(96)
        .0;
    let header = parse_header(&bytes).expect("valid");
    assert_eq!(header.alignment, 64);
    assert_eq!(header.data_offset % 64, 0);
    let mut misaligned = bytes.clone();
    // The second tensor's offset is the last u64 before the padding.
    let table_end = Raw::header(3, 2, 1)
        .kv_u32("general.alignment", 64)
        .tensor("a", &[8], F32, 0)
        .tensor("b", &[8], F32, 64)
        .0
        .len();
    misaligned[table_end - 8..table_end].copy_from_slice(&32u64.to_le_bytes());
    rejects!(
        misaligned,
        GgufError::Misaligned {
            offset: 32,
            alignment: 64,
            ..
        },
        "not aligned to 64"
    );
    // Alignment 1: data starts right after the tensor table.
    let bytes = Raw::header(3, 1, 1)
        .kv_u32("general.alignment", 1)
        .tensor("a", &[2], F32, 0)
        .zeros(8)
        .0;
    let header = parse_header(&bytes).expect("valid");
    assert_eq!(header.data_offset, bytes.len() as u64 - 8);
}

// ---------------------------------------------------------------------------------------------
// Tensor infos.

#[test]
fn duplicate_tensor_name() {
    let mut w = GgufWriter::new();
    w.tensor("t", &[8], GgmlType::F32, vec![0; 32]);
    w.tensor("u", &[8], GgmlType::F32, vec![0; 32]);
    w.tensor("t", &[8], GgmlType::F32, vec![0; 32]);
    let err = rejects!(
        w.to_bytes(),
        GgufError::DuplicateTensor(_),
        "duplicate tensor"
    );
    assert!(matches!(err, GgufError::DuplicateTensor(n) if n == "t"));
}

#[test]
fn unknown_tensor_type() {
    // 4 and 5 were Q4_2/Q4_3, long removed; 31 is past the known ids.
    for type_id in [4, 5, 31, 39, u32::MAX] {
        let err = rejects!(
            one_tensor(&[32], type_id, 0, 256),
            GgufError::UnknownTensorType { type_id: t, name } if *t == type_id && name == "t",
            "unknown element type"
        );
        assert!(err.to_string().contains(&type_id.to_string()));
    }
}

#[test]
fn too_many_dimensions() {
    for n_dims in [5u32, 64, u32::MAX] {
        let bytes = Raw::header(3, 1, 0).str("t").u32(n_dims).zeros(64).0;
        let err = rejects_cheaply(&bytes);
        assert!(
            matches!(err, GgufError::TooManyDimensions { n_dims: n, max: 4, .. } if n == n_dims),
            "{err:?}"
        );
        assert!(err.to_string().contains("at most 4"));
    }
    // Four is fine.
    parse_header(&one_tensor(&[2, 2, 2, 2], F32, 0, 64)).expect("4 dims are allowed");
}

#[test]
fn zero_dimension() {
    for dims in [&[0u64][..], &[8, 0], &[0, 8, 1, 1]] {
        rejects!(
            one_tensor(dims, F32, 0, 64),
            GgufError::BadShape { reason, .. } if reason.contains("zero"),
            "dimension is zero"
        );
    }
}

#[test]
fn row_length_not_a_whole_number_of_blocks() {
    rejects!(
        one_tensor(&[33, 2], Q4_0, 0, 256),
        GgufError::BadShape { shape, .. } if shape == &[33, 2],
        "whole number of blocks"
    );
    rejects!(
        one_tensor(&[128], Q4_K, 0, 256),
        GgufError::BadShape { .. },
        "whole number of blocks"
    );
    // Scalars (no dimensions) are one value: fine for F32, not a block for Q4_0.
    let header = parse_header(&one_tensor(&[], F32, 0, 32)).expect("scalar");
    assert_eq!(header.tensors[0].bytes, 4);
    rejects!(
        one_tensor(&[], Q4_0, 0, 32),
        GgufError::BadShape { .. },
        "whole number of blocks"
    );
}

#[test]
fn element_count_overflow() {
    rejects!(
        one_tensor(&[1 << 32, 1 << 32], F32, 0, 32),
        GgufError::BadShape { .. },
        "element count overflows"
    );
    rejects!(
        one_tensor(&[u64::MAX, 2], F32, 0, 32),
        GgufError::BadShape { .. },
        "element count overflows"
    );
    // The count fits but the bytes do not: this is not a block-size problem.
    rejects!(
        one_tensor(&[1 << 62], F32, 0, 32),
        GgufError::BadShape { .. },
        "byte size overflows"
    );
    rejects!(
        one_tensor(&[1 << 61, 2], F32, 0, 32),
        GgufError::BadShape { .. },
        "byte size overflows"
    );
    // Large but representable: a size that simply does not fit in the file.
    rejects!(
        one_tensor(&[1 << 40], F32, 0, 32),
        GgufError::TensorOutOfBounds { .. },
        "outside the file's data section"
    );
}

#[test]
fn misaligned_tensor_offset() {
    for offset in [1, 16, 31, 33] {
        rejects!(
            one_tensor(&[8], F32, offset, 128),
            GgufError::Misaligned { offset: o, alignment: 32, .. } if *o == offset,
            "not aligned to 32 bytes"
        );
    }
}

#[test]
fn tensor_data_past_end_of_file() {
    let err = rejects!(
        one_tensor(&[16], F32, 32, 64),
        GgufError::TensorOutOfBounds {
            start: 32,
            end: 96,
            data_len: 64,
            ..
        },
        "outside the file's data section"
    );
    assert!(err.to_string().contains("\"t\""));
    // No data section at all.
    rejects!(
        one_tensor(&[1], F32, 0, 0),
        GgufError::TensorOutOfBounds { data_len: 0, .. },
        "outside"
    );
    // An aligned offset so large that offset + size overflows.
    let offset = !31u64;
    rejects!(
        one_tensor(&[16], F32, offset, 64),
        GgufError::TensorOutOfBounds { end: u64::MAX, .. },
        "outside"
    );
}

#[test]
fn overlapping_tensors() {
    let file = |second_offset| {
        Raw::header(3, 2, 0)
            .tensor("a", &[16], F32, 0)
            .tensor("b", &[16], F32, second_offset)
            .pad(32)
            .zeros(128)
            .0
    };
    let err = rejects!(
        file(32),
        GgufError::TensorsOverlap { first, second } if first == "a" && second == "b",
        "overlap"
    );
    assert!(err.to_string().contains("\"a\""));
    rejects!(file(0), GgufError::TensorsOverlap { .. }, "overlap");
    // Listed out of order but disjoint, and adjacent.
    let bytes = Raw::header(3, 2, 0)
        .tensor("a", &[16], F32, 64)
        .tensor("b", &[16], F32, 0)
        .pad(32)
        .zeros(128)
        .0;
    parse_header(&bytes).expect("adjacent tensors are fine");
}

// ---------------------------------------------------------------------------------------------
// Valid files.

#[test]
fn round_trip() {
    let metadata = sample_metadata();
    let tensors = sample_tensors();
    let bytes = writer_for(&metadata, &tensors).to_bytes();
    let header = parse_header(&bytes).expect("writer output parses");
    assert_eq!(header.version, 3);
    assert_eq!(header.alignment, 32);
    assert_eq!(header.data_offset % 32, 0);

    let parsed: Vec<(String, MetaValue)> = header
        .metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    assert_eq!(parsed, metadata);
    assert_eq!(header.metadata.len(), metadata.len());

    assert_eq!(header.tensors.len(), tensors.len());
    let mut next_free = 0;
    for (info, (name, shape, ty, data)) in header.tensors.iter().zip(&tensors) {
        assert_eq!(info.name, *name);
        assert_eq!(&info.shape, shape);
        assert_eq!(info.ggml_type, *ty);
        assert_eq!(info.bytes, data.len() as u64);
        assert_eq!(info.elements(), shape.iter().product::<u64>());
        assert_eq!(info.offset % 32, 0);
        assert!(info.offset >= next_free);
        next_free = info.offset + info.bytes;
        let start = (header.data_offset + info.offset) as usize;
        assert_eq!(&bytes[start..start + data.len()], &data[..]);
    }

    let tmp = TempFile::new("round-trip", &bytes);
    let file = GgufFile::open(&tmp.0).expect("opens");
    assert_eq!(file.version(), 3);
    assert_eq!(file.file_size(), bytes.len() as u64);
    assert_eq!(file.metadata(), &header.metadata);
    assert_eq!(file.tensors(), &header.tensors[..]);
    for (name, _, _, data) in &tensors {
        let info = file.tensor(name).expect("tensor by name");
        assert_eq!(file.tensor_data(info), &data[..]);
    }
    assert!(file.tensor("missing").is_none());
}

#[test]
fn empty_file_with_only_a_header() {
    let bytes = Raw::header(3, 0, 0).0;
    let header = parse_header(&bytes).expect("no tensors, no metadata");
    assert!(header.metadata.is_empty() && header.tensors.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Parsing the header of a file that is still arriving.

#[test]
fn prefix_parse_waits_for_the_header_then_matches_the_whole_file() {
    let full = sample_file();
    let whole = parse_header(&full).expect("sample parses");
    let file_len = full.len() as u64;
    let mut first_complete = None;
    for len in 0..=full.len() {
        match parse_header_prefix(&full[..len], file_len) {
            Ok(None) => assert!(
                first_complete.is_none(),
                "prefix {len} went back to waiting"
            ),
            Ok(Some(h)) => {
                first_complete.get_or_insert(len as u64);
                assert_eq!(h.tensors, whole.tensors, "prefix {len}");
                assert_eq!(h.metadata, whole.metadata, "prefix {len}");
                assert_eq!(h.data_offset, whole.data_offset, "prefix {len}");
            }
            Err(e) => panic!("prefix {len} of a valid file: {e}"),
        }
    }
    // Complete once the last tensor info is in, which is at most one alignment before the data.
    let end = first_complete.expect("whole file parses");
    assert!(end <= whole.data_offset && end + whole.alignment > whole.data_offset);
    // A longer buffer than the file is cut to the file.
    let mut longer = full.clone();
    longer.extend_from_slice(&[0xEE; 100]);
    let h = parse_header_prefix(&longer, file_len).unwrap().unwrap();
    assert_eq!(h.tensors, whole.tensors);
}

#[test]
fn prefix_parse_reports_real_errors_at_once() {
    let full = sample_file();
    let file_len = full.len() as u64;
    assert!(matches!(
        parse_header_prefix(b"GGML\x03\0\0\0", file_len),
        Err(GgufError::BadMagic { .. })
    ));
    // Tensors are checked against the stated file length, not the prefix.
    let whole = parse_header(&full).unwrap();
    assert!(matches!(
        parse_header_prefix(&full, whole.data_offset + 1),
        Err(GgufError::TensorOutOfBounds { .. })
    ));
    // A count that the whole file cannot hold is refused before the prefix runs out.
    let huge = Raw::header(3, u64::MAX / 2, 0).0;
    assert!(matches!(
        parse_header_prefix(&huge, 1 << 20),
        Err(GgufError::CountOutOfRange { .. })
    ));
    // When the prefix is the whole file, short means truncated, as for `parse_header`.
    let cut = &full[..40];
    assert!(matches!(
        parse_header_prefix(cut, cut.len() as u64),
        Err(GgufError::Truncated { .. } | GgufError::CountOutOfRange { .. })
    ));
}

#[test]
fn prefix_parse_of_the_test_model_matches_the_mapped_file() {
    let path = crate::model_path();
    let file = GgufFile::open(&path).expect("test model opens");
    let bytes = std::fs::read(&path).expect("test model reads");
    let mut len = 4096;
    let header = loop {
        if let Some(h) = parse_header_prefix(&bytes[..len], file.file_size()).expect("parses") {
            break h;
        }
        len *= 2;
    };
    assert_eq!(header.tensors, file.tensors());
    assert_eq!(&header.metadata, file.metadata());
    assert!(len < bytes.len() / 4, "header needed {len} bytes");
}
