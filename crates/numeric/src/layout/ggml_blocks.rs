//! A ggml block type (GGUF output): row-major blocks along each row, encoded and decoded by
//! the type's codec ([`crate::ggml::BlockCodec`]).

use super::{
    placed, rows_cols, CodeGrid, Codes, Encoded, Layout, SchemeError, Slot, SlotType, TensorStats,
};
use crate::ggml::{self, GgmlType};
use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GgmlBlocks(pub GgmlType);

impl Layout for GgmlBlocks {
    fn label(&self) -> String {
        self.0.to_string()
    }

    fn check(&self, shape: &[usize]) -> Result<(), SchemeError> {
        let t = self.0;
        if !t.can_quantize() {
            return Err(SchemeError::Unsupported(format!(
                "writing {t} is not supported yet"
            )));
        }
        let cols = shape.last().copied().unwrap_or(1);
        let bs = t.block().0;
        if cols % bs != 0 {
            return Err(SchemeError::NotMultiple {
                cols,
                what: "the block size",
                n: bs,
            });
        }
        Ok(())
    }

    fn slots(&self, shape: &[usize]) -> Vec<Slot> {
        let (rows, cols) = rows_cols(shape);
        vec![Slot {
            suffix: "",
            ty: SlotType::Ggml(self.0),
            shape: shape.to_vec(),
            nbytes: rows * self.0.row_bytes(cols),
        }]
    }

    fn slot_range(&self, _slot: usize, shape: &[usize], r0: usize, r1: usize) -> Range<usize> {
        let bpr = self.0.row_bytes(rows_cols(shape).1);
        r0 * bpr..r1 * bpr
    }

    fn encode(
        &self,
        shape: &[usize],
        r0: usize,
        x: &[f32],
        _stats: TensorStats,
        importance: Option<&[f32]>,
    ) -> Encoded {
        let t = self.0;
        let cols = rows_cols(shape).1;
        let nrows = x.len() / cols.max(1);
        let rb = t.row_bytes(cols);
        let mut out = vec![0u8; nrows * rb];
        // a stacked 3-D tensor (a mixture's experts) may have importance per matrix, as
        // llama-quantize reads llama-imatrix's per-expert entries: matrix i's rows use slice i
        let per_matrix = match shape {
            [n, rows, _] if importance.is_some_and(|w| w.len() == n * cols) => Some(*rows),
            _ => None,
        };
        if cols > 0 {
            for (k, (xr, yr)) in x
                .chunks_exact(cols)
                .zip(out.chunks_exact_mut(rb))
                .enumerate()
            {
                let w = match (importance, per_matrix) {
                    (Some(w), Some(rows)) => {
                        let m = (r0 + k) / rows.max(1);
                        Some(&w[m * cols..(m + 1) * cols])
                    }
                    (w, _) => w,
                };
                match w {
                    Some(w) => ggml::quantize_row_weighted(t, xr, w, yr),
                    None => ggml::quantize_row(t, xr, yr),
                }
            }
        }
        Encoded {
            pieces: vec![placed(self, 0, shape, r0, r0 + nrows, out)],
        }
    }

    fn code_grid(&self, _shape: &[usize]) -> Option<CodeGrid> {
        self.0.grid().map(|_| CodeGrid::Ggml(self.0))
    }

    /// Codes on the type's grid: per block, its scale (and offset) are the block's stored
    /// parameters.
    fn encode_codes(
        &self,
        shape: &[usize],
        r0: usize,
        c: Codes<'_>,
    ) -> Result<Encoded, SchemeError> {
        let t = self.0;
        let grid = t
            .grid()
            .ok_or_else(|| SchemeError::Unsupported(format!("{t} takes no codes")))?;
        let cols = rows_cols(shape).1;
        let groups = cols / grid.group();
        let nrows = c.codes.len() / cols.max(1);
        let rb = t.row_bytes(cols);
        let mut bytes = vec![0u8; nrows * rb];
        for (k, out) in bytes.chunks_exact_mut(rb).enumerate() {
            let d: Vec<f32> = c.params[k * groups..(k + 1) * groups]
                .iter()
                .map(|p| p.scale)
                .collect();
            grid.pack_row(
                &c.codes[k * cols..(k + 1) * cols],
                &d,
                &c.offsets[k * groups..(k + 1) * groups],
                out,
            );
        }
        Ok(Encoded {
            pieces: vec![placed(self, 0, shape, r0, r0 + nrows, bytes)],
        })
    }

    fn decode(&self, shape: &[usize], _r0: usize, _r1: usize, parts: &[&[u8]], out: &mut [f32]) {
        let cols = rows_cols(shape).1;
        let rb = self.0.row_bytes(cols);
        if cols > 0 {
            for (yr, xr) in parts[0].chunks_exact(rb).zip(out.chunks_exact_mut(cols)) {
                ggml::dequantize_row(self.0, yr, xr);
            }
        }
    }
}
