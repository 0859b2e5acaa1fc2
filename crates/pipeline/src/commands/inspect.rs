//! `inspect FILE`: tensors, dtypes, shapes and sizes of a safetensors or GGUF model.

use crate::checkpoint::is_gguf;
use crate::error::Result;
use crate::report::human_bytes;
use qs_formats::gguf::GgufFile;
use qs_formats::source::ModelSource;
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub struct InspectTensor {
    pub name: String,
    /// safetensors dtype or ggml type name.
    pub dtype: String,
    /// Numpy order (GGUF's ne reversed).
    pub shape: Vec<usize>,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub path: String,
    pub format: String,
    pub files: usize,
    pub metadata: Vec<(String, String)>,
    pub tensors: Vec<InspectTensor>,
    pub total_bytes: u64,
}

pub fn inspect(path: &Path) -> Result<Inspection> {
    let (format, files, metadata, tensors) = if is_gguf(path) {
        let g = GgufFile::open(path)?;
        let mut md = vec![("GGUF.version".to_string(), g.version.to_string())];
        md.extend(g.kvs.iter().map(|(k, v)| (k.clone(), v.display())));
        let ts: Vec<InspectTensor> = g
            .tensors
            .iter()
            .map(|t| InspectTensor {
                name: t.name.clone(),
                dtype: t.ty.to_string(),
                shape: t.shape(),
                bytes: (t.end - t.start) as u64,
            })
            .collect();
        ("gguf".to_string(), 1, md, ts)
    } else {
        let s = ModelSource::open(path)?;
        let mut md: Vec<(String, String)> = Vec::new();
        for f in &s.files {
            md.extend(f.metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        md.dedup();
        if let Some(c) = &s.config {
            for k in [
                "model_type",
                "architectures",
                "torch_dtype",
                "hidden_size",
                "num_hidden_layers",
                "vocab_size",
            ] {
                if let Some(v) = c.get(k) {
                    md.push((format!("config.{k}"), v.to_string()));
                }
            }
            if let Some(q) = c.get("quantization_config") {
                md.push(("config.quantization_config".into(), q.to_string()));
            }
        }
        let ts: Vec<InspectTensor> = s
            .tensors
            .iter()
            .map(|t| InspectTensor {
                name: t.info.name.clone(),
                dtype: t.info.dtype.to_string(),
                shape: t.info.shape.clone(),
                bytes: (t.info.end - t.info.start) as u64,
            })
            .collect();
        ("safetensors".to_string(), s.file_count(), md, ts)
    };
    let total_bytes = tensors.iter().map(|t: &InspectTensor| t.bytes).sum();
    Ok(Inspection {
        path: path.display().to_string(),
        format,
        files,
        metadata,
        tensors,
        total_bytes,
    })
}

impl Inspection {
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{} ({}, {} file(s)): {} tensors, {}\n",
            self.path,
            self.format,
            self.files,
            self.tensors.len(),
            human_bytes(self.total_bytes)
        );
        for (k, v) in &self.metadata {
            s.push_str(&format!("  {k} = {v}\n"));
        }
        let w = self
            .tensors
            .iter()
            .map(|t| t.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        s.push_str(&format!(
            "{:<w$}  {:<8} {:<20} {:>12}\n",
            "name", "dtype", "shape", "bytes"
        ));
        for t in &self.tensors {
            s.push_str(&format!(
                "{:<w$}  {:<8} {:<20} {:>12}\n",
                t.name,
                t.dtype,
                format!("{:?}", t.shape),
                t.bytes
            ));
        }
        s
    }
}
