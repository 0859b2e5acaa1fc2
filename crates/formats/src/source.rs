//! A model to read: a single safetensors file, a sharded checkpoint
//! (`model.safetensors.index.json` + shards, cross-checked), or a Hugging Face model folder.

use crate::error::{file_err, io_err, tensor_err, Result};
use crate::gguf::GgufFile;
use crate::safetensors::{SafetensorsFile, StTensor};
use qs_numeric::ggml::mxfp4;
use qs_numeric::{DType, GgmlType};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Pairs each `NAME_scale_inv` of a `quant_method: "fp8"` checkpoint with its weight `NAME`
/// (checked: a 2-D FP8 weight, a float scale tensor of one value per block) and drops the
/// scale tensors and the unused activation scales from the tensor list.
fn attach_block_scales(
    files: &[SafetensorsFile],
    tensors: Vec<SourceTensor>,
    q: &serde_json::Value,
    config: &Path,
) -> Result<Vec<SourceTensor>> {
    let block = match q.get("weight_block_size").filter(|v| !v.is_null()) {
        None => None,
        Some(v) => {
            let b: Option<Vec<usize>> = v.as_array().and_then(|a| {
                a.iter()
                    .map(|x| {
                        x.as_u64()
                            .filter(|&n| (1..=1 << 20).contains(&n))
                            .map(|n| n as usize)
                    })
                    .collect()
            });
            match b.as_deref() {
                Some(&[r, c]) => Some([r, c]),
                _ => {
                    return Err(file_err(
                        config,
                        format!("quantization_config.weight_block_size = {v}: expected two whole numbers (rows, columns) from 1"),
                    ))
                }
            }
        }
    };
    let by_name: HashMap<String, usize> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.info.name.clone(), i))
        .collect();
    let mut scales: Vec<(usize, BlockScale)> = Vec::new();
    for t in &tensors {
        let Some(weight) = t.info.name.strip_suffix("_scale_inv") else {
            continue;
        };
        let path = &files[t.file].path;
        let Some(&wi) = by_name.get(weight) else {
            return Err(tensor_err(
                path,
                &t.info.name,
                format!("scales a weight '{weight}' the checkpoint does not have"),
            ));
        };
        let w = &tensors[wi];
        if !matches!(w.info.dtype, DType::F8E4M3 | DType::F8E5M2) || w.info.shape.len() != 2 {
            return Err(tensor_err(
                path,
                weight,
                format!(
                    "has scales ({}) but is {} {:?}, not a 2-D FP8 weight",
                    t.info.name, w.info.dtype, w.info.shape
                ),
            ));
        }
        if !matches!(t.info.dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(tensor_err(
                path,
                &t.info.name,
                format!("is {}, not a float scale", t.info.dtype),
            ));
        }
        let (rows, cols) = (w.info.shape[0], w.info.shape[1]);
        let n: usize = t.info.shape.iter().product();
        // the scales as a (block rows × block columns) grid
        let (grid, blk) = match block {
            Some([br, bc]) => ([rows.div_ceil(br), cols.div_ceil(bc)], [br, bc]),
            None if n == 1 => ([1, 1], [rows.max(1), cols.max(1)]),
            None => ([rows, 1], [1, cols.max(1)]),
        };
        let fits = match block {
            Some(_) => t.info.shape == grid,
            None => n == grid[0] * grid[1],
        };
        if !fits {
            return Err(tensor_err(
                path,
                &t.info.name,
                format!(
                    "shape {:?}, but weight {weight} {:?} in blocks of {:?} needs {:?}",
                    t.info.shape, w.info.shape, blk, grid
                ),
            ));
        }
        let mut info = t.info.clone();
        info.shape = grid.to_vec();
        scales.push((
            wi,
            BlockScale {
                file: t.file,
                info,
                block: blk,
            },
        ));
    }
    let mut tensors = tensors;
    for (wi, b) in scales {
        tensors[wi].scale = Some(Box::new(b));
    }
    if let Some(t) = tensors
        .iter()
        .find(|t| matches!(t.info.dtype, DType::F8E4M3 | DType::F8E5M2) && t.scale.is_none())
    {
        return Err(tensor_err(
            &files[t.file].path,
            &t.info.name,
            format!(
                "is {} without its {}_scale_inv: its values cannot be known",
                t.info.dtype, t.info.name
            ),
        ));
    }
    tensors.retain(|t| {
        !t.info.name.ends_with("_scale_inv") && !t.info.name.ends_with("activation_scale")
    });
    Ok(tensors)
}

/// The stored row of an MXFP4 view's row `r` (`n` rows per expert, every `step`-th stored row
/// from `offset`).
fn stored_row(r: usize, n: usize, step: usize, offset: usize) -> usize {
    (r / n) * n * step + offset + step * (r % n)
}

/// Whether a view's stored tensors (`t`, in [`ViewSpec::stored`] order) fit it: their types
/// and shapes for its shape. The error gives the index of the tensor at fault.
fn check_view(spec: &ViewSpec, t: &[&SourceTensor]) -> std::result::Result<(), (usize, String)> {
    let sh = &spec.shape;
    let plain = |k: usize| {
        let s = t[k];
        if !s.info.dtype.is_float() || s.scale.is_some() || s.packed.is_some() || s.ggml.is_some() {
            return Err((
                k,
                format!(
                    "is {}, not a float tensor {} can read",
                    s.info.dtype, spec.name
                ),
            ));
        }
        Ok(())
    };
    let want = |k: usize, shape: Vec<usize>, dtype: Option<DType>| {
        let s = t[k];
        if s.info.shape != shape || dtype.is_some_and(|d| d != s.info.dtype) {
            return Err((
                k,
                format!(
                    "is {} {:?}, but {} {:?} needs {}{:?}",
                    s.info.dtype,
                    s.info.shape,
                    spec.name,
                    sh,
                    dtype.map_or(String::new(), |d| format!("{d} ")),
                    shape
                ),
            ));
        }
        Ok(())
    };
    let (need, step, offset) = match spec.kind {
        ViewKind::Transposed { step, offset } | ViewKind::Mxfp4 { step, offset } => {
            (3, step, offset)
        }
        ViewKind::Columns { step, offset } => (2, step, offset),
        ViewKind::HeadRows { per, start, .. } => (3, per, start),
    };
    if sh.len() != need
        || t.len()
            != if matches!(spec.kind, ViewKind::Mxfp4 { .. }) {
                2
            } else {
                1
            }
        || step == 0
        || offset >= step
    {
        return Err((0, format!("cannot be read as {} {sh:?}", spec.name)));
    }
    match spec.kind {
        ViewKind::Transposed { .. } => {
            plain(0)?;
            want(0, vec![sh[0], sh[2], sh[1] * step], None)
        }
        ViewKind::Columns { .. } => {
            plain(0)?;
            want(0, vec![sh[0], sh[1] * step], None)
        }
        ViewKind::HeadRows {
            per,
            start,
            transpose,
        } => {
            let s = t[0];
            if s.view.is_some()
                || s.stacked.is_some()
                || !(s.info.dtype.is_float() || s.ggml.is_some() || s.packed.is_some())
            {
                return Err((
                    0,
                    format!("is {}, not a tensor {} can read", s.info.dtype, spec.name),
                ));
            }
            let (taken, width) = if transpose {
                (sh[2], sh[1])
            } else {
                (sh[1], sh[2])
            };
            if start + taken > per {
                return Err((0, format!("cannot be read as {} {sh:?}", spec.name)));
            }
            want(0, vec![sh[0] * per, width], None)
        }
        ViewKind::Mxfp4 { .. } => {
            if !sh[2].is_multiple_of(mxfp4::QK) {
                return Err((
                    0,
                    format!(
                        "{} has rows of {} values: MXFP4 blocks are 32",
                        spec.name, sh[2]
                    ),
                ));
            }
            let nb = sh[2] / mxfp4::QK;
            want(0, vec![sh[0], sh[1] * step, nb, 16], Some(DType::U8))?;
            want(1, vec![sh[0], sh[1] * step, nb], Some(DType::U8))
        }
    }
}

/// Name of the sharded-checkpoint index.
pub const INDEX_NAME: &str = "model.safetensors.index.json";

/// Files a Hugging Face folder carries beside the weights, copied into safetensors outputs.
pub const HF_SIDE_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
];

/// A tensor of a [`ModelSource`]: which file, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTensor {
    /// Index into `files`, or into `generated` when `generated` is set.
    pub file: usize,
    /// A tensor the converter computes (e.g. Llama 3's `rope_freqs`), not read from a file.
    pub generated: bool,
    /// For a ggml-quantized tensor of a GGUF input, `dtype` is F32 (what it decodes to).
    pub info: StTensor,
    /// The ggml block type of a quantized GGUF tensor.
    pub ggml: Option<GgmlType>,
    /// FP8 weights of a block-scaled checkpoint: the scales their values are multiplied by.
    pub scale: Option<Box<BlockScale>>,
    /// A weight stored in a quantized layout (GPTQ, AWQ, compressed-tensors): `dtype` is F32,
    /// what it decodes to, and its bytes are in [`ModelSource::slots`].
    pub packed: Option<Box<Packed>>,
    /// Several stored tensors of one shape stacked along a new leading axis (a mixture of
    /// experts' per-expert weights, which GGUF stores as one 3-D tensor): indices into
    /// [`ModelSource::slots`], in order. Its `info` holds the stacked shape, its bytes are the
    /// parts'.
    pub stacked: Option<Vec<usize>>,
    /// A tensor read through a rearrangement of stored ones ([`View`]).
    pub view: Option<Box<View>>,
}

/// A logical tensor whose values are stored tensors rearranged: a checkpoint's fused,
/// transposed or MXFP4 experts (gpt-oss) read as the per-projection `[experts, rows, cols]`
/// tensors llama.cpp's converter writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub kind: ViewKind,
    /// The stored tensors it reads (indices into [`ModelSource::slots`]), as `kind` says.
    pub slots: Vec<usize>,
    /// Written before the other tensors (the converter's `generate_extra_tensors`).
    pub early: bool,
    /// The name it is ordered under among the tensors the converter writes.
    pub sort_name: String,
}

/// How a [`View`] reads its stored tensors (`[E, n, cols]` is its shape, `e` an expert, `j` a
/// row, `i` a column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewKind {
    /// One float tensor `[E, cols, m]`, transposed: `out[e, j, i] = s[e, i, offset + step·j]`.
    Transposed { step: usize, offset: usize },
    /// One float tensor `[E, m]`: `out[e, j] = s[e, offset + step·j]`.
    Columns { step: usize, offset: usize },
    /// OCP Microscaling FP4 codes `[E, m, cols/32, 16]` (u8) and their E8M0 exponents
    /// `[E, m, cols/32]` (u8): row `j` of expert `e` is stored row `offset + step·j`. The view
    /// is a ggml MXFP4 tensor ([`ModelSource::ggml_rows`] gives its blocks).
    Mxfp4 { step: usize, offset: usize },
    /// Per head, a run of rows of one 2-D tensor `[E·per, m]` (any form [`ModelSource::read_rows`]
    /// reads, block-scaled FP8 too): `out[e, j, i] = s[e·per + start + j, i]`, or transposed,
    /// `out[e, j, i] = s[e·per + start + i, j]` (DeepSeek's `kv_b_proj` split into its key and
    /// value halves, the key half transposed).
    HeadRows {
        per: usize,
        start: usize,
        transpose: bool,
    },
}

/// A view to make ([`ModelSource::view`]): its name and shape, how it reads, the stored
/// tensors' names in the order `kind` reads them, whether the converter writes it early, and
/// the name it sorts under (a stored tensor's, whose file it counts as being in, plus a
/// suffix ordering views made from one tensor).
#[derive(Debug, Clone)]
pub struct ViewSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ViewKind,
    pub stored: Vec<String>,
    pub early: bool,
    pub sort_as: (String, String),
}

/// How a packed weight is stored: its layout and the tensors holding its slots, in the
/// layout's slot order (indices into [`ModelSource::slots`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Packed {
    pub scheme: qs_numeric::Scheme,
    pub slots: Vec<usize>,
}

impl Eq for Packed {}

/// The scales of a block-scaled FP8 weight (`quant_method: "fp8"`: DeepSeek-V3, Qwen's FP8
/// releases): value = FP8 code × the scale of its block, as llama.cpp's converter and
/// transformers dequantize it (`weight_scale_inv`, one per `block[0]` rows × `block[1]`
/// columns; one for the whole tensor or per row without a block size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockScale {
    /// The scale tensor (float), in `files[file]`.
    pub file: usize,
    pub info: StTensor,
    /// Weight rows and columns each scale covers.
    pub block: [usize; 2],
}

#[derive(Debug)]
pub struct ModelSource {
    /// The path the user gave.
    pub input: PathBuf,
    pub files: Vec<SafetensorsFile>,
    /// All tensors, in shard order then header order.
    pub tensors: Vec<SourceTensor>,
    /// Folder holding `config.json` and tokenizer files, if any.
    pub hf_dir: Option<PathBuf>,
    /// Parsed `config.json`, if present.
    pub config: Option<serde_json::Value>,
    /// A GGUF input (then `files` is empty).
    pub gguf: Option<GgufFile>,
    /// Bytes of generated tensors, with the file they were derived from (for messages).
    pub generated: Vec<(PathBuf, Vec<u8>)>,
    /// The stored tensors of packed weights ([`SourceTensor::packed`]), out of `tensors`.
    pub slots: Vec<SourceTensor>,
}

#[derive(serde::Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

impl ModelSource {
    pub fn open(path: &Path) -> Result<ModelSource> {
        let meta = std::fs::metadata(path).map_err(io_err(path))?;
        if !meta.is_file() && !meta.is_dir() {
            return Err(file_err(
                path,
                "not a regular file or folder (a FIFO, socket or device cannot be mapped)",
            ));
        }
        if meta.is_file() && is_gguf(path) {
            return Self::open_gguf(path);
        }
        let (files, dir) = if meta.is_dir() {
            let index = path.join(INDEX_NAME);
            if index.exists() {
                (open_sharded(&index)?, path.to_path_buf())
            } else {
                let mut st: Vec<PathBuf> = std::fs::read_dir(path)
                    .map_err(io_err(path))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                    .collect();
                st.sort();
                match st.len() {
                    0 => return Err(file_err(path, "no .safetensors file in this folder")),
                    1 => (vec![SafetensorsFile::open(&st[0])?], path.to_path_buf()),
                    n => {
                        return Err(file_err(
                            path,
                            format!("{n} .safetensors files but no {INDEX_NAME} to say how they fit together"),
                        ))
                    }
                }
            }
        } else if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(".index.json"))
        {
            let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
            (open_sharded(path)?, dir)
        } else {
            let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
            (vec![SafetensorsFile::open(path)?], dir)
        };

        let mut tensors = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (fi, f) in files.iter().enumerate() {
            for t in &f.tensors {
                if let Some(&prev) = seen.get(&t.name) {
                    return Err(tensor_err(
                        &f.path,
                        &t.name,
                        format!("also present in {}", files[prev].path.display()),
                    ));
                }
                seen.insert(t.name.clone(), fi);
                tensors.push(SourceTensor {
                    file: fi,
                    generated: false,
                    info: t.clone(),
                    ggml: None,
                    scale: None,
                    packed: None,
                    stacked: None,
                    view: None,
                });
            }
        }
        let config_path = dir.join("config.json");
        let (hf_dir, config) = if config_path.is_file() {
            let text = std::fs::read_to_string(&config_path).map_err(io_err(&config_path))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| file_err(&config_path, format!("not valid JSON: {e}")))?;
            if !v.is_object() {
                return Err(file_err(
                    &config_path,
                    "not a JSON object: a model's config.json maps names to hyper-parameters",
                ));
            }
            (Some(dir), Some(v))
        } else {
            (None, None)
        };
        let tensors = match config
            .as_ref()
            .and_then(|c| c.get("quantization_config"))
            .filter(|q| q.get("quant_method").and_then(|m| m.as_str()) == Some("fp8"))
        {
            Some(q) => attach_block_scales(&files, tensors, q, &config_path)?,
            None => tensors,
        };
        Ok(ModelSource {
            input: path.to_path_buf(),
            files,
            tensors,
            hf_dir,
            config,
            gguf: None,
            generated: Vec::new(),
            slots: Vec::new(),
        })
    }

    /// Replaces the stored tensors of each packed weight `(name, shape, layout, the stored
    /// tensors' names in slot order)` by one logical tensor (where its first stored tensor was),
    /// read by decoding ([`ModelSource::packed_rows`]).
    pub fn pack(&mut self, weights: Vec<(String, Vec<usize>, qs_numeric::Scheme, Vec<String>)>) {
        let mut at: HashMap<String, usize> = HashMap::new();
        let mut logical: Vec<(usize, SourceTensor)> = Vec::new();
        for (name, shape, scheme, stored) in weights {
            let mut slots = Vec::with_capacity(stored.len());
            let mut first: Option<(usize, usize)> = None;
            for sname in &stored {
                let Some(i) = self.tensors.iter().position(|t| &t.info.name == sname) else {
                    continue;
                };
                let idx = *at.entry(sname.clone()).or_insert_with(|| {
                    self.slots.push(self.tensors[i].clone());
                    self.slots.len() - 1
                });
                first = Some(first.map_or((i, self.tensors[i].file), |f| {
                    if i < f.0 {
                        (i, self.tensors[i].file)
                    } else {
                        f
                    }
                }));
                slots.push(idx);
            }
            let Some((pos, file)) = first else {
                continue;
            };
            logical.push((
                pos,
                SourceTensor {
                    file,
                    generated: false,
                    info: StTensor {
                        name,
                        dtype: DType::F32,
                        shape,
                        start: 0,
                        end: 0,
                    },
                    ggml: None,
                    scale: None,
                    packed: Some(Box::new(Packed { scheme, slots })),
                    stacked: None,
                    view: None,
                },
            ));
        }
        // the logical tensors take their first slot's place; the stored ones leave
        let mut out = Vec::with_capacity(self.tensors.len());
        for (i, t) in std::mem::take(&mut self.tensors).into_iter().enumerate() {
            for (_, l) in logical.iter().filter(|(p, _)| *p == i) {
                out.push(l.clone());
            }
            if !at.contains_key(&t.info.name) {
                out.push(t);
            }
        }
        self.tensors = out;
    }

    /// Rows `r0..r1` of a packed weight, decoded into `out` (`(r1 - r0) × cols`).
    pub fn packed_rows(&self, t: &SourceTensor, r0: usize, r1: usize, out: &mut [f32]) {
        let Some(p) = &t.packed else {
            return;
        };
        let shape = &t.info.shape;
        let parts: Vec<&[u8]> = p
            .slots
            .iter()
            .enumerate()
            .map(|(i, &si)| {
                let b = self.bytes(&self.slots[si]);
                let r = p.scheme.slot_range(i, shape, r0, r1);
                &b[r.start.min(b.len())..r.end.min(b.len())]
            })
            .collect();
        p.scheme.decode(shape, r0, r1, &parts, out);
    }

    /// Replaces each group `(name, parts)` of tensors of one shape `[rows, cols]` by one logical
    /// tensor `name` of shape `[parts, rows, cols]` (a mixture of experts' per-expert weights,
    /// as GGUF stores them); `file` is the shard the stacked tensor counts as being in (the
    /// converter writes it once it has read the last of its layer's experts). The parts leave
    /// the tensor list for [`ModelSource::slots`]; an error names a missing part or one whose
    /// shape or type differs from the first's.
    pub fn stack(&mut self, groups: Vec<(String, usize, Vec<String>)>) -> Result<()> {
        let mut taken: HashMap<String, usize> = HashMap::new();
        let mut stacked = Vec::with_capacity(groups.len());
        let index: HashMap<&str, usize> = self
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.info.name.as_str(), i))
            .collect();
        for (name, file, parts) in groups {
            let mut ids = Vec::with_capacity(parts.len());
            let mut first: Option<&SourceTensor> = None;
            for p in &parts {
                let Some(&i) = index.get(p.as_str()) else {
                    let at = first.map_or(self.input.clone(), |f| self.path_of(f).to_path_buf());
                    return Err(tensor_err(
                        &at,
                        p,
                        format!("missing: {name} stacks {} tensors", parts.len()),
                    ));
                };
                let t = &self.tensors[i];
                let (dt, shape) = (t.info.dtype, &t.info.shape);
                if let Some(f) = first {
                    let decoded = |t: &SourceTensor| t.scale.is_some() || t.packed.is_some();
                    if shape != &f.info.shape || dt != f.info.dtype || decoded(t) != decoded(f) {
                        return Err(tensor_err(
                            self.path_of(t),
                            p,
                            format!(
                                "is {dt} {shape:?}, but {} is {} {:?}: experts stacked into {name} must be alike",
                                f.info.name, f.info.dtype, f.info.shape
                            ),
                        ));
                    }
                } else if shape.len() != 2 {
                    return Err(tensor_err(
                        self.path_of(t),
                        p,
                        format!("has shape {shape:?}: only 2-D tensors are stacked"),
                    ));
                }
                first = Some(t);
                ids.push(i);
            }
            let Some(f) = first else { continue };
            let decoded = f.scale.is_some() || f.packed.is_some() || f.ggml.is_some();
            let dtype = if decoded { DType::F32 } else { f.info.dtype };
            let mut shape = vec![ids.len()];
            shape.extend(&f.info.shape);
            let bytes = shape.iter().product::<usize>() * dtype.size();
            let mut slots = Vec::with_capacity(ids.len());
            for &i in &ids {
                let n = &self.tensors[i].info.name;
                let at = *taken.entry(n.clone()).or_insert_with(|| {
                    self.slots.push(self.tensors[i].clone());
                    self.slots.len() - 1
                });
                slots.push(at);
            }
            stacked.push(SourceTensor {
                file,
                generated: false,
                info: StTensor {
                    name,
                    dtype,
                    shape,
                    start: 0,
                    end: bytes,
                },
                ggml: None,
                scale: None,
                packed: None,
                stacked: Some(slots),
                view: None,
            });
        }
        self.tensors.retain(|t| !taken.contains_key(&t.info.name));
        self.tensors.extend(stacked);
        Ok(())
    }

    /// Replaces stored tensors by views of them ([`ViewSpec`]); the stored tensors leave the
    /// tensor list for [`ModelSource::slots`]. An error names a missing stored tensor or one
    /// whose type or shape does not fit its view.
    pub fn view(&mut self, specs: Vec<ViewSpec>) -> Result<()> {
        let index: HashMap<String, usize> = self
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.info.name.clone(), i))
            .collect();
        let mut taken: HashMap<String, usize> = HashMap::new();
        let mut made = Vec::with_capacity(specs.len());
        for spec in specs {
            let mut stored = Vec::with_capacity(spec.stored.len());
            for n in &spec.stored {
                let Some(&i) = index.get(n) else {
                    return Err(tensor_err(
                        &self.input,
                        n,
                        format!("missing: {} is read from it", spec.name),
                    ));
                };
                stored.push(i);
            }
            let infos: Vec<&SourceTensor> = stored.iter().map(|&i| &self.tensors[i]).collect();
            if let Err((k, msg)) = check_view(&spec, &infos) {
                let t = infos[k];
                return Err(tensor_err(self.path_of(t), &t.info.name, msg));
            }
            let mut slots = Vec::with_capacity(stored.len());
            for &i in &stored {
                let n = &self.tensors[i].info.name;
                let at = *taken.entry(n.clone()).or_insert_with(|| {
                    self.slots.push(self.tensors[i].clone());
                    self.slots.len() - 1
                });
                slots.push(at);
            }
            let file = index
                .get(&spec.sort_as.0)
                .map_or(infos[0].file, |&i| self.tensors[i].file);
            let (dtype, ggml) = match spec.kind {
                ViewKind::Mxfp4 { .. } => (DType::F32, Some(GgmlType::MXFP4)),
                // a decoded stored tensor (block-scaled FP8, ggml blocks) is read as f32
                ViewKind::HeadRows { .. } if self.dequantized(infos[0]) => (DType::F32, None),
                _ => (infos[0].info.dtype, None),
            };
            let cols = spec.shape.last().copied().unwrap_or(1);
            let rows: usize = spec.shape[..spec.shape.len() - 1].iter().product();
            let bytes = rows
                * match ggml {
                    Some(g) => g.row_bytes(cols),
                    None => cols * dtype.size(),
                };
            made.push(SourceTensor {
                file,
                generated: false,
                info: StTensor {
                    name: spec.name,
                    dtype,
                    shape: spec.shape,
                    start: 0,
                    end: bytes,
                },
                ggml,
                scale: None,
                packed: None,
                stacked: None,
                view: Some(Box::new(View {
                    kind: spec.kind,
                    slots,
                    early: spec.early,
                    sort_name: format!("{}{}", spec.sort_as.0, spec.sort_as.1),
                })),
            });
        }
        self.tensors.retain(|t| !taken.contains_key(&t.info.name));
        self.tensors.extend(made);
        Ok(())
    }

    /// Rows `r0..r1` of a view, decoded into `out`.
    fn view_rows(&self, t: &SourceTensor, v: &View, r0: usize, r1: usize, out: &mut [f32]) {
        let shape = &t.info.shape;
        let cols = shape.last().copied().unwrap_or(1).max(1);
        let n = shape
            .get(shape.len().wrapping_sub(2))
            .copied()
            .unwrap_or(1)
            .max(1);
        let s = &self.slots[v.slots[0]];
        let bytes = self.bytes(s);
        match v.kind {
            ViewKind::Transposed { step, offset } => {
                // per expert, each stored row (one input column) gives a strided span of the
                // wanted output rows
                let m = s.info.shape[2];
                let size = s.info.dtype.size();
                let mut span = Vec::new();
                let mut r = r0;
                while r < r1 {
                    let (e, j0) = (r / n, r % n);
                    let j1 = n.min(j0 + (r1 - r));
                    let (c0, c1) = (offset + step * j0, offset + step * (j1 - 1) + 1);
                    span.resize(c1 - c0, 0f32);
                    for i in 0..cols {
                        let at = ((e * cols + i) * m + c0) * size;
                        let end = at + (c1 - c0) * size;
                        qs_numeric::dtype::decode_f32(s.info.dtype, &bytes[at..end], &mut span);
                        for j in j0..j1 {
                            out[(r - r0 + j - j0) * cols + i] = span[(j - j0) * step];
                        }
                    }
                    r += j1 - j0;
                }
            }
            ViewKind::Columns { step, offset } => {
                let m = s.info.shape[1];
                let mut row = vec![0f32; m];
                let size = s.info.dtype.size();
                for (k, o) in out.chunks_mut(cols).enumerate() {
                    let e = r0 + k;
                    let src = &bytes[e * m * size..(e + 1) * m * size];
                    qs_numeric::dtype::decode_f32(s.info.dtype, src, &mut row);
                    for (j, x) in o.iter_mut().enumerate() {
                        *x = row[offset + step * j];
                    }
                }
            }
            ViewKind::HeadRows {
                per,
                start,
                transpose: false,
            } => {
                // rows within one head are consecutive stored rows
                let mut r = r0;
                while r < r1 {
                    let (e, j0) = (r / n, r % n);
                    let j1 = n.min(j0 + (r1 - r));
                    let o = &mut out[(r - r0) * cols..(r - r0 + j1 - j0) * cols];
                    let s0 = e * per + start;
                    self.read_rows(s, s0 + j0, s0 + j1, o);
                    r += j1 - j0;
                }
            }
            ViewKind::HeadRows {
                per,
                start,
                transpose: true,
            } => {
                // a head's `cols` stored rows of `n` values each, read once per head
                let mut block = vec![0f32; cols * n];
                let mut r = r0;
                while r < r1 {
                    let (e, j0) = (r / n, r % n);
                    let j1 = n.min(j0 + (r1 - r));
                    let s0 = e * per + start;
                    self.read_rows(s, s0, s0 + cols, &mut block);
                    for j in j0..j1 {
                        for i in 0..cols {
                            out[(r - r0 + j - j0) * cols + i] = block[i * n + j];
                        }
                    }
                    r += j1 - j0;
                }
            }
            ViewKind::Mxfp4 { .. } => {
                let rb = GgmlType::MXFP4.row_bytes(cols);
                let mut blocks = vec![0u8; (r1 - r0) * rb];
                self.ggml_rows(t, r0, r1, &mut blocks);
                for (b, o) in blocks.chunks(rb).zip(out.chunks_mut(cols)) {
                    qs_numeric::ggml::dequantize_row(GgmlType::MXFP4, b, o);
                }
            }
        }
    }

    /// The ggml type of a view whose values a checkpoint stores in blocks GGUF holds natively
    /// (gpt-oss's MXFP4 experts, rearranged by [`ModelSource::ggml_rows`]); `None` otherwise.
    pub fn native_blocks(&self, t: &SourceTensor) -> Option<GgmlType> {
        match t.view.as_deref()?.kind {
            ViewKind::Mxfp4 { .. } => t.ggml,
            _ => None,
        }
    }

    /// Rows `r0..r1` of a view that is a ggml tensor ([`ModelSource::native_blocks`]) as that
    /// type's blocks, in `out` (`(r1 - r0) × row bytes`); nothing for another tensor.
    pub fn ggml_rows(&self, t: &SourceTensor, r0: usize, r1: usize, out: &mut [u8]) {
        let Some(v) = &t.view else { return };
        let ViewKind::Mxfp4 { step, offset } = v.kind else {
            return;
        };
        let shape = &t.info.shape;
        let cols = shape.last().copied().unwrap_or(1);
        let n = shape[shape.len() - 2].max(1);
        let (codes, scales) = (&self.slots[v.slots[0]], &self.slots[v.slots[1]]);
        let (codes, scales) = (self.bytes(codes), self.bytes(scales));
        let nb = cols / mxfp4::QK;
        let rb = nb * mxfp4::BLOCK_BYTES;
        for (k, o) in out.chunks_mut(rb).take(r1 - r0).enumerate() {
            let sr = stored_row(r0 + k, n, step, offset);
            for b in 0..nb {
                let c = &codes[(sr * nb + b) * 16..(sr * nb + b + 1) * 16];
                let block = &mut o[b * mxfp4::BLOCK_BYTES..(b + 1) * mxfp4::BLOCK_BYTES];
                mxfp4::from_microscaling(c, scales[sr * nb + b], block);
            }
        }
    }

    /// Drops the pages of the stored rows a view's rows `r0..r1` read: the MXFP4 rows
    /// themselves; a transposed or column view's expert once its last row is read (its other
    /// rows re-read what they still need).
    fn release_view_rows(&self, t: &SourceTensor, v: &View, r0: usize, r1: usize) {
        let shape = &t.info.shape;
        let n = shape[shape.len() - 2].max(1);
        match v.kind {
            ViewKind::Mxfp4 { step, offset } => {
                // per expert, the stored rows from the first to the last read, in one range
                // (a row alone is less than a page; the other half's rows between them are
                // read again if still wanted)
                let cols = shape.last().copied().unwrap_or(1);
                let nb = cols / mxfp4::QK;
                let (c, s) = (&self.slots[v.slots[0]], &self.slots[v.slots[1]]);
                let mut r = r0;
                while r < r1 {
                    let end = r1.min((r / n + 1) * n);
                    let (a, b) = (
                        stored_row(r, n, step, offset),
                        stored_row(end - 1, n, step, offset) + 1,
                    );
                    self.release(c, a * nb * 16, b * nb * 16);
                    self.release(s, a * nb, b * nb);
                    r = end;
                }
            }
            ViewKind::HeadRows {
                per,
                start,
                transpose,
            } => {
                // a head's stored rows once its last row is read
                let s = &self.slots[v.slots[0]];
                let taken = if transpose { shape[2] } else { n };
                for e in r0 / n..r1.div_ceil(n) {
                    if (e + 1) * n <= r1 {
                        let s0 = e * per + start;
                        self.release_rows(s, s0, s0 + taken);
                    }
                }
            }
            ViewKind::Transposed { .. } | ViewKind::Columns { .. } => {
                let s = &self.slots[v.slots[0]];
                let per_expert = (s.info.end - s.info.start) / shape[0].max(1);
                let rows_per = if shape.len() == 3 { n } else { 1 };
                for e in r0 / rows_per..r1.div_ceil(rows_per) {
                    if (e + 1) * rows_per <= r1 {
                        self.release(s, e * per_expert, (e + 1) * per_expert);
                    }
                }
            }
        }
    }

    /// Whether reading `t` decodes a quantized form (block-scaled FP8, a packed layout, ggml
    /// blocks), as opposed to widening stored floats.
    pub fn dequantized(&self, t: &SourceTensor) -> bool {
        t.scale.is_some()
            || t.packed.is_some()
            || t.ggml.is_some()
            || t.view.as_ref().is_some_and(|v| {
                matches!(v.kind, ViewKind::HeadRows { .. })
                    && v.slots.iter().any(|&i| self.dequantized(&self.slots[i]))
            })
            || t.stacked
                .as_ref()
                .is_some_and(|p| p.first().is_some_and(|&i| self.dequantized(&self.slots[i])))
    }

    /// Whether `t`'s stored bytes are its bytes in the order an output holds them, so they can
    /// be copied (not a decoded or stacked tensor).
    pub fn copyable(&self, t: &SourceTensor) -> bool {
        t.scale.is_none() && t.packed.is_none() && t.stacked.is_none() && t.view.is_none()
    }

    /// Rows `r0..r1` of a stacked tensor as spans of its parts: (part, its rows `pr0..pr1`,
    /// their offset in `r0..r1`); none for another tensor.
    fn stacked_spans(
        &self,
        t: &SourceTensor,
        r0: usize,
        r1: usize,
    ) -> Vec<(&SourceTensor, usize, usize, usize)> {
        let Some(parts) = &t.stacked else {
            return vec![];
        };
        let per = t.info.shape.get(1).copied().unwrap_or(0).max(1);
        let mut spans = Vec::new();
        let mut r = r0;
        while r < r1 {
            let (p, pr) = (r / per, r % per);
            let n = (per - pr).min(r1 - r);
            let Some(&si) = parts.get(p) else { break };
            spans.push((&self.slots[si], pr, pr + n, r - r0));
            r += n;
        }
        spans
    }

    /// Rows `r0..r1` of any tensor (rows: its elements over the last dimension), as f32 in
    /// `out` (`(r1 - r0) × cols`): stored floats widened, ggml blocks, packed layouts and
    /// block-scaled FP8 decoded, stacked tensors read from their parts. The one reader every
    /// consumer goes through.
    /// [`ModelSource::read_rows`], and whether every value read is finite (for a plain float
    /// tensor found while decoding it, in the same pass).
    pub fn read_rows_finite(
        &self,
        t: &SourceTensor,
        r0: usize,
        r1: usize,
        out: &mut [f32],
    ) -> bool {
        let plain =
            t.view.is_none() && t.stacked.is_none() && t.packed.is_none() && t.ggml.is_none();
        if plain && t.scale.is_none() {
            let rb = self.row_bytes(t);
            let all = self.bytes(t);
            let bytes = &all[(r0 * rb).min(all.len())..(r1 * rb).min(all.len())];
            return qs_numeric::dtype::decode_f32_finite(t.info.dtype, bytes, out);
        }
        self.read_rows(t, r0, r1, out);
        !qs_numeric::dtype::any_nonfinite(out)
    }

    pub fn read_rows(&self, t: &SourceTensor, r0: usize, r1: usize, out: &mut [f32]) {
        let cols = t.info.shape.last().copied().unwrap_or(1).max(1);
        if let Some(v) = &t.view {
            return self.view_rows(t, v, r0, r1, out);
        }
        if t.stacked.is_some() {
            for (part, pr0, pr1, at) in self.stacked_spans(t, r0, r1) {
                let o = &mut out[at * cols..(at + pr1 - pr0) * cols];
                self.read_rows(part, pr0, pr1, o);
            }
            return;
        }
        if t.packed.is_some() {
            return self.packed_rows(t, r0, r1, out);
        }
        let rb = self.row_bytes(t);
        let all = self.bytes(t);
        let bytes = &all[(r0 * rb).min(all.len())..(r1 * rb).min(all.len())];
        match t.ggml {
            Some(ty) => {
                for (b, o) in bytes.chunks(rb.max(1)).zip(out.chunks_mut(cols)) {
                    qs_numeric::ggml::dequantize_row(ty, b, o);
                }
            }
            None => {
                qs_numeric::dtype::decode_f32(t.info.dtype, bytes, out);
                self.apply_scale(t, r0, cols, out);
            }
        }
    }

    /// Whether the weights are block-scaled FP8 that reading dequantizes.
    pub fn block_scaled(&self) -> bool {
        self.tensors.iter().any(|t| t.scale.is_some())
    }

    /// Multiplies rows `r0..` of `t` (decoded FP8 codes, `cols` per row, in `out`) by their
    /// blocks' scales; nothing for a tensor without scales.
    pub fn apply_scale(&self, t: &SourceTensor, r0: usize, cols: usize, out: &mut [f32]) {
        let Some(b) = &t.scale else {
            return;
        };
        let scols = b.info.shape.get(1).copied().unwrap_or(1).max(1);
        let bytes = self.files[b.file].bytes(&b.info);
        let size = b.info.dtype.size();
        let mut row = vec![0f32; scols];
        let mut loaded = usize::MAX;
        for (k, vals) in out.chunks_mut(cols.max(1)).enumerate() {
            let sr = (r0 + k) / b.block[0].max(1);
            if sr != loaded {
                let at = (sr * scols * size).min(bytes.len());
                let end = (at + scols * size).min(bytes.len());
                row.iter_mut().for_each(|v| *v = 1.0);
                qs_numeric::dtype::decode_f32(
                    b.info.dtype,
                    &bytes[at..end],
                    &mut row[..(end - at) / size],
                );
                loaded = sr;
            }
            for (c, v) in vals.iter_mut().enumerate() {
                *v *= row[(c / b.block[1].max(1)).min(scols - 1)];
            }
        }
    }

    fn open_gguf(path: &Path) -> Result<ModelSource> {
        let g = GgufFile::open(path)?;
        let mut tensors = Vec::with_capacity(g.tensors.len());
        for t in &g.tensors {
            let (dtype, ggml) = match t.ty {
                GgmlType::F32 => (DType::F32, None),
                GgmlType::F16 => (DType::F16, None),
                GgmlType::BF16 => (DType::BF16, None),
                GgmlType::F64 => (DType::F64, None),
                GgmlType::I8 => (DType::I8, None),
                GgmlType::I16 => (DType::I16, None),
                GgmlType::I32 => (DType::I32, None),
                GgmlType::I64 => (DType::I64, None),
                ty if ty.can_quantize() => (DType::F32, Some(ty)),
                ty => {
                    return Err(tensor_err(
                        path,
                        &t.name,
                        format!("{ty} tensors cannot be read yet"),
                    ))
                }
            };
            let info = StTensor {
                name: t.name.clone(),
                dtype,
                shape: t.shape(),
                start: t.start,
                end: t.end,
            };
            tensors.push(SourceTensor {
                file: 0,
                generated: false,
                info,
                ggml,
                scale: None,
                packed: None,
                stacked: None,
                view: None,
            });
        }
        Ok(ModelSource {
            input: path.to_path_buf(),
            files: vec![],
            tensors,
            hf_dir: None,
            config: None,
            gguf: Some(g),
            generated: Vec::new(),
            slots: Vec::new(),
        })
    }

    /// Adds a tensor computed from the model's files (`from` names the file for messages).
    pub fn add_generated(&mut self, name: &str, from: PathBuf, shape: Vec<usize>, data: &[f32]) {
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensors.push(SourceTensor {
            file: self.generated.len(),
            generated: true,
            info: StTensor {
                name: name.to_string(),
                dtype: DType::F32,
                shape,
                start: 0,
                end: bytes.len(),
            },
            ggml: None,
            scale: None,
            packed: None,
            stacked: None,
            view: None,
        });
        self.generated.push((from, bytes));
    }

    pub fn bytes(&self, t: &SourceTensor) -> &[u8] {
        if t.generated {
            return &self.generated[t.file].1;
        }
        match &self.gguf {
            Some(g) => g.range(t.info.start, t.info.end),
            None => self.files[t.file].bytes(&t.info),
        }
    }

    pub fn path_of(&self, t: &SourceTensor) -> &Path {
        if t.generated {
            return &self.generated[t.file].0;
        }
        match &self.gguf {
            Some(g) => &g.path,
            None => &self.files[t.file].path,
        }
    }

    /// Drops the resident pages of `t`'s bytes `start..end` (relative to the tensor).
    pub fn release(&self, t: &SourceTensor, start: usize, end: usize) {
        if t.generated {
            return;
        }
        match &self.gguf {
            Some(g) => g.release(t.info.start + start, t.info.start + end),
            None => self.files[t.file].release(t.info.start + start, t.info.start + end),
        }
    }

    /// Drops the resident pages of rows `r0..r1` of `t` (a stacked tensor's from its parts; a
    /// packed one keeps its slots' pages, which several rows share).
    pub fn release_rows(&self, t: &SourceTensor, r0: usize, r1: usize) {
        if let Some(v) = &t.view {
            return self.release_view_rows(t, v, r0, r1);
        }
        if t.stacked.is_some() {
            for (part, pr0, pr1, _) in self.stacked_spans(t, r0, r1) {
                self.release_rows(part, pr0, pr1);
            }
            return;
        }
        if t.packed.is_some() {
            return;
        }
        let rb = self.row_bytes(t);
        self.release(t, r0 * rb, r1 * rb);
    }

    /// Bytes of one row of `t` as stored.
    pub fn row_bytes(&self, t: &SourceTensor) -> usize {
        let cols = t.info.shape.last().copied().unwrap_or(1);
        match t.ggml {
            Some(ty) => ty.row_bytes(cols),
            None => cols * t.info.dtype.size(),
        }
    }

    /// Number of files read.
    pub fn file_count(&self) -> usize {
        if self.gguf.is_some() {
            1
        } else {
            self.files.len()
        }
    }

    /// Sum of all tensor data sizes.
    pub fn total_bytes(&self) -> u64 {
        self.tensors
            .iter()
            .map(|t| (t.info.end - t.info.start) as u64)
            .sum()
    }

    /// Side files (config, tokenizer, ...) present in the HF folder.
    pub fn side_files(&self) -> Vec<PathBuf> {
        match &self.hf_dir {
            None => vec![],
            Some(d) => HF_SIDE_FILES
                .iter()
                .map(|n| d.join(n))
                .filter(|p| p.is_file())
                .collect(),
        }
    }

    /// Every path this source reads: the path given (a folder stands for all it holds), the
    /// index, each shard or GGUF, the side files, and the files generated tensors come from.
    /// An output must be none of these ([`crate::output::check_not_input`]).
    pub fn input_paths(&self) -> Vec<PathBuf> {
        let mut v = vec![self.input.clone()];
        v.extend(self.files.iter().map(|f| f.path.clone()));
        if let Some(g) = &self.gguf {
            v.push(g.path.clone());
        }
        if let Some(d) = &self.hf_dir {
            let index = d.join(INDEX_NAME);
            if index.is_file() {
                v.push(index);
            }
        }
        v.extend(self.side_files());
        v.extend(self.generated.iter().map(|(p, _)| p.clone()));
        v.sort();
        v.dedup();
        v
    }
}

/// Refuses what is not a regular file before it is opened: opening a FIFO blocks until a
/// writer appears, and a device or socket cannot be mapped.
pub fn check_regular(path: &Path) -> Result<()> {
    let m = std::fs::metadata(path).map_err(io_err(path))?;
    if !m.is_file() {
        return Err(file_err(
            path,
            if m.is_dir() {
                "is a folder, not a file"
            } else {
                "not a regular file (a FIFO, socket or device cannot be read as a model)"
            },
        ));
    }
    Ok(())
}

fn open_sharded(index: &Path) -> Result<Vec<SafetensorsFile>> {
    let dir = index.parent().unwrap_or(Path::new("."));
    let text = std::fs::read_to_string(index).map_err(io_err(index))?;
    let idx: Index = serde_json::from_str(&text)
        .map_err(|e| file_err(index, format!("not a valid safetensors index: {e}")))?;
    // Shards in first-appearance order of their sorted names (HF numbers them 00001-of-N).
    if idx.weight_map.is_empty() {
        return Err(file_err(index, "weight_map lists no tensors"));
    }
    let mut shard_names: Vec<&String> = idx.weight_map.values().collect();
    shard_names.sort();
    shard_names.dedup();
    let mut files = Vec::new();
    let mut pos = HashMap::new();
    for name in shard_names {
        let p = dir.join(name);
        if !p.is_file() {
            let tensor = idx
                .weight_map
                .iter()
                .find(|(_, v)| *v == name)
                .map(|(k, _)| k.clone())
                .unwrap_or_default();
            return Err(tensor_err(
                index,
                tensor,
                format!("mapped to shard '{name}', which does not exist"),
            ));
        }
        pos.insert(name.clone(), files.len());
        files.push(SafetensorsFile::open(&p)?);
    }
    // Cross-check: every mapped tensor is in its shard; every shard tensor is mapped there.
    for (tensor, shard) in &idx.weight_map {
        let f = &files[pos[shard]];
        if !f.tensors.iter().any(|t| &t.name == tensor) {
            return Err(tensor_err(
                index,
                tensor,
                format!("mapped to {shard}, but that shard's header does not have it"),
            ));
        }
    }
    for f in &files {
        let fname = f
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for t in &f.tensors {
            match idx.weight_map.get(&t.name) {
                Some(s) if *s == fname => {}
                Some(s) => {
                    return Err(tensor_err(
                        &f.path,
                        &t.name,
                        format!("present in this shard but the index maps it to {s}"),
                    ))
                }
                None => {
                    return Err(tensor_err(
                        &f.path,
                        &t.name,
                        format!("present in this shard but missing from {}", index.display()),
                    ))
                }
            }
        }
    }
    Ok(files)
}

/// A GGUF file, by extension or magic.
/// The paths a model input reads ([`ModelSource::input_paths`]); just `path` when it cannot be
/// opened (the command that reads it then says why).
pub fn input_paths(path: &Path) -> Vec<PathBuf> {
    if path.is_file() && is_gguf(path) {
        return vec![path.to_path_buf()];
    }
    match ModelSource::open(path) {
        Ok(s) => s.input_paths(),
        Err(_) => vec![path.to_path_buf()],
    }
}

pub fn is_gguf(p: &Path) -> bool {
    if p.extension().is_some_and(|e| e == "gguf") {
        return true;
    }
    if !p.metadata().is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(p)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && &magic == b"GGUF"
}
