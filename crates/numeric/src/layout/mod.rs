//! Stored layouts: how one tensor is stored, shared by the writer (encode), by `verify`, `eval`
//! and `export` (decode) and by the checkpoint metadata.
//!
//! Each layout is one module implementing [`Layout`] — [`float`] (F32/F16/BF16),
//! [`ggml_blocks`] (GGUF block types), [`pack_quantized`] (compressed-tensors integers),
//! [`float_quantized`] (compressed-tensors FP8), [`autogptq`] (AutoGPTQ v1), [`awq_gemm`] (AutoAWQ
//! GEMM) — and is registered
//! once in the `layouts!` list below, which makes it a variant of [`Scheme`].
//!
//! A tensor is processed in chunks of whole rows. [`Layout::slots`] lists the stored tensors a
//! layout produces (e.g. `weight_packed`, `weight_scale`), and [`Layout::slot_range`] says which
//! bytes of each slot a row range owns, so chunks can be encoded, written and decoded
//! independently and in any order. Integer layouts also take codes chosen elsewhere (GPTQ): [`Layout::code_grid`] says which grid the codes must lie on and
//! [`Layout::encode_codes`] stores them. Everything here is pure.

pub mod autogptq;
pub mod awq_gemm;
pub mod float;
pub mod float_quantized;
pub mod ggml_blocks;
pub mod pack_quantized;

pub use autogptq::AutoGptq;
pub use awq_gemm::AutoAwq;
pub use float::FloatLayout;
pub use float_quantized::FloatQuantized;
pub use ggml_blocks::GgmlBlocks;
pub use pack_quantized::PackQuantized;

use crate::dtype::{self, DType};
use crate::ggml::GgmlType;
use crate::rtn::{IntSpec, QParams};
use std::ops::Range;

/// How scale parameters are shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// One scale for the whole tensor.
    Tensor,
    /// One scale per output row.
    Channel,
    /// One scale per `n` consecutive columns of a row.
    Group(usize),
    /// One scale per `rows × cols` tile.
    Block(usize, usize),
}

impl Granularity {
    /// The name compressed-tensors uses for the strategy.
    pub fn strategy(self) -> &'static str {
        match self {
            Granularity::Tensor => "tensor",
            Granularity::Channel => "channel",
            Granularity::Group(_) => "group",
            Granularity::Block(..) => "block",
        }
    }

    fn label(self) -> String {
        match self {
            Granularity::Tensor => "tensor".into(),
            Granularity::Channel => "channel".into(),
            Granularity::Group(n) => format!("g{n}"),
            Granularity::Block(r, c) => format!("block{r}x{c}"),
        }
    }
}

/// Element type of a stored slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotType {
    Dtype(DType),
    Ggml(GgmlType),
}

/// A stored tensor produced by a layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Appended to the module prefix; empty means "the tensor's own name"; a suffix starting
    /// with '.' replaces the last name component (`q_proj.qweight` for `q_proj.weight`).
    pub suffix: &'static str,
    pub ty: SlotType,
    /// Numpy-order shape.
    pub shape: Vec<usize>,
    pub nbytes: usize,
}

/// Per-tensor statistics some layouts need before any chunk is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TensorStats {
    pub min: f32,
    pub max: f32,
}

/// Bytes for one slot, at `offset` inside that slot's data.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub slot: usize,
    pub offset: usize,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub pieces: Vec<Piece>,
}

/// Why a layout cannot store a tensor of a given shape (or given codes).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchemeError {
    #[error("row length {cols} is not a multiple of {what} {n}")]
    NotMultiple {
        cols: usize,
        what: &'static str,
        n: usize,
    },
    #[error("{0}")]
    Unsupported(String),
}

/// The grid a calibration method must choose codes on for a layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeGrid {
    /// compressed-tensors integer codes: `spec`, one parameter set per `group` columns of a
    /// row (`None`: per row), scales stored as `scale_dtype`; `stores_g_idx`: each column's
    /// group is stored, so groups may follow any column order.
    Int {
        spec: IntSpec,
        group: Option<usize>,
        scale_dtype: DType,
        stores_g_idx: bool,
    },
    /// A ggml block type's grid ([`crate::ggml::CodeGrid`]).
    Ggml(GgmlType),
}

/// Codes chosen by a method for rows `r0..r0 + n` of a weight, in output row order:
/// `codes` `n × cols`, `params` and `offsets` `n × groups` (value = (q − zero)·scale + offset),
/// `g_idx` each column's group.
#[derive(Debug, Clone, Copy)]
pub struct Codes<'a> {
    pub codes: &'a [i8],
    pub params: &'a [QParams],
    pub offsets: &'a [f32],
    pub g_idx: &'a [u32],
}

impl Codes<'_> {
    /// The values the codes stand for: `(q − zero)·scale + offset`, each column with its
    /// group's parameters (`codes.len() / cols` rows).
    pub fn values(&self, cols: usize) -> Vec<f32> {
        let rows = self.codes.len() / cols.max(1);
        let groups = self.params.len() / rows.max(1);
        self.codes
            .iter()
            .enumerate()
            .map(|(i, &q)| {
                let k = (i / cols) * groups + self.g_idx[i % cols] as usize;
                (q as i32 - self.params[k].zero) as f32 * self.params[k].scale + self.offsets[k]
            })
            .collect()
    }
}

/// What a layout contributes to a safetensors checkpoint's metadata.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckpointMeta {
    /// A compressed-tensors config group: its `weights` arguments and `format`.
    CompressedTensors {
        weights: serde_json::Value,
        format: &'static str,
    },
    /// AutoGPTQ's `quantize_config`: bits and group size.
    AutoGptq { bits: u32, group: usize },
    /// AutoAWQ's `quantization_config` (GEMM, 4 bits, zero points): group size.
    Awq { group: usize },
}

/// compressed-tensors `weights` arguments (`QuantizationArgs`) as llm-compressor writes them.
fn ct_weights(
    kind: &str,
    bits: u32,
    symmetric: bool,
    g: Granularity,
    actorder: Option<&str>,
) -> serde_json::Value {
    use serde_json::{json, Map, Value as Json};
    let (group_size, block) = match g {
        Granularity::Group(n) => (json!(n), Json::Null),
        Granularity::Block(r, c) => (Json::Null, json!([r, c])),
        _ => (Json::Null, Json::Null),
    };
    let mut w = Map::new();
    w.insert("num_bits".into(), json!(bits));
    w.insert("type".into(), json!(kind));
    w.insert("symmetric".into(), json!(symmetric));
    w.insert("strategy".into(), json!(g.strategy()));
    w.insert("group_size".into(), group_size);
    w.insert("block_structure".into(), block);
    w.insert("dynamic".into(), json!(false));
    w.insert("actorder".into(), actorder.map_or(Json::Null, |a| json!(a)));
    w.insert("observer".into(), json!("minmax"));
    w.insert("observer_kwargs".into(), json!({}));
    Json::Object(w)
}

/// One stored layout. `shape` is the logical tensor's numpy-order shape; rows are along the
/// last axis.
pub trait Layout: std::fmt::Debug + Sync {
    /// Short human name, e.g. `int4-sym-g128`, `Q4_0`, `fp8-e4m3-channel`, `F16`.
    fn label(&self) -> String;
    /// Rows a chunk must be a multiple of (except the last chunk).
    fn row_align(&self) -> usize {
        1
    }
    /// True when encoding needs [`TensorStats`] of the whole tensor first.
    fn needs_tensor_stats(&self) -> bool {
        false
    }
    /// Checks the layout can store a tensor of `shape`.
    fn check(&self, shape: &[usize]) -> Result<(), SchemeError>;
    /// The stored tensors this layout produces for a tensor of `shape`.
    fn slots(&self, shape: &[usize]) -> Vec<Slot>;
    /// Byte range of slot `slot` owned by rows `r0..r1`. Slots that are not per-row
    /// (per-tensor scale, shape) are whole in every chunk: each chunk re-emits the same bytes,
    /// so any chunk decodes on its own.
    fn slot_range(&self, slot: usize, shape: &[usize], r0: usize, r1: usize) -> Range<usize>;
    /// Encodes rows `r0..r0 + x.len()/cols` given as f32 (round to nearest, or the type's own
    /// quantizer); `stats` when [`Self::needs_tensor_stats`]; `importance` one weight per
    /// column (ggml types with an importance matrix; a stacked 3-D tensor may give one per
    /// column of each matrix).
    fn encode(
        &self,
        shape: &[usize],
        r0: usize,
        x: &[f32],
        stats: TensorStats,
        importance: Option<&[f32]>,
    ) -> Encoded;
    /// The grid a calibration method must choose codes on; `None`: the layout takes no codes.
    fn code_grid(&self, shape: &[usize]) -> Option<CodeGrid> {
        let _ = shape;
        None
    }
    /// Stores codes chosen by a method on [`Self::code_grid`] for rows `r0..`.
    fn encode_codes(
        &self,
        shape: &[usize],
        r0: usize,
        codes: Codes<'_>,
    ) -> Result<Encoded, SchemeError> {
        let _ = (shape, r0, codes);
        Err(SchemeError::Unsupported(format!(
            "{} does not take codes from a calibration method",
            self.label()
        )))
    }
    /// What it contributes to a safetensors checkpoint's metadata (`quantization_config`,
    /// `quantize_config.json`); `actorder` as compressed-tensors names it, when codes were
    /// chosen in activation order.
    fn checkpoint_meta(&self, actorder: Option<&str>) -> Option<CheckpointMeta> {
        let _ = actorder;
        None
    }
    /// Decodes rows `r0..r1` from the slot bytes given by [`Self::slot_range`] for the same
    /// rows (`parts[i]` is slot i's range), writing every value of `out` (callers pass reused
    /// buffers).
    fn decode(&self, shape: &[usize], r0: usize, r1: usize, parts: &[&[u8]], out: &mut [f32]);
}

/// One stored tensor of a checkpoint, as a layout's reader sees it.
#[derive(Debug, Clone, Copy)]
pub struct Stored<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
}

/// What a layout's reader sees of a checkpoint: its tensors by name, and the
/// compressed-tensors `weights` arguments `quantization_config` gives a module.
pub trait Checkpoint<'a> {
    fn get(&self, name: &str) -> Option<Stored<'a>>;
    fn weight_args(&self, module: &str) -> Option<&serde_json::Value>;
}

/// A weight read back from a checkpoint: its logical name and shape, how it is stored, its
/// slots' bytes (in [`Layout::slots`] order) and the stored tensors it is made of.
#[derive(Debug)]
pub struct ReadWeight<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub scheme: Scheme,
    pub slots: Vec<&'a [u8]>,
    pub stored: Vec<String>,
}

/// A layout's reader: `None` when `t` is not the tensor its weights are found by (e.g. a
/// `*_packed` for pack-quantized), else the weight or why `t` cannot be read as it claims.
pub type Reader =
    for<'a> fn(&dyn Checkpoint<'a>, Stored<'a>) -> Option<Result<ReadWeight<'a>, String>>;

/// For layouts found another way (plain floats: whatever no reader claims; ggml blocks: GGUF
/// tensor types).
fn no_reader<'a>(_: &dyn Checkpoint<'a>, _: Stored<'a>) -> Option<Result<ReadWeight<'a>, String>> {
    None
}

/// Reads the weight `t` anchors, with the first registered reader that claims it.
pub fn read_weight<'a>(
    ck: &dyn Checkpoint<'a>,
    t: Stored<'a>,
) -> Option<Result<ReadWeight<'a>, String>> {
    READERS.iter().find_map(|r| r(ck, t))
}

/// The registry: one line per layout makes it a [`Scheme`] variant and registers its
/// checkpoint reader.
macro_rules! layouts {
    ($($variant:ident($ty:ty) reads $reader:path,)*) => {
        /// Every layout's checkpoint reader, in registry order.
        pub static READERS: &[Reader] = &[$($reader,)*];

        /// How one tensor is stored: one of the registered layouts.
        #[derive(Debug, Clone, Copy, PartialEq)]
        pub enum Scheme {
            $($variant($ty),)*
        }

        impl Scheme {
            /// The layout behind the scheme.
            pub fn layout(&self) -> &dyn Layout {
                match self {
                    $(Scheme::$variant(l) => l,)*
                }
            }
        }
    };
}

// (readers are tried in this order: AWQ's claims a `*.qweight` only with its own shapes and no
// g_idx, so it comes before AutoGPTQ's, which claims every `*.qweight`)
layouts! {
    Float(float::FloatLayout) reads no_reader,
    Ggml(ggml_blocks::GgmlBlocks) reads no_reader,
    Int(pack_quantized::PackQuantized) reads pack_quantized::read,
    Fp8(float_quantized::FloatQuantized) reads float_quantized::read,
    Awq(awq_gemm::AutoAwq) reads awq_gemm::read,
    Gptq(autogptq::AutoGptq) reads autogptq::read,
}

impl Scheme {
    /// Plain float storage.
    pub fn float(dtype: DType) -> Scheme {
        Scheme::Float(float::FloatLayout {
            dtype,
            clamp: false,
        })
    }

    /// How a stored ggml tensor decodes: plain floats, or ggml blocks. `None` for types we
    /// cannot decode.
    pub fn for_ggml(ty: GgmlType) -> Option<Scheme> {
        match ty {
            GgmlType::F32 => Some(Scheme::float(DType::F32)),
            GgmlType::F16 => Some(Scheme::float(DType::F16)),
            GgmlType::BF16 => Some(Scheme::float(DType::BF16)),
            t if t.can_quantize() => Some(Scheme::Ggml(ggml_blocks::GgmlBlocks(t))),
            _ => None,
        }
    }

    pub fn label(&self) -> String {
        self.layout().label()
    }
    pub fn row_align(&self) -> usize {
        self.layout().row_align()
    }
    pub fn needs_tensor_stats(&self) -> bool {
        self.layout().needs_tensor_stats()
    }
    pub fn check(&self, shape: &[usize]) -> Result<(), SchemeError> {
        self.layout().check(shape)
    }
    pub fn slots(&self, shape: &[usize]) -> Vec<Slot> {
        self.layout().slots(shape)
    }
    pub fn slot_range(&self, slot: usize, shape: &[usize], r0: usize, r1: usize) -> Range<usize> {
        self.layout().slot_range(slot, shape, r0, r1)
    }
    /// [`Layout::encode`] without importance weights.
    pub fn encode(&self, shape: &[usize], r0: usize, x: &[f32], stats: TensorStats) -> Encoded {
        self.layout().encode(shape, r0, x, stats, None)
    }
    pub fn encode_weighted(
        &self,
        shape: &[usize],
        r0: usize,
        x: &[f32],
        stats: TensorStats,
        importance: Option<&[f32]>,
    ) -> Encoded {
        self.layout().encode(shape, r0, x, stats, importance)
    }
    pub fn checkpoint_meta(&self, actorder: Option<&str>) -> Option<CheckpointMeta> {
        self.layout().checkpoint_meta(actorder)
    }
    pub fn code_grid(&self, shape: &[usize]) -> Option<CodeGrid> {
        self.layout().code_grid(shape)
    }
    pub fn encode_codes(
        &self,
        shape: &[usize],
        r0: usize,
        codes: Codes<'_>,
    ) -> Result<Encoded, SchemeError> {
        self.layout().encode_codes(shape, r0, codes)
    }
    pub fn decode(&self, shape: &[usize], r0: usize, r1: usize, parts: &[&[u8]], out: &mut [f32]) {
        self.layout().decode(shape, r0, r1, parts, out)
    }

    /// The error statistics of rows `r0..r1` as decoded from their encoded `pieces` against
    /// `x` (those rows' original values, `cols` each), decoded a few rows at a time so each
    /// group's values are still in cache when they are summed: the same figures, and the same
    /// bound, as [`ErrorStats::of_bounded`] on the whole decode. Adds to `stats` and returns
    /// whether every row is within the bound; `None` (nothing added) for a layout whose slots
    /// are not row-major (its pieces do not split by rows).
    pub fn error_stats_by_rows(
        &self,
        shape: &[usize],
        (r0, r1): (usize, usize),
        pieces: &[Piece],
        x: &[f32],
        stats: &mut crate::ErrorStats,
    ) -> Option<bool> {
        /// Values decoded per group: 32 KiB of f32.
        const GROUP: usize = 8192;
        if !matches!(self, Scheme::Ggml(_) | Scheme::Int(_) | Scheme::Fp8(_)) {
            return None;
        }
        let l = self.layout();
        let cols = rows_cols(shape).1;
        let align = self.row_align().max(1);
        let per = (GROUP / cols.max(1)).max(1).div_ceil(align) * align;
        let whole: Vec<Range<usize>> = pieces
            .iter()
            .map(|p| l.slot_range(p.slot, shape, r0, r1))
            .collect();
        let groups = || (r0..r1).step_by(per).map(move |a| (a, (a + per).min(r1)));
        // every group's bytes lie inside its piece
        let inside = pieces.iter().zip(&whole).all(|(p, w)| {
            p.bytes.len() == w.len()
                && groups().all(|(a, b)| {
                    let r = l.slot_range(p.slot, shape, a, b);
                    w.start <= r.start && r.end <= w.end
                })
        });
        if !inside || x.len() != (r1 - r0) * cols {
            return None;
        }
        let mut y = vec![0f32; per * cols];
        let mut within = true;
        for (a, b) in groups() {
            let parts: Vec<&[u8]> = pieces
                .iter()
                .zip(&whole)
                .map(|(p, w)| {
                    let r = l.slot_range(p.slot, shape, a, b);
                    &p.bytes[r.start - w.start..r.end - w.start]
                })
                .collect();
            let n = (b - a) * cols;
            self.decode(shape, a, b, &parts, &mut y[..n]);
            let xs = &x[(a - r0) * cols..(b - r0) * cols];
            within &= stats.add_bounded(xs, &y[..n], cols);
        }
        Some(within)
    }

    /// Stored bits per original value (all slots counted).
    pub fn bits_per_weight(&self, shape: &[usize]) -> f64 {
        let n: usize = shape.iter().product();
        let bytes: usize = self.slots(shape).iter().map(|s| s.nbytes).sum();
        if n == 0 {
            0.0
        } else {
            bytes as f64 * 8.0 / n as f64
        }
    }
}

/// The bytes of slot `slot` for rows `r0..r1`, placed where [`Layout::slot_range`] says.
fn placed(
    l: &dyn Layout,
    slot: usize,
    shape: &[usize],
    r0: usize,
    r1: usize,
    bytes: Vec<u8>,
) -> Piece {
    let range = l.slot_range(slot, shape, r0, r1);
    debug_assert_eq!(range.len(), bytes.len(), "slot {slot} of {}", l.label());
    Piece {
        slot,
        offset: range.start,
        bytes,
    }
}

/// Scales are stored as floats: anything else would be decoded as garbage (or not at all).
fn check_scale_dtype(d: DType, scale: &str) -> Result<(), String> {
    match d {
        DType::F32 | DType::F16 | DType::BF16 => Ok(()),
        d => Err(format!("{scale} has dtype {d}, expected F32, F16 or BF16")),
    }
}

/// The stored slots have the sizes `scheme` gives a `rows × cols` tensor.
fn check_sizes(scheme: &Scheme, rows: usize, cols: usize, slots: &[&[u8]]) -> Result<(), String> {
    let expect: Vec<usize> = scheme
        .slots(&[rows, cols])
        .iter()
        .map(|x| x.nbytes)
        .collect();
    let got: Vec<usize> = slots.iter().map(|x| x.len()).collect();
    if expect != got {
        return Err(format!(
            "stored sizes {got:?} do not match {} for shape [{rows}, {cols}] (expected {expect:?})",
            scheme.label()
        ));
    }
    Ok(())
}

fn slot(suffix: &'static str, dt: DType, shape: Vec<usize>) -> Slot {
    let nbytes = shape.iter().product::<usize>() * dt.size();
    Slot {
        suffix,
        ty: SlotType::Dtype(dt),
        shape,
        nbytes,
    }
}

/// (rows, cols) view of a numpy-order shape: the last axis is the row.
pub fn rows_cols(shape: &[usize]) -> (usize, usize) {
    match shape.split_last() {
        None => (1, 1),
        Some((&c, rest)) => (rest.iter().product(), c),
    }
}

fn need_2d(shape: &[usize]) -> Result<(), SchemeError> {
    if shape.len() != 2 {
        return Err(SchemeError::Unsupported(format!(
            "only 2-D weights can be quantized (shape {shape:?})"
        )));
    }
    Ok(())
}

fn check_gran(g: Granularity, cols: usize) -> Result<(), SchemeError> {
    match g {
        Granularity::Group(n) if n == 0 || !cols.is_multiple_of(n) => {
            Err(SchemeError::NotMultiple {
                cols,
                what: "the group size",
                n,
            })
        }
        Granularity::Block(r, c) if r == 0 || c == 0 => {
            Err(SchemeError::Unsupported("empty block size".into()))
        }
        _ => Ok(()),
    }
}

fn group_len(g: Granularity, cols: usize) -> usize {
    match g {
        Granularity::Group(n) => n,
        _ => cols.max(1),
    }
}

fn scale_shape(g: Granularity, rows: usize, cols: usize) -> Vec<usize> {
    match g {
        Granularity::Tensor => vec![1],
        Granularity::Channel => vec![rows, 1],
        Granularity::Group(n) => vec![rows, cols / n],
        Granularity::Block(r, c) => vec![rows.div_ceil(r), cols.div_ceil(c)],
    }
}

fn absmax(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |a, v| a.max(v.abs()))
}

/// Largest finite value of a float storage type.
pub fn float_max(dt: DType) -> f32 {
    match dt {
        DType::F16 => 65504.0,
        DType::BF16 => half::bf16::MAX.to_f32(),
        _ => f32::MAX,
    }
}

/// Smallest normal value of a float storage type.
pub fn float_min_normal(dt: DType) -> f32 {
    match dt {
        DType::F16 => half::f16::MIN_POSITIVE.to_f32(),
        _ => f32::MIN_POSITIVE,
    }
}

fn encode_scales(dt: DType, s: &[f32]) -> Vec<u8> {
    let mut b = vec![0u8; s.len() * dt.size()];
    dtype::encode_float(dt, s, &mut b);
    b
}

fn decode_scales(dt: DType, b: &[u8]) -> Vec<f32> {
    let mut s = vec![0f32; b.len() / dt.size()];
    dtype::decode_f32(dt, b, &mut s);
    s
}

fn words_to_bytes(w: &[u32]) -> Vec<u8> {
    w.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn bytes_to_words(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The writer's check of what it wrote: decoded values `y` equal `intended` exactly (float
/// conversions, codes chosen by a calibration method); else (round to nearest in a quantized
/// layout, whose decoder defines its values) every value of a finite input decodes to a finite
/// value no further from it than the largest magnitude of its row (twice the row's range: a
/// misplaced or garbled block cannot pass).
pub fn check_written(
    intended: Option<&[f32]>,
    x: &[f32],
    y: &[f32],
    cols: usize,
) -> std::result::Result<(), String> {
    let same = |a: f32, b: f32| a == b || (a.is_nan() && b.is_nan());
    if let Some(want) = intended {
        return match want.iter().zip(y).position(|(&a, &b)| !same(a, b)) {
            None => Ok(()),
            Some(i) => Err(format!(
                "value {} of row {} decodes to {} instead of {}",
                i % cols.max(1),
                i / cols.max(1),
                y[i],
                want[i]
            )),
        };
    }
    for (r, (xr, yr)) in x.chunks(cols.max(1)).zip(y.chunks(cols.max(1))).enumerate() {
        let amax = xr.iter().fold(0f32, |a, v| a.max(v.abs()));
        let tol = amax + amax * 1e-3 + f32::MIN_POSITIVE;
        // one branch-free pass (NaN fails the comparison); the position only on failure
        let fine = xr.iter().zip(yr).fold(true, |ok, (&a, &b)| {
            // (b finite on its own: near f32's limit `tol` itself overflows to inf)
            ok & (!a.is_finite() | (b.is_finite() & ((a - b).abs() <= tol)))
        });
        if fine {
            continue;
        }
        if let Some(c) = xr
            .iter()
            .zip(yr)
            .position(|(&a, &b)| a.is_finite() && (!b.is_finite() || (a - b).abs() > tol))
        {
            if !yr[c].is_finite() {
                // a block scale beyond its storage type (ggml overflows the same way): name the
                // largest value among those that decode to non-finite ones, the culprit
                let (c, _) = xr
                    .iter()
                    .zip(yr)
                    .enumerate()
                    .filter(|(_, (a, b))| a.is_finite() && !b.is_finite())
                    .map(|(i, (a, _))| (i, a.abs()))
                    .fold((c, 0f32), |m, v| if v.1 > m.1 { v } else { m });
                return Err(format!(
                    "value {c} of row {r} is {}, beyond what this layout's scales can hold (its block would decode to {}); keep this tensor in a float type (--tensor-type NAME=f16) or rescale it",
                    xr[c], yr[c]
                ));
            }
            return Err(format!(
                "value {c} of row {r} decodes to {} from {} (row max |x| {amax})",
                yr[c], xr[c]
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtn::{self, IntSpec};
    use crate::synth::weight_matrix;
    use crate::ErrorStats;
    use float::FloatLayout;
    use float_quantized::FloatQuantized;
    use ggml_blocks::GgmlBlocks;
    use pack_quantized::PackQuantized;

    fn all_schemes() -> Vec<Scheme> {
        let mut v = vec![
            Scheme::Float(FloatLayout {
                dtype: DType::F16,
                clamp: false,
            }),
            Scheme::Float(FloatLayout {
                dtype: DType::BF16,
                clamp: false,
            }),
            Scheme::Ggml(GgmlBlocks(GgmlType::Q4_0)),
            Scheme::Ggml(GgmlBlocks(GgmlType::Q5_1)),
            Scheme::Ggml(GgmlBlocks(GgmlType::Q8_0)),
        ];
        for bits in [2, 3, 4, 8] {
            for symmetric in [true, false] {
                for g in [
                    Granularity::Tensor,
                    Granularity::Channel,
                    Granularity::Group(64),
                ] {
                    v.push(Scheme::Int(PackQuantized {
                        spec: IntSpec { bits, symmetric },
                        granularity: g,
                        scale_dtype: DType::BF16,
                        g_idx: false,
                    }));
                }
            }
        }
        for format in [DType::F8E4M3, DType::F8E5M2] {
            for g in [
                Granularity::Tensor,
                Granularity::Channel,
                Granularity::Block(128, 128),
            ] {
                v.push(Scheme::Fp8(FloatQuantized {
                    format,
                    granularity: g,
                    scale_dtype: DType::F32,
                }));
            }
        }
        v
    }

    /// Encodes a tensor in chunks of `chunk` rows into whole slot buffers.
    fn encode_chunked(s: &Scheme, shape: &[usize], x: &[f32], chunk: usize) -> Vec<Vec<u8>> {
        let (rows, cols) = rows_cols(shape);
        let (mn, mx) = rtn::min_max(x);
        let stats = TensorStats { min: mn, max: mx };
        let mut bufs: Vec<Vec<u8>> = s
            .slots(shape)
            .iter()
            .map(|sl| vec![0xAA; sl.nbytes])
            .collect();
        let mut r0 = 0;
        while r0 < rows {
            let r1 = (r0 + chunk).min(rows);
            for p in s.encode(shape, r0, &x[r0 * cols..r1 * cols], stats).pieces {
                bufs[p.slot][p.offset..p.offset + p.bytes.len()].copy_from_slice(&p.bytes);
            }
            r0 = r1;
        }
        bufs
    }

    /// Decoding a few rows at a time gives the whole decode's statistics bit for bit, and its
    /// bound, on rows shorter and longer than a group, with a chunk starting mid-tensor; a
    /// corrupted byte fails the bound.
    #[test]
    fn error_stats_by_rows_equal_the_whole_decode() {
        let bits = |s: &ErrorStats| {
            [s.sum_x2, s.sum_y2, s.sum_xy, s.sum_err2, s.max_abs_err].map(f64::to_bits)
        };
        for (rows, cols) in [(300usize, 256usize), (40, 576 * 32), (97, 320)] {
            let shape = [rows, cols];
            let x = weight_matrix(rows, cols, 0.02, 5);
            for s in all_schemes() {
                if s.check(&shape).is_err() {
                    continue;
                }
                let (mn, mx) = rtn::min_max(&x);
                let stats = TensorStats { min: mn, max: mx };
                let align = s.row_align().max(1);
                let r0 = rows / 3 / align * align;
                let xs = &x[r0 * cols..];
                let mut enc = s.encode(&shape, r0, xs, stats);
                let mut got = ErrorStats::default();
                let Some(within) =
                    s.error_stats_by_rows(&shape, (r0, rows), &enc.pieces, xs, &mut got)
                else {
                    assert!(matches!(s, Scheme::Float(_)), "{}", s.label());
                    continue;
                };
                let parts: Vec<&[u8]> = enc.pieces.iter().map(|p| p.bytes.as_slice()).collect();
                let mut y = vec![0f32; xs.len()];
                s.decode(&shape, r0, rows, &parts, &mut y);
                let (want, want_within) = ErrorStats::of_bounded(xs, &y, cols);
                assert_eq!((bits(&got), got.n), (bits(&want), want.n), "{}", s.label());
                assert_eq!(within, want_within, "{}", s.label());
                assert!(within, "{}", s.label());
                // a scale byte (or code) made huge: the bound fails
                let b = &mut enc.pieces[0].bytes;
                let at = b.len() / 2;
                b[at] = 0x7b;
                b[at + 1] = 0x7b;
                let mut bad = ErrorStats::default();
                let w = s.error_stats_by_rows(&shape, (r0, rows), &enc.pieces, xs, &mut bad);
                let parts: Vec<&[u8]> = enc.pieces.iter().map(|p| p.bytes.as_slice()).collect();
                s.decode(&shape, r0, rows, &parts, &mut y);
                assert_eq!(
                    w,
                    Some(ErrorStats::of_bounded(xs, &y, cols).1),
                    "{}",
                    s.label()
                );
            }
        }
    }

    #[test]
    fn chunked_encoding_equals_whole_and_decodes_close() {
        let shape = [300usize, 256];
        let x = weight_matrix(300, 256, 0.02, 11);
        for s in all_schemes() {
            s.check(&shape).unwrap();
            let whole = encode_chunked(&s, &shape, &x, 300);
            // 128-row chunks: a multiple of every row_align in use
            let chunked = encode_chunked(&s, &shape, &x, 128);
            assert_eq!(whole, chunked, "{}", s.label());
            let parts: Vec<&[u8]> = whole.iter().map(|b| b.as_slice()).collect();
            let mut y = vec![0f32; x.len()];
            s.decode(&shape, 0, 300, &parts, &mut y);
            // decode a middle chunk from its own slot ranges
            let (r0, r1) = (128, 256);
            let sub: Vec<&[u8]> = (0..parts.len())
                .map(|i| &parts[i][s.slot_range(i, &shape, r0, r1)])
                .collect();
            let mut y2 = vec![0f32; (r1 - r0) * 256];
            s.decode(&shape, r0, r1, &sub, &mut y2);
            assert_eq!(&y[r0 * 256..r1 * 256], &y2[..], "{}", s.label());
            let e = ErrorStats::of(&x, &y);
            let min_sqnr = match s {
                Scheme::Int(PackQuantized { spec, .. }) if spec.bits <= 3 => 0.0,
                Scheme::Int(PackQuantized {
                    granularity: Granularity::Tensor,
                    spec,
                    ..
                }) if spec.bits == 4 => 0.0,
                _ => 12.0,
            };
            assert!(e.sqnr_db() > min_sqnr, "{}: {}", s.label(), e.sqnr_db());
        }
    }

    #[test]
    fn finer_granularity_is_more_accurate() {
        let shape = [64usize, 512];
        let x = weight_matrix(64, 512, 0.02, 5);
        let sq = |g| {
            let s = Scheme::Int(PackQuantized {
                spec: IntSpec {
                    bits: 4,
                    symmetric: true,
                },
                granularity: g,
                scale_dtype: DType::F32,
                g_idx: false,
            });
            let b = encode_chunked(&s, &shape, &x, 64);
            let parts: Vec<&[u8]> = b.iter().map(|v| v.as_slice()).collect();
            let mut y = vec![0f32; x.len()];
            s.decode(&shape, 0, 64, &parts, &mut y);
            ErrorStats::of(&x, &y).sqnr_db()
        };
        let (t, c, g) = (
            sq(Granularity::Tensor),
            sq(Granularity::Channel),
            sq(Granularity::Group(32)),
        );
        assert!(t < c && c < g, "{t} {c} {g}");
    }

    #[test]
    fn group_must_divide_rows() {
        let s = Scheme::Int(PackQuantized {
            spec: IntSpec {
                bits: 4,
                symmetric: true,
            },
            granularity: Granularity::Group(128),
            scale_dtype: DType::BF16,
            g_idx: false,
        });
        assert!(matches!(
            s.check(&[8, 576]),
            Err(SchemeError::NotMultiple {
                cols: 576,
                n: 128,
                ..
            })
        ));
        assert!(Scheme::Ggml(GgmlBlocks(GgmlType::Q4_0))
            .check(&[8, 48])
            .is_err());
        assert!(s.check(&[576]).is_err());
    }

    #[test]
    fn bits_per_weight() {
        assert_eq!(
            Scheme::Ggml(GgmlBlocks(GgmlType::Q4_0)).bits_per_weight(&[4, 64]),
            4.5
        );
        assert_eq!(
            Scheme::Ggml(GgmlBlocks(GgmlType::Q8_0)).bits_per_weight(&[4, 64]),
            8.5
        );
    }
}

#[cfg(test)]
mod gptq_layout_tests {
    use super::*;
    use crate::rtn::IntSpec;
    use autogptq::AutoGptq;
    use pack_quantized::PackQuantized;

    /// Consistency between two of our own layouts, not correctness: given the same RTN codes
    /// and f16 scales, the GPTQ v1 packing decodes to what compressed-tensors' symmetric int
    /// packing decodes to (2, 4 and 8 bits). Correctness of each is checked by independent
    /// oracles in the integration tests (tests/oracle/gptq_dequant.py, the compressed-tensors
    /// package).
    #[test]
    fn gptq_layout_round_trips_like_int() {
        let (rows, cols) = (48, 256);
        let x = crate::synth::weight_matrix(rows, cols, 0.02, 5);
        for bits in [2u32, 4, 8] {
            for group in [32, 128, 256] {
                let g = Scheme::Gptq(AutoGptq { bits, group });
                let i = Scheme::Int(PackQuantized {
                    spec: IntSpec {
                        bits,
                        symmetric: true,
                    },
                    granularity: Granularity::Group(group),
                    scale_dtype: DType::F16,
                    g_idx: false,
                });
                g.check(&[rows, cols]).unwrap();
                let stats = TensorStats::default();
                let decode = |s: &Scheme| {
                    let e = s.encode(&[rows, cols], 0, &x, stats);
                    let parts: Vec<&[u8]> = e.pieces.iter().map(|p| p.bytes.as_slice()).collect();
                    for (p, sl) in e.pieces.iter().zip(s.slots(&[rows, cols])) {
                        assert_eq!(p.bytes.len(), sl.nbytes, "{}", s.label());
                    }
                    let mut y = vec![0f32; rows * cols];
                    s.decode(&[rows, cols], 0, rows, &parts, &mut y);
                    y
                };
                assert_eq!(decode(&g), decode(&i), "bits {bits} group {group}");
            }
        }
        assert!(Scheme::Gptq(AutoGptq { bits: 3, group: 32 })
            .check(&[8, 64])
            .is_err());
        assert!(Scheme::Gptq(AutoGptq { bits: 4, group: 32 })
            .check(&[12, 64])
            .is_err());
    }
}

#[cfg(test)]
mod int_g_idx_tests {
    use super::*;
    use crate::rtn::{IntSpec, QParams};
    use pack_quantized::PackQuantized;

    /// compressed-tensors checkpoints with a `weight_g_idx` (older act-order GPTQ outputs):
    /// each column decodes with its own group's parameters.
    #[test]
    fn int_scheme_decodes_with_a_g_idx() {
        let (rows, cols, group) = (32, 64, 16);
        let groups = cols / group;
        let s = Scheme::Int(PackQuantized {
            spec: IntSpec {
                bits: 4,
                symmetric: false,
            },
            granularity: Granularity::Group(group),
            scale_dtype: DType::F32,
            g_idx: true,
        });
        s.check(&[rows, cols]).unwrap();
        let mut rng = crate::synth::Rng::new(9);
        let codes: Vec<i8> = (0..rows * cols)
            .map(|_| (rng.next_u64() % 16) as i8 - 8)
            .collect();
        let params: Vec<QParams> = (0..rows * groups)
            .map(|k| QParams {
                scale: 0.01 * (1 + k % 7) as f32,
                zero: (k % 5) as i32 - 2,
            })
            .collect();
        // a permuted grouping: column c in group (c * 3) % groups
        let g_idx: Vec<u32> = (0..cols).map(|c| ((c * 3) % groups) as u32).collect();
        let offsets = vec![0f32; params.len()];
        let e = s
            .encode_codes(
                &[rows, cols],
                0,
                Codes {
                    codes: &codes,
                    params: &params,
                    offsets: &offsets,
                    g_idx: &g_idx,
                },
            )
            .unwrap();
        let parts: Vec<&[u8]> = e.pieces.iter().map(|p| p.bytes.as_slice()).collect();
        let mut y = vec![0f32; rows * cols];
        s.decode(&[rows, cols], 0, rows, &parts, &mut y);
        for r in 0..rows {
            for c in 0..cols {
                let p = params[r * groups + g_idx[c] as usize];
                let want = (codes[r * cols + c] as i32 - p.zero) as f32 * p.scale;
                assert_eq!(y[r * cols + c], want, "row {r} column {c}");
            }
        }
        assert!(Scheme::Int(PackQuantized {
            spec: IntSpec {
                bits: 4,
                symmetric: true
            },
            granularity: Granularity::Channel,
            scale_dtype: DType::F32,
            g_idx: true,
        })
        .check(&[rows, cols])
        .is_err());
    }
}

#[cfg(test)]
mod check_tests {
    use super::*;

    #[test]
    fn the_writers_check_fails_on_what_was_not_meant() {
        let x = [0.5f32, -1.0, 0.25, 0.0];
        // exact: one value off, or a NaN where a number was meant
        assert!(check_written(Some(&x), &x, &x, 2).is_ok());
        let mut y = x;
        y[2] = 0.2500001;
        assert!(check_written(Some(&x), &x, &y, 2)
            .unwrap_err()
            .contains("value 0 of row 1"));
        // bounded: a value beyond its row's range, or non-finite
        let ok = [0.4f32, -0.9, 0.2, 0.0];
        assert!(check_written(None, &x, &ok, 2).is_ok());
        assert!(check_written(None, &x, &[0.4, -0.9, 0.6, 0.0], 2).is_err());
        assert!(check_written(None, &x, &[f32::NAN, -0.9, 0.2, 0.0], 2).is_err());
        // near f32's limit the tolerance overflows: an infinite decode is still refused
        let big = [f32::MAX, -3.4e38];
        assert!(check_written(None, &big, &[f32::MAX, f32::NEG_INFINITY], 2).is_err());
        // an all-zero row must decode to zeros
        assert!(check_written(None, &[0.0, 0.0], &[0.0, 1e-3], 2).is_err());
    }
}
