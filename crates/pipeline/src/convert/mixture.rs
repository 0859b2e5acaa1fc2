//! llama-quantize's file types ("Q4_K_M", …) and its per-tensor type choice, so a converted
//! model gets the same tensor types as `llama-quantize in.gguf out.gguf Q4_K_M`.

use qs_numeric::GgmlType;

/// A llama-quantize file type: "mostly" one block type (`Q4_0`, `Q6_K`, `IQ4_XS`, …: every
/// block type with a codec, its `general.file_type` from the codec), or one of the named
/// mixtures of the K-quants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ftype {
    Pure(GgmlType),
    Mix(Mix),
}

/// llama-quantize's named K-quant mixtures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum Mix {
    Q3_K_S,
    Q3_K_M,
    Q3_K_L,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    /// Experts MXFP4, every other quantized tensor Q8_0 (gpt-oss as released).
    MXFP4_MOE,
}

/// (mixture, name, `general.file_type`, type of the tensors it does not single out).
const MIXES: [(Mix, &str, u32, GgmlType); 8] = [
    (Mix::Q3_K_S, "Q3_K_S", 11, GgmlType::Q3_K),
    (Mix::Q3_K_M, "Q3_K_M", 12, GgmlType::Q3_K),
    (Mix::Q3_K_L, "Q3_K_L", 13, GgmlType::Q3_K),
    (Mix::Q4_K_S, "Q4_K_S", 14, GgmlType::Q4_K),
    (Mix::Q4_K_M, "Q4_K_M", 15, GgmlType::Q4_K),
    (Mix::Q5_K_S, "Q5_K_S", 16, GgmlType::Q5_K),
    (Mix::Q5_K_M, "Q5_K_M", 17, GgmlType::Q5_K),
    (Mix::MXFP4_MOE, "MXFP4_MOE", 38, GgmlType::MXFP4),
];

fn mix_row(m: Mix) -> &'static (Mix, &'static str, u32, GgmlType) {
    MIXES
        .iter()
        .find(|r| r.0 == m)
        .expect("every mixture is in MIXES")
}

impl Ftype {
    pub fn name(self) -> &'static str {
        match self {
            Ftype::Pure(t) => t.name(),
            Ftype::Mix(m) => mix_row(m).1,
        }
    }

    /// Parses a llama-quantize type name; `Q3_K`, `Q4_K`, `Q5_K` are its aliases for the `_M`
    /// mixtures, and `MXFP4` ours for `MXFP4_MOE`.
    pub fn parse(s: &str) -> Option<Ftype> {
        let u = s.to_ascii_uppercase();
        let alias = match u.as_str() {
            "Q3_K" => Some(Mix::Q3_K_M),
            "Q4_K" => Some(Mix::Q4_K_M),
            "Q5_K" => Some(Mix::Q5_K_M),
            // MXFP4 has no file type of its own: it is the experts' type of MXFP4_MOE
            "MXFP4" => Some(Mix::MXFP4_MOE),
            _ => MIXES.iter().find(|r| r.1 == u).map(|r| r.0),
        };
        if let Some(m) = alias {
            return Some(Ftype::Mix(m));
        }
        GgmlType::quantized_types()
            .filter(|t| *t != GgmlType::MXFP4)
            .find(|t| t.name() == u)
            .map(Ftype::Pure)
    }

    /// Every file type, for help texts: the block types, then the mixtures.
    pub fn names() -> String {
        GgmlType::quantized_types()
            .filter(|t| {
                !matches!(
                    t,
                    GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::MXFP4
                )
            })
            .map(|t| t.name())
            .chain(MIXES.iter().map(|r| r.1))
            .map(|n| n.to_ascii_lowercase())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `general.file_type`.
    pub fn id(self) -> u32 {
        match self {
            Ftype::Pure(t) => t.file_type().unwrap_or(0),
            Ftype::Mix(m) => mix_row(m).2,
        }
    }

    /// The type of every quantized tensor the mixture does not single out.
    pub fn default_type(self) -> GgmlType {
        match self {
            Ftype::Pure(t) => t,
            Ftype::Mix(m) => mix_row(m).3,
        }
    }
}

/// Whether llama-quantize quantizes a tensor at all (by its GGUF name and dimensions).
pub fn allows_quantization(gguf_name: &str, n_dims: usize) -> bool {
    n_dims >= 2
        && gguf_name.ends_with("weight")
        && !gguf_name.contains("_norm.weight")
        && !gguf_name.contains("ffn_gate_inp.weight")
}

/// Model facts the mixture depends on.
#[derive(Debug, Clone, Copy)]
pub struct ModelInfo {
    /// n_head / n_head_kv.
    pub n_gqa: u64,
    /// No separate output.weight: token_embd doubles as the output head.
    pub tied_embeddings: bool,
    /// llama.cpp's LLM_TYPE_70B (llama with 80 layers).
    pub is_70b: bool,
    /// Number of attn_v (or attn_qkv) tensors, and of ffn_down tensors.
    pub n_attention_wv: usize,
    pub n_ffn_down: usize,
    /// Quantizing with an importance matrix.
    pub has_imatrix: bool,
    /// Experts per layer (0 for a dense model): llama-quantize singles out 8-expert models
    /// (Mixtral) and finds an MoE model's ffn_down layer from its name.
    pub n_expert: u64,
    /// Decoder layers.
    pub n_layer: usize,
}

/// Counters llama-quantize advances as it meets attn_v and ffn_down tensors in file order.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    pub i_attention_wv: usize,
    pub i_ffn_down: usize,
}

fn use_more_bits(i: usize, n: usize) -> bool {
    let (i, n) = (i as i64, n as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// llama-quantize's choice for one tensor (before the row-length fallback), given its GGUF
/// name and whether it stacks several experts (a 3-D tensor of more than one matrix);
/// tensors must be visited in file order so the counters match.
pub fn tensor_type(
    f: Ftype,
    name: &str,
    experts: bool,
    m: &ModelInfo,
    c: &mut Counters,
) -> GgmlType {
    use Ftype::{Mix as M, Pure as P};
    use GgmlType as T;
    let mut t = f.default_type();
    let is_output = name == "output.weight";
    let is_embd = name == "token_embd.weight";
    if f == M(Mix::MXFP4_MOE) {
        return if experts && !is_output {
            T::MXFP4
        } else {
            T::Q8_0
        };
    }
    if is_output || (m.tied_embeddings && is_embd) {
        // (the row-length check of this branch is applied by the caller's fallback)
        if t != T::Q8_0 {
            t = T::Q6_K;
        }
        return t;
    }
    if is_embd {
        return t;
    }
    if name.contains("attn_v.weight") || name.contains("attn_qkv.weight") {
        match f {
            P(T::Q2_K) => t = if m.n_gqa >= 4 { T::Q4_K } else { T::Q3_K },
            M(Mix::Q3_K_M) => {
                t = if c.i_attention_wv < 2 {
                    T::Q5_K
                } else {
                    T::Q4_K
                }
            }
            M(Mix::Q3_K_L) => t = T::Q5_K,
            P(T::IQ4_NL | T::IQ4_XS) if m.n_gqa >= 4 => t = T::Q5_K,
            M(Mix::Q4_K_M | Mix::Q5_K_M) if use_more_bits(c.i_attention_wv, m.n_attention_wv) => {
                t = T::Q6_K
            }
            M(Mix::Q4_K_S) if c.i_attention_wv < 4 => t = T::Q5_K,
            _ => {}
        }
        if m.is_70b && matches!(t, T::Q3_K | T::Q4_K) {
            t = T::Q5_K;
        }
        if m.n_expert == 8 {
            t = T::Q8_0;
        }
        c.i_attention_wv += 1;
        return t;
    }
    if name.contains("attn_k.weight") && m.n_expert == 8 {
        return T::Q8_0;
    }
    if name.contains("ffn_down") {
        // an MoE model's layer comes from the name (its experts' tensors are not one per layer)
        let layer = name
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|l| l.parse::<usize>().ok());
        let (i, n) = match layer {
            Some(l) if m.n_expert > 1 => (l, m.n_layer),
            _ => (c.i_ffn_down, m.n_ffn_down),
        };
        let more = use_more_bits(i, n);
        let (i, n) = (i as i64, n as i64);
        match f {
            P(T::Q2_K) => t = T::Q3_K,
            M(Mix::Q3_K_M) => t = if i < n / 16 { T::Q5_K } else { T::Q4_K },
            M(Mix::Q3_K_L) => t = T::Q5_K,
            M(Mix::Q4_K_M) if more => t = T::Q6_K,
            P(T::IQ4_NL | T::IQ4_XS) if i < n / 8 && !m.has_imatrix => t = T::Q5_K,
            M(Mix::Q5_K_M) if more => t = T::Q6_K,
            M(Mix::Q4_K_S) if i < n / 8 => t = T::Q5_K,
            // with an imatrix, guard the first ffn_down layers of the legacy 4/5-bit types
            P(T::Q4_0) if m.has_imatrix && i < n / 8 => t = T::Q4_1,
            P(T::Q5_0) if m.has_imatrix && i < n / 8 => t = T::Q5_1,
            _ => {}
        }
        c.i_ffn_down += 1;
        return t;
    }
    if name.contains("attn_output.weight") && m.n_expert == 8 {
        if matches!(
            f,
            P(T::Q2_K | T::IQ4_NL | T::IQ4_XS)
                | M(Mix::Q3_K_S | Mix::Q3_K_M | Mix::Q4_K_S | Mix::Q4_K_M)
        ) {
            t = T::Q5_K;
        }
    } else if name.contains("attn_output.weight") {
        t = match f {
            P(T::Q2_K) => T::Q3_K,
            M(Mix::Q3_K_M) => T::Q4_K,
            M(Mix::Q3_K_L) => T::Q5_K,
            _ => t,
        };
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_k_m_layers() {
        let m = ModelInfo {
            n_gqa: 2,
            tied_embeddings: false,
            is_70b: false,
            n_attention_wv: 32,
            n_ffn_down: 32,
            has_imatrix: false,
            n_expert: 0,
            n_layer: 32,
        };
        let mut c = Counters::default();
        let v: Vec<GgmlType> = (0..32)
            .map(|_| {
                tensor_type(
                    Ftype::Mix(Mix::Q4_K_M),
                    "blk.0.attn_v.weight",
                    false,
                    &m,
                    &mut c,
                )
            })
            .collect();
        let q6: Vec<usize> = v
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == GgmlType::Q6_K)
            .map(|(i, _)| i)
            .collect();
        // first and last eighth, and every third layer between
        assert_eq!(
            q6,
            vec![0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
        );
        assert_eq!(
            tensor_type(Ftype::Mix(Mix::Q4_K_M), "output.weight", false, &m, &mut c),
            GgmlType::Q6_K
        );
        assert_eq!(
            tensor_type(
                Ftype::Mix(Mix::Q4_K_M),
                "token_embd.weight",
                false,
                &m,
                &mut c
            ),
            GgmlType::Q4_K
        );
        assert_eq!(
            tensor_type(
                Ftype::Pure(GgmlType::Q8_0),
                "output.weight",
                false,
                &m,
                &mut c
            ),
            GgmlType::Q8_0
        );
        assert_eq!(Ftype::parse("q4_k"), Some(Ftype::Mix(Mix::Q4_K_M)));
        assert!(!allows_quantization("blk.0.attn_norm.weight", 1));
        let mx = Ftype::Mix(Mix::MXFP4_MOE);
        for (name, experts, want) in [
            ("blk.0.ffn_down_exps.weight", true, GgmlType::MXFP4),
            ("blk.0.attn_q.weight", false, GgmlType::Q8_0),
            ("output.weight", false, GgmlType::Q8_0),
            ("token_embd.weight", false, GgmlType::Q8_0),
        ] {
            assert_eq!(tensor_type(mx, name, experts, &m, &mut c), want, "{name}");
        }
        assert_eq!(Ftype::parse("mxfp4_moe"), Some(mx));
        assert_eq!(Ftype::parse("mxfp4"), Some(mx));
    }
}
