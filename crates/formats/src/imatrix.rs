//! Importance matrices as llama-imatrix writes them: the GGUF form (`<tensor>.in_sum2` and
//! `<tensor>.counts`, F32) and the legacy `.dat` form. Values are normalised the way
//! llama-quantize does: sums / count (GGUF), sums / ncall (legacy).

use crate::error::{file_err, io_err, shown, Result};
use crate::gguf::{GgufFile, Value};
use qs_numeric::GgmlType;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Default)]
pub struct Imatrix {
    /// Per weight tensor (GGUF name): one importance value per input column (per expert).
    pub entries: BTreeMap<String, Vec<f32>>,
    pub datasets: Vec<String>,
    pub chunk_count: u32,
}

pub fn load(path: &Path) -> Result<Imatrix> {
    crate::source::check_regular(path)?;
    let mut magic = [0u8; 4];
    let is_gguf = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && &magic == b"GGUF";
    if is_gguf {
        load_gguf(path)
    } else {
        load_legacy(path)
    }
}

fn load_gguf(path: &Path) -> Result<Imatrix> {
    let g = GgufFile::open(path)?;
    let mut im = Imatrix::default();
    if let Some(Value::Array(_, ds)) = g.get("imatrix.datasets") {
        im.datasets = ds
            .iter()
            .filter_map(|v| {
                if let Value::String(s) = v {
                    Some(s.clone())
                } else {
                    None
                }
            })
            .collect();
    }
    im.chunk_count = g
        .get("imatrix.chunk_count")
        .and_then(|v| v.as_u64())
        .unwrap_or(0) as u32;
    let f32s = |t: &crate::gguf::GgufTensor| -> Result<Vec<f32>> {
        if t.ty != GgmlType::F32 {
            return Err(file_err(
                path,
                format!("imatrix tensor '{}' is {}, not F32", shown(&t.name), t.ty),
            ));
        }
        Ok(g.bytes(t)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    };
    let by_name: std::collections::HashMap<&str, &crate::gguf::GgufTensor> =
        g.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    for t in &g.tensors {
        let Some(name) = t.name.strip_suffix(".in_sum2") else {
            continue;
        };
        let counts = by_name
            .get(format!("{name}.counts").as_str())
            .ok_or_else(|| {
                file_err(path, format!("'{}' has in_sum2 but no counts", shown(name)))
            })?;
        let sums = f32s(t)?;
        let counts = f32s(counts)?;
        if sums.is_empty() {
            return Err(file_err(path, format!("'{}': no values", shown(name))));
        }
        if counts.is_empty() || sums.len() % counts.len() != 0 {
            return Err(file_err(
                path,
                format!(
                    "'{}': {} sums do not split into {} counts",
                    shown(name),
                    sums.len(),
                    counts.len()
                ),
            ));
        }
        let ne0 = sums.len() / counts.len();
        let mut e = vec![0f32; sums.len()];
        for (j, &c) in counts.iter().enumerate() {
            for i in 0..ne0 {
                e[j * ne0 + i] = if c > 0.0 { sums[j * ne0 + i] / c } else { 1.0 };
            }
        }
        im.entries.insert(name.to_string(), e);
    }
    if im.entries.is_empty() {
        return Err(file_err(
            path,
            "no importance data (no <tensor>.in_sum2 tensors)",
        ));
    }
    Ok(im)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl Reader<'_> {
    fn bytes(&mut self, n: usize, what: &str) -> Result<&[u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                file_err(
                    self.path,
                    format!(
                        "truncated legacy imatrix: {what} at byte {} needs {n} bytes",
                        self.pos
                    ),
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn i32(&mut self, what: &str) -> Result<i32> {
        let b = self.bytes(4, what)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn len(&mut self, what: &str) -> Result<usize> {
        let v = self.i32(what)?;
        usize::try_from(v).map_err(|_| file_err(self.path, format!("negative {what} {v}")))
    }
}

fn load_legacy(path: &Path) -> Result<Imatrix> {
    let buf = std::fs::read(path).map_err(io_err(path))?;
    let mut r = Reader {
        buf: &buf,
        pos: 0,
        path,
    };
    let n = r.i32("entry count")?;
    if n < 1 {
        return Err(file_err(
            path,
            "not an importance matrix (neither GGUF nor a legacy .dat with entries)",
        ));
    }
    let mut im = Imatrix::default();
    for _ in 0..n {
        let len = r.len("name length")?;
        let name = String::from_utf8(r.bytes(len, "name")?.to_vec())
            .map_err(|_| file_err(path, "entry name is not UTF-8"))?;
        let ncall = r.i32("ncall")?;
        let nval = r.len("value count")?;
        if nval == 0 {
            return Err(file_err(path, format!("'{}': no values", shown(&name))));
        }
        let raw = r.bytes(
            nval.checked_mul(4)
                .ok_or_else(|| file_err(path, "value count overflows"))?,
            "values",
        )?;
        let vals = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .map(|v| if ncall > 0 { v / ncall as f32 } else { v })
            .collect();
        im.entries.insert(name, vals);
    }
    // optional trailer: chunk count and dataset name
    if r.pos < buf.len() {
        if let Ok(c) = r.i32("chunk count") {
            im.chunk_count = c.max(0) as u32;
            if let Ok(len) = r.len("dataset length") {
                if let Ok(b) = r.bytes(len, "dataset") {
                    im.datasets.push(String::from_utf8_lossy(b).into_owned());
                }
            }
        }
    }
    Ok(im)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_format_and_truncation() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.dat");
        let mut b = Vec::new();
        b.extend_from_slice(&1i32.to_le_bytes());
        b.extend_from_slice(&3i32.to_le_bytes());
        b.extend_from_slice(b"a.w");
        b.extend_from_slice(&4i32.to_le_bytes()); // ncall
        b.extend_from_slice(&2i32.to_le_bytes()); // nval
        b.extend_from_slice(&8f32.to_le_bytes());
        b.extend_from_slice(&2f32.to_le_bytes());
        b.extend_from_slice(&10i32.to_le_bytes());
        b.extend_from_slice(&4i32.to_le_bytes());
        b.extend_from_slice(b"wiki");
        std::fs::write(&p, &b).unwrap();
        let im = load(&p).unwrap();
        assert_eq!(im.entries["a.w"], vec![2.0, 0.5]);
        assert_eq!(
            (im.chunk_count, im.datasets.clone()),
            (10, vec!["wiki".to_string()])
        );
        std::fs::write(&p, &b[..20]).unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("truncated"));
    }
}
