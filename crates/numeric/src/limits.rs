//! Limits as policy, in one place: how large a number read from a header or a config file may
//! be before anything is sized from it.
//!
//! Every reader checks what it reads against these (with checked arithmetic) before it
//! allocates, loops or writes; hyper-parameters are also checked against the tensors actually
//! present (see the pipeline's `arch::HParams`). The values leave room for every released
//! model (the largest tensors are MoE expert stacks of a few 10⁹ elements; the largest
//! vocabularies ~2.6·10⁵ tokens) and refuse what only a damaged or hostile file claims.

/// Dimensions of a tensor (GGUF allows 4; safetensors any number).
pub const MAX_DIMS: usize = 8;
/// Elements of one tensor; for a tensor with a zero dimension, of the product of its other
/// dimensions too (an empty tensor of 2⁶² rows must not drive a loop or an allocation).
pub const MAX_ELEMENTS: u64 = 1 << 36;
/// Tensors in one file.
pub const MAX_TENSORS: u64 = 1 << 20;
/// Metadata entries of one GGUF file.
pub const MAX_KVS: u64 = 1 << 20;
/// Bytes of one GGUF metadata key (the GGUF specification's own limit).
pub const MAX_KEY_LEN: u64 = 65_535;
/// Nesting depth of GGUF metadata arrays.
pub const MAX_ARRAY_DEPTH: u32 = 4;
/// Decoder layers of a model.
pub const MAX_LAYERS: u64 = 4096;
/// Vocabulary size (a config's `vocab_size`, a tokenizer's token ids).
pub const MAX_VOCAB: u64 = 1 << 22;
/// Width of a model (hidden size, feed-forward size, heads × head dim).
pub const MAX_WIDTH: u64 = 1 << 20;
/// Attention heads (query or key/value) of one layer.
pub const MAX_HEADS: u64 = 1 << 12;
/// Experts in a mixture-of-experts layer (DeepSeek-V3 has 256, the largest released have 512).
pub const MAX_EXPERTS: u64 = 1 << 12;
/// Context length written as `context_length` (llama.cpp sizes its default context from it).
pub const MAX_CONTEXT: u64 = u32::MAX as u64;

/// Number of elements of `shape`, if it is within [`MAX_DIMS`] and [`MAX_ELEMENTS`]; otherwise
/// a message saying which limit it breaks.
pub fn checked_numel(shape: &[u64]) -> Result<u64, String> {
    if shape.len() > MAX_DIMS {
        return Err(format!(
            "{} dimensions (at most {MAX_DIMS} accepted)",
            shape.len()
        ));
    }
    // the extent: zeros count as one, so an empty tensor cannot claim 2^62 rows
    let extent = shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d.max(1)))
        .filter(|&n| n <= MAX_ELEMENTS);
    if extent.is_none() {
        return Err(format!(
            "shape {shape:?} exceeds the limit of {MAX_ELEMENTS} elements per tensor"
        ));
    }
    Ok(shape.iter().product())
}

/// `n` bytes as a `usize` after `a * b` with overflow checked.
pub fn checked_bytes(count: u64, unit: u64) -> Option<usize> {
    count
        .checked_mul(unit)
        .and_then(|n| usize::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numel_and_extent() {
        assert_eq!(checked_numel(&[4, 32]), Ok(128));
        assert_eq!(checked_numel(&[1, 0]), Ok(0));
        assert_eq!(checked_numel(&[]), Ok(1));
        assert!(checked_numel(&[1 << 62, 0]).is_err());
        assert!(checked_numel(&[0, 1 << 40]).is_err());
        assert!(checked_numel(&[1 << 20, 1 << 20])
            .unwrap_err()
            .contains("limit"));
        assert!(checked_numel(&[u64::MAX, 2]).is_err());
        assert!(checked_numel(&[1; 9]).unwrap_err().contains("9 dimensions"));
        assert_eq!(checked_numel(&[1 << 18, 1 << 18]), Ok(1 << 36));
    }

    #[test]
    fn bytes() {
        assert_eq!(checked_bytes(3, 4), Some(12));
        assert_eq!(checked_bytes(u64::MAX, 2), None);
    }
}
