//! safetensors: a validating header parser over a memory map, and a planned-layout writer.
//!
//! We parse the header ourselves (rather than through the `safetensors` crate, which the tests
//! use as an oracle) to report every defect with the file and tensor name, to detect duplicate
//! names (a JSON map silently keeps the last), and to read tensor bytes without an aligned copy.

use crate::error::{file_err, io_err, tensor_err, Result};
use memmap2::Mmap;
use qs_numeric::DType;
use serde::de::{Deserializer, MapAccess, Visitor};
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Largest header we accept (the reference implementation uses 100 MB).
pub const MAX_HEADER: u64 = 100_000_000;

/// One tensor of a safetensors file, with absolute byte offsets into the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub start: usize,
    pub end: usize,
}

impl StTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A memory-mapped safetensors file with a validated header.
pub struct SafetensorsFile {
    pub path: PathBuf,
    mmap: Mmap,
    pub tensors: Vec<StTensor>,
    pub metadata: BTreeMap<String, String>,
}

impl fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<SafetensorsFile> {
        crate::source::check_regular(path)?;
        let file = File::open(path).map_err(io_err(path))?;
        // SAFETY: the map is read-only; a file changed underneath us while mapped gives wrong
        // bytes (or SIGBUS if truncated), the same contract every mmap-based loader has.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
        let (tensors, metadata) = parse_header(path, &mmap)?;
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            mmap,
            tensors,
            metadata,
        })
    }

    /// The bytes of a tensor of this file.
    pub fn bytes(&self, t: &StTensor) -> &[u8] {
        &self.mmap[t.start..t.end]
    }

    /// Tells the kernel we are done with `range` of the file: the pages leave our resident set
    /// (they stay in the page cache). Only whole pages inside the range are dropped.
    pub fn release(&self, start: usize, end: usize) {
        release_pages(&self.mmap, start, end);
    }
}

pub(crate) fn release_pages(mmap: &Mmap, start: usize, end: usize) {
    #[cfg(unix)]
    {
        const PAGE: usize = 4096;
        let s = start.div_ceil(PAGE) * PAGE;
        let e = (end / PAGE) * PAGE;
        if e > s {
            // SAFETY: DONTNEED on a private read-only file mapping only drops our page table
            // entries; later reads fault the same file bytes back in.
            let _ = unsafe {
                mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, s, e - s)
            };
        }
    }
    #[cfg(not(unix))]
    let _ = (mmap, start, end);
}

/// Rejects two tensors whose non-empty byte ranges overlap, naming the later one.
pub(crate) fn check_overlaps<'a>(
    path: &Path,
    ranges: impl Iterator<Item = (&'a str, usize, usize)>,
) -> Result<()> {
    let mut v: Vec<(&str, usize, usize)> = ranges.filter(|r| r.2 > r.1).collect();
    v.sort_by_key(|r| (r.1, r.2));
    for w in v.windows(2) {
        if w[1].1 < w[0].2 {
            return Err(tensor_err(
                path,
                w[1].0,
                format!("data overlaps tensor '{}'", w[0].0),
            ));
        }
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct RawInfo {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// Header entries in file order, duplicates kept so we can reject them.
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Entries, A::Error> {
                let mut v = Vec::new();
                while let Some(e) = m.next_entry::<String, serde_json::Value>()? {
                    v.push(e);
                }
                Ok(Entries(v))
            }
        }
        d.deserialize_map(V)
    }
}

type Parsed = (Vec<StTensor>, BTreeMap<String, String>);

/// Parses and validates the header of a safetensors file held in `buf`.
pub fn parse_header(path: &Path, buf: &[u8]) -> Result<Parsed> {
    if buf.len() < 8 {
        return Err(file_err(
            path,
            format!(
                "truncated: {} bytes, too short for a safetensors header",
                buf.len()
            ),
        ));
    }
    let n = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
    if n > MAX_HEADER {
        return Err(file_err(
            path,
            format!("header length {n} exceeds the {MAX_HEADER}-byte limit"),
        ));
    }
    if 8 + n > buf.len() as u64 {
        return Err(file_err(
            path,
            format!("header length {n} runs past the end of the file ({} bytes): truncated or not safetensors", buf.len()),
        ));
    }
    let data_start = 8 + n as usize;
    let data_len = buf.len() - data_start;
    let header = std::str::from_utf8(&buf[8..data_start])
        .map_err(|_| file_err(path, "header is not UTF-8"))?;
    let entries: Entries = serde_json::from_str(header.trim_end_matches(' '))
        .map_err(|e| file_err(path, format!("header is not valid JSON: {e}")))?;

    if entries.0.len() as u64 > qs_numeric::limits::MAX_TENSORS {
        return Err(file_err(
            path,
            format!(
                "header lists {} tensors (at most {} accepted)",
                entries.0.len(),
                qs_numeric::limits::MAX_TENSORS
            ),
        ));
    }
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(entries.0.len());
    let mut seen = std::collections::HashSet::new();
    for (name, value) in entries.0 {
        if !seen.insert(name.clone()) {
            return Err(tensor_err(path, &name, "appears twice in the header"));
        }
        if name == "__metadata__" {
            let m: BTreeMap<String, String> = serde_json::from_value(value)
                .map_err(|e| file_err(path, format!("__metadata__ is not a string map: {e}")))?;
            metadata = m;
            continue;
        }
        let raw: RawInfo = serde_json::from_value(value)
            .map_err(|e| tensor_err(path, &name, format!("malformed header entry: {e}")))?;
        let dtype = DType::from_safetensors_name(&raw.dtype).ok_or_else(|| {
            tensor_err(
                path,
                &name,
                format!("unknown or unsupported dtype '{}'", raw.dtype),
            )
        })?;
        let (b, e) = raw.data_offsets;
        if e < b {
            return Err(tensor_err(
                path,
                &name,
                format!("data_offsets [{b}, {e}] end before they begin"),
            ));
        }
        if e > data_len as u64 {
            return Err(tensor_err(
                path,
                &name,
                format!("data_offsets [{b}, {e}] run past the data section ({data_len} bytes): file truncated or header lies"),
            ));
        }
        let numel = qs_numeric::limits::checked_numel(&raw.shape)
            .map_err(|m| tensor_err(path, &name, m))?
            .checked_mul(dtype.size() as u64);
        if numel != Some(e - b) {
            return Err(tensor_err(
                path,
                &name,
                format!(
                    "shape {:?} × {} needs {} bytes but data_offsets span {}",
                    raw.shape,
                    dtype,
                    numel.map_or("overflowing".into(), |n| n.to_string()),
                    e - b
                ),
            ));
        }
        tensors.push(StTensor {
            name,
            dtype,
            shape: raw.shape.iter().map(|&d| d as usize).collect(),
            start: data_start + b as usize,
            end: data_start + e as usize,
        });
    }
    check_overlaps(
        path,
        tensors.iter().map(|t| (t.name.as_str(), t.start, t.end)),
    )?;
    Ok((tensors, metadata))
}

/// One tensor to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StEntry {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl StEntry {
    pub fn nbytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

/// A safetensors file whose layout is fixed before any data is written.
#[derive(Debug, Clone)]
pub struct StLayout {
    pub header: Vec<u8>,
    /// Absolute file offset of each entry's data, in the order entries were given.
    pub offsets: Vec<u64>,
    pub total_len: u64,
}

/// Plans a file: tensors are laid out by decreasing element size, then name (as the reference
/// writer does), so every tensor is naturally aligned; the header is padded with spaces to a
/// multiple of 8 bytes.
pub fn plan_layout(entries: &[StEntry], metadata: &BTreeMap<String, String>) -> StLayout {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by(|&a, &b| {
        entries[b]
            .dtype
            .size()
            .cmp(&entries[a].dtype.size())
            .then_with(|| entries[a].name.cmp(&entries[b].name))
    });
    let mut rel = vec![0u64; entries.len()];
    let mut map = serde_json::Map::new();
    if !metadata.is_empty() {
        map.insert(
            "__metadata__".into(),
            serde_json::to_value(metadata).expect("string map"),
        );
    }
    let mut off = 0u64;
    for &i in &order {
        let e = &entries[i];
        let n = e.nbytes() as u64;
        rel[i] = off;
        map.insert(
            e.name.clone(),
            serde_json::json!({
                "dtype": e.dtype.safetensors_name(),
                "shape": e.shape,
                "data_offsets": [off, off + n],
            }),
        );
        off += n;
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(map)).expect("json");
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let data_start = 8 + json.len() as u64;
    let mut header = Vec::with_capacity(json.len() + 8);
    header.extend_from_slice(&(json.len() as u64).to_le_bytes());
    header.extend_from_slice(&json);
    StLayout {
        header,
        offsets: rel.iter().map(|r| data_start + r).collect(),
        total_len: data_start + off,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(header: &str, data: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(data);
        v
    }

    fn err(buf: &[u8]) -> String {
        parse_header(Path::new("m.safetensors"), buf)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parses_valid() {
        let h = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[1,2],"data_offsets":[8,12]}}"#;
        let (t, m) = parse_header(Path::new("x"), &file_with(h, &[0; 12])).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].shape, vec![1, 2]);
        assert_eq!(t[1].start, 8 + h.len() + 8);
        assert_eq!(m["format"], "pt");
    }

    #[test]
    fn rejects_bad_headers() {
        assert!(err(&[1, 2, 3]).contains("truncated"));
        let mut long = 1000u64.to_le_bytes().to_vec();
        long.extend_from_slice(b"{}");
        assert!(err(&long).contains("past the end"));
        let dup = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        assert!(err(&file_with(dup, &[0; 8])).contains("'a': appears twice"));
        let over = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        assert!(err(&file_with(over, &[0; 8])).contains("overlaps"));
        let oob = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        assert!(err(&file_with(oob, &[0; 8])).contains("past the data section"));
        let mism = r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
        assert!(err(&file_with(mism, &[0; 8])).contains("needs 12 bytes"));
        let unk = r#"{"a":{"dtype":"Q9","shape":[1],"data_offsets":[0,1]}}"#;
        assert!(err(&file_with(unk, &[0; 1])).contains("unknown or unsupported dtype 'Q9'"));
        assert!(err(&file_with("{nope", &[])).contains("not valid JSON"));
    }

    #[test]
    fn planned_layout_is_readable_by_the_reference_crate() {
        let entries = vec![
            StEntry {
                name: "w".into(),
                dtype: DType::BF16,
                shape: vec![3, 2],
            },
            StEntry {
                name: "p".into(),
                dtype: DType::I32,
                shape: vec![2],
            },
            StEntry {
                name: "s".into(),
                dtype: DType::I64,
                shape: vec![2],
            },
        ];
        let mut md = BTreeMap::new();
        md.insert("format".to_string(), "pt".to_string());
        let l = plan_layout(&entries, &md);
        let mut buf = vec![0u8; l.total_len as usize];
        buf[..l.header.len()].copy_from_slice(&l.header);
        for (i, e) in entries.iter().enumerate() {
            let o = l.offsets[i] as usize;
            for k in 0..e.nbytes() {
                buf[o + k] = (i * 16 + k) as u8;
            }
            assert_eq!(o % e.dtype.size(), 0, "{} aligned", e.name);
        }
        let st = safetensors::SafeTensors::deserialize(&buf).unwrap();
        for (i, e) in entries.iter().enumerate() {
            let v = st.tensor(&e.name).unwrap();
            assert_eq!(v.shape(), &e.shape[..]);
            assert_eq!(v.data()[0], (i * 16) as u8);
        }
        let (t, _) = parse_header(Path::new("x"), &buf).unwrap();
        assert_eq!(t.len(), 3);
    }
}
