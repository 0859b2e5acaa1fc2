//! Dense int32 packing as compressed-tensors' `pack_to_int32` (0.20) does it.
//!
//! Signed codes are offset by 2^(bits-1) to unsigned, then element `i` of a row occupies bits
//! `i·bits .. i·bits+bits` of the row's little-endian u32 stream (values may straddle words for
//! 3/5/6/7 bits). A row of `n` codes takes `ceil(n·bits/32)` words.

/// Words needed for `n` codes of `bits` bits.
pub fn packed_words(n: usize, bits: u32) -> usize {
    (n * bits as usize).div_ceil(32)
}

/// Packs one row of signed codes; `out.len() == packed_words(codes.len(), bits)`.
pub fn pack_row(codes: &[i8], bits: u32, out: &mut [u32]) {
    debug_assert_eq!(out.len(), packed_words(codes.len(), bits));
    match bits {
        4 => return pack_whole_words::<4>(codes, out),
        8 => return pack_whole_words::<8>(codes, out),
        _ => {}
    }
    out.fill(0);
    let offset = 1i32 << (bits - 1);
    let mask = (1u64 << bits) - 1;
    for (i, &c) in codes.iter().enumerate() {
        let u = ((c as i32 + offset) as u64) & mask;
        let bit = i * bits as usize;
        let (w, s) = (bit / 32, bit % 32);
        let v = u << s;
        out[w] |= v as u32;
        if s + bits as usize > 32 {
            out[w + 1] |= (v >> 32) as u32;
        }
    }
}

/// [`pack_row`] for a width that divides 32 (no code across a word boundary): whole words
/// in a loop LLVM vectorizes, then a last partial word.
fn pack_whole_words<const BITS: u32>(codes: &[i8], out: &mut [u32]) {
    let per = (32 / BITS) as usize;
    let offset = 1i32 << (BITS - 1);
    let mask = (1u32 << BITS) - 1;
    let word = |c: &[i8]| {
        c.iter().enumerate().fold(0u32, |w, (k, &v)| {
            w | ((((v as i32 + offset) as u32) & mask) << (k * BITS as usize))
        })
    };
    let whole = codes.len() / per;
    for (w, c) in out.iter_mut().zip(codes.chunks_exact(per)) {
        *w = word(c);
    }
    if let Some(w) = out.get_mut(whole) {
        *w = word(&codes[whole * per..]);
    }
}

/// Scalar reference unpacker: reads element `i` from bit position `i·bits`.
pub fn unpack_row_ref(words: &[u32], bits: u32, out: &mut [i8]) {
    let offset = 1i32 << (bits - 1);
    let mask = (1u64 << bits) - 1;
    for (i, o) in out.iter_mut().enumerate() {
        let bit = i * bits as usize;
        let (w, s) = (bit / 32, bit % 32);
        let lo = words[w] as u64;
        let hi = words.get(w + 1).copied().unwrap_or(0) as u64;
        let u = ((lo | (hi << 32)) >> s) & mask;
        *o = (u as i32 - offset) as i8;
    }
}

/// Fast unpacker: byte-wise for 4 and 8 bits, the reference otherwise. Equal to
/// [`unpack_row_ref`].
pub fn unpack_row(words: &[u32], bits: u32, out: &mut [i8]) {
    match bits {
        4 => {
            // whole words (a loop LLVM vectorizes), then the codes of a last partial word
            let whole = out.len() / 8;
            for (o, &w) in out.chunks_exact_mut(8).zip(words) {
                for (k, v) in o.iter_mut().enumerate() {
                    *v = (((w >> (4 * k)) & 0x0f) as i32 - 8) as i8;
                }
            }
            if let Some(&w) = words.get(whole) {
                for (k, v) in out[whole * 8..].iter_mut().enumerate() {
                    *v = (((w >> (4 * k)) & 0x0f) as i32 - 8) as i8;
                }
            }
        }
        8 => {
            // byte k of a word is code k (offset by 128: the top bit flipped); whole words
            // (a loop LLVM vectorizes), then the codes of a last partial word
            let whole = out.len() / 4;
            for (o, &w) in out.chunks_exact_mut(4).zip(words) {
                for (v, b) in o.iter_mut().zip(w.to_le_bytes()) {
                    *v = (b ^ 0x80) as i8;
                }
            }
            if let Some(&w) = words.get(whole) {
                for (v, b) in out[whole * 4..].iter_mut().zip(w.to_le_bytes()) {
                    *v = (b ^ 0x80) as i8;
                }
            }
        }
        _ => unpack_row_ref(words, bits, out),
    }
}

/// Packs a `rows × cols` matrix along dimension 0 (how compressed-tensors packs zero points):
/// the result is `[packed_words(rows, bits), cols]`, row-major.
pub fn pack_dim0(codes: &[i8], rows: usize, cols: usize, bits: u32) -> Vec<u32> {
    let pr = packed_words(rows, bits);
    let mut out = vec![0u32; pr * cols];
    let mut column = vec![0i8; rows];
    let mut packed = vec![0u32; pr];
    for c in 0..cols {
        for r in 0..rows {
            column[r] = codes[r * cols + c];
        }
        pack_row(&column, bits, &mut packed);
        for (r, w) in packed.iter().enumerate() {
            out[r * cols + c] = *w;
        }
    }
    out
}

/// Inverse of [`pack_dim0`].
pub fn unpack_dim0(words: &[u32], rows: usize, cols: usize, bits: u32) -> Vec<i8> {
    let pr = packed_words(rows, bits);
    let mut out = vec![0i8; rows * cols];
    let mut column = vec![0u32; pr];
    let mut vals = vec![0i8; rows];
    for c in 0..cols {
        for r in 0..pr {
            column[r] = words[r * cols + c];
        }
        unpack_row_ref(&column, bits, &mut vals);
        for r in 0..rows {
            out[r * cols + c] = vals[r];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::Rng;

    fn random_codes(n: usize, bits: u32, seed: u64) -> Vec<i8> {
        let mut rng = Rng::new(seed);
        let span = 1u64 << bits;
        (0..n)
            .map(|_| (rng.next_u64() % span) as i32 - (1 << (bits - 1)))
            .map(|v| v as i8)
            .collect()
    }

    #[test]
    fn int4_layout_is_eight_nibbles_per_word() {
        let codes: Vec<i8> = (-8..8).collect();
        let mut w = vec![0u32; 2];
        pack_row(&codes, 4, &mut w);
        assert_eq!(w, vec![0x7654_3210, 0xfedc_ba98]);
        // symmetric zero codes pack to 0x88888888
        let mut z = [0u32];
        pack_row(&[0; 8], 4, &mut z);
        assert_eq!(z[0], 0x8888_8888);
    }

    #[test]
    fn roundtrip_and_fast_equals_reference_all_widths() {
        for bits in 1..=8u32 {
            for n in [1usize, 7, 31, 32, 33, 100, 257] {
                let codes = random_codes(n, bits, bits as u64 * 1000 + n as u64);
                let mut w = vec![0u32; packed_words(n, bits)];
                pack_row(&codes, bits, &mut w);
                let mut a = vec![0i8; n];
                let mut b = vec![0i8; n];
                unpack_row_ref(&w, bits, &mut a);
                unpack_row(&w, bits, &mut b);
                assert_eq!(a, codes, "bits {bits} n {n}");
                assert_eq!(b, codes, "bits {bits} n {n}");
            }
        }
    }

    #[test]
    fn three_bit_values_straddle_words() {
        // element 10 occupies bits 30..33: two bits in word 0, one in word 1
        let mut codes = vec![-4i8; 11];
        codes[10] = 3; // unsigned 7 = 0b111
        let mut w = vec![0u32; 2];
        pack_row(&codes, 3, &mut w);
        assert_eq!(w[0] >> 30, 0b11);
        assert_eq!(w[1] & 1, 1);
    }

    #[test]
    fn dim0_roundtrip() {
        let (rows, cols) = (70, 5);
        let codes = random_codes(rows * cols, 4, 5);
        let p = pack_dim0(&codes, rows, cols, 4);
        assert_eq!(p.len(), packed_words(rows, 4) * cols);
        assert_eq!(unpack_dim0(&p, rows, cols, 4), codes);
    }
}
