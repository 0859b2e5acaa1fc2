//! Reading a quantized checkpoint back: every logical tensor of a GGUF or a safetensors
//! checkpoint with its layout and slot bytes. The one reader `verify`, `eval` and `export`
//! share; each layout's own reader (`qs_numeric::layout::READERS`) recognises its weights.

use crate::arch::Mapped;
use crate::error::{Error, Result};
use qs_formats::gguf::{GgufFile, Value};
use qs_formats::source::{ModelSource, SourceTensor};
use qs_numeric::layout::{read_weight, Checkpoint, FloatLayout, Stored};
use qs_numeric::{DType, Scheme};
use std::collections::HashMap;

/// A logical tensor of the quantized model: how to decode it and where its slot bytes are.
pub(crate) struct Logical<'a> {
    /// The original tensor's name.
    pub name: String,
    /// Output row r holds original row `permuted_source_row(r, rows, heads)` (llama q/k).
    pub permute: Option<usize>,
    /// The stored values are the original's plus 1 (Gemma's norms in a GGUF).
    pub shift: bool,
    pub shape: Vec<usize>,
    pub scheme: Scheme,
    pub slots: Vec<&'a [u8]>,
    pub bytes: u64,
}

pub(crate) use qs_formats::source::is_gguf;

/// Every tensor of a GGUF; with the original it was converted from, under the original's names
/// and with llama.cpp's q/k row permutation noted (so rows compare with the original's).
pub(crate) fn gguf_logical<'a>(
    g: &'a GgufFile,
    orig: Option<&ModelSource>,
) -> Result<Vec<Logical<'a>>> {
    // A converted model: map the original's HF names forward to find each GGUF tensor's source.
    let mut back: HashMap<String, (String, Option<usize>, bool)> = HashMap::new();
    if let (Some(Value::String(a)), Some(orig), Some(c)) = (
        g.get("general.architecture"),
        orig,
        orig.and_then(|o| o.config.as_ref()),
    ) {
        if let Ok(arch) = crate::arch::detect(c).copied() {
            if arch.name == a {
                for t in &orig.tensors {
                    if let Ok(Mapped::Tensor {
                        name,
                        permute_heads,
                        shift,
                    }) = crate::arch::map_tensor(&arch, c, &t.info.name)
                    {
                        back.insert(name, (t.info.name.clone(), permute_heads, shift));
                    }
                }
            }
        }
    }
    let mut v = Vec::new();
    for t in &g.tensors {
        let scheme = Scheme::for_ggml(t.ty).ok_or_else(|| {
            let ty = t.ty;
            Error::Verify(format!(
                "{}: tensor '{}': dequantizing {ty} is not supported yet",
                g.path.display(),
                t.name
            ))
        })?;
        let b = g.bytes(t);
        let (name, permute, shift) =
            back.get(&t.name)
                .cloned()
                .unwrap_or((t.name.clone(), None, false));
        v.push(Logical {
            name,
            permute,
            shift,
            shape: t.shape(),
            scheme,
            slots: vec![b],
            bytes: b.len() as u64,
        });
    }
    Ok(v)
}

/// compressed-tensors weight arguments for a module, from `quantization_config`.
fn weight_args<'c>(
    qc: Option<&'c serde_json::Value>,
    module: &str,
) -> Option<&'c serde_json::Value> {
    let groups = qc?.get("config_groups")?.as_object()?;
    let mut fallback = None;
    for g in groups.values() {
        let targets = g.get("targets")?.as_array()?;
        for t in targets.iter().filter_map(|t| t.as_str()) {
            if t == module {
                return g.get("weights");
            }
            if let Some(re) = t.strip_prefix("re:") {
                if regex::Regex::new(re).is_ok_and(|r| r.is_match(module)) {
                    return g.get("weights");
                }
            }
            if t == "Linear" {
                fallback = g.get("weights");
            }
        }
    }
    fallback
}

/// A safetensors checkpoint as the layouts' readers see it.
struct StCheckpoint<'a> {
    src: &'a ModelSource,
    by_name: HashMap<&'a str, usize>,
    qc: Option<serde_json::Value>,
}

impl<'a> Checkpoint<'a> for StCheckpoint<'a> {
    fn get(&self, name: &str) -> Option<Stored<'a>> {
        let t = &self.src.tensors[*self.by_name.get(name)?];
        Some(stored(self.src, t))
    }
    fn weight_args(&self, module: &str) -> Option<&serde_json::Value> {
        weight_args(self.qc.as_ref(), module)
    }
}

fn stored<'a>(src: &'a ModelSource, t: &'a SourceTensor) -> Stored<'a> {
    Stored {
        name: &t.info.name,
        dtype: t.info.dtype,
        shape: &t.info.shape,
        bytes: src.bytes(t),
    }
}

/// A quantized safetensors checkpoint (GPTQ, AWQ, compressed-tensors: `quantization_config`
/// in config.json) as an input: each weight a layout's reader claims becomes one tensor read by
/// decoding its stored tensors ([`ModelSource::pack`]), so the run quantizes the dequantized
/// weights. Block-scaled FP8 is handled as the source is opened, MXFP4 experts by the
/// architecture ([`crate::arch::expert_views`]); other inputs are unchanged.
pub(crate) fn unpack_quantized(src: &mut ModelSource) -> Result<()> {
    let qc = src
        .config
        .as_ref()
        .and_then(|c| c.get("quantization_config"));
    // MXFP4 experts (gpt-oss) are read through the architecture's views as GGUF is written
    let mxfp4 = qc
        .and_then(|q| q.get("quant_method"))
        .and_then(|m| m.as_str())
        == Some("mxfp4");
    if qc.is_none() || mxfp4 || src.gguf.is_some() || src.block_scaled() {
        return Ok(());
    }
    let weights: Vec<(String, Vec<usize>, Scheme, Vec<String>)> = {
        let logical = st_logical(src)?;
        let mut v = Vec::new();
        for l in logical
            .into_iter()
            .filter(|l| l.slots.len() > 1 || !matches!(l.scheme, Scheme::Float(_)))
        {
            // each slot is one stored tensor's bytes
            let mut names = Vec::with_capacity(l.slots.len());
            for slot in &l.slots {
                let t = src.tensors.iter().find(|t| {
                    let b = src.bytes(t);
                    b.as_ptr() == slot.as_ptr() && b.len() == slot.len()
                });
                match t {
                    Some(t) => names.push(t.info.name.clone()),
                    None => {
                        return Err(Error::Input {
                            path: src.input.clone(),
                            msg: format!(
                                "weight '{}': a stored part is not a whole tensor",
                                l.name
                            ),
                        })
                    }
                }
            }
            v.push((l.name, l.shape, l.scheme, names));
        }
        v
    };
    src.pack(weights);
    Ok(())
}

/// Every logical tensor of a safetensors checkpoint: the weights a layout's reader claims,
/// then every other float tensor as it is stored.
pub(crate) fn st_logical(s: &ModelSource) -> Result<Vec<Logical<'_>>> {
    let qc_meta: Option<serde_json::Value> = s
        .files
        .first()
        .and_then(|f| f.metadata.get("quantization_config"))
        .and_then(|t| serde_json::from_str(t).ok());
    let qc = s
        .config
        .as_ref()
        .and_then(|c| c.get("quantization_config"))
        .cloned()
        .or(qc_meta);
    let ck = StCheckpoint {
        src: s,
        by_name: s
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.info.name.as_str(), i))
            .collect(),
        qc,
    };
    // a tensor that cannot be read as what it claims to be: named with the file it is in
    let bad = |t: &SourceTensor, m: String| Error::Tensor {
        file: s.path_of(t).to_path_buf(),
        tensor: t.info.name.clone(),
        msg: m,
    };
    let mut claimed = std::collections::HashSet::new();
    let mut v = Vec::new();
    for t in &s.tensors {
        let Some(r) = read_weight(&ck, stored(s, t)) else {
            continue;
        };
        let w = r.map_err(|m| bad(t, m))?;
        claimed.extend(w.stored);
        v.push(Logical {
            permute: None,
            shift: false,
            bytes: w.slots.iter().map(|x| x.len() as u64).sum(),
            name: w.name,
            shape: w.shape,
            scheme: w.scheme,
            slots: w.slots,
        });
    }
    for t in &s.tensors {
        let name = &t.info.name;
        if claimed.contains(name) || v.iter().any(|l| &l.name == name) {
            continue;
        }
        match t.info.dtype {
            DType::F32 | DType::F16 | DType::BF16 => {
                let b = s.bytes(t);
                v.push(Logical {
                    permute: None,
                    shift: false,
                    name: name.clone(),
                    shape: t.info.shape.clone(),
                    scheme: Scheme::Float(FloatLayout {
                        dtype: t.info.dtype,
                        clamp: false,
                    }),
                    slots: vec![b],
                    bytes: b.len() as u64,
                });
            }
            d => {
                return Err(bad(
                    t,
                    format!("{d} tensor that is not part of a quantized weight"),
                ))
            }
        }
    }
    Ok(v)
}

/// An HF folder or safetensors file opened for the forward pass: tensors its architecture
/// stores rearranged (gpt-oss's experts) are read through the architecture's views
/// ([`crate::arch::expert_views`]), under the names a conversion gives them. Returns whether
/// views were made.
pub fn apply_views(src: &mut ModelSource) -> Result<bool> {
    match src.config.as_ref().map(crate::arch::detect) {
        Some(Ok(a)) if a.views.is_some() => {
            let views = crate::arch::expert_views(a, src)?;
            src.view(views)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// An HF folder opened as a GGUF conversion to llama.cpp's architecture `gguf_arch` reads it:
/// a mixture's per-expert weights stacked ([`crate::arch::expert_groups`]) and rearranged
/// tensors viewed ([`apply_views`]), what it leaves out dropped, under the names the conversion maps (what `verify`
/// compares a converted GGUF with). Unchanged when the folder is not of that architecture (a
/// `--keep-names` GGUF keeps the folder's tensors).
pub fn as_converted(src: &mut ModelSource, gguf_arch: &str) -> Result<()> {
    if src.gguf.is_some() || src.config.is_none() {
        return Ok(());
    }
    let Ok(arch) = crate::arch::checked_model(src) else {
        return Ok(());
    };
    if arch.name != gguf_arch {
        return Ok(());
    }
    let groups = crate::arch::expert_groups(arch, src)?;
    src.stack(groups)?;
    apply_views(src)?;
    // what the conversion leaves out (DeepSeek's multi-token-prediction layers, Gemma 2's
    // tied lm_head) is not looked for
    if let Some(c) = src.config.clone() {
        src.tensors.retain(|t| {
            !matches!(
                crate::arch::map_tensor(arch, &c, &t.info.name),
                Ok(crate::arch::Mapped::Skip)
            )
        });
    }
    Ok(())
}
