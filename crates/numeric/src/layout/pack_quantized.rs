//! compressed-tensors "pack-quantized": integer codes packed into int32 along each row
//! (`weight_packed`), scales (`weight_scale`), zero points packed along the output dimension
//! for asymmetric schemes (`weight_zero_point`), the logical shape (`weight_shape`) and, for
//! checkpoints with act-order groups, each column's group (`weight_g_idx`).

use super::{
    bytes_to_words, check_gran, decode_scales, encode_scales, group_len, need_2d, placed,
    rows_cols, scale_shape, slot, words_to_bytes, CodeGrid, Codes, Encoded, Granularity, Layout,
    Piece, SchemeError, Slot, TensorStats,
};
use crate::dtype::DType;
use crate::pack;
use crate::rtn::{self, IntSpec, QParams};
use std::ops::Range;

/// With `g_idx` (group scales only) each column's group is stored in a `weight_g_idx` slot
/// (compressed-tensors `actorder: "group"`, read from older checkpoints); else groups are
/// consecutive columns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PackQuantized {
    pub spec: IntSpec,
    pub granularity: Granularity,
    pub scale_dtype: DType,
    pub g_idx: bool,
}

impl PackQuantized {
    fn encode_int(
        &self,
        shape: &[usize],
        r0: usize,
        codes: &[i8],
        params: &[QParams],
        g_idx: Option<&[u32]>,
    ) -> Encoded {
        let (rows, cols) = rows_cols(shape);
        let spec = self.spec;
        let nrows = codes.len() / cols.max(1);
        let r1 = r0 + nrows;
        let group = group_len(self.granularity, cols);
        let mut pieces: Vec<Piece> = Vec::new();
        let mut push = |slot: usize, bytes: Vec<u8>| {
            pieces.push(placed(self, slot, shape, r0, r1, bytes));
        };
        let pw = pack::packed_words(cols, spec.bits);
        let mut packed = vec![0u32; nrows * pw];
        for (cr, pr) in codes.chunks_exact(cols).zip(packed.chunks_exact_mut(pw)) {
            pack::pack_row(cr, spec.bits, pr);
        }
        push(0, words_to_bytes(&packed));
        let scales: Vec<f32> = params.iter().map(|p| p.scale).collect();
        push(1, encode_scales(self.scale_dtype, &scales));
        let mut next = 2;
        if !spec.symmetric {
            if self.granularity == Granularity::Tensor {
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
        if self.g_idx {
            let g: Vec<u32> = match g_idx {
                Some(g) => g.to_vec(),
                None => (0..cols).map(|c| (c / group) as u32).collect(),
            };
            push(next + 1, words_to_bytes(&g));
        }
        Encoded { pieces }
    }
}

impl Layout for PackQuantized {
    fn label(&self) -> String {
        format!(
            "int{}-{}-{}",
            self.spec.bits,
            if self.spec.symmetric { "sym" } else { "asym" },
            self.granularity.label()
        )
    }

    fn row_align(&self) -> usize {
        // zero points are packed along the output dimension: 32 rows fill whole words
        match self.granularity {
            Granularity::Channel | Granularity::Group(_) if !self.spec.symmetric => 32,
            _ => 1,
        }
    }

    fn needs_tensor_stats(&self) -> bool {
        self.granularity == Granularity::Tensor
    }

    fn check(&self, shape: &[usize]) -> Result<(), SchemeError> {
        let cols = shape.last().copied().unwrap_or(1);
        if self.g_idx && !matches!(self.granularity, Granularity::Group(_)) {
            return Err(SchemeError::Unsupported(
                "a g_idx needs group scales".into(),
            ));
        }
        if !(1..=8).contains(&self.spec.bits) {
            return Err(SchemeError::Unsupported(format!(
                "{} bits (1..8 supported)",
                self.spec.bits
            )));
        }
        need_2d(shape)?;
        check_gran(self.granularity, cols)?;
        if matches!(self.granularity, Granularity::Block(..)) {
            return Err(SchemeError::Unsupported(
                "block scales are only for fp8".into(),
            ));
        }
        Ok(())
    }

    fn slots(&self, shape: &[usize]) -> Vec<Slot> {
        let (rows, cols) = rows_cols(shape);
        let pw = pack::packed_words(cols, self.spec.bits);
        let sshape = scale_shape(self.granularity, rows, cols);
        let mut v = vec![
            slot("_packed", DType::I32, vec![rows, pw]),
            slot("_scale", self.scale_dtype, sshape.clone()),
        ];
        if !self.spec.symmetric {
            if self.granularity == Granularity::Tensor {
                v.push(slot("_zero_point", DType::I8, vec![1]));
            } else {
                let pr = pack::packed_words(rows, self.spec.bits);
                v.push(slot("_zero_point", DType::I32, vec![pr, sshape[1]]));
            }
        }
        v.push(slot("_shape", DType::I64, vec![2]));
        if self.g_idx {
            v.push(slot("_g_idx", DType::I32, vec![cols]));
        }
        v
    }

    fn slot_range(&self, slot: usize, shape: &[usize], r0: usize, r1: usize) -> Range<usize> {
        let (rows, cols) = rows_cols(shape);
        let slots = self.slots(shape);
        let s = &slots[slot];
        let per_row = |bpr: usize| r0 * bpr..r1 * bpr;
        let tensor = self.granularity == Granularity::Tensor;
        match s.suffix {
            "_packed" => per_row(pack::packed_words(cols, self.spec.bits) * 4),
            "_scale" if tensor => 0..s.nbytes,
            "_scale" => per_row(s.shape[1] * self.scale_dtype.size()),
            "_zero_point" if tensor => 0..s.nbytes,
            "_zero_point" => {
                let bpr = s.shape[1] * 4;
                let bits = self.spec.bits as usize;
                let p0 = r0 * bits / 32;
                let p1 = if r1 == rows {
                    s.shape[0]
                } else {
                    r1 * bits / 32
                };
                p0 * bpr..p1 * bpr
            }
            _ => 0..s.nbytes,
        }
    }

    fn encode(
        &self,
        shape: &[usize],
        r0: usize,
        x: &[f32],
        stats: TensorStats,
        _importance: Option<&[f32]>,
    ) -> Encoded {
        let cols = rows_cols(shape).1;
        let group = group_len(self.granularity, cols);
        let fixed = (self.granularity == Granularity::Tensor)
            .then(|| rtn::fit(self.spec, stats.min, stats.max, self.scale_dtype));
        let q = rtn::quantize_rows(self.spec, x, cols, group, self.scale_dtype, fixed);
        let params = match fixed {
            Some(p) => vec![p],
            None => q.params,
        };
        self.encode_int(shape, r0, &q.codes, &params, None)
    }

    fn code_grid(&self, shape: &[usize]) -> Option<CodeGrid> {
        let group = match self.granularity {
            Granularity::Group(n) => Some(n),
            Granularity::Channel => None,
            // one scale for the whole tensor: nothing for a method to fit per group
            _ => return None,
        };
        let _ = shape;
        Some(CodeGrid::Int {
            spec: self.spec,
            group,
            scale_dtype: self.scale_dtype,
            stores_g_idx: self.g_idx,
        })
    }

    fn encode_codes(
        &self,
        shape: &[usize],
        r0: usize,
        c: Codes<'_>,
    ) -> Result<Encoded, SchemeError> {
        Ok(self.encode_int(shape, r0, c.codes, c.params, Some(c.g_idx)))
    }

    fn checkpoint_meta(&self, actorder: Option<&str>) -> Option<super::CheckpointMeta> {
        Some(super::CheckpointMeta::CompressedTensors {
            weights: super::ct_weights(
                "int",
                self.spec.bits,
                self.spec.symmetric,
                self.granularity,
                actorder,
            ),
            format: "pack-quantized",
        })
    }

    fn decode(&self, shape: &[usize], r0: usize, r1: usize, parts: &[&[u8]], out: &mut [f32]) {
        let cols = rows_cols(shape).1;
        let nrows = r1 - r0;
        let spec = self.spec;
        let granularity = self.granularity;
        let group = group_len(granularity, cols);
        let groups = cols / group;
        let pw = pack::packed_words(cols, spec.bits);
        let words = bytes_to_words(parts[0]);
        let scales = decode_scales(self.scale_dtype, parts[1]);
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
        if self.g_idx {
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
}

/// Reads a pack-quantized weight from its `*_packed` tensor and companions. The bit width
/// comes from `quantization_config` (else from the packed width), symmetry from the presence
/// of a zero point, the granularity from the scale's shape.
pub fn read<'a>(
    ck: &dyn super::Checkpoint<'a>,
    t: super::Stored<'a>,
) -> Option<Result<super::ReadWeight<'a>, String>> {
    let base = t.name.strip_suffix("_packed")?;
    Some(read_packed(ck, t, base))
}

fn read_packed<'a>(
    ck: &dyn super::Checkpoint<'a>,
    t: super::Stored<'a>,
    base: &str,
) -> Result<super::ReadWeight<'a>, String> {
    let name = |s: &str| format!("{base}{s}");
    let scale = ck.get(&name("_scale")).ok_or("has no _scale companion")?;
    let shape_t = ck.get(&name("_shape")).ok_or("has no _shape companion")?;
    let zp = ck.get(&name("_zero_point"));
    let sb = shape_t.bytes;
    let dims: Vec<u64> = match shape_t.dtype {
        DType::I64 => sb
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as u64)
            .collect(),
        DType::I32 => sb
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64)
            .collect(),
        d => return Err(format!("_shape has dtype {d}")),
    };
    let dims: Vec<usize> = dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("_shape {dims:?} is out of range")))
        .collect::<Result<_, _>>()?;
    if dims.len() != 2 {
        return Err(format!("_shape {dims:?} is not 2-D"));
    }
    let (rows, cols) = (dims[0], dims[1]);
    let w = ck.weight_args(base.strip_suffix(".weight").unwrap_or(base));
    let pw = t.shape.get(1).copied().unwrap_or(0);
    let bits = w
        .and_then(|w| w.get("num_bits"))
        .and_then(|b| b.as_u64())
        .map(|b| b as u32)
        .or_else(|| (1..=8).rev().find(|b| pack::packed_words(cols, *b) == pw))
        .ok_or("cannot tell the bit width (no quantization_config)")?;
    super::check_scale_dtype(scale.dtype, &name("_scale"))?;
    let ng = scale.shape.get(1).copied().unwrap_or(1);
    let granularity = if scale.shape.iter().product::<usize>() == 1 && rows != 1 {
        Granularity::Tensor
    } else if ng <= 1 {
        Granularity::Channel
    } else {
        Granularity::Group(cols / ng)
    };
    let gi = ck.get(&name("_g_idx"));
    let scheme = super::Scheme::Int(PackQuantized {
        spec: IntSpec {
            bits,
            symmetric: zp.is_none(),
        },
        granularity,
        scale_dtype: scale.dtype,
        g_idx: gi.is_some(),
    });
    scheme.check(&[rows, cols]).map_err(|e| e.to_string())?;
    let mut slots = vec![t.bytes, scale.bytes];
    let mut stored = vec![t.name.to_string(), name("_scale"), name("_shape")];
    if let Some(z) = zp {
        slots.push(z.bytes);
        stored.push(name("_zero_point"));
    }
    slots.push(sb);
    if let Some(g) = gi {
        if let Some(&x) = bytes_to_words(g.bytes)
            .iter()
            .find(|&&x| x as usize >= ng.max(1))
        {
            return Err(format!("g_idx holds group {x} of {ng}"));
        }
        slots.push(g.bytes);
        stored.push(name("_g_idx"));
    }
    super::check_sizes(&scheme, rows, cols, &slots)?;
    Ok(super::ReadWeight {
        name: base.to_string(),
        shape: vec![rows, cols],
        scheme,
        slots,
        stored,
    })
}
