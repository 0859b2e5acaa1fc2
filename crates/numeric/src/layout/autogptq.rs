//! AutoGPTQ's "v1" checkpoint layout (GPTQModel, transformers and vLLM read it): symmetric
//! unsigned codes packed along the input dimension into `qweight` [cols·bits/32, rows], zero
//! points minus one (always 2^(bits-1) − 1) packed into `qzeros` [groups, rows·bits/32], f16
//! `scales` [groups, rows] and `g_idx` [cols]. Transposed storage, so a tensor is encoded and
//! decoded whole (one chunk).

use super::{
    bytes_to_words, check_gran, decode_scales, encode_scales, need_2d, placed, rows_cols, slot,
    words_to_bytes, CodeGrid, Codes, Encoded, Granularity, Layout, SchemeError, Slot, TensorStats,
};
use crate::dtype::DType;
use crate::rtn::{self, IntSpec};
use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutoGptq {
    pub bits: u32,
    pub group: usize,
}

impl AutoGptq {
    fn spec(&self) -> IntSpec {
        IntSpec {
            bits: self.bits,
            symmetric: true,
        }
    }
}

impl Layout for AutoGptq {
    fn label(&self) -> String {
        format!("gptq-int{}-g{}", self.bits, self.group)
    }

    fn row_align(&self) -> usize {
        // the whole tensor in one chunk
        1 << 40
    }

    fn check(&self, shape: &[usize]) -> Result<(), SchemeError> {
        let bits = self.bits;
        if !matches!(bits, 2 | 4 | 8) {
            return Err(SchemeError::Unsupported(format!(
                "{bits} bits in the GPTQ layout (2, 4 and 8 supported)"
            )));
        }
        need_2d(shape)?;
        let (rows, cols) = rows_cols(shape);
        check_gran(Granularity::Group(self.group), cols)?;
        let per = 32 / bits as usize;
        if !rows.is_multiple_of(per) {
            return Err(SchemeError::Unsupported(format!(
                "{rows} output rows: the GPTQ layout packs {per} per int32"
            )));
        }
        Ok(())
    }

    fn slots(&self, shape: &[usize]) -> Vec<Slot> {
        let (rows, cols) = rows_cols(shape);
        let per = 32 / self.bits as usize;
        let groups = cols / self.group.max(1);
        vec![
            slot(".qweight", DType::I32, vec![cols / per, rows]),
            slot(".qzeros", DType::I32, vec![groups, rows / per]),
            slot(".scales", DType::F16, vec![groups, rows]),
            slot(".g_idx", DType::I32, vec![cols]),
        ]
    }

    fn slot_range(&self, slot: usize, shape: &[usize], _r0: usize, _r1: usize) -> Range<usize> {
        0..self.slots(shape)[slot].nbytes
    }

    fn encode(
        &self,
        shape: &[usize],
        r0: usize,
        x: &[f32],
        _stats: TensorStats,
        _importance: Option<&[f32]>,
    ) -> Encoded {
        let cols = rows_cols(shape).1;
        let q = rtn::quantize_rows(self.spec(), x, cols, self.group, DType::F16, None);
        let g_idx: Vec<u32> = (0..cols).map(|c| (c / self.group) as u32).collect();
        let offsets = vec![0f32; q.params.len()];
        let codes = Codes {
            codes: &q.codes,
            params: &q.params,
            offsets: &offsets,
            g_idx: &g_idx,
        };
        self.encode_codes(shape, r0, codes)
            .expect("RTN codes fit the layout")
    }

    fn code_grid(&self, _shape: &[usize]) -> Option<CodeGrid> {
        Some(CodeGrid::Int {
            spec: self.spec(),
            group: Some(self.group),
            scale_dtype: DType::F16,
            stores_g_idx: true,
        })
    }

    /// The slots of a whole tensor from signed symmetric codes (`rows × cols`, in
    /// -2^(bits-1)..2^(bits-1)), per-group scales (`rows × groups`) and each column's group.
    fn encode_codes(
        &self,
        shape: &[usize],
        r0: usize,
        c: Codes<'_>,
    ) -> Result<Encoded, SchemeError> {
        let (rows, cols) = rows_cols(shape);
        if r0 != 0 || c.codes.len() != rows * cols || c.g_idx.len() != cols {
            return Err(SchemeError::Unsupported(
                "the GPTQ layout is encoded whole".into(),
            ));
        }
        let bits = self.bits;
        let per = 32 / bits as usize;
        let groups = cols / self.group;
        let half = 1i32 << (bits - 1);
        let mask = (1u32 << bits) - 1;
        let mut qw = vec![0u32; cols / per * rows];
        for r in 0..rows {
            for col in 0..cols {
                let u = (c.codes[r * cols + col] as i32 + half) as u32 & mask;
                qw[(col / per) * rows + r] |= u << (bits as usize * (col % per));
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
                sc[g * rows + r] = c.params[r * groups + g].scale;
            }
        }
        let pieces = [
            words_to_bytes(&qw),
            words_to_bytes(&qz),
            encode_scales(DType::F16, &sc),
            words_to_bytes(c.g_idx),
        ]
        .into_iter()
        .enumerate()
        .map(|(slot, bytes)| placed(self, slot, shape, 0, rows, bytes))
        .collect();
        Ok(Encoded { pieces })
    }

    fn checkpoint_meta(&self, _actorder: Option<&str>) -> Option<super::CheckpointMeta> {
        Some(super::CheckpointMeta::AutoGptq {
            bits: self.bits,
            group: self.group,
        })
    }

    fn decode(&self, shape: &[usize], r0: usize, r1: usize, parts: &[&[u8]], out: &mut [f32]) {
        let (rows, cols) = rows_cols(shape);
        let bits = self.bits;
        let per = 32 / bits as usize;
        let mask = (1u32 << bits) - 1;
        let qw = bytes_to_words(parts[0]);
        let qz = bytes_to_words(parts[1]);
        let scales = decode_scales(DType::F16, parts[2]);
        let gidx = bytes_to_words(parts[3]);
        for r in r0..r1 {
            for c in 0..cols {
                let q = (qw[(c / per) * rows + r] >> (bits as usize * (c % per))) & mask;
                let g = gidx[c] as usize;
                let z =
                    ((qz[g * (rows / per) + r / per] >> (bits as usize * (r % per))) & mask) + 1;
                out[(r - r0) * cols + c] = (q as i32 - z as i32) as f32 * scales[g * rows + r];
            }
        }
    }
}

/// Reads an AutoGPTQ v1 weight from its `*.qweight` and companions: qweight
/// [cols·bits/32, rows], qzeros, scales [groups, rows], g_idx [cols].
pub fn read<'a>(
    ck: &dyn super::Checkpoint<'a>,
    t: super::Stored<'a>,
) -> Option<Result<super::ReadWeight<'a>, String>> {
    let prefix = t.name.strip_suffix(".qweight")?;
    Some(read_qweight(ck, t, prefix))
}

fn read_qweight<'a>(
    ck: &dyn super::Checkpoint<'a>,
    t: super::Stored<'a>,
    prefix: &str,
) -> Result<super::ReadWeight<'a>, String> {
    let comp = |suffix: &str| {
        ck.get(&format!("{prefix}.{suffix}"))
            .ok_or_else(|| format!("has no {suffix} companion"))
    };
    let (qz, sc, gi) = (comp("qzeros")?, comp("scales")?, comp("g_idx")?);
    let rows = sc.shape.get(1).copied().unwrap_or(0);
    let groups = sc.shape.first().copied().unwrap_or(0);
    let cols = gi.shape.first().copied().unwrap_or(0);
    let packed_rows = t.shape.first().copied().unwrap_or(0);
    if cols == 0 || groups == 0 || (32 * packed_rows) % cols != 0 {
        return Err(format!(
            "shapes qweight {:?}, scales {:?}, g_idx {:?} do not fit together",
            t.shape, sc.shape, gi.shape
        ));
    }
    let scheme = super::Scheme::Gptq(AutoGptq {
        bits: (32 * packed_rows / cols) as u32,
        group: cols / groups,
    });
    scheme.check(&[rows, cols]).map_err(|e| e.to_string())?;
    if sc.dtype != DType::F16 {
        return Err(format!("scales are {}, expected F16", sc.dtype));
    }
    let slots = vec![t.bytes, qz.bytes, sc.bytes, gi.bytes];
    super::check_sizes(&scheme, rows, cols, &slots)?;
    if let Some(&g) = bytes_to_words(gi.bytes)
        .iter()
        .find(|&&g| g as usize >= groups)
    {
        return Err(format!("g_idx holds group {g} of {groups}"));
    }
    Ok(super::ReadWeight {
        name: format!("{prefix}.weight"),
        shape: vec![rows, cols],
        scheme,
        slots,
        stored: [
            t.name.to_string(),
            qz.name.to_string(),
            sc.name.to_string(),
            gi.name.to_string(),
        ]
        .to_vec(),
    })
}
