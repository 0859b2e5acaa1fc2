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
                for (c, &v) in codes.iter_mut().zip(x) {
                    *c = f.encode(v / s);
                }
                vec![s]
            }
            Granularity::Channel | Granularity::Group(_) => {
                let g = group_len(self.granularity, cols);
                let mut sc = Vec::new();
                for (xg, cg) in x.chunks_exact(g).zip(codes.chunks_exact_mut(g)) {
                    let s = fit(absmax(xg));
                    for (c, &v) in cg.iter_mut().zip(xg) {
                        *c = f.encode(v / s);
                    }
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
                            for c in cc.clone() {
                                codes[r * cols + c] = f.encode(x[r * cols + c] / s);
                            }
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
