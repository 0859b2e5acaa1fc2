//! ggml's MXFP4: blocks of 32 values, one E8M0 exponent byte and 16 bytes of FP4 (E2M1)
//! codes — value `j` in the low nibble of byte `j`, value `j + 16` in its high nibble. ggml
//! stores the E2M1 values doubled (`kvalues_mxfp4`: 0, 1, 2, 3, 4, 6, 8, 12 and negatives) and
//! halves the exponent's power of two, so `x = kvalue · 2^(e − 128)`.
//!
//! OCP Microscaling checkpoints (gpt-oss) use the same codes and exponents in another nibble
//! order: [`from_microscaling`] rearranges a block without changing a value.

use super::{BlockCodec, GgmlType};

/// ggml's `kvalues_mxfp4`: the E2M1 values, doubled, by code.
pub const KVALUES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Values per block and bytes per block.
pub const QK: usize = 32;
pub const BLOCK_BYTES: usize = 17;

pub struct Mxfp4;

pub static MXFP4: Mxfp4 = Mxfp4;

/// ggml's `GGML_E8M0_TO_FP32_HALF`: 2^(e − 128), with the two smallest exponents as the
/// subnormals ggml builds from their bits.
pub fn e8m0_half(e: u8) -> f32 {
    let bits: u32 = if e < 2 {
        0x0020_0000 << e
    } else {
        ((e as u32) - 1) << 23
    };
    f32::from_bits(bits)
}

/// ggml's `best_index_mxfp4`: the code whose value times `d` is nearest `x`, the first on ties.
fn best_index(x: f32, d: f32) -> u8 {
    let mut best = 0u8;
    let mut best_err = (KVALUES[0] as f32 * d - x).abs();
    for (i, &k) in KVALUES.iter().enumerate().skip(1) {
        let err = (k as f32 * d - x).abs();
        if err < best_err {
            best = i as u8;
            best_err = err;
        }
    }
    best
}

/// ggml's `quantize_row_mxfp4_ref` on one block: the exponent from the largest magnitude
/// (`floor(log2(amax)) − 2 + 127`, 0 for an all-zero block), each value its nearest code.
pub fn quantize_block_mxfp4(x: &[f32], y: &mut [u8]) {
    let amax = x
        .iter()
        .fold(0f32, |a, v| if a < v.abs() { v.abs() } else { a });
    // ggml casts the float exponent to uint8_t: through a 32-bit integer, wrapping, as x86
    // compilers (and numpy, in gguf-py) do; only blocks below 2^-125 reach the wrap
    let e = if amax > 0.0 {
        ((amax.log2().floor() - 2.0 + 127.0) as i32) as u8
    } else {
        0
    };
    let d = e8m0_half(e);
    y[0] = e;
    for j in 0..QK / 2 {
        let lo = best_index(x[j], d);
        let hi = best_index(x[QK / 2 + j], d);
        y[1 + j] = lo | (hi << 4);
    }
}

pub fn dequantize_block_mxfp4(b: &[u8], y: &mut [f32]) {
    let d = e8m0_half(b[0]);
    for j in 0..QK / 2 {
        let q = b[1 + j];
        y[j] = KVALUES[(q & 0x0f) as usize] as f32 * d;
        y[QK / 2 + j] = KVALUES[(q >> 4) as usize] as f32 * d;
    }
}

/// One block of an OCP Microscaling checkpoint (its 16 code bytes, value `2k` in the low
/// nibble of byte `k` and `2k + 1` in the high one, and its E8M0 exponent) as a ggml block: the
/// exponent byte first, then the codes in ggml's nibble order. The codes index the same values
/// (ggml's doubled table with the halved exponent), so no value changes.
pub fn from_microscaling(codes: &[u8], exponent: u8, out: &mut [u8]) {
    let code = |i: usize| (codes[i / 2] >> (4 * (i % 2))) & 0x0f;
    out[0] = exponent;
    for j in 0..QK / 2 {
        out[1 + j] = code(j) | (code(j + QK / 2) << 4);
    }
}

impl BlockCodec for Mxfp4 {
    fn ty(&self) -> GgmlType {
        GgmlType::MXFP4
    }
    /// llama.cpp's `LLAMA_FTYPE_MOSTLY_MXFP4_MOE`, the one file type with MXFP4 tensors (its
    /// experts; it is also `mixture::MIXES`' MXFP4_MOE): what `--pure --to mxfp4` records.
    fn file_type(&self) -> u32 {
        38
    }
    fn quantize_block(&self, x: &[f32], y: &mut [u8]) {
        quantize_block_mxfp4(x, y)
    }
    fn dequantize_block(&self, b: &[u8], y: &mut [f32]) {
        dequantize_block_mxfp4(b, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microscaling_blocks_keep_their_values() {
        // an OCP block: value i has code (i * 7) % 16, exponent 125 → 2^-2 per E2M1 unit
        const FP4: [f32; 16] = [
            0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
        ];
        let codes: Vec<u8> = (0..32).map(|i| ((i * 7) % 16) as u8).collect();
        let packed: Vec<u8> = codes.chunks(2).map(|p| p[0] | (p[1] << 4)).collect();
        let mut block = [0u8; BLOCK_BYTES];
        from_microscaling(&packed, 125, &mut block);
        let mut y = [0f32; QK];
        dequantize_block_mxfp4(&block, &mut y);
        for i in 0..QK {
            assert_eq!(y[i], FP4[codes[i] as usize] * 0.25, "value {i}");
        }
    }

    #[test]
    fn round_trip_of_representable_values() {
        let x: Vec<f32> = (0..QK).map(|i| KVALUES[i % 16] as f32 * 0.125).collect();
        let mut b = [0u8; BLOCK_BYTES];
        quantize_block_mxfp4(&x, &mut b);
        let mut y = [0f32; QK];
        dequantize_block_mxfp4(&b, &mut y);
        assert_eq!(x, y);
        let zeros = [0f32; QK];
        quantize_block_mxfp4(&zeros, &mut b);
        assert_eq!(b[0], 0);
    }
}
