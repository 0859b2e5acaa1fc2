//! ggml tensor types and their block codecs.
//!
//! [`GgmlType`] is GGUF's catalogue of tensor types (id, name, block geometry: one table,
//! [`TYPES`]). The types we can write and read each have a [`BlockCodec`] in one file per
//! family — [`float`] (F32, F16, BF16), [`legacy`] (Q4_0 … Q8_0), [`kquants`] (Q2_K … Q6_K),
//! [`iq4`] (IQ4_NL, IQ4_XS), [`mxfp4`] (MXFP4) — registered once in [`CODECS`]. Everything else (targets accepted
//! on the command line, help texts, `general.file_type`, llama-quantize's fallbacks, the grids
//! GPTQ can choose codes on) is read from that registry.
//!
//! Adding a block type: write its codec (quantize a block, optionally with importance
//! weights, dequantize a block) in its family's file or a new one, and add one line to
//! [`CODECS`].

pub mod float;
pub mod iq4;
pub mod kquants;
pub mod lanes;
pub mod legacy;
pub mod mxfp4;

use crate::rtn::{IntSpec, QParams};

/// ggml tensor types with their GGUF ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

use GgmlType::*;

/// GGUF's type table: (type, id, name, values per block, bytes per block).
pub const TYPES: [(GgmlType, u32, &str, usize, usize); 32] = [
    (F32, 0, "F32", 1, 4),
    (F16, 1, "F16", 1, 2),
    (Q4_0, 2, "Q4_0", 32, 18),
    (Q4_1, 3, "Q4_1", 32, 20),
    (Q5_0, 6, "Q5_0", 32, 22),
    (Q5_1, 7, "Q5_1", 32, 24),
    (Q8_0, 8, "Q8_0", 32, 34),
    (Q8_1, 9, "Q8_1", 32, 36),
    (Q2_K, 10, "Q2_K", 256, 84),
    (Q3_K, 11, "Q3_K", 256, 110),
    (Q4_K, 12, "Q4_K", 256, 144),
    (Q5_K, 13, "Q5_K", 256, 176),
    (Q6_K, 14, "Q6_K", 256, 210),
    (Q8_K, 15, "Q8_K", 256, 292),
    (IQ2_XXS, 16, "IQ2_XXS", 256, 66),
    (IQ2_XS, 17, "IQ2_XS", 256, 74),
    (IQ3_XXS, 18, "IQ3_XXS", 256, 98),
    (IQ1_S, 19, "IQ1_S", 256, 50),
    (IQ4_NL, 20, "IQ4_NL", 32, 18),
    (IQ3_S, 21, "IQ3_S", 256, 110),
    (IQ2_S, 22, "IQ2_S", 256, 82),
    (IQ4_XS, 23, "IQ4_XS", 256, 136),
    (I8, 24, "I8", 1, 1),
    (I16, 25, "I16", 1, 2),
    (I32, 26, "I32", 1, 4),
    (I64, 27, "I64", 1, 8),
    (F64, 28, "F64", 1, 8),
    (IQ1_M, 29, "IQ1_M", 256, 56),
    (BF16, 30, "BF16", 1, 2),
    (TQ1_0, 34, "TQ1_0", 256, 54),
    (TQ2_0, 35, "TQ2_0", 256, 66),
    (MXFP4, 39, "MXFP4", 32, 17),
];

/// The types we encode and decode, one line each.
pub static CODECS: [&dyn BlockCodec; 16] = [
    &float::F32,
    &float::F16,
    &float::BF16,
    &legacy::Q4_0,
    &legacy::Q4_1,
    &legacy::Q5_0,
    &legacy::Q5_1,
    &legacy::Q8_0,
    &kquants::Q2_K,
    &kquants::Q3_K,
    &kquants::Q4_K,
    &kquants::Q5_K,
    &kquants::Q6_K,
    &iq4::Iq4Nl,
    &iq4::Iq4Xs,
    &mxfp4::MXFP4,
];

/// How one ggml type is encoded and decoded. Row functions take whole rows (a multiple of the
/// block size); the defaults run the block functions block by block.
pub trait BlockCodec: Sync {
    fn ty(&self) -> GgmlType;
    /// `general.file_type` (llama.cpp's `llama_ftype`) of a file stored in this type alone.
    fn file_type(&self) -> u32;
    /// llama-quantize's type for a row length this type's blocks do not divide (a 32-value
    /// type; F16 when that does not fit either).
    fn fallback(&self) -> Option<GgmlType> {
        None
    }
    fn quantize_block(&self, x: &[f32], y: &mut [u8]);
    /// With importance weights `qw` (llama-imatrix's per-column values) and the mean square of
    /// the whole row (ggml's `sigma2` for the legacy types). Default: importance ignored.
    fn quantize_block_weighted(&self, x: &[f32], qw: &[f32], row_sigma2: f32, y: &mut [u8]) {
        let _ = (qw, row_sigma2);
        self.quantize_block(x, y)
    }
    /// Whether [`BlockCodec::quantize_row_weighted`] reads its `row_sigma2` (a sequential sum
    /// over the row, computed only for the types that use it).
    fn uses_row_sigma2(&self) -> bool {
        false
    }
    /// A whole row with importance weights ([`BlockCodec::quantize_block_weighted`] block by
    /// block unless a type batches its blocks).
    fn quantize_row_weighted(&self, x: &[f32], qw: &[f32], row_sigma2: f32, y: &mut [u8]) {
        let (bs, bb) = self.ty().block();
        for ((xb, wb), yb) in x
            .chunks_exact(bs)
            .zip(qw.chunks_exact(bs))
            .zip(y.chunks_exact_mut(bb))
        {
            self.quantize_block_weighted(xb, wb, row_sigma2, yb);
        }
    }
    fn dequantize_block(&self, b: &[u8], y: &mut [f32]);
    /// The scalar reference decoder the fast path is tested against (default: the same).
    fn dequantize_block_ref(&self, b: &[u8], y: &mut [f32]) {
        self.dequantize_block(b, y)
    }
    fn quantize_row(&self, x: &[f32], y: &mut [u8]) {
        let (bs, bb) = self.ty().block();
        for (xb, yb) in x.chunks_exact(bs).zip(y.chunks_exact_mut(bb)) {
            self.quantize_block(xb, yb);
        }
    }
    fn dequantize_row(&self, y: &[u8], x: &mut [f32]) {
        let (bs, bb) = self.ty().block();
        for (b, out) in y.chunks_exact(bb).zip(x.chunks_exact_mut(bs)) {
            self.dequantize_block(b, out);
        }
    }
    /// The grid GPTQ (or any method handing over codes) can choose codes on, if any.
    fn grid(&self) -> Option<&'static dyn CodeGrid> {
        None
    }
}

/// A ggml type's blocks seen as an integer grid: per group of [`CodeGrid::group`] values (the
/// block for the legacy types, a sub-block for the K-quants), `value = (q - zero)·scale +
/// offset` with `q` in [`CodeGrid::code_range`], the parameters fitted as ggml fits them and
/// computed as ggml's dequantizer computes them from the stored block.
pub trait CodeGrid: Sync {
    /// Bit width and symmetry of the codes.
    fn spec(&self) -> IntSpec;
    fn code_range(&self) -> (i32, i32);
    /// Values sharing one scale and offset (a divisor of the block size).
    fn group(&self) -> usize;
    /// One block's parameters for its values `w` (the type's block size): per group (scale and
    /// zero point, offset) into `out` (block size / [`CodeGrid::group`] entries).
    fn fit(&self, w: &[f32], out: &mut [(QParams, f32)]);
    /// Like [`CodeGrid::fit`], by the importance-weighted search of [`crate::search`] (learned
    /// rounding's zero-step mode, AutoRound's `iters=0`), importance `qw` per value of `w`:
    /// parameters the block stores exactly, not the ones llama-quantize would choose. With
    /// rounding offsets `v` (one per value) the candidates are scored on the codes
    /// `round((w − offset)/scale + v)` (learned rounding's refits during tuning, as AutoRound
    /// re-runs its search on the offset weights).
    fn fit_weighted(&self, w: &[f32], qw: &[f32], v: Option<&[f32]>, out: &mut [(QParams, f32)]);
    /// Packs one row of codes into blocks, with per-group scales `d` and offsets `m` as
    /// [`CodeGrid::fit`] returned them. Parameters a block cannot store exactly (not from the
    /// fit, or non-finite) are not an error: that block is the type's own quantization of the
    /// values the codes stand for.
    fn pack_row(&self, codes: &[i8], d: &[f32], m: &[f32], out: &mut [u8]);
    /// A non-linear grid (IQ4's): the codes are these levels' values, `value = code·scale`
    /// (zero point and offset 0), chosen by [`iq4::Levels::code`] instead of rounding.
    /// `None`: every integer of [`CodeGrid::code_range`] is a code.
    fn levels(&self) -> Option<&'static iq4::Levels> {
        None
    }
}

impl GgmlType {
    fn row(self) -> &'static (GgmlType, u32, &'static str, usize, usize) {
        TYPES
            .iter()
            .find(|r| r.0 == self)
            .expect("every type is in TYPES")
    }

    /// The id stored in GGUF tensor infos.
    pub fn id(self) -> u32 {
        self.row().1
    }

    pub fn from_id(id: u32) -> Option<GgmlType> {
        TYPES.iter().find(|r| r.1 == id).map(|r| r.0)
    }

    /// (values per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        let r = self.row();
        (r.3, r.4)
    }

    /// Bytes of a row of `n` values (`n` a multiple of the block size).
    pub fn row_bytes(self, n: usize) -> usize {
        let (bs, bb) = self.block();
        n / bs * bb
    }

    pub fn name(self) -> &'static str {
        self.row().2
    }

    pub fn from_name(s: &str) -> Option<GgmlType> {
        TYPES
            .iter()
            .find(|r| r.2.eq_ignore_ascii_case(s))
            .map(|r| r.0)
    }

    /// This type's codec, when we can encode and decode it.
    pub fn codec(self) -> Option<&'static dyn BlockCodec> {
        CODECS.iter().copied().find(|c| c.ty() == self)
    }

    /// Types this crate can encode from f32 (and decode back).
    pub fn can_quantize(self) -> bool {
        self.codec().is_some()
    }

    /// The quantized (non-float) types we write, in registry order.
    pub fn quantized_types() -> impl Iterator<Item = GgmlType> {
        CODECS
            .iter()
            .map(|c| c.ty())
            .filter(|t| !matches!(t, F32 | F16 | BF16))
    }

    /// `general.file_type` of a file stored in this type alone.
    pub fn file_type(self) -> Option<u32> {
        self.codec().map(|c| c.file_type())
    }

    /// The grid GPTQ can choose codes on, for the types that have one.
    pub fn grid(self) -> Option<&'static dyn CodeGrid> {
        self.codec().and_then(|c| c.grid())
    }
}

/// The lower-case names of the quantized types we write, comma-separated (help and errors).
pub fn quantized_type_names() -> String {
    GgmlType::quantized_types()
        .map(|t| t.name().to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(", ")
}

/// llama-quantize's fallback for a row length the type's blocks do not divide: 256-value
/// types step down to a 32-value type (Q2_K/Q3_K → Q4_0, Q4_K → Q5_0, Q5_K → Q5_1,
/// Q6_K → Q8_0, IQ4_XS → IQ4_NL), and anything that still does not fit becomes F16.
/// Returns `ty` itself when no fallback is needed.
pub fn fallback_for(ty: GgmlType, ncols: usize) -> GgmlType {
    if ncols.is_multiple_of(ty.block().0) {
        return ty;
    }
    let next = ty.codec().and_then(|c| c.fallback()).unwrap_or(ty);
    if ncols.is_multiple_of(next.block().0) {
        next
    } else {
        F16
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn codec_or_panic(ty: GgmlType) -> &'static dyn BlockCodec {
    ty.codec()
        .unwrap_or_else(|| panic!("no codec for {ty} (check GgmlType::can_quantize first)"))
}

/// Encodes a row of f32 values as `ty`. `x.len()` must be a multiple of the block size and
/// `y.len() == ty.row_bytes(x.len())`. Panics on a type that [`GgmlType::can_quantize`] rejects.
pub fn quantize_row(ty: GgmlType, x: &[f32], y: &mut [u8]) {
    let c = codec_or_panic(ty);
    let bs = ty.block().0;
    assert_eq!(
        x.len() % bs,
        0,
        "row length {} not a multiple of {bs}",
        x.len()
    );
    assert_eq!(y.len(), ty.row_bytes(x.len()));
    c.quantize_row(x, y)
}

/// Encodes a row with an importance matrix `qw` (one weight per column, as llama-quantize's
/// `--imatrix`), following ggml's `quantize_row_*_impl`. Types that ignore importance
/// (Q8_0, floats) encode as [`quantize_row`].
pub fn quantize_row_weighted(ty: GgmlType, x: &[f32], qw: &[f32], y: &mut [u8]) {
    let c = codec_or_panic(ty);
    let (bs, bb) = ty.block();
    assert_eq!(qw.len(), x.len(), "one importance weight per column");
    assert_eq!(y.len(), x.len() / bs * bb);
    let sigma2 = if c.uses_row_sigma2() {
        legacy::row_sigma2(x)
    } else {
        0.0
    };
    c.quantize_row_weighted(x, qw, sigma2, y)
}

/// Scalar reference dequantizer: decodes element by element straight from the block layout
/// (K-quants and IQ4: block by block, they have a single implementation).
pub fn dequantize_row_ref(ty: GgmlType, y: &[u8], x: &mut [f32]) {
    let c = codec_or_panic(ty);
    let (bs, bb) = ty.block();
    assert_eq!(y.len(), x.len() / bs * bb);
    for (b, o) in y.chunks_exact(bb).zip(x.chunks_exact_mut(bs)) {
        c.dequantize_block_ref(b, o);
    }
}

/// Block-wise dequantizer (the one the pipeline uses); equal to [`dequantize_row_ref`].
pub fn dequantize_row(ty: GgmlType, y: &[u8], x: &mut [f32]) {
    let c = codec_or_panic(ty);
    let (bs, bb) = ty.block();
    assert_eq!(y.len(), x.len() / bs * bb);
    c.dequantize_row(y, x)
}

/// Packs one row of chosen codes into `ty`'s blocks (a type with a [`CodeGrid`]): per group its
/// scale `d` and offset `m` as the grid's fit returned them, and the codes.
pub fn pack_codes_row(ty: GgmlType, codes: &[i8], d: &[f32], m: &[f32], out: &mut [u8]) {
    let g = ty.grid().unwrap_or_else(|| panic!("{ty} has no code grid"));
    g.pack_row(codes, d, m, out)
}

/// ggml's scan for the value of largest magnitude (sign kept, first one on ties) and that
/// magnitude, as `make_qx_quants`, `make_q3_quants` and the IQ4 search start.
#[inline(always)]
fn first_absmax(x: &[f32]) -> (f32, f32) {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    (max, amax)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn min_max(x: &[f32]) -> (f32, f32) {
        x.iter()
            .fold((f32::MAX, -f32::MAX), |(a, b), &v| (a.min(v), b.max(v)))
    }

    fn get_f16(b: &[u8]) -> f32 {
        half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
    }
    use crate::synth::weights_like;

    const QTYPES: [GgmlType; 5] = [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0];

    #[test]
    fn ids_roundtrip_and_sizes() {
        for t in TYPES.map(|r| r.0) {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
            assert_eq!(GgmlType::from_name(t.name()), Some(t));
        }
        assert_eq!(Q4_0.row_bytes(4096), 4096 / 32 * 18);
        assert_eq!(GgmlType::from_id(4), None);
    }

    #[test]
    fn fast_dequant_equals_scalar_reference() {
        let all: Vec<GgmlType> = CODECS.iter().map(|c| c.ty()).collect();
        for (seed, ty) in all.iter().enumerate() {
            let x = weights_like(4096, seed as u64 + 1);
            let mut y = vec![0u8; ty.row_bytes(x.len())];
            quantize_row(*ty, &x, &mut y);
            let mut a = vec![0f32; x.len()];
            let mut b = vec![0f32; x.len()];
            dequantize_row(*ty, &y, &mut a);
            dequantize_row_ref(*ty, &y, &mut b);
            assert_eq!(
                a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{ty}"
            );
        }
    }

    #[test]
    fn error_is_bounded_by_half_a_step() {
        for ty in QTYPES {
            let x = weights_like(32 * 64, 7);
            let mut y = vec![0u8; ty.row_bytes(x.len())];
            quantize_row(ty, &x, &mut y);
            let mut r = vec![0f32; x.len()];
            dequantize_row(ty, &y, &mut r);
            for (bx, br) in x.chunks(32).zip(r.chunks(32)) {
                let (mn, mx) = min_max(bx);
                let levels = match ty {
                    Q4_0 | Q4_1 => 15.0,
                    Q5_0 | Q5_1 => 31.0,
                    _ => 254.0,
                };
                // generous: one full step (f16 rounding of d and m adds a little)
                let step = (mx - mn).max(2.0 * mx.abs().max(mn.abs())) / levels;
                for (a, b) in bx.iter().zip(br) {
                    assert!((a - b).abs() <= step * 1.01 + 1e-6, "{ty}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn zero_and_constant_blocks_are_finite() {
        for ty in QTYPES {
            for x in [
                vec![0.0f32; 32],
                vec![0.25f32; 32],
                vec![-3.0f32; 32],
                vec![1e-40f32; 32],
            ] {
                let mut y = vec![0u8; ty.row_bytes(32)];
                quantize_row(ty, &x, &mut y);
                let mut r = vec![0f32; 32];
                dequantize_row(ty, &y, &mut r);
                assert!(r.iter().all(|v| v.is_finite()), "{ty}");
            }
        }
    }

    /// One registration per type, distinct file types, fallbacks that can be written.
    #[test]
    fn registry_is_consistent() {
        let mut file_types = std::collections::HashSet::new();
        for c in CODECS {
            let t = c.ty();
            assert_eq!(CODECS.iter().filter(|d| d.ty() == t).count(), 1, "{t}");
            assert!(file_types.insert(c.file_type()), "{t}: file type reused");
            if let Some(f) = c.fallback() {
                assert!(
                    f.can_quantize() && f.block().0 == 32,
                    "{t} falls back to {f}"
                );
            }
            if let Some(g) = c.grid() {
                let (lo, hi) = g.code_range();
                assert!(lo < hi && hi < 256, "{t}");
            }
        }
    }

    #[test]
    fn fallbacks_follow_llama_quantize() {
        assert_eq!(fallback_for(Q4_K, 4096), Q4_K);
        assert_eq!(fallback_for(Q4_K, 576), Q5_0);
        assert_eq!(fallback_for(Q5_K, 576), Q5_1);
        assert_eq!(fallback_for(Q6_K, 576), Q8_0);
        assert_eq!(fallback_for(Q3_K, 576), Q4_0);
        assert_eq!(fallback_for(Q6_K, 100), F16);
        assert_eq!(fallback_for(Q4_0, 100), F16);
    }

    #[test]
    fn q4_0_known_block() {
        // Block with max -8 at position 0: d = 1, codes = x + 8.
        let mut x = [0f32; 32];
        x[0] = -8.0;
        x[1] = 7.0;
        x[17] = 3.0;
        let mut y = [0u8; 18];
        quantize_row(Q4_0, &x, &mut y);
        assert_eq!(get_f16(&y), 1.0);
        assert_eq!(y[2], 0x80); // q[0]=0, q[16]=8
        assert_eq!(y[3], (7 + 8) | (11 << 4));
    }

    /// Every code grid's importance-weighted fit ([`CodeGrid::fit_weighted`], learned rounding's
    /// zero-step search): its parameters are ones the blocks store exactly (packed codes decode
    /// through ggml's dequantizer to exactly the grid values), and its importance-weighted error
    /// is below ggml's own importance-matrix quantizer's (llama-quantize `--imatrix`, the
    /// reference bytes) on weights whose importance varies by column.
    #[test]
    fn weighted_fit_stores_exactly_and_beats_ggmls_imatrix_quantizer() {
        let mut rng = crate::synth::Rng::new(11);
        for ty in GgmlType::quantized_types().filter(|t| t.grid().is_some()) {
            let g = ty.grid().unwrap();
            let (bs, group) = (ty.block().0, g.group());
            let (lo, hi) = g.code_range();
            let n = 64 * bs;
            let x = crate::synth::weights_like(n, 3);
            // importance per column (a row of `bs` columns repeated): a few loud channels
            let cols: Vec<f32> = (0..bs)
                .map(|j| {
                    let u = rng.uniform() as f32;
                    if j % 11 == 3 {
                        50.0 * u
                    } else {
                        0.1 + u
                    }
                })
                .collect();
            let qw: Vec<f32> = (0..n).map(|i| cols[i % bs]).collect();
            let mut ps = vec![(QParams::default(), 0f32); bs / group];
            let (mut codes, mut want) = (vec![0i8; n], vec![0f32; n]);
            let (mut d, mut m) = (Vec::new(), Vec::new());
            for (b, (xb, wb)) in x.chunks(bs).zip(qw.chunks(bs)).enumerate() {
                g.fit_weighted(xb, wb, None, &mut ps);
                for (k, (p, off)) in ps.iter().enumerate() {
                    d.push(p.scale);
                    m.push(*off);
                    for i in 0..group {
                        let at = b * bs + k * group + i;
                        let q = if let Some(l) = g.levels() {
                            // a non-linear grid: the nearest level is the code
                            let y = if p.scale == 0.0 { 0.0 } else { x[at] / p.scale };
                            l.values[iq4::best_index(&l.values, y)] as i32
                        } else if p.scale == 0.0 {
                            p.zero
                        } else {
                            (((x[at] - off) / p.scale).round() as i32 + p.zero).clamp(lo, hi)
                        };
                        codes[at] = q as i8;
                        want[at] = (q - p.zero) as f32 * p.scale + off;
                    }
                }
            }
            let mut bytes = vec![0u8; ty.row_bytes(n)];
            g.pack_row(&codes, &d, &m, &mut bytes);
            let mut got = vec![0f32; n];
            dequantize_row(ty, &bytes, &mut got);
            assert_eq!(got, want, "{ty}: the fitted parameters pack exactly");
            let mut theirs = vec![0u8; ty.row_bytes(n)];
            quantize_row_weighted(ty, &x, &qw, &mut theirs);
            let mut deq = vec![0f32; n];
            dequantize_row(ty, &theirs, &mut deq);
            let werr = |y: &[f32]| -> f64 {
                x.iter()
                    .zip(y)
                    .zip(&qw)
                    .map(|((a, b), w)| (*w as f64) * ((a - b) as f64).powi(2))
                    .sum()
            };
            let (ours, ggml) = (werr(&got), werr(&deq));
            eprintln!("{ty}: weighted error ours {ours:.4e}, ggml imatrix {ggml:.4e}");
            assert!(ours < ggml, "{ty}: ours {ours} vs ggml's {ggml}");
        }
    }
}
