//! GGUF v3: metadata values, a planned-layout writer, and a validating reader over mmap.
//!
//! The writer computes every tensor offset from shapes and types before any data exists, so
//! the header is written first and tensor data can be streamed (or written positionally by
//! parallel workers) afterwards.

use crate::error::{file_err, io_err, shown, tensor_err, Result};
use memmap2::Mmap;
use qs_numeric::limits::{checked_numel, MAX_ARRAY_DEPTH, MAX_KEY_LEN, MAX_KVS, MAX_TENSORS};
use qs_numeric::GgmlType;
use std::fs::File;
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// Element type id and elements (all of that type).
    Array(u32, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(..) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Value::U8(v) => out.push(*v),
            Value::I8(v) => out.push(*v as u8),
            Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Bool(v) => out.push(*v as u8),
            Value::String(s) => write_str(out, s),
            Value::Array(t, items) => {
                out.extend_from_slice(&t.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for i in items {
                    debug_assert_eq!(i.type_id(), *t);
                    i.write(out);
                }
            }
            Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        }
    }

    /// A short rendering for `inspect` (long arrays elided).
    pub fn display(&self) -> String {
        match self {
            Value::String(s) if s.len() > 80 => {
                format!("{:?}…", &s[..s.floor_char_boundary_compat(77)])
            }
            Value::String(s) => format!("{s:?}"),
            Value::Array(_, v) if v.len() > 8 => {
                let head: Vec<String> = v[..4].iter().map(|x| x.display()).collect();
                format!("[{}, … ({} items)]", head.join(", "), v.len())
            }
            Value::Array(_, v) => format!(
                "[{}]",
                v.iter().map(|x| x.display()).collect::<Vec<_>>().join(", ")
            ),
            Value::U8(v) => v.to_string(),
            Value::I8(v) => v.to_string(),
            Value::U16(v) => v.to_string(),
            Value::I16(v) => v.to_string(),
            Value::U32(v) => v.to_string(),
            Value::I32(v) => v.to_string(),
            Value::F32(v) => v.to_string(),
            Value::Bool(v) => v.to_string(),
            Value::U64(v) => v.to_string(),
            Value::I64(v) => v.to_string(),
            Value::F64(v) => v.to_string(),
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) if v >= 0 => Some(v as u64),
            Value::I16(v) if v >= 0 => Some(v as u64),
            Value::I32(v) if v >= 0 => Some(v as u64),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }
}

trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}
impl FloorCharBoundary for str {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A tensor to be written: `ne` in ggml order (innermost first).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorPlan {
    pub name: String,
    pub ne: Vec<u64>,
    pub ty: GgmlType,
}

impl TensorPlan {
    pub fn nbytes(&self) -> u64 {
        let rows: u64 = self.ne.iter().skip(1).product();
        rows * self.ty.row_bytes(self.ne[0] as usize) as u64
    }
}

/// The layout of a GGUF file, fixed before any tensor data is written.
#[derive(Debug, Clone)]
pub struct GgufLayout {
    /// Header, metadata, tensor infos and padding up to the data section.
    pub header: Vec<u8>,
    /// Absolute file offset of each tensor's data.
    pub offsets: Vec<u64>,
    pub total_len: u64,
}

/// Why a GGUF plan is invalid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("tensor '{0}': GGUF tensor names must be shorter than 64 bytes")]
    NameTooLong(String),
    #[error("tensor '{0}' appears twice")]
    Duplicate(String),
    #[error("tensor '{name}': {dims} dimensions (GGUF allows 1 to 4)")]
    Dims { name: String, dims: usize },
    #[error("tensor '{name}': row length {ne0} is not a multiple of {ty}'s block size {bs}")]
    Block {
        name: String,
        ne0: u64,
        ty: GgmlType,
        bs: usize,
    },
    #[error("general.alignment {0} is not a power of two")]
    Alignment(u64),
}

/// llama.cpp's split file name: `{stem}-{no:05}-of-{count:05}.gguf` (`no` 0-based).
pub fn split_path(output: &Path, no: usize, count: usize) -> PathBuf {
    let s = output.to_string_lossy();
    let stem = s.strip_suffix(".gguf").unwrap_or(&s);
    PathBuf::from(format!("{stem}-{:05}-of-{:05}.gguf", no + 1, count))
}

/// The files of one GGUF output and, per tensor in order, (file index, absolute offset).
pub type SplitLayout = (Vec<(PathBuf, GgufLayout)>, Vec<(usize, u64)>);

/// Plans one GGUF at `output`, or (with `max` bytes of tensor data per file) llama.cpp's split
/// set (`gguf-split`'s layout): tensors in order, a new file when the next tensor would take a
/// file's tensor data past the limit; all metadata in the first file, `split.no` /
/// `split.count` / `split.tensors.count` in every file.
pub fn plan_split(
    output: &Path,
    kvs: Vec<(String, Value)>,
    tensors: &[TensorPlan],
    max: Option<u64>,
) -> std::result::Result<SplitLayout, PlanError> {
    let Some(max) = max else {
        let l = plan(&kvs, tensors)?;
        let offs = l.offsets.iter().map(|&o| (0, o)).collect();
        return Ok((vec![(output.to_path_buf(), l)], offs));
    };
    let mut groups: Vec<Vec<usize>> = vec![vec![]];
    let mut cur = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        let n = t.nbytes().next_multiple_of(DEFAULT_ALIGNMENT);
        if cur + n > max && !groups.last().is_some_and(|g| g.is_empty()) {
            groups.push(vec![]);
            cur = 0;
        }
        cur += n;
        if let Some(g) = groups.last_mut() {
            g.push(i);
        }
    }
    let count = groups.len();
    let mut files = Vec::with_capacity(count);
    let mut offs = vec![(0usize, 0u64); tensors.len()];
    for (no, g) in groups.iter().enumerate() {
        let mut k = if no == 0 { kvs.clone() } else { vec![] };
        k.push(("split.no".into(), Value::U16(no as u16)));
        k.push(("split.count".into(), Value::U16(count as u16)));
        k.push((
            "split.tensors.count".into(),
            Value::I32(tensors.len() as i32),
        ));
        let sub: Vec<TensorPlan> = g.iter().map(|&i| tensors[i].clone()).collect();
        let l = plan(&k, &sub)?;
        for (j, &i) in g.iter().enumerate() {
            offs[i] = (no, l.offsets[j]);
        }
        files.push((split_path(output, no, count), l));
    }
    Ok((files, offs))
}

/// Plans a GGUF v3 file. `general.alignment` in `kvs` (u32) is honoured; without it the
/// default 32 applies.
pub fn plan(
    kvs: &[(String, Value)],
    tensors: &[TensorPlan],
) -> std::result::Result<GgufLayout, PlanError> {
    let alignment = kvs
        .iter()
        .find(|(k, _)| k == "general.alignment")
        .and_then(|(_, v)| v.as_u64())
        .unwrap_or(DEFAULT_ALIGNMENT);
    if alignment == 0 || !alignment.is_power_of_two() {
        return Err(PlanError::Alignment(alignment));
    }
    let mut names = std::collections::HashSet::new();
    for t in tensors {
        if t.name.len() >= 64 {
            return Err(PlanError::NameTooLong(t.name.clone()));
        }
        if !names.insert(&t.name) {
            return Err(PlanError::Duplicate(t.name.clone()));
        }
        if t.ne.is_empty() || t.ne.len() > 4 {
            return Err(PlanError::Dims {
                name: t.name.clone(),
                dims: t.ne.len(),
            });
        }
        let bs = t.ty.block().0;
        if t.ne[0] % bs as u64 != 0 {
            return Err(PlanError::Block {
                name: t.name.clone(),
                ne0: t.ne[0],
                ty: t.ty,
                bs,
            });
        }
    }
    let mut h = Vec::new();
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&3u32.to_le_bytes());
    h.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    h.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        write_str(&mut h, k);
        h.extend_from_slice(&v.type_id().to_le_bytes());
        v.write(&mut h);
    }
    let mut rel = Vec::with_capacity(tensors.len());
    let mut off = 0u64;
    for t in tensors {
        write_str(&mut h, &t.name);
        h.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
        for d in &t.ne {
            h.extend_from_slice(&d.to_le_bytes());
        }
        h.extend_from_slice(&t.ty.id().to_le_bytes());
        h.extend_from_slice(&off.to_le_bytes());
        rel.push(off);
        off = (off + t.nbytes()).next_multiple_of(alignment);
    }
    let data_start = (h.len() as u64).next_multiple_of(alignment);
    h.resize(data_start as usize, 0);
    Ok(GgufLayout {
        header: h,
        offsets: rel.iter().map(|r| data_start + r).collect(),
        total_len: data_start + off,
    })
}

/// A tensor of a GGUF file being read.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensor {
    pub name: String,
    pub ne: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute file offsets of the data.
    pub start: usize,
    pub end: usize,
}

impl GgufTensor {
    /// Numpy-order shape.
    pub fn shape(&self) -> Vec<usize> {
        self.ne.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A memory-mapped, validated GGUF file.
pub struct GgufFile {
    pub path: PathBuf,
    mmap: Mmap,
    pub version: u32,
    pub kvs: Vec<(String, Value)>,
    pub tensors: Vec<GgufTensor>,
    pub alignment: u64,
    pub data_start: usize,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let end = (self.pos as u64)
            .checked_add(n)
            .filter(|&e| e <= self.buf.len() as u64)
            .ok_or_else(|| {
                file_err(
                    self.path,
                    format!(
                        "truncated: {what} at byte {} needs {n} bytes, file has {}",
                        self.pos,
                        self.buf.len()
                    ),
                )
            })?;
        let s = &self.buf[self.pos..end as usize];
        self.pos = end as usize;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8"),
        ))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        self.string_of(n, what)
    }
    fn string_of(&mut self, n: u64, what: &str) -> Result<String> {
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| file_err(self.path, format!("{what} is not UTF-8")))
    }
    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value> {
        let what = format!("value of '{}'", shown(key));
        Ok(match ty {
            0 => Value::U8(self.take(1, &what)?[0]),
            1 => Value::I8(self.take(1, &what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(
                self.take(2, &what)?.try_into().expect("2"),
            )),
            3 => Value::I16(i16::from_le_bytes(
                self.take(2, &what)?.try_into().expect("2"),
            )),
            4 => Value::U32(self.u32(&what)?),
            5 => Value::I32(self.u32(&what)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(&what)?)),
            7 => Value::Bool(self.take(1, &what)?[0] != 0),
            8 => Value::String(self.string(&what)?),
            9 if depth >= MAX_ARRAY_DEPTH => {
                return Err(file_err(
                    self.path,
                    format!(
                        "'{}': arrays nested more than {MAX_ARRAY_DEPTH} deep",
                        shown(key)
                    ),
                ))
            }
            9 => {
                let et = self.u32(&what)?;
                let n = self.u64(&what)?;
                // every element takes at least one byte: a count beyond the file is a lie
                if n > (self.buf.len() - self.pos) as u64 {
                    return Err(file_err(
                        self.path,
                        format!(
                            "'{}': array of {n} items cannot fit in the file",
                            shown(key)
                        ),
                    ));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(et, key, depth + 1)?);
                }
                Value::Array(et, v)
            }
            10 => Value::U64(self.u64(&what)?),
            11 => Value::I64(self.u64(&what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(&what)?)),
            t => {
                return Err(file_err(
                    self.path,
                    format!("'{}': unknown metadata value type {t}", shown(key)),
                ))
            }
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile> {
        crate::source::check_regular(path)?;
        let file = File::open(path).map_err(io_err(path))?;
        // SAFETY: read-only map, see SafetensorsFile::open.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
        let (version, kvs, tensors, alignment, data_start) = parse(path, &mmap)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            mmap,
            version,
            kvs,
            tensors,
            alignment,
            data_start,
        })
    }

    pub fn bytes(&self, t: &GgufTensor) -> &[u8] {
        &self.mmap[t.start..t.end]
    }

    /// Bytes `start..end` of the file.
    pub fn range(&self, start: usize, end: usize) -> &[u8] {
        &self.mmap[start..end]
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kvs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn release(&self, start: usize, end: usize) {
        crate::safetensors::release_pages(&self.mmap, start, end);
    }
}

type ParsedGguf = (u32, Vec<(String, Value)>, Vec<GgufTensor>, u64, usize);

fn parse(path: &Path, buf: &[u8]) -> Result<ParsedGguf> {
    let mut c = Cursor { buf, pos: 0, path };
    if c.take(4, "magic")? != MAGIC {
        return Err(file_err(path, "not a GGUF file (bad magic)"));
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(file_err(
            path,
            format!("GGUF version {version} is not supported (2 or 3)"),
        ));
    }
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.u64("metadata count")?;
    if n_tensors > buf.len() as u64 || n_kv > buf.len() as u64 {
        return Err(file_err(path, format!("header claims {n_tensors} tensors and {n_kv} metadata entries: more than the file could hold")));
    }
    if n_tensors > MAX_TENSORS || n_kv > MAX_KVS {
        return Err(file_err(path, format!("header claims {n_tensors} tensors and {n_kv} metadata entries (at most {MAX_TENSORS} and {MAX_KVS} accepted)")));
    }
    let mut kvs = Vec::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let at = c.pos;
        let n = c.u64("metadata key")?;
        if n > MAX_KEY_LEN {
            return Err(file_err(
                path,
                format!("metadata key {i} at byte {at} claims {n} bytes (at most {MAX_KEY_LEN}): corrupted"),
            ));
        }
        let k = c.string_of(n, "metadata key")?;
        let t = c.u32("metadata type")?;
        let v = c.value(t, &k, 0)?;
        kvs.push((k, v));
    }
    let alignment = kvs
        .iter()
        .find(|(k, _)| k == "general.alignment")
        .map(|(_, v)| v.as_u64().unwrap_or(0))
        .unwrap_or(DEFAULT_ALIGNMENT);
    if alignment == 0 || !alignment.is_power_of_two() {
        return Err(file_err(
            path,
            format!("general.alignment {alignment} is not a power of two"),
        ));
    }
    let mut infos = Vec::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let n = c.u64("tensor name")?;
        if n > MAX_KEY_LEN {
            return Err(file_err(
                path,
                format!(
                    "tensor name at byte {} claims {n} bytes: corrupted",
                    c.pos - 8
                ),
            ));
        }
        let name = c.string_of(n, "tensor name")?;
        let nd = c.u32("tensor dims")?;
        if nd == 0 || nd > 4 {
            return Err(tensor_err(
                path,
                &name,
                format!("{nd} dimensions (1 to 4 allowed)"),
            ));
        }
        let mut ne = Vec::with_capacity(nd as usize);
        for _ in 0..nd {
            ne.push(c.u64("tensor shape")?);
        }
        let tid = c.u32("tensor type")?;
        let ty = GgmlType::from_id(tid)
            .ok_or_else(|| tensor_err(path, &name, format!("unknown ggml type id {tid}")))?;
        let off = c.u64("tensor offset")?;
        infos.push((name, ne, ty, off));
    }
    let data_start = (c.pos as u64).next_multiple_of(alignment);
    let mut tensors = Vec::with_capacity(infos.len());
    let mut names = std::collections::HashSet::new();
    for (name, ne, ty, off) in infos {
        if !names.insert(name.clone()) {
            return Err(tensor_err(path, &name, "appears twice"));
        }
        let bs = ty.block().0 as u64;
        if ne[0] % bs != 0 {
            return Err(tensor_err(
                path,
                &name,
                format!(
                    "row length {} not a multiple of {ty}'s block size {bs}",
                    ne[0]
                ),
            ));
        }
        if off % alignment != 0 {
            return Err(tensor_err(
                path,
                &name,
                format!("data offset {off} not aligned to {alignment}"),
            ));
        }
        checked_numel(&ne).map_err(|m| tensor_err(path, &name, m))?;
        // within MAX_ELEMENTS, so neither product can overflow
        let (be, bb) = ty.block();
        let nbytes = Some(ne.iter().product::<u64>() / be as u64 * bb as u64);
        let end = nbytes
            .and_then(|n| n.checked_add(off))
            .and_then(|e| e.checked_add(data_start));
        match end {
            Some(e) if e <= buf.len() as u64 => tensors.push(GgufTensor {
                name,
                ne,
                ty,
                start: (data_start + off) as usize,
                end: e as usize,
            }),
            _ => {
                return Err(tensor_err(path, &name, format!("data (offset {off}, shape {ne:?}, {ty}) runs past the end of the file ({} bytes)", buf.len())))
            }
        }
    }
    crate::safetensors::check_overlaps(
        path,
        tensors.iter().map(|t| (t.name.as_str(), t.start, t.end)),
    )?;
    Ok((version, kvs, tensors, alignment, data_start as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<(String, Value)>, Vec<TensorPlan>) {
        let kvs = vec![
            (
                "general.architecture".to_string(),
                Value::String("llama".into()),
            ),
            ("general.alignment".to_string(), Value::U32(64)),
            (
                "x.arr".to_string(),
                Value::Array(5, vec![Value::I32(1), Value::I32(-2)]),
            ),
        ];
        let ts = vec![
            TensorPlan {
                name: "a".into(),
                ne: vec![64, 3],
                ty: GgmlType::Q4_0,
            },
            TensorPlan {
                name: "b".into(),
                ne: vec![5],
                ty: GgmlType::F32,
            },
        ];
        (kvs, ts)
    }

    #[test]
    fn plan_then_parse_roundtrip() {
        let (kvs, ts) = sample();
        let l = plan(&kvs, &ts).unwrap();
        let mut buf = vec![0u8; l.total_len as usize];
        buf[..l.header.len()].copy_from_slice(&l.header);
        assert_eq!(l.offsets[0] % 64, 0);
        assert_eq!(l.offsets[1] - l.offsets[0], 128); // 3*2*18 = 108 padded to 128
        let (v, k, t, a, _) = parse(Path::new("x.gguf"), &buf).unwrap();
        assert_eq!((v, a), (3, 64));
        assert_eq!(k, kvs);
        assert_eq!(t[0].shape(), vec![3, 64]);
        assert_eq!(t[1].start as u64, l.offsets[1]);
    }

    #[test]
    fn rejects_truncated_and_lying_files() {
        let (kvs, ts) = sample();
        let l = plan(&kvs, &ts).unwrap();
        let mut buf = vec![0u8; l.total_len as usize];
        buf[..l.header.len()].copy_from_slice(&l.header);
        let e = parse(Path::new("x.gguf"), &buf[..l.offsets[1] as usize + 19])
            .unwrap_err()
            .to_string();
        assert!(e.contains("'b'") && e.contains("past the end"), "{e}");
        let e = parse(Path::new("x.gguf"), &buf[..30])
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated"), "{e}");
        let mut bad = buf.clone();
        bad[0] = b'X';
        assert!(parse(Path::new("x.gguf"), &bad)
            .unwrap_err()
            .to_string()
            .contains("magic"));
        let mut lie = buf.clone();
        lie[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse(Path::new("x.gguf"), &lie).is_err());
    }

    #[test]
    fn nested_arrays_round_trip_up_to_the_depth_limit() {
        let leaf = Value::Array(4, vec![Value::U32(7), Value::U32(8)]);
        let mut v = leaf.clone();
        for _ in 1..MAX_ARRAY_DEPTH {
            v = Value::Array(9, vec![v.clone(), v]);
        }
        let kvs = vec![("n".to_string(), v)];
        let l = plan(&kvs, &[]).unwrap();
        let (_, k, _, _, _) = parse(Path::new("x.gguf"), &l.header).unwrap();
        assert_eq!(k, kvs);
        let deeper = vec![("n".to_string(), Value::Array(9, vec![kvs[0].1.clone()]))];
        let l = plan(&deeper, &[]).unwrap();
        let e = parse(Path::new("x.gguf"), &l.header)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nested more than"), "{e}");
    }

    #[test]
    fn sizes_and_names_from_the_header_are_checked() {
        // a tensor whose byte size overflows: refused at open, named
        let mut h = b"GGUF".to_vec();
        h.extend_from_slice(&3u32.to_le_bytes());
        h.extend_from_slice(&1u64.to_le_bytes());
        h.extend_from_slice(&0u64.to_le_bytes());
        h.extend_from_slice(&18u64.to_le_bytes());
        h.extend_from_slice(b"output_norm.weight");
        h.extend_from_slice(&1u32.to_le_bytes());
        h.extend_from_slice(&(1u64 << 62).to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&0u64.to_le_bytes());
        h.resize(96, 0);
        let e = parse(Path::new("x.gguf"), &h).unwrap_err().to_string();
        assert!(
            e.contains("'output_norm.weight'") && e.contains("limit"),
            "{e}"
        );
        // a key length that runs into the data: a short message without the raw bytes
        let (kvs, ts) = sample();
        let l = plan(&kvs, &ts).unwrap();
        let mut buf = vec![b'\n'; l.total_len as usize];
        buf[..l.header.len()].copy_from_slice(&l.header);
        buf[24..32].copy_from_slice(&5000u64.to_le_bytes());
        let e = parse(Path::new("x.gguf"), &buf).unwrap_err().to_string();
        assert!(e.len() < 200 && !e.contains('\n'), "{e}");
    }

    #[test]
    fn plan_errors() {
        let t = |name: &str, ne0| TensorPlan {
            name: name.into(),
            ne: vec![ne0, 2],
            ty: GgmlType::Q8_0,
        };
        assert!(matches!(
            plan(&[], &[t(&"x".repeat(64), 32)]),
            Err(PlanError::NameTooLong(_))
        ));
        assert!(matches!(
            plan(&[], &[t("a", 32), t("a", 32)]),
            Err(PlanError::Duplicate(_))
        ));
        assert!(matches!(
            plan(&[], &[t("a", 48)]),
            Err(PlanError::Block { .. })
        ));
    }
}
