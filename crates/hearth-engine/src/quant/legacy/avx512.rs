//! AVX-512 F/BW/VL + VNNI kernels (256-bit vectors: `dpbusd`, byte masks, 32 registers).

x86_kernels!(
    features: "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    avx512: true,
    decode_rows: 1,
    prefill_rows: 4
);
