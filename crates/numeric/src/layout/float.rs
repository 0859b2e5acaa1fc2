//! Plain float storage (F32, F16, BF16): one slot, the tensor itself.

use super::{placed, rows_cols, Encoded, Layout, SchemeError, Slot, SlotType, TensorStats};
use crate::dtype::{self, DType};
use std::ops::Range;

/// `clamp` saturates values beyond the type's range (else the writer refuses them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FloatLayout {
    pub dtype: DType,
    pub clamp: bool,
}

impl Layout for FloatLayout {
    fn label(&self) -> String {
        self.dtype.to_string()
    }

    fn check(&self, _shape: &[usize]) -> Result<(), SchemeError> {
        if !matches!(self.dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(SchemeError::Unsupported(format!(
                "{} is not a float storage type",
                self.dtype
            )));
        }
        Ok(())
    }

    fn slots(&self, shape: &[usize]) -> Vec<Slot> {
        let (rows, cols) = rows_cols(shape);
        vec![Slot {
            suffix: "",
            ty: SlotType::Dtype(self.dtype),
            shape: shape.to_vec(),
            nbytes: rows * cols * self.dtype.size(),
        }]
    }

    fn slot_range(&self, _slot: usize, shape: &[usize], r0: usize, r1: usize) -> Range<usize> {
        let bpr = rows_cols(shape).1 * self.dtype.size();
        r0 * bpr..r1 * bpr
    }

    fn encode(
        &self,
        shape: &[usize],
        r0: usize,
        x: &[f32],
        _stats: TensorStats,
        _importance: Option<&[f32]>,
    ) -> Encoded {
        let dt = self.dtype;
        let mut out = vec![0u8; x.len() * dt.size()];
        if self.clamp {
            let max = super::float_max(dt);
            let c: Vec<f32> = x.iter().map(|v| v.clamp(-max, max)).collect();
            dtype::encode_float(dt, &c, &mut out);
        } else {
            dtype::encode_float(dt, x, &mut out);
        }
        let r1 = r0 + x.len() / rows_cols(shape).1.max(1);
        Encoded {
            pieces: vec![placed(self, 0, shape, r0, r1, out)],
        }
    }

    fn decode(&self, _shape: &[usize], _r0: usize, _r1: usize, parts: &[&[u8]], out: &mut [f32]) {
        dtype::decode_f32(self.dtype, parts[0], out)
    }
}
