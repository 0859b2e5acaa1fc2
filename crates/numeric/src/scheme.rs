//! One description of "how a tensor is stored", shared by the writer (encode) and by `verify`
//! and the report (decode).
//!
//! A tensor is processed in chunks of whole rows. For each scheme, [`Scheme::slots`] lists the
//! stored tensors it produces (e.g. `weight_packed`, `weight_scale`), and [`Scheme::slot_range`]
//! says which bytes of each slot a row range owns, so chunks can be encoded, written and decoded
//! independently and in any order. Everything here is pure.

use crate::dtype::{self, DType};
use crate::ggml::{self, GgmlType};
use crate::pack;
use crate::rtn::{self, IntSpec, QParams};
use std::ops::Range;

/// How scale parameters are shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// One scale for the whole tensor.
    Tensor,
    /// One scale per output row.
    Channel,
    /// One scale per `n` consecutive columns of a row.
    Group(usize),
    /// One scale per `rows × cols` tile.
    Block(usize, usize),
}

impl Granularity {
    /// The name compressed-tensors uses for the strategy.
    pub fn strategy(self) -> &'static str {
        match self {
            Granularity::Tensor => "tensor",
            Granularity::Channel => "channel",
            Granularity::Group(_) => "group",
            Granularity::Block(..) => "block",
        }
    }
}

/// How one tensor is stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scheme {
    /// Plain float storage (F32, F16, BF16). `clamp` saturates values beyond the type's range.
    Float { dtype: DType, clamp: bool },
    /// A ggml type (GGUF output), row-major blocks along each row.
    Ggml(GgmlType),
    /// Integer codes packed into int32 (compressed-tensors pack-quantized). With `g_idx`
    /// (group scales only) each column's group is stored in a `weight_g_idx` slot
    /// (compressed-tensors `actorder: "group"`, from act-order GPTQ); else groups are consecutive.
    Int {
        spec: IntSpec,
        granularity: Granularity,
        scale_dtype: DType,
        g_idx: bool,
    },
    /// AutoGPTQ's "v1" checkpoint layout (GPTQModel, transformers, vLLM read it): symmetric
    /// unsigned codes packed along the input dimension into `qweight` [cols·bits/32, rows],
    /// zero points minus one (always 2^(bits-1) - 1) packed into `qzeros` [groups,
    /// rows·bits/32], f16 `scales` [groups, rows] and `g_idx` [cols]. Transposed storage, so a
    /// tensor is encoded and decoded whole (one chunk).
    Gptq { bits: u32, group: usize },
    /// FP8 codes with float scales (compressed-tensors float-quantized).
    Fp8 {
        format: DType,
        granularity: Granularity,
        scale_dtype: DType,
    },
}

/// Element type of a stored slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotType {
    Dtype(DType),
    Ggml(GgmlType),
}

/// A stored tensor produced by a scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Appended to the module prefix; empty means "the tensor's own name".
    pub suffix: &'static str,
    pub ty: SlotType,
    /// Numpy-order shape.
    pub shape: Vec<usize>,
    pub nbytes: usize,
}

/// Per-tensor statistics some schemes need before any chunk is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TensorStats {
    pub min: f32,
    pub max: f32,
}

/// Bytes for one slot, at `offset` inside that slot's data.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub slot: usize,
    pub offset: usize,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub pieces: Vec<Piece>,
}

/// Why a scheme cannot store a tensor of a given shape.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchemeError {
    #[error("row length {cols} is not a multiple of {what} {n}")]
    NotMultiple {
        cols: usize,
        what: &'static str,
        n: usize,
    },
    #[error("{0}")]
    Unsupported(String),
}

impl Scheme {
    /// How a stored ggml tensor decodes: plain floats, or ggml blocks. `None` for types we
    /// cannot dequantize.
    pub fn for_ggml(ty: GgmlType) -> Option<Scheme> {
        let float = |dtype| {
            Some(Scheme::Float {
                dtype,
                clamp: false,
            })
        };
        match ty {
            GgmlType::F32 => float(DType::F32),
            GgmlType::F16 => float(DType::F16),
            GgmlType::BF16 => float(DType::BF16),
            t if t.can_quantize() => Some(Scheme::Ggml(t)),
            _ => None,
        }
    }

    /// Short human name, e.g. `int4-sym-g128`, `Q4_0`, `fp8-e4m3-channel`, `F16`.
    pub fn label(&self) -> String {
        match self {
            Scheme::Float { dtype, .. } => dtype.to_string(),
            Scheme::Ggml(t) => t.to_string(),
            Scheme::Int {
                spec, granularity, ..
            } => format!(
                "int{}-{}-{}",
                spec.bits,
                if spec.symmetric { "sym" } else { "asym" },
                gran_label(*granularity)
            ),
            Scheme::Gptq { bits, group } => format!("gptq-int{bits}-g{group}"),
            Scheme::Fp8 {
                format,
                granularity,
                ..
            } => format!(
                "fp8-{}-{}",
                if *format == DType::F8E4M3 {
                    "e4m3"
                } else {
                    "e5m2"
                },
                gran_label(*granularity)
            ),
        }
    }

    /// Rows a chunk must be a multiple of (except the last chunk).
    pub fn row_align(&self) -> usize {
        match *self {
            Scheme::Int {
                spec,
                granularity: Granularity::Channel | Granularity::Group(_),
                ..
            } if !spec.symmetric => 32,
            Scheme::Fp8 {
                granularity: Granularity::Block(r, _),
                ..
            } => r,
            // the whole tensor in one chunk
            Scheme::Gptq { .. } => 1 << 40,
            _ => 1,
        }
    }

    /// True when encoding needs [`TensorStats`] of the whole tensor first.
    pub fn needs_tensor_stats(&self) -> bool {
        matches!(
            self,
            Scheme::Int {
                granularity: Granularity::Tensor,
                ..
            } | Scheme::Fp8 {
                granularity: Granularity::Tensor,
                ..
            }
        )
    }

    /// Checks the scheme can store a tensor of `shape` (numpy order).
    pub fn check(&self, shape: &[usize]) -> Result<(), SchemeError> {
        let cols = shape.last().copied().unwrap_or(1);
        match self {
            Scheme::Float { dtype, .. } => {
                if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
                    return Err(SchemeError::Unsupported(format!(
                        "{dtype} is not a float storage type"
                    )));
                }
            }
            Scheme::Ggml(t) => {
                if !t.can_quantize() {
                    return Err(SchemeError::Unsupported(format!(
                        "writing {t} is not supported yet"
                    )));
                }
                let bs = t.block().0;
                if cols % bs != 0 {
                    return Err(SchemeError::NotMultiple {
                        cols,
                        what: "the block size",
                        n: bs,
                    });
                }
            }
            Scheme::Int {
                spec,
                granularity,
                g_idx,
                ..
            } => {
                if *g_idx && !matches!(granularity, Granularity::Group(_)) {
                    return Err(SchemeError::Unsupported(
                        "a g_idx needs group scales".into(),
                    ));
                }
                if !(1..=8).contains(&spec.bits) {
                    return Err(SchemeError::Unsupported(format!(
                        "{} bits (1..8 supported)",
                        spec.bits
                    )));
                }
                need_2d(shape)?;
                check_gran(*granularity, cols)?;
                if matches!(granularity, Granularity::Block(..)) {
                    return Err(SchemeError::Unsupported(
                        "block scales are only for fp8".into(),
                    ));
                }
            }
            Scheme::Fp8 { granularity, .. } => {
                need_2d(shape)?;
                check_gran(*granularity, cols)?;
            }
            Scheme::Gptq { bits, group } => {
                if !matches!(bits, 2 | 4 | 8) {
                    return Err(SchemeError::Unsupported(format!(
                        "{bits} bits in the GPTQ layout (2, 4 and 8 supported)"
                    )));
                }
                need_2d(shape)?;
                check_gran(Granularity::Group(*group), cols)?;
                let per = 32 / *bits as usize;
                let rows = rows_cols(shape).0;
                if !rows.is_multiple_of(per) {
                    return Err(SchemeError::Unsupported(format!(
                        "{rows} output rows: the GPTQ layout packs {per} per int32"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The stored tensors this scheme produces for a tensor of `shape` (numpy order).
    pub fn slots(&self, shape: &[usize]) -> Vec<Slot> {
        let (rows, cols) = rows_cols(shape);
        match *self {
            Scheme::Float { dtype, .. } => vec![Slot {
                suffix: "",
                ty: SlotType::Dtype(dtype),
                shape: shape.to_vec(),
                nbytes: rows * cols * dtype.size(),
            }],
            Scheme::Ggml(t) => vec![Slot {
                suffix: "",
                ty: SlotType::Ggml(t),
                shape: shape.to_vec(),
                nbytes: rows * t.row_bytes(cols),
            }],
            Scheme::Int {
                spec,
                granularity,
                scale_dtype,
                g_idx,
            } => {
                let pw = pack::packed_words(cols, spec.bits);
                let sshape = scale_shape(granularity, rows, cols);
                let mut v = vec![
                    slot("_packed", DType::I32, vec![rows, pw]),
                    slot("_scale", scale_dtype, sshape.clone()),
                ];
                if !spec.symmetric {
                    if granularity == Granularity::Tensor {
                        v.push(slot("_zero_point", DType::I8, vec![1]));
                    } else {
                        let pr = pack::packed_words(rows, spec.bits);
                        v.push(slot("_zero_point", DType::I32, vec![pr, sshape[1]]));
                    }
                }
                v.push(slot("_shape", DType::I64, vec![2]));
                if g_idx {
                    v.push(slot("_g_idx", DType::I32, vec![cols]));
                }
                v
            }
            Scheme::Gptq { bits, group } => {
                let per = 32 / bits as usize;
                let groups = cols / group.max(1);
                vec![
                    slot(".qweight", DType::I32, vec![cols / per, rows]),
                    slot(".qzeros", DType::I32, vec![groups, rows / per]),
                    slot(".scales", DType::F16, vec![groups, rows]),
                    slot(".g_idx", DType::I32, vec![cols]),
                ]
            }
            Scheme::Fp8 {
                format,
                granularity,
                scale_dtype,
            } => vec![
                slot("", format, vec![rows, cols]),
                slot("_scale", scale_dtype, scale_shape(granularity, rows, cols)),
            ],
        }
    }

    /// Byte range of slot `slot` owned by rows `r0..r1` of a tensor of `shape`.
    /// Slots that are not per-row (per-tensor scale and zero point, shape) are whole in every
    /// chunk: each chunk re-emits the same bytes, so any chunk decodes on its own.
    pub fn slot_range(&self, slot: usize, shape: &[usize], r0: usize, r1: usize) -> Range<usize> {
        let (rows, cols) = rows_cols(shape);
        let slots = self.slots(shape);
        let s = &slots[slot];
        let per_row = |bpr: usize| r0 * bpr..r1 * bpr;
        match *self {
            Scheme::Float { dtype, .. } => per_row(cols * dtype.size()),
            Scheme::Ggml(t) => per_row(t.row_bytes(cols)),
            Scheme::Int {
                spec,
                granularity,
                scale_dtype,
                ..
            } => match s.suffix {
                "_packed" => per_row(pack::packed_words(cols, spec.bits) * 4),
                "_scale" if granularity == Granularity::Tensor => 0..s.nbytes,
                "_scale" => per_row(s.shape[1] * scale_dtype.size()),
                "_zero_point" if granularity == Granularity::Tensor => 0..s.nbytes,
                "_zero_point" => {
                    let bpr = s.shape[1] * 4;
                    let p0 = r0 * spec.bits as usize / 32;
                    let p1 = if r1 == rows {
                        s.shape[0]
                    } else {
                        r1 * spec.bits as usize / 32
                    };
                    p0 * bpr..p1 * bpr
                }
                _ => 0..s.nbytes,
            },
            Scheme::Gptq { .. } => 0..s.nbytes,
            Scheme::Fp8 {
                format,
                granularity,
                scale_dtype,
            } => match slot {
                0 => per_row(cols * format.size()),
                _ => match granularity {
                    Granularity::Tensor => 0..s.nbytes,
                    Granularity::Block(br, _) => {
                        let bpr = s.shape[1] * scale_dtype.size();
                        (r0 / br) * bpr..r1.div_ceil(br) * bpr
                    }
                    _ => per_row(s.shape[1] * scale_dtype.size()),
                },
            },
        }
    }

    /// Encodes rows `r0..r0 + x.len()/cols` of a tensor of `shape`.
    /// `x` holds those rows as f32; `stats` is required when [`Self::needs_tensor_stats`].
    pub fn encode(&self, shape: &[usize], r0: usize, x: &[f32], stats: TensorStats) -> Encoded {
        self.encode_weighted(shape, r0, x, stats, None)
    }

    /// [`Self::encode`] with an importance matrix (one weight per column) for ggml types.
    pub fn encode_weighted(
        &self,
        shape: &[usize],
        r0: usize,
        x: &[f32],
        stats: TensorStats,
        qw: Option<&[f32]>,
    ) -> Encoded {
        let (_, cols) = rows_cols(shape);
        let nrows = x.len() / cols.max(1);
        let r1 = r0 + nrows;
        let mut pieces = Vec::new();
        let push = |slot: usize, bytes: Vec<u8>, pieces: &mut Vec<Piece>| {
            pieces.push(self.placed(slot, shape, r0, r1, bytes));
        };
        match *self {
            Scheme::Float { dtype, clamp } => {
                let mut out = vec![0u8; x.len() * dtype.size()];
                if clamp {
                    let max = float_max(dtype);
                    let c: Vec<f32> = x.iter().map(|v| v.clamp(-max, max)).collect();
                    dtype::encode_float(dtype, &c, &mut out);
                } else {
                    dtype::encode_float(dtype, x, &mut out);
                }
                push(0, out, &mut pieces);
            }
            Scheme::Ggml(t) => {
                let mut out = vec![0u8; nrows * t.row_bytes(cols)];
                if cols > 0 {
                    for (xr, yr) in x
                        .chunks_exact(cols)
                        .zip(out.chunks_exact_mut(t.row_bytes(cols)))
                    {
                        match qw {
                            Some(w) => ggml::quantize_row_weighted(t, xr, w, yr),
                            None => ggml::quantize_row(t, xr, yr),
                        }
                    }
                }
                push(0, out, &mut pieces);
            }
            Scheme::Int {
                spec,
                granularity,
                scale_dtype,
                ..
            } => {
                let group = group_len(granularity, cols);
                let fixed = (granularity == Granularity::Tensor)
                    .then(|| rtn::fit(spec, stats.min, stats.max, scale_dtype));
                let q = rtn::quantize_rows(spec, x, cols, group, scale_dtype, fixed);
                let params = match fixed {
                    Some(p) => vec![p],
                    None => q.params,
                };
                return self.encode_int_codes(shape, r0, &q.codes, &params);
            }
            Scheme::Gptq { bits, group } => {
                let spec = IntSpec {
                    bits,
                    symmetric: true,
                };
                let q = rtn::quantize_rows(spec, x, cols, group, DType::F16, None);
                return self.encode_int_codes(shape, r0, &q.codes, &q.params);
            }
            Scheme::Fp8 {
                format,
                granularity,
                scale_dtype,
            } => {
                let f = dtype::fp8_format(format).expect("fp8 format");
                let fit = |amax: f32| -> f32 {
                    let s = dtype::round_to(scale_dtype, amax / f.max_finite());
                    if s == 0.0 || !s.is_finite() {
                        dtype::eps(scale_dtype)
                    } else {
                        s
                    }
                };
                let mut codes = vec![0u8; x.len()];
                let scales: Vec<f32> = match granularity {
                    Granularity::Tensor => {
                        let s = fit(stats.min.abs().max(stats.max.abs()));
                        for (c, &v) in codes.iter_mut().zip(x) {
                            *c = f.encode(v / s);
                        }
                        vec![s]
                    }
                    Granularity::Channel | Granularity::Group(_) => {
                        let g = group_len(granularity, cols);
                        let mut sc = Vec::new();
                        for (xg, cg) in x.chunks_exact(g).zip(codes.chunks_exact_mut(g)) {
                            let s = fit(absmax(xg));
                            for (c, &v) in cg.iter_mut().zip(xg) {
                                *c = f.encode(v / s);
                            }
                            sc.push(s);
                        }
                        sc
                    }
                    Granularity::Block(br, bc) => {
                        let bcols = cols.div_ceil(bc);
                        let brows = nrows.div_ceil(br);
                        let mut sc = vec![0f32; brows * bcols];
                        for bi in 0..brows {
                            let rr = bi * br..((bi + 1) * br).min(nrows);
                            for bj in 0..bcols {
                                let cc = bj * bc..((bj + 1) * bc).min(cols);
                                let mut amax = 0f32;
                                for r in rr.clone() {
                                    amax = amax
                                        .max(absmax(&x[r * cols + cc.start..r * cols + cc.end]));
                                }
                                let s = fit(amax);
                                sc[bi * bcols + bj] = s;
                                for r in rr.clone() {
                                    for c in cc.clone() {
                                        codes[r * cols + c] = f.encode(x[r * cols + c] / s);
                                    }
                                }
                            }
                        }
                        sc
                    }
                };
                push(0, codes, &mut pieces);
                push(1, encode_scales(scale_dtype, &scales), &mut pieces);
            }
        }
        Encoded { pieces }
    }

    /// Integer schemes: the stored slots for rows `r0..` given their codes (`nrows × cols`)
    /// and parameters (`nrows × groups`, or a single one for per-tensor scales) — computed by
    /// RTN ([`Self::encode`]) or by GPTQ.
    pub fn encode_int_codes(
        &self,
        shape: &[usize],
        r0: usize,
        codes: &[i8],
        params: &[QParams],
    ) -> Encoded {
        self.encode_int_codes_gidx(shape, r0, codes, params, None)
    }

    /// As [`Self::encode_int_codes`], with each column's group (`g_idx`, act-order GPTQ) for the
    /// layouts that store one ([`Scheme::Gptq`]); the others group columns in order.
    pub fn encode_int_codes_gidx(
        &self,
        shape: &[usize],
        r0: usize,
        codes: &[i8],
        params: &[QParams],
        g_idx: Option<&[u32]>,
    ) -> Encoded {
        if let Scheme::Gptq { bits, group } = *self {
            return self.encode_gptq(shape, r0, codes, params, bits, group, g_idx);
        }
        let Scheme::Int {
            spec,
            granularity,
            scale_dtype,
            g_idx: has_g_idx,
        } = *self
        else {
            panic!("encode_int_codes on {}", self.label());
        };
        let (rows, cols) = rows_cols(shape);
        let nrows = codes.len() / cols.max(1);
        let r1 = r0 + nrows;
        let group = group_len(granularity, cols);
        let mut pieces = Vec::new();
        let mut push = |slot: usize, bytes: Vec<u8>| {
            pieces.push(self.placed(slot, shape, r0, r1, bytes));
        };
        let pw = pack::packed_words(cols, spec.bits);
        let mut packed = vec![0u32; nrows * pw];
        for (cr, pr) in codes.chunks_exact(cols).zip(packed.chunks_exact_mut(pw)) {
            pack::pack_row(cr, spec.bits, pr);
        }
        push(0, words_to_bytes(&packed));
        let scales: Vec<f32> = params.iter().map(|p| p.scale).collect();
        push(1, encode_scales(scale_dtype, &scales));
        let mut next = 2;
        if !spec.symmetric {
            if granularity == Granularity::Tensor {
                push(2, vec![params[0].zero as i8 as u8]);
            } else {
                let zeros: Vec<i8> = params.iter().map(|p| p.zero as i8).collect();
                let words = pack::pack_dim0(&zeros, nrows, cols / group, spec.bits);
                push(2, words_to_bytes(&words));
            }
            next = 3;
        }
        let mut b = Vec::with_capacity(16);
        b.extend_from_slice(&(rows as i64).to_le_bytes());
        b.extend_from_slice(&(cols as i64).to_le_bytes());
        push(next, b);
        if has_g_idx {
            let g: Vec<u32> = match g_idx {
                Some(g) => g.to_vec(),
                None => (0..cols).map(|c| (c / group) as u32).collect(),
            };
            push(next + 1, words_to_bytes(&g));
        }
        Encoded { pieces }
    }

    /// Decodes rows `r0..r1` from the slot bytes given by [`Self::slot_range`] for the same
    /// rows (`parts[i]` is slot i's range). Slots written whole must be passed whole.
    pub fn decode(&self, shape: &[usize], r0: usize, r1: usize, parts: &[&[u8]], out: &mut [f32]) {
        let (_, cols) = rows_cols(shape);
        let nrows = r1 - r0;
        debug_assert_eq!(out.len(), nrows * cols);
        match *self {
            Scheme::Float { dtype, .. } => dtype::decode_f32(dtype, parts[0], out),
            Scheme::Ggml(t) => {
                let rb = t.row_bytes(cols);
                if cols > 0 {
                    for (yr, xr) in parts[0].chunks_exact(rb).zip(out.chunks_exact_mut(cols)) {
                        ggml::dequantize_row(t, yr, xr);
                    }
                }
            }
            Scheme::Int {
                spec,
                granularity,
                scale_dtype,
                g_idx,
            } => {
                let group = group_len(granularity, cols);
                let groups = cols / group;
                let pw = pack::packed_words(cols, spec.bits);
                let words = bytes_to_words(parts[0]);
                let scales = decode_scales(scale_dtype, parts[1]);
                let zeros: Vec<i32> = if spec.symmetric {
                    vec![]
                } else if granularity == Granularity::Tensor {
                    vec![parts[2][0] as i8 as i32]
                } else {
                    // The chunk starts on a packed-word boundary (rows aligned to 32).
                    let w = bytes_to_words(parts[2]);
                    let all = pack::unpack_dim0(
                        &w,
                        w.len() / groups * 32 / spec.bits as usize,
                        groups,
                        spec.bits,
                    );
                    all[..nrows * groups].iter().map(|&z| z as i32).collect()
                };
                let mut codes = vec![0i8; cols];
                if g_idx {
                    // each column's group from the stored g_idx (the last slot)
                    let gi = bytes_to_words(parts[parts.len() - 1]);
                    for r in 0..nrows {
                        pack::unpack_row(&words[r * pw..(r + 1) * pw], spec.bits, &mut codes);
                        for c in 0..cols {
                            let k = r * groups + gi[c] as usize;
                            let p = QParams {
                                scale: scales[k],
                                zero: zeros.get(k).copied().unwrap_or(0),
                            };
                            rtn::dequantize(
                                p,
                                &codes[c..c + 1],
                                &mut out[r * cols + c..r * cols + c + 1],
                            );
                        }
                    }
                    return;
                }
                for r in 0..nrows {
                    pack::unpack_row(&words[r * pw..(r + 1) * pw], spec.bits, &mut codes);
                    for g in 0..groups {
                        let k = if granularity == Granularity::Tensor {
                            0
                        } else {
                            r * groups + g
                        };
                        let p = QParams {
                            scale: scales[k],
                            zero: zeros.get(k).copied().unwrap_or(0),
                        };
                        rtn::dequantize(
                            p,
                            &codes[g * group..(g + 1) * group],
                            &mut out[r * cols + g * group..r * cols + (g + 1) * group],
                        );
                    }
                }
            }
            Scheme::Gptq { bits, group } => {
                let (rows, _) = rows_cols(shape);
                let per = 32 / bits as usize;
                let mask = (1u32 << bits) - 1;
                let qw = bytes_to_words(parts[0]);
                let qz = bytes_to_words(parts[1]);
                let scales = decode_scales(DType::F16, parts[2]);
                let gidx = bytes_to_words(parts[3]);
                let _ = group;
                for r in r0..r1 {
                    for c in 0..cols {
                        let q = (qw[(c / per) * rows + r] >> (bits as usize * (c % per))) & mask;
                        let g = gidx[c] as usize;
                        let z = ((qz[g * (rows / per) + r / per] >> (bits as usize * (r % per)))
                            & mask)
                            + 1;
                        out[(r - r0) * cols + c] =
                            (q as i32 - z as i32) as f32 * scales[g * rows + r];
                    }
                }
            }
            Scheme::Fp8 {
                format,
                granularity,
                scale_dtype,
            } => {
                dtype::decode_f32(format, parts[0], out);
                let scales = decode_scales(scale_dtype, parts[1]);
                match granularity {
                    Granularity::Tensor => out.iter_mut().for_each(|v| *v *= scales[0]),
                    Granularity::Channel | Granularity::Group(_) => {
                        let g = group_len(granularity, cols);
                        for (o, s) in out.chunks_exact_mut(g).zip(&scales) {
                            o.iter_mut().for_each(|v| *v *= s);
                        }
                    }
                    Granularity::Block(br, bc) => {
                        let bcols = cols.div_ceil(bc);
                        for r in 0..nrows {
                            for c in 0..cols {
                                out[r * cols + c] *= scales[(r / br) * bcols + c / bc];
                            }
                        }
                    }
                }
            }
        }
    }

    /// The GPTQ v1 slots of a whole tensor from signed symmetric codes (`rows × cols`, in
    /// -2^(bits-1)..2^(bits-1)), per-group scales (`rows × groups`) and each column's group
    /// (`i / group` when not given).
    #[allow(clippy::too_many_arguments)]
    fn encode_gptq(
        &self,
        shape: &[usize],
        r0: usize,
        codes: &[i8],
        params: &[QParams],
        bits: u32,
        group: usize,
        g_idx: Option<&[u32]>,
    ) -> Encoded {
        let (rows, cols) = rows_cols(shape);
        assert_eq!(r0, 0, "the GPTQ layout is encoded whole");
        assert_eq!(codes.len(), rows * cols);
        let per = 32 / bits as usize;
        let groups = cols / group;
        let half = 1i32 << (bits - 1);
        let mask = (1u32 << bits) - 1;
        let mut qw = vec![0u32; cols / per * rows];
        for r in 0..rows {
            for c in 0..cols {
                let u = (codes[r * cols + c] as i32 + half) as u32 & mask;
                qw[(c / per) * rows + r] |= u << (bits as usize * (c % per));
            }
        }
        // v1 stores zero - 1; symmetric zero is 2^(bits-1)
        let zword = (0..per).fold(0u32, |w, j| {
            w | (((half - 1) as u32 & mask) << (bits as usize * j))
        });
        let qz = vec![zword; groups * rows / per];
        let mut sc = vec![0f32; groups * rows];
        for r in 0..rows {
            for g in 0..groups {
                sc[g * rows + r] = params[r * groups + g].scale;
            }
        }
        let gidx: Vec<u32> = match g_idx {
            Some(g) => g.to_vec(),
            None => (0..cols).map(|c| (c / group) as u32).collect(),
        };
        let pieces = [
            words_to_bytes(&qw),
            words_to_bytes(&qz),
            encode_scales(DType::F16, &sc),
            words_to_bytes(&gidx),
        ]
        .into_iter()
        .enumerate()
        .map(|(slot, bytes)| self.placed(slot, shape, 0, rows, bytes))
        .collect();
        Encoded { pieces }
    }

    /// The bytes of slot `slot` for rows `r0..r1`, placed where [`Self::slot_range`] says.
    fn placed(&self, slot: usize, shape: &[usize], r0: usize, r1: usize, bytes: Vec<u8>) -> Piece {
        let range = self.slot_range(slot, shape, r0, r1);
        debug_assert_eq!(range.len(), bytes.len(), "slot {slot} of {}", self.label());
        Piece {
            slot,
            offset: range.start,
            bytes,
        }
    }

    /// Stored bits per original value (all slots counted).
    pub fn bits_per_weight(&self, shape: &[usize]) -> f64 {
        let n: usize = shape.iter().product();
        let bytes: usize = self.slots(shape).iter().map(|s| s.nbytes).sum();
        if n == 0 {
            0.0
        } else {
            bytes as f64 * 8.0 / n as f64
        }
    }
}

fn gran_label(g: Granularity) -> String {
    match g {
        Granularity::Tensor => "tensor".into(),
        Granularity::Channel => "channel".into(),
        Granularity::Group(n) => format!("g{n}"),
        Granularity::Block(r, c) => format!("block{r}x{c}"),
    }
}

fn slot(suffix: &'static str, dt: DType, shape: Vec<usize>) -> Slot {
    let nbytes = shape.iter().product::<usize>() * dt.size();
    Slot {
        suffix,
        ty: SlotType::Dtype(dt),
        shape,
        nbytes,
    }
}

/// (rows, cols) view of a numpy-order shape: the last axis is the row.
pub fn rows_cols(shape: &[usize]) -> (usize, usize) {
    match shape.split_last() {
        None => (1, 1),
        Some((&c, rest)) => (rest.iter().product(), c),
    }
}

fn need_2d(shape: &[usize]) -> Result<(), SchemeError> {
    if shape.len() != 2 {
        return Err(SchemeError::Unsupported(format!(
            "only 2-D weights can be quantized (shape {shape:?})"
        )));
    }
    Ok(())
}

fn check_gran(g: Granularity, cols: usize) -> Result<(), SchemeError> {
    match g {
        Granularity::Group(n) if n == 0 || !cols.is_multiple_of(n) => {
            Err(SchemeError::NotMultiple {
                cols,
                what: "the group size",
                n,
            })
        }
        Granularity::Block(r, c) if r == 0 || c == 0 => {
            Err(SchemeError::Unsupported("empty block size".into()))
        }
        _ => Ok(()),
    }
}

fn group_len(g: Granularity, cols: usize) -> usize {
    match g {
        Granularity::Group(n) => n,
        _ => cols.max(1),
    }
}

fn scale_shape(g: Granularity, rows: usize, cols: usize) -> Vec<usize> {
    match g {
        Granularity::Tensor => vec![1],
        Granularity::Channel => vec![rows, 1],
        Granularity::Group(n) => vec![rows, cols / n],
        Granularity::Block(r, c) => vec![rows.div_ceil(r), cols.div_ceil(c)],
    }
}

fn absmax(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |a, v| a.max(v.abs()))
}

/// Largest finite value of a float storage type.
pub fn float_max(dt: DType) -> f32 {
    match dt {
        DType::F16 => 65504.0,
        DType::BF16 => half::bf16::MAX.to_f32(),
        _ => f32::MAX,
    }
}

/// Smallest normal value of a float storage type.
pub fn float_min_normal(dt: DType) -> f32 {
    match dt {
        DType::F16 => half::f16::MIN_POSITIVE.to_f32(),
        _ => f32::MIN_POSITIVE,
    }
}

fn encode_scales(dt: DType, s: &[f32]) -> Vec<u8> {
    let mut b = vec![0u8; s.len() * dt.size()];
    dtype::encode_float(dt, s, &mut b);
    b
}

fn decode_scales(dt: DType, b: &[u8]) -> Vec<f32> {
    let mut s = vec![0f32; b.len() / dt.size()];
    dtype::decode_f32(dt, b, &mut s);
    s
}

fn words_to_bytes(w: &[u32]) -> Vec<u8> {
    w.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn bytes_to_words(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::weight_matrix;
    use crate::ErrorStats;

    fn all_schemes() -> Vec<Scheme> {
        let mut v = vec![
            Scheme::Float {
                dtype: DType::F16,
                clamp: false,
            },
            Scheme::Float {
                dtype: DType::BF16,
                clamp: false,
            },
            Scheme::Ggml(GgmlType::Q4_0),
            Scheme::Ggml(GgmlType::Q5_1),
            Scheme::Ggml(GgmlType::Q8_0),
        ];
        for bits in [2, 3, 4, 8] {
            for symmetric in [true, false] {
                for g in [
                    Granularity::Tensor,
                    Granularity::Channel,
                    Granularity::Group(64),
                ] {
                    v.push(Scheme::Int {
                        spec: IntSpec { bits, symmetric },
                        granularity: g,
                        scale_dtype: DType::BF16,
                        g_idx: false,
                    });
                }
            }
        }
        for format in [DType::F8E4M3, DType::F8E5M2] {
            for g in [
                Granularity::Tensor,
                Granularity::Channel,
                Granularity::Block(128, 128),
            ] {
                v.push(Scheme::Fp8 {
                    format,
                    granularity: g,
                    scale_dtype: DType::F32,
                });
            }
        }
        v
    }

    /// Encodes a tensor in chunks of `chunk` rows into whole slot buffers.
    fn encode_chunked(s: &Scheme, shape: &[usize], x: &[f32], chunk: usize) -> Vec<Vec<u8>> {
        let (rows, cols) = rows_cols(shape);
        let (mn, mx) = rtn::min_max(x);
        let stats = TensorStats { min: mn, max: mx };
        let mut bufs: Vec<Vec<u8>> = s
            .slots(shape)
            .iter()
            .map(|sl| vec![0xAA; sl.nbytes])
            .collect();
        let mut r0 = 0;
        while r0 < rows {
            let r1 = (r0 + chunk).min(rows);
            for p in s.encode(shape, r0, &x[r0 * cols..r1 * cols], stats).pieces {
                bufs[p.slot][p.offset..p.offset + p.bytes.len()].copy_from_slice(&p.bytes);
            }
            r0 = r1;
        }
        bufs
    }

    #[test]
    fn chunked_encoding_equals_whole_and_decodes_close() {
        let shape = [300usize, 256];
        let x = weight_matrix(300, 256, 0.02, 11);
        for s in all_schemes() {
            s.check(&shape).unwrap();
            let whole = encode_chunked(&s, &shape, &x, 300);
            // 128-row chunks: a multiple of every row_align in use
            let chunked = encode_chunked(&s, &shape, &x, 128);
            assert_eq!(whole, chunked, "{}", s.label());
            let parts: Vec<&[u8]> = whole.iter().map(|b| b.as_slice()).collect();
            let mut y = vec![0f32; x.len()];
            s.decode(&shape, 0, 300, &parts, &mut y);
            // decode a middle chunk from its own slot ranges
            let (r0, r1) = (128, 256);
            let sub: Vec<&[u8]> = (0..parts.len())
                .map(|i| &parts[i][s.slot_range(i, &shape, r0, r1)])
                .collect();
            let mut y2 = vec![0f32; (r1 - r0) * 256];
            s.decode(&shape, r0, r1, &sub, &mut y2);
            assert_eq!(&y[r0 * 256..r1 * 256], &y2[..], "{}", s.label());
            let e = ErrorStats::of(&x, &y);
            let min_sqnr = match s {
                Scheme::Int { spec, .. } if spec.bits <= 3 => 0.0,
                Scheme::Int {
                    granularity: Granularity::Tensor,
                    spec,
                    ..
                } if spec.bits == 4 => 0.0,
                _ => 12.0,
            };
            assert!(e.sqnr_db() > min_sqnr, "{}: {}", s.label(), e.sqnr_db());
        }
    }

    #[test]
    fn finer_granularity_is_more_accurate() {
        let shape = [64usize, 512];
        let x = weight_matrix(64, 512, 0.02, 5);
        let sq = |g| {
            let s = Scheme::Int {
                spec: IntSpec {
                    bits: 4,
                    symmetric: true,
                },
                granularity: g,
                scale_dtype: DType::F32,
                g_idx: false,
            };
            let b = encode_chunked(&s, &shape, &x, 64);
            let parts: Vec<&[u8]> = b.iter().map(|v| v.as_slice()).collect();
            let mut y = vec![0f32; x.len()];
            s.decode(&shape, 0, 64, &parts, &mut y);
            ErrorStats::of(&x, &y).sqnr_db()
        };
        let (t, c, g) = (
            sq(Granularity::Tensor),
            sq(Granularity::Channel),
            sq(Granularity::Group(32)),
        );
        assert!(t < c && c < g, "{t} {c} {g}");
    }

    #[test]
    fn group_must_divide_rows() {
        let s = Scheme::Int {
            spec: IntSpec {
                bits: 4,
                symmetric: true,
            },
            granularity: Granularity::Group(128),
            scale_dtype: DType::BF16,
            g_idx: false,
        };
        assert!(matches!(
            s.check(&[8, 576]),
            Err(SchemeError::NotMultiple {
                cols: 576,
                n: 128,
                ..
            })
        ));
        assert!(Scheme::Ggml(GgmlType::Q4_0).check(&[8, 48]).is_err());
        assert!(s.check(&[576]).is_err());
    }

    #[test]
    fn bits_per_weight() {
        assert_eq!(Scheme::Ggml(GgmlType::Q4_0).bits_per_weight(&[4, 64]), 4.5);
        assert_eq!(Scheme::Ggml(GgmlType::Q8_0).bits_per_weight(&[4, 64]), 8.5);
    }
}

#[cfg(test)]
mod gptq_layout_tests {
    use super::*;

    /// The GPTQ v1 layout stores the same values as compressed-tensors' symmetric int scheme
    /// with f16 scales (same RTN codes and scales, different packing), for 2, 4 and 8 bits.
    #[test]
    fn gptq_layout_round_trips_like_int() {
        let (rows, cols) = (48, 256);
        let x = crate::synth::weight_matrix(rows, cols, 0.02, 5);
        for bits in [2u32, 4, 8] {
            for group in [32, 128, 256] {
                let g = Scheme::Gptq { bits, group };
                let i = Scheme::Int {
                    spec: IntSpec {
                        bits,
                        symmetric: true,
                    },
                    granularity: Granularity::Group(group),
                    scale_dtype: DType::F16,
                    g_idx: false,
                };
                g.check(&[rows, cols]).unwrap();
                let stats = TensorStats::default();
                let decode = |s: &Scheme| {
                    let e = s.encode(&[rows, cols], 0, &x, stats);
                    let parts: Vec<&[u8]> = e.pieces.iter().map(|p| p.bytes.as_slice()).collect();
                    for (p, sl) in e.pieces.iter().zip(s.slots(&[rows, cols])) {
                        assert_eq!(p.bytes.len(), sl.nbytes, "{}", s.label());
                    }
                    let mut y = vec![0f32; rows * cols];
                    s.decode(&[rows, cols], 0, rows, &parts, &mut y);
                    y
                };
                assert_eq!(decode(&g), decode(&i), "bits {bits} group {group}");
            }
        }
        assert!(Scheme::Gptq { bits: 3, group: 32 }.check(&[8, 64]).is_err());
        assert!(Scheme::Gptq { bits: 4, group: 32 }
            .check(&[12, 64])
            .is_err());
    }
}

#[cfg(test)]
mod int_g_idx_tests {
    use super::*;

    /// compressed-tensors checkpoints with a `weight_g_idx` (older act-order GPTQ outputs):
    /// each column decodes with its own group's parameters.
    #[test]
    fn int_scheme_decodes_with_a_g_idx() {
        let (rows, cols, group) = (32, 64, 16);
        let groups = cols / group;
        let s = Scheme::Int {
            spec: IntSpec {
                bits: 4,
                symmetric: false,
            },
            granularity: Granularity::Group(group),
            scale_dtype: DType::F32,
            g_idx: true,
        };
        s.check(&[rows, cols]).unwrap();
        let mut rng = crate::synth::Rng::new(9);
        let codes: Vec<i8> = (0..rows * cols)
            .map(|_| (rng.next_u64() % 16) as i8 - 8)
            .collect();
        let params: Vec<QParams> = (0..rows * groups)
            .map(|k| QParams {
                scale: 0.01 * (1 + k % 7) as f32,
                zero: (k % 5) as i32 - 2,
            })
            .collect();
        // a permuted grouping: column c in group (c * 3) % groups
        let g_idx: Vec<u32> = (0..cols).map(|c| ((c * 3) % groups) as u32).collect();
        let e = s.encode_int_codes_gidx(&[rows, cols], 0, &codes, &params, Some(&g_idx));
        let parts: Vec<&[u8]> = e.pieces.iter().map(|p| p.bytes.as_slice()).collect();
        let mut y = vec![0f32; rows * cols];
        s.decode(&[rows, cols], 0, rows, &parts, &mut y);
        for r in 0..rows {
            for c in 0..cols {
                let p = params[r * groups + g_idx[c] as usize];
                let want = (codes[r * cols + c] as i32 - p.zero) as f32 * p.scale;
                assert_eq!(y[r * cols + c], want, "row {r} column {c}");
            }
        }
        assert!(Scheme::Int {
            spec: IntSpec {
                bits: 4,
                symmetric: true
            },
            granularity: Granularity::Channel,
            scale_dtype: DType::F32,
            g_idx: true,
        }
        .check(&[rows, cols])
        .is_err());
    }
}
