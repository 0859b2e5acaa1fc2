//! Plain float storage as ggml types: F32, F16 and BF16 (one value per "block").

use super::{BlockCodec, GgmlType};
use crate::dtype::{decode_f32, encode_float, DType};

/// A float type; rows are converted whole (round to nearest even, as ggml and numpy do).
pub struct Float {
    ty: GgmlType,
    dtype: DType,
    file_type: u32,
}

pub static F32: Float = Float {
    ty: GgmlType::F32,
    dtype: DType::F32,
    file_type: 0,
};
pub static F16: Float = Float {
    ty: GgmlType::F16,
    dtype: DType::F16,
    file_type: 1,
};
pub static BF16: Float = Float {
    ty: GgmlType::BF16,
    dtype: DType::BF16,
    file_type: 32,
};

impl BlockCodec for Float {
    fn ty(&self) -> GgmlType {
        self.ty
    }
    fn file_type(&self) -> u32 {
        self.file_type
    }
    fn quantize_block(&self, x: &[f32], y: &mut [u8]) {
        encode_float(self.dtype, x, y)
    }
    fn quantize_row(&self, x: &[f32], y: &mut [u8]) {
        encode_float(self.dtype, x, y)
    }
    fn dequantize_block(&self, b: &[u8], y: &mut [f32]) {
        decode_f32(self.dtype, b, y)
    }
    fn dequantize_row(&self, b: &[u8], y: &mut [f32]) {
        decode_f32(self.dtype, b, y)
    }
    fn dequantize_block_ref(&self, b: &[u8], y: &mut [f32]) {
        // element by element, straight from the bits
        for (o, c) in y.iter_mut().zip(b.chunks_exact(self.dtype.size())) {
            *o = match self.dtype {
                DType::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                DType::F16 => half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32(),
                _ => f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16),
            };
        }
    }
}
