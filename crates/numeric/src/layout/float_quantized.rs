//! compressed-tensors "float-quantized": FP8 codes (E4M3 or E5M2) with float scales per
//! tensor, per row or per tile (`weight`, `weight_scale`).

use super::{
    absmax, check_gran, decode_scales, encode_scales, group_len, need_2d, placed, rows_cols,
    scale_shape, slot, Encoded, Granularity, Layout, SchemeError, Slot, TensorStats,
};
use crate::dtype::{self, DType};
use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FloatQuantized {
    pub format: DType,
    pub granularity: Granularity,
    pub scale_dtype: DType,
}

impl Layout for FloatQuantized {
    fn label(&self) -> String {
        format!(
            "fp8-{}-{}",
            if self.format == DType::F8E4M3 {
                "e4m3"
            } else {
                "e5m2"
            },
            self.granularity.label()
        )
    }

    fn row_align(&self) -> usize {
        match self.granularity {
            Granularity::Block(r, _) => r,
            _ => 1,
        }
    }

    fn needs_tensor_stats(&self) -> bool {
        self.granularity == Granularity::Tensor
    }

    fn check(&self, shape: &[usize]) -> Result<(), SchemeError> {
        need_2d(shape)?;
        check_gran(self.granularity, shape.last().copied().unwrap_or(1))
    }

    fn slots(&self, shape: &[usize]) -> Vec<Slot> {
        let (rows, cols) = rows_cols(shape);
        vec![
            slot("", self.format, vec![rows, cols]),
            slot(
                "_scale",
                self.scale_dtype,
                scale_shape(self.granularity, rows, cols),
            ),
        ]
    }

    fn slot_range(&self, slot: usize, shape: &[usize], r0: usize, r1: usize) -> Range<usize> {
        let cols = rows_cols(shape).1;
        let per_row = |bpr: usize| r0 * bpr..r1 * bpr;
        if slot == 0 {
            return per_row(cols * self.format.size());
        }
        let slots = self.slots(shape);
        let s = &slots[1];
        match self.granularity {
            Granularity::Tensor => 0..s.nbytes,
            Granularity::Block(br, _) => {
                let bpr = s.shape[1] * self.scale_dtype.size();
                (r0 / br) * bpr..r1.div_ceil(br) * bpr
            }
            _ => per_row(s.shape[1] * self.scale_dtype.size()),
        }
    }

    fn encode(
        &self,
        shape: &[usize],
        r0: usize,
        x: &[f32],
        stats: TensorStats,
        _importance: Option<&[f32]>,
    ) -> Encoded {
        let cols = rows_cols(shape).1;
        let nrows = x.len() / cols.max(1);
        let scale_dtype = self.scale_dtype;
        let f = dtype::fp8_format(self.format).expect("fp8 format");
        let fit = |amax: f32| -> f32 {
            let s = dtype::round_to(scale_dtype, amax / f.max_finite());
            if s == 0.0 || !s.is_finite() {
                dtype::eps(scale_dtype)
            } else {
                s
            }
        };
        let mut codes = vec![0u8; x.len()];
        let scales: Vec<f32> = match self.granularity {
            Granularity::Tensor => {
                let s = fit(stats.min.abs().max(stats.max.abs()));
                f.encode_scaled(x, s, &mut codes);
                vec![s]
            }
            Granularity::Channel | Granularity::Group(_) => {
                let g = group_len(self.granularity, cols);
                let mut sc = Vec::new();
                for (xg, cg) in x.chunks_exact(g).zip(codes.chunks_exact_mut(g)) {
                    let s = fit(absmax(xg));
                    f.encode_scaled(xg, s, cg);
                    sc.push(s);
                }
                sc
            }
            Granularity::Block(br, bc) => {
                let bcols = cols.div_ceil(bc);
                let brows = nrows.div_ceil(br);
                let mut sc = vec![0f32; brows * bcols];
                for bi in 0..brows {
                    let rr = bi * br..((bi + 1) * br).min(nrows);
                    for bj in 0..bcols {
                        let cc = bj * bc..((bj + 1) * bc).min(cols);
                        let mut amax = 0f32;
                        for r in rr.clone() {
                            amax = amax.max(absmax(&x[r * cols + cc.start..r * cols + cc.end]));
                        }
                        let s = fit(amax);
                        sc[bi * bcols + bj] = s;
                        for r in rr.clone() {
                            let at = r * cols + cc.start..r * cols + cc.end;
                            f.encode_scaled(&x[at.clone()], s, &mut codes[at]);
                        }
                    }
                }
                sc
            }
        };
        let r1 = r0 + nrows;
        Encoded {
            pieces: vec![
                placed(self, 0, shape, r0, r1, codes),
                placed(self, 1, shape, r0, r1, encode_scales(scale_dtype, &scales)),
            ],
        }
    }

    fn checkpoint_meta(&self, _actorder: Option<&str>) -> Option<super::CheckpointMeta> {
        Some(super::CheckpointMeta::CompressedTensors {
            weights: super::ct_weights("float", 8, true, self.granularity, None),
            format: "float-quantized",
        })
    }

    fn decode(&self, shape: &[usize], r0: usize, r1: usize, parts: &[&[u8]], out: &mut [f32]) {
        let cols = rows_cols(shape).1;
        let nrows = r1 - r0;
        dtype::decode_f32(self.format, parts[0], out);
        let scales = decode_scales(self.scale_dtype, parts[1]);
        match self.granularity {
            Granularity::Tensor => out.iter_mut().for_each(|v| *v *= scales[0]),
            Granularity::Channel | Granularity::Group(_) => {
                let g = group_len(self.granularity, cols);
                for (o, s) in out.chunks_exact_mut(g).zip(&scales) {
                    o.iter_mut().for_each(|v| *v *= s);
                }
            }
            Granularity::Block(br, bc) => {
                let bcols = cols.div_ceil(bc);
                for r in 0..nrows {
                    for c in 0..cols {
                        out[r * cols + c] *= scales[(r / br) * bcols + c / bc];
                    }
                }
            }
        }
    }
}

/// Reads an FP8 weight (an F8_E4M3 / F8_E5M2 tensor) and its `_scale`: the granularity from
/// the scale's shape, checked against the strategy `quantization_config` declares.
pub fn read<'a>(
    ck: &dyn super::Checkpoint<'a>,
    t: super::Stored<'a>,
) -> Option<Result<super::ReadWeight<'a>, String>> {
    if !matches!(t.dtype, DType::F8E4M3 | DType::F8E5M2) {
        return None;
    }
    Some(read_fp8(ck, t))
}

fn read_fp8<'a>(
    ck: &dyn super::Checkpoint<'a>,
    t: super::Stored<'a>,
) -> Result<super::ReadWeight<'a>, String> {
    let name = t.name;
    let sname = format!("{name}_scale");
    let scale = ck
        .get(&sname)
        .ok_or("fp8 tensor without a _scale companion")?;
    super::check_scale_dtype(scale.dtype, &sname)?;
    let shape = t.shape.to_vec();
    if shape.len() != 2 {
        return Err(format!("fp8 weight of shape {shape:?} is not 2-D"));
    }
    let (rows, cols) = (shape[0], shape[1]);
    let sshape = scale.shape;
    let numel: usize = sshape.iter().product();
    let misfit = || {
        let layouts = format!("tensor: one value, channel: [{rows}, 1], or blocks");
        format!("{sname} has shape {sshape:?}, no fp8 scale layout ({layouts}) of a [{rows}, {cols}] weight")
    };
    let args = ck.weight_args(name.strip_suffix(".weight").unwrap_or(name));
    let granularity = if sshape.len() <= 1 && numel == 1 {
        Granularity::Tensor
    } else if sshape.len() != 2 {
        return Err(misfit());
    } else if sshape[0] == rows && sshape[1] == 1 {
        Granularity::Channel
    } else if numel == 1 {
        Granularity::Tensor
    } else {
        let block = args
            .and_then(|w| w.get("block_structure"))
            .and_then(|b| serde_json::from_value::<[usize; 2]>(b.clone()).ok())
            .unwrap_or([
                rows.div_ceil(sshape[0].max(1)),
                cols.div_ceil(sshape[1].max(1)),
            ]);
        if block[0] == 0
            || block[1] == 0
            || [rows.div_ceil(block[0]), cols.div_ceil(block[1])] != sshape[..]
        {
            return Err(misfit());
        }
        Granularity::Block(block[0], block[1])
    };
    // the scale's shape must be the layout quantization_config declares (one value on one row
    // is a tensor and a channel scale alike)
    let declared = args
        .and_then(|w| w.get("strategy"))
        .and_then(|d| d.as_str());
    if let Some(d) = declared {
        let either = rows == 1 && numel == 1 && matches!(d, "tensor" | "channel");
        if d != granularity.strategy() && !either {
            return Err(format!(
                "{sname} has shape {sshape:?}, a {} scale, but quantization_config declares strategy \"{d}\"",
                granularity.strategy()
            ));
        }
    }
    let scheme = super::Scheme::Fp8(FloatQuantized {
        format: t.dtype,
        granularity,
        scale_dtype: scale.dtype,
    });
    scheme.check(&shape).map_err(|e| e.to_string())?;
    let slots = vec![t.bytes, scale.bytes];
    super::check_sizes(&scheme, rows, cols, &slots)?;
    Ok(super::ReadWeight {
        name: name.to_string(),
        shape,
        scheme,
        slots,
        stored: vec![name.to_string(), sname],
    })
}
