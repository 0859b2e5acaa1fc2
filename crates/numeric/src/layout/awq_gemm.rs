//! AutoAWQ's GEMM checkpoint layout (`version: "gemm"`; transformers, vLLM and GPTQModel read
//! it): 4-bit unsigned codes with a zero point per group and output channel, stored transposed
//! relative to the HF weight `[out, in]`:
//!
//! - `qweight` I32 `[in, out/8]`: input channel `i`, output channels `8k..8k+8` in word `k`;
//! - `qzeros` I32 `[in/group, out/8]`: the zero points (0..=15, stored as they are, no "− 1"
//!   as in GPTQ v1), packed the same way;
//! - `scales` F16 `[in/group, out]`.
//!
//! Within a word, logical column `j` (output `8k + j`) sits in nibble [`NIBBLE_OF`]`[j]`, i.e.
//! at bit shift 0, 16, 4, 20, 8, 24, 12, 28 for j = 0..7 (AutoAWQ packs nibble `n` from column
//! `[0, 2, 4, 6, 1, 3, 5, 7][n]`; its unpacker undoes that with `[0, 4, 1, 5, 2, 6, 3, 7]`).
//! `w[o, i] = (q[i, o] − z[i / group, o]) · scale[i / group, o]`.
//!
//! Round to nearest follows AutoAWQ's `pseudo_quantize_tensor` (zero_point=True): per output
//! row and group, `scale = max(max − min, 1e-5) / 15` from the group's own min and max (the
//! range is *not* widened to include 0), rounded to f16 (AutoAWQ computes in the model's f16);
//! `zero = clamp(round(−min / scale), 0, 15)` and `q = clamp(round(w / scale) + zero, 0, 15)`,
//! both from that f16 scale in f32 arithmetic, rounding half to even (`torch.round`). A group
//! entirely above (below) zero therefore clips at its far end, as AutoAWQ does.
//!
//! Packing runs along the output dimension, so a tensor is encoded and decoded whole (one
//! chunk), like [`super::autogptq`].

use super::{
    bytes_to_words, check_gran, decode_scales, encode_scales, float_max, need_2d, placed,
    rows_cols, slot, words_to_bytes, CodeGrid, Codes, Encoded, Granularity, Layout, SchemeError,
    Slot, TensorStats,
};
use crate::dtype::{round_to, DType};
use crate::rtn::{min_max, round_even_small, IntSpec};
use std::ops::Range;

/// Output channels per int32 word.
const PER: usize = 8;
/// Largest code (and zero point) of the 4-bit grid.
const QMAX: f32 = 15.0;
/// The nibble (bit shift / 4) that holds logical column `j` of a word: AutoAWQ's
/// `AWQ_REVERSE_ORDER`, the inverse of its packing order `[0, 2, 4, 6, 1, 3, 5, 7]`.
pub const NIBBLE_OF: [usize; PER] = [0, 4, 1, 5, 2, 6, 3, 7];

/// The AutoAWQ GEMM layout: 4 bits, zero points, one f16 scale per `group` input channels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutoAwq {
    pub group: usize,
}

/// Packs `vals` (each 0..=15; a multiple of 8 logical columns) into words, 8 columns a word in
/// AutoAWQ's nibble order.
pub fn pack_row(vals: &[u8], out: &mut [u32]) {
    for (w, v) in out.iter_mut().zip(vals.chunks_exact(PER)) {
        *w = (0..PER).fold(0u32, |acc, j| {
            acc | (u32::from(v[j]) & 0xF) << (4 * NIBBLE_OF[j])
        });
    }
}

/// Logical column `j` of a packed word.
#[inline]
pub fn unpack(word: u32, j: usize) -> u32 {
    (word >> (4 * NIBBLE_OF[j])) & 0xF
}

/// AutoAWQ's round to nearest for one group: the f16-rounded scale, the zero point and the
/// codes (`codes.len() == x.len()`).
fn quantize_group(x: &[f32], codes: &mut [u8]) -> (f32, u8) {
    let (mn, mx) = min_max(x);
    // (a NaN range, from non-finite input the run refuses anyway, takes the floor)
    let raw = (mx - mn).max(1e-5) / QMAX;
    // beyond f16's range the scale saturates (AutoAWQ's f16 would overflow to inf); the
    // writer's check then judges the decoded values
    let scale = round_to(DType::F16, raw.min(float_max(DType::F16)));
    // pre-clamping to ±2^22 changes nothing after the final clamp and keeps the rounding exact
    let lim = 4_194_304.0;
    let zero = round_even_small((-mn / scale).clamp(-lim, lim)).clamp(0.0, QMAX);
    for (c, &v) in codes.iter_mut().zip(x) {
        let q = round_even_small((v / scale).clamp(-lim, lim)) + zero;
        *c = q.clamp(0.0, QMAX) as u8;
    }
    (scale, zero as u8)
}

impl AutoAwq {
    /// The grid as [`CodeGrid::Int`] sees it: signed codes `u − 8` and zero points `z − 8`
    /// give the same `(q − zero) · scale`.
    fn spec() -> IntSpec {
        IntSpec {
            bits: 4,
            symmetric: false,
        }
    }

    /// The slots of a whole `rows × cols` tensor from unsigned codes (`rows × cols`), zero
    /// points and scales (`rows × groups`, output row order).
    fn pack(&self, shape: &[usize], codes: &[u8], zeros: &[u8], scales: &[f32]) -> Encoded {
        let (rows, cols) = rows_cols(shape);
        let groups = cols / self.group;
        let words = rows / PER;
        // transpose to input-channel-major, then pack along the output channels
        let mut col = vec![0u8; rows];
        let mut qw = vec![0u32; cols * words];
        for i in 0..cols {
            for (o, c) in col.iter_mut().enumerate() {
                *c = codes[o * cols + i];
            }
            pack_row(&col, &mut qw[i * words..(i + 1) * words]);
        }
        let mut qz = vec![0u32; groups * words];
        let mut sc = vec![0f32; groups * rows];
        for g in 0..groups {
            for o in 0..rows {
                col[o] = zeros[o * groups + g];
                sc[g * rows + o] = scales[o * groups + g];
            }
            pack_row(&col, &mut qz[g * words..(g + 1) * words]);
        }
        let pieces = [
            words_to_bytes(&qw),
            words_to_bytes(&qz),
            encode_scales(DType::F16, &sc),
        ]
        .into_iter()
        .enumerate()
        .map(|(slot, bytes)| placed(self, slot, shape, 0, rows, bytes))
        .collect();
        Encoded { pieces }
    }
}

impl Layout for AutoAwq {
    fn label(&self) -> String {
        format!("awq-int4-g{}", self.group)
    }

    fn row_align(&self) -> usize {
        // packed along the output rows and stored transposed: the whole tensor in one chunk
        1 << 40
    }

    fn check(&self, shape: &[usize]) -> Result<(), SchemeError> {
        need_2d(shape)?;
        let (rows, cols) = rows_cols(shape);
        check_gran(Granularity::Group(self.group), cols)?;
        if !rows.is_multiple_of(PER) {
            return Err(SchemeError::Unsupported(format!(
                "{rows} output rows: the AWQ layout packs {PER} per int32"
            )));
        }
        Ok(())
    }

    fn slots(&self, shape: &[usize]) -> Vec<Slot> {
        let (rows, cols) = rows_cols(shape);
        let groups = cols / self.group.max(1);
        vec![
            slot(".qweight", DType::I32, vec![cols, rows / PER]),
            slot(".qzeros", DType::I32, vec![groups, rows / PER]),
            slot(".scales", DType::F16, vec![groups, rows]),
        ]
    }

    fn slot_range(&self, slot: usize, shape: &[usize], _r0: usize, _r1: usize) -> Range<usize> {
        0..self.slots(shape)[slot].nbytes
    }

    fn encode(
        &self,
        shape: &[usize],
        _r0: usize,
        x: &[f32],
        _stats: TensorStats,
        _importance: Option<&[f32]>,
    ) -> Encoded {
        let (rows, cols) = rows_cols(shape);
        let groups = cols / self.group;
        let mut codes = vec![0u8; rows * cols];
        let mut zeros = vec![0u8; rows * groups];
        let mut scales = vec![0f32; rows * groups];
        for (k, (xg, cg)) in x
            .chunks_exact(self.group)
            .zip(codes.chunks_exact_mut(self.group))
            .enumerate()
        {
            (scales[k], zeros[k]) = quantize_group(xg, cg);
        }
        self.pack(shape, &codes, &zeros, &scales)
    }

    fn code_grid(&self, _shape: &[usize]) -> Option<CodeGrid> {
        Some(CodeGrid::Int {
            spec: Self::spec(),
            group: Some(self.group),
            scale_dtype: DType::F16,
            stores_g_idx: false,
        })
    }

    /// The slots of a whole tensor from signed asymmetric codes (`rows × cols`, −8..=7) and
    /// per-group parameters (`rows × groups`, zero points −8..=7); groups must be the
    /// consecutive ones (no g_idx is stored) and offsets zero.
    fn encode_codes(
        &self,
        shape: &[usize],
        r0: usize,
        c: Codes<'_>,
    ) -> Result<Encoded, SchemeError> {
        let (rows, cols) = rows_cols(shape);
        let groups = cols / self.group;
        if r0 != 0 || c.codes.len() != rows * cols || c.params.len() != rows * groups {
            return Err(SchemeError::Unsupported(
                "the AWQ layout is encoded whole".into(),
            ));
        }
        if c.g_idx.len() != cols
            || c.g_idx
                .iter()
                .enumerate()
                .any(|(i, &g)| g as usize != i / self.group)
        {
            return Err(SchemeError::Unsupported(
                "the AWQ layout stores no g_idx: groups must be consecutive input channels".into(),
            ));
        }
        if c.offsets.iter().any(|&o| o != 0.0) {
            return Err(SchemeError::Unsupported(
                "the AWQ layout has no group offsets".into(),
            ));
        }
        let unsigned = |v: i32, what: &str| {
            u8::try_from(v + 8)
                .ok()
                .filter(|&u| u <= 15)
                .ok_or_else(|| SchemeError::Unsupported(format!("{what} {v} is not a 4-bit value")))
        };
        let codes = c
            .codes
            .iter()
            .map(|&q| unsigned(q as i32, "code"))
            .collect::<Result<Vec<u8>, _>>()?;
        let zeros = c
            .params
            .iter()
            .map(|p| unsigned(p.zero, "zero point"))
            .collect::<Result<Vec<u8>, _>>()?;
        let scales: Vec<f32> = c.params.iter().map(|p| p.scale).collect();
        Ok(self.pack(shape, &codes, &zeros, &scales))
    }

    fn checkpoint_meta(&self, _actorder: Option<&str>) -> Option<super::CheckpointMeta> {
        Some(super::CheckpointMeta::Awq { group: self.group })
    }

    fn decode(&self, shape: &[usize], r0: usize, r1: usize, parts: &[&[u8]], out: &mut [f32]) {
        let (rows, cols) = rows_cols(shape);
        let words = rows / PER;
        let qw = bytes_to_words(parts[0]);
        let qz = bytes_to_words(parts[1]);
        let scales = decode_scales(DType::F16, parts[2]);
        for o in r0..r1 {
            let (k, j) = (o / PER, o % PER);
            for i in 0..cols {
                let g = i / self.group;
                let q = unpack(qw[i * words + k], j) as i32;
                let z = unpack(qz[g * words + k], j) as i32;
                out[(o - r0) * cols + i] = (q - z) as f32 * scales[g * rows + o];
            }
        }
    }
}

/// Reads an AutoAWQ GEMM weight from its `*.qweight` [in, out/8] and companions `qzeros`
/// [groups, out/8] and `scales` [groups, out]. Claims a `qweight` only when it has AWQ's
/// shapes (scales 8 times as wide as qweight) and no `g_idx`: AutoGPTQ's `qweight` is as wide
/// as its scales and comes with one (its reader, registered after this one, takes it).
pub fn read<'a>(
    ck: &dyn super::Checkpoint<'a>,
    t: super::Stored<'a>,
) -> Option<Result<super::ReadWeight<'a>, String>> {
    let prefix = t.name.strip_suffix(".qweight")?;
    if ck.get(&format!("{prefix}.g_idx")).is_some() {
        return None;
    }
    let sc = ck.get(&format!("{prefix}.scales"))?;
    let packed = t.shape.get(1).copied().unwrap_or(0);
    if t.shape.len() != 2 || sc.shape.len() != 2 || packed.checked_mul(PER) != Some(sc.shape[1]) {
        return None;
    }
    Some(read_qweight(ck, t, sc, prefix))
}

fn read_qweight<'a>(
    ck: &dyn super::Checkpoint<'a>,
    t: super::Stored<'a>,
    sc: super::Stored<'a>,
    prefix: &str,
) -> Result<super::ReadWeight<'a>, String> {
    let qz = ck
        .get(&format!("{prefix}.qzeros"))
        .ok_or_else(|| "has no qzeros companion".to_string())?;
    let (cols, rows, groups) = (t.shape[0], sc.shape[1], sc.shape[0]);
    if groups == 0 || !cols.is_multiple_of(groups) || qz.shape != [groups, t.shape[1]] {
        return Err(format!(
            "shapes qweight {:?}, qzeros {:?}, scales {:?} do not fit the AWQ layout",
            t.shape, qz.shape, sc.shape
        ));
    }
    for (s, what) in [(&t, "qweight"), (&qz, "qzeros")] {
        if s.dtype != DType::I32 {
            return Err(format!("{what} is {}, expected I32", s.dtype));
        }
    }
    if sc.dtype != DType::F16 {
        return Err(format!("scales are {}, expected F16", sc.dtype));
    }
    let scheme = super::Scheme::Awq(AutoAwq {
        group: cols / groups,
    });
    scheme.check(&[rows, cols]).map_err(|e| e.to_string())?;
    let slots = vec![t.bytes, qz.bytes, sc.bytes];
    super::check_sizes(&scheme, rows, cols, &slots)?;
    Ok(super::ReadWeight {
        name: format!("{prefix}.weight"),
        shape: vec![rows, cols],
        scheme,
        slots,
        stored: vec![t.name.to_string(), qz.name.to_string(), sc.name.to_string()],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Scheme;
    use crate::rtn::QParams;

    fn whole(s: &Scheme, shape: &[usize], x: &[f32]) -> Vec<Vec<u8>> {
        let e = s.encode(shape, 0, x, TensorStats::default());
        let slots = s.slots(shape);
        assert_eq!(e.pieces.len(), slots.len());
        for (p, sl) in e.pieces.iter().zip(&slots) {
            assert_eq!((p.offset, p.bytes.len()), (0, sl.nbytes), "{}", sl.suffix);
        }
        e.pieces.into_iter().map(|p| p.bytes).collect()
    }

    fn decoded(s: &Scheme, shape: &[usize], b: &[Vec<u8>], r0: usize, r1: usize) -> Vec<f32> {
        let parts: Vec<&[u8]> = b.iter().map(|v| v.as_slice()).collect();
        let mut y = vec![f32::NAN; (r1 - r0) * shape[1]];
        s.decode(shape, r0, r1, &parts, &mut y);
        y
    }

    /// Bit positions written out by hand: column j of a word at shift 0, 16, 4, 20, 8, 24, 12,
    /// 28 (AutoAWQ's packing loop puts column [0, 2, 4, 6, 1, 3, 5, 7][n] at shift 4n).
    #[test]
    fn packs_columns_in_autoawqs_interleaved_nibbles() {
        let mut w = [0u32];
        pack_row(&[1, 2, 3, 4, 5, 6, 7, 8], &mut w);
        // nibbles 0..7 (lowest first) hold columns 0, 2, 4, 6, 1, 3, 5, 7: values 1 3 5 7 2 4 6 8
        assert_eq!(w[0], 0x8642_7531);
        for (j, shift) in [0, 16, 4, 20, 8, 24, 12, 28].into_iter().enumerate() {
            let mut one = [0u8; 8];
            one[j] = 0xF;
            pack_row(&one, &mut w);
            assert_eq!(w[0], 0xF << shift, "column {j}");
            assert_eq!(unpack(0x8642_7531, j), j as u32 + 1);
        }
    }

    /// A 8 × 4 weight, group 2: every stored word computed by hand from the rule.
    #[test]
    fn encodes_a_small_tensor_as_worked_out_by_hand() {
        let (rows, cols) = (8, 4);
        // integer-valued groups whose range is 15: scale 1
        let mut x = vec![0f32; rows * cols];
        for o in 0..rows {
            // group 0: min -(o) .. max 15 - o  → scale 1, zero o, codes [0, 15]
            x[o * cols] = -(o as f32);
            x[o * cols + 1] = 15.0 - o as f32;
            // group 1: [0, 15] shifted by +2 → min 2 > 0: zero clamps to 0, codes 2 and 15
            // (17 clips to 15, as AutoAWQ)
            x[o * cols + 2] = 2.0;
            x[o * cols + 3] = 17.0;
        }
        let s = Scheme::Awq(AutoAwq { group: 2 });
        s.check(&[rows, cols]).unwrap();
        let b = whole(&s, &[rows, cols], &x);
        let words = |v: &[u8]| bytes_to_words(v);
        // qweight [4, 1]: input 0 has code 0 for every output; input 1 code 15; input 2 code 2;
        // input 3 code 15
        assert_eq!(words(&b[0]), [0, 0xFFFF_FFFF, 0x2222_2222, 0xFFFF_FFFF]);
        // qzeros [2, 1]: group 0 has zero o for output o, so nibbles 0..7 hold 0, 2, 4, 6, 1, 3,
        // 5, 7; group 1's zeros are all 0
        assert_eq!(words(&b[1]), [0x7531_6420, 0]);
        // scales [2, 8]: every group's range is 15, so every scale is 1
        assert_eq!(decode_scales(DType::F16, &b[2]), vec![1.0; 16]);
        let y = decoded(&s, &[rows, cols], &b, 0, rows);
        for o in 0..rows {
            let row = &y[o * cols..(o + 1) * cols];
            assert_eq!(row, [-(o as f32), 15.0 - o as f32, 2.0, 15.0], "row {o}");
        }
    }

    /// Within half a step of the stored scale (plus what rounding it to f16 moves the far end)
    /// wherever a group spans zero; whole-tensor layout: any row range decodes from the slots.
    #[test]
    fn round_trips_within_half_a_step() {
        let (rows, cols) = (48, 256);
        let x = crate::synth::weight_matrix(rows, cols, 0.02, 7);
        for group in [32, 64, 128] {
            let s = Scheme::Awq(AutoAwq { group });
            assert_eq!(s.row_align(), 1 << 40);
            let shape = [rows, cols];
            let b = whole(&s, &shape, &x);
            let y = decoded(&s, &shape, &b, 0, rows);
            let sc = decode_scales(DType::F16, &b[2]);
            for (i, (&a, &v)) in x.iter().zip(&y).enumerate() {
                let (o, c) = (i / cols, i % cols);
                let g = &x[o * cols + c / group * group..][..group];
                let (mn, mx) = min_max(g);
                assert!(mn <= 0.0 && mx >= 0.0);
                let step = sc[(c / group) * rows + o];
                let bound = step * (0.5 + 16.0 * 2f32.powi(-11));
                assert!(
                    (a - v).abs() <= bound,
                    "g{group} [{o},{c}]: {a} -> {v} ({step})"
                );
            }
            // a middle range of rows decodes the same from the whole slots
            assert_eq!(decoded(&s, &shape, &b, 8, 24), y[8 * cols..24 * cols]);
        }
    }

    /// Codes from a method (signed, on the asymmetric int4 grid) are stored as given: they
    /// decode to exactly `Codes::values`; off-grid ones and a permuted grouping are refused.
    #[test]
    fn stores_method_codes_exactly() {
        let (rows, cols, group) = (16, 64, 32);
        let groups = cols / group;
        let s = Scheme::Awq(AutoAwq { group });
        let mut rng = crate::synth::Rng::new(3);
        let codes: Vec<i8> = (0..rows * cols)
            .map(|_| (rng.next_u64() % 16) as i8 - 8)
            .collect();
        let params: Vec<QParams> = (0..rows * groups)
            .map(|k| QParams {
                scale: round_to(DType::F16, 0.003 * (1 + k % 5) as f32),
                zero: (k % 16) as i32 - 8,
            })
            .collect();
        let offsets = vec![0f32; params.len()];
        let g_idx: Vec<u32> = (0..cols).map(|c| (c / group) as u32).collect();
        let c = Codes {
            codes: &codes,
            params: &params,
            offsets: &offsets,
            g_idx: &g_idx,
        };
        let e = s.encode_codes(&[rows, cols], 0, c).unwrap();
        let b: Vec<Vec<u8>> = e.pieces.into_iter().map(|p| p.bytes).collect();
        assert_eq!(decoded(&s, &[rows, cols], &b, 0, rows), c.values(cols));
        let bad_codes = vec![7i8 + 1; rows * cols];
        assert!(s
            .encode_codes(
                &[rows, cols],
                0,
                Codes {
                    codes: &bad_codes,
                    ..c
                }
            )
            .is_err());
        let permuted: Vec<u32> = (0..cols).map(|i| ((i + 1) % cols / group) as u32).collect();
        assert!(s
            .encode_codes(
                &[rows, cols],
                0,
                Codes {
                    g_idx: &permuted,
                    ..c
                }
            )
            .is_err());
        assert!(s.encode_codes(&[rows, cols], 8, c).is_err());
    }

    /// A checkpoint of named tensors for the readers.
    struct Ck(Vec<(String, DType, Vec<usize>, Vec<u8>)>);

    impl<'a> super::super::Checkpoint<'a> for &'a Ck {
        fn get(&self, name: &str) -> Option<super::super::Stored<'a>> {
            let (n, dtype, shape, bytes) = self.0.iter().find(|t| t.0 == name)?;
            Some(super::super::Stored {
                name: n,
                dtype: *dtype,
                shape,
                bytes,
            })
        }
        fn weight_args(&self, _module: &str) -> Option<&serde_json::Value> {
            None
        }
    }

    /// What the registry's readers make of `{p}.qweight` in `ck`.
    fn read<'a>(ck: &'a Ck, p: &str) -> Option<Result<super::super::ReadWeight<'a>, String>> {
        let t = super::super::Checkpoint::get(&ck, &format!("{p}.qweight"))?;
        super::super::read_weight(&ck, t)
    }

    /// The registry's readers tell the two `*.qweight` layouts apart: AWQ's shapes (scales 8
    /// times as wide as qweight, no g_idx) are read as AWQ with the group the shapes imply and
    /// decode as written; AutoGPTQ's are left to its reader; bad AWQ companions are named.
    #[test]
    fn readers_tell_awq_from_autogptq() {
        let (rows, cols, group) = (16, 64, 32);
        let s = Scheme::Awq(AutoAwq { group });
        let x = crate::synth::weight_matrix(rows, cols, 0.02, 1);
        let b = whole(&s, &[rows, cols], &x);
        let p = "m.q_proj";
        let mut ck = Ck(s
            .slots(&[rows, cols])
            .iter()
            .zip(&b)
            .map(|(sl, bytes)| {
                let super::super::SlotType::Dtype(dt) = sl.ty else {
                    unreachable!()
                };
                (
                    format!("{p}{}", sl.suffix),
                    dt,
                    sl.shape.clone(),
                    bytes.clone(),
                )
            })
            .collect());
        let w = read(&ck, p).unwrap().unwrap();
        assert_eq!(
            (w.name.as_str(), w.shape.clone()),
            ("m.q_proj.weight", vec![rows, cols])
        );
        assert_eq!(w.scheme, s);
        let mut y = vec![0f32; rows * cols];
        w.scheme.decode(&w.shape, 0, rows, &w.slots, &mut y);
        assert_eq!(y, decoded(&s, &[rows, cols], &b, 0, rows));
        // scales stored as f32: named
        let mut bad = Ck(ck.0.clone());
        bad.0[2].1 = DType::F32;
        let e = read(&bad, p).unwrap().unwrap_err();
        assert!(e.contains("expected F16"), "{e}");
        // with a g_idx it is AutoGPTQ's to read (which finds these shapes wrong)
        ck.0.push((
            format!("{p}.g_idx"),
            DType::I32,
            vec![cols],
            vec![0; cols * 4],
        ));
        let t = super::super::Checkpoint::get(&&ck, &format!("{p}.qweight")).unwrap();
        assert!(super::read(&&ck, t).is_none());
        let e = read(&ck, p).unwrap().unwrap_err();
        assert!(!e.contains("AWQ"), "{e}");
    }

    #[test]
    fn shapes_it_cannot_store_are_refused() {
        let s = Scheme::Awq(AutoAwq { group: 32 });
        assert!(s.check(&[16, 64]).is_ok());
        assert!(s.check(&[12, 64]).is_err()); // out not a multiple of 8
        assert!(s.check(&[16, 48]).is_err()); // group does not divide in
        assert!(s.check(&[64]).is_err());
        assert_eq!(
            s.slots(&[16, 64])
                .iter()
                .map(|x| (x.suffix, x.shape.clone()))
                .collect::<Vec<_>>(),
            [
                (".qweight", vec![64, 2]),
                (".qzeros", vec![2, 2]),
                (".scales", vec![2, 16])
            ]
        );
    }
}
