//! A calibration's results kept for a later write. A batch's shared pass calibrates several
//! jobs of one model in one pass over its layers, and their outputs are written one after
//! another, so each job's per-layer results wait for its turn. Their codes — a byte per weight,
//! the bulk of them — wait on disk, in a temporary file beside the job's output that is removed
//! when the results are dropped, written or not (and by the signal handler, as every temporary);
//! the rest (grids, transforms, errors: a few bytes per group or column) waits in memory. So a
//! shared pass holds no job's codes, whatever the model's size.

use super::LayerDone;
use crate::error::Result;
use qs_formats::output::AtomicFile;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// One job's per-layer results, in the order its pass finished them, codes on disk.
pub struct Spill {
    file: AtomicFile,
    end: u64,
    layers: Vec<LayerDone>,
    /// Where each tensor's codes are in the file: (offset, count).
    at: HashMap<String, (u64, usize)>,
}

impl Spill {
    /// An empty store whose file is a temporary beside `output` (named after
    /// `OUTPUT.qs-codes`, which is never created).
    pub fn beside(output: &Path) -> Result<Spill> {
        let mut name = output
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "out".into());
        name.push(".qs-codes");
        Ok(Spill {
            file: AtomicFile::create(&output.with_file_name(name), false)?,
            end: 0,
            layers: Vec::new(),
            at: HashMap::new(),
        })
    }

    /// Keeps one layer's results, their codes written out and dropped.
    pub fn push(&mut self, mut layer: LayerDone) -> Result<()> {
        for (name, c) in layer.iter_mut() {
            let Some(out) = c.out.as_mut() else { continue };
            let codes = std::mem::take(&mut Arc::make_mut(out).codes);
            self.file.write_at(self.end, bytemuck::cast_slice(&codes))?;
            self.at.insert(name.clone(), (self.end, codes.len()));
            self.end += codes.len() as u64;
        }
        self.layers.push(layer);
        Ok(())
    }

    /// Each layer's results in the order they were kept, their codes read back one layer at a
    /// time. The file is removed when the iterator is dropped.
    pub fn into_layers(self) -> impl Iterator<Item = Result<LayerDone>> {
        let Spill {
            file, layers, at, ..
        } = self;
        layers.into_iter().map(move |mut layer| {
            for (name, c) in layer.iter_mut() {
                let (Some(out), Some(&(offset, n))) = (c.out.as_mut(), at.get(name)) else {
                    continue;
                };
                let codes = &mut Arc::make_mut(out).codes;
                *codes = vec![0; n];
                file.read_at(offset, bytemuck::cast_slice_mut(codes))?;
            }
            Ok(layer)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calib::{Calibrated, CodeSet};

    fn layer(names: &[&str], seed: i8) -> LayerDone {
        names
            .iter()
            .enumerate()
            .map(|(k, n)| {
                let codes = (0..37 + 11 * k)
                    .map(|i| (i as i8).wrapping_mul(seed))
                    .collect();
                let out = CodeSet {
                    codes,
                    g_idx: vec![k as u32; 3],
                    ..Default::default()
                };
                let c = Calibrated {
                    out: Some(Arc::new(out)),
                    ..Default::default()
                };
                (n.to_string(), c)
            })
            .chain([("no codes".to_string(), Calibrated::default())])
            .collect()
    }

    /// What goes in comes back, layer by layer in order; the codes live only in the file
    /// meanwhile, and the file is gone afterwards (and when the results are dropped unread).
    #[test]
    fn layers_come_back_with_their_codes_and_the_file_goes() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("model.gguf");
        let want = [layer(&["a", "b"], 3), layer(&["c"], -5)];
        let mut s = Spill::beside(&out).unwrap();
        for l in want.iter().cloned() {
            s.push(l).unwrap();
        }
        assert_eq!(s.layers.len(), 2);
        assert!(s
            .layers
            .iter()
            .flatten()
            .all(|(_, c)| c.out.as_ref().is_none_or(|o| o.codes.is_empty())));
        let files = || std::fs::read_dir(d.path()).unwrap().count();
        assert_eq!(files(), 1);
        assert!(!d.path().join("model.gguf.qs-codes").exists());
        let got: Vec<LayerDone> = s.into_layers().map(|l| l.unwrap()).collect();
        assert_eq!(files(), 0);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.len(), w.len());
            for (name, c) in w {
                let (a, b) = (g[name].out.as_deref(), c.out.as_deref());
                assert_eq!(a.map(|o| &o.codes), b.map(|o| &o.codes), "{name}");
                assert_eq!(a.map(|o| &o.g_idx), b.map(|o| &o.g_idx), "{name}");
            }
        }
        let mut s = Spill::beside(&out).unwrap();
        s.push(layer(&["a"], 7)).unwrap();
        assert_eq!(files(), 1);
        drop(s);
        assert_eq!(files(), 0);
    }
}
