//! AWQ (activation-aware weight quantization, Lin et al. 2023), the pure parts: the statistics
//! the scale search starts from, the candidate scales of its grid, the clipping choice, and the
//! [`Transform`] a search result applies to a stored tensor (column scales, row divisors,
//! clipping). The search itself runs blocks of the model and lives with the calibration loop.
//!
//! A transform is applied the same way when the calibration loop quantizes a layer and when the
//! run encodes the tensor's rows, so what is written is what was searched.

use std::sync::Arc;

/// Ratios in the scale search's grid (r = k / GRID).
pub const GRID: usize = 20;
/// Clipping candidates: max = amax · (1 − i / GRID) for i < CLIP_STEPS (AutoAWQ's
/// `max_shrink` 0.5 over a grid of 20).
pub const CLIP_STEPS: usize = 10;

/// How candidate scales are formed from the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scaling {
    /// s = x_mean^r / w_mean^(1−r) (AutoAWQ's and llm-compressor's default, "duo scaling").
    Duo,
    /// s = x_mean^r (the paper's form).
    Plain,
    /// Half the grid each way (llm-compressor's `duo_scaling="both"`).
    Both,
}

impl Scaling {
    pub fn parse(s: &str) -> Result<Scaling, String> {
        match s.to_ascii_lowercase().as_str() {
            "duo" => Ok(Scaling::Duo),
            "plain" => Ok(Scaling::Plain),
            "both" => Ok(Scaling::Both),
            _ => Err(format!("unknown AWQ scaling '{s}' (duo, plain, both)")),
        }
    }
}

/// One candidate of the grid: its ratio, whether it is a duo scale, and the per-input-channel
/// scales (normalised so that max · min = 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub ratio: f32,
    pub duo: bool,
    pub scales: Vec<f32>,
}

/// Mean |x| per column of a `rows × cols` matrix given element-wise (`at(row, col)`), summed
/// in f64 in row order.
pub fn act_mean(rows: usize, cols: usize, at: impl Fn(usize, usize) -> f32) -> Vec<f32> {
    let mut sum = vec![0f64; cols];
    for r in 0..rows {
        for (c, s) in sum.iter_mut().enumerate() {
            *s += at(r, c).abs() as f64;
        }
    }
    sum.iter()
        .map(|&s| (s / rows.max(1) as f64) as f32)
        .collect()
}

/// AutoAWQ's weight statistic for linears sharing an input: per input column, the mean over
/// every row of every weight of |w| divided by the largest |w| of that row's group
/// (`group` columns; a whole row for `group >= cols`). Each weight is row-major with `cols`
/// columns. An all-zero group contributes 0.
pub fn weight_mean(weights: &[&[f32]], cols: usize, group: usize) -> Vec<f32> {
    let mut m = WeightMean::new(cols, group);
    for w in weights {
        m.add(w);
    }
    m.finish()
}

/// [`weight_mean`] accumulated one matrix at a time (the same sums in the same order), so
/// many matrices need not be held as rows at once.
pub struct WeightMean {
    cols: usize,
    group: usize,
    sum: Vec<f64>,
    n: usize,
}

impl WeightMean {
    pub fn new(cols: usize, group: usize) -> WeightMean {
        WeightMean {
            cols,
            group: group.clamp(1, cols.max(1)),
            sum: vec![0f64; cols],
            n: 0,
        }
    }

    /// Adds the rows of `w` (row-major, `cols` wide).
    pub fn add(&mut self, w: &[f32]) {
        for row in w.chunks_exact(self.cols.max(1)) {
            self.n += 1;
            for (g, part) in row.chunks(self.group).enumerate() {
                let amax = part.iter().fold(0f32, |a, v| a.max(v.abs()));
                if amax > 0.0 {
                    for (k, v) in part.iter().enumerate() {
                        self.sum[g * self.group + k] += (v.abs() / amax) as f64;
                    }
                }
            }
        }
    }

    pub fn finish(self) -> Vec<f32> {
        let n = self.n.max(1) as f64;
        self.sum.iter().map(|&s| (s / n) as f32).collect()
    }
}

/// The grid's candidates in search order: for each ratio k / GRID (k = 0..GRID; with
/// [`Scaling::Both`], k = 0..GRID/2 over a half-resolution grid each way), the scales
/// `x_mean^r / (w_mean^(1−r) + 1e-4)` (duo) or `x_mean^r` (plain), clamped below at 1e-4 and
/// divided by sqrt(max · min), as the references compute them.
pub fn candidates(x_mean: &[f32], w_mean: &[f32], scaling: Scaling) -> Vec<Candidate> {
    let forms: Vec<(bool, usize)> = match scaling {
        Scaling::Duo => vec![(true, GRID)],
        Scaling::Plain => vec![(false, GRID)],
        Scaling::Both => vec![(true, GRID / 2), (false, GRID / 2)],
    };
    let mut out = Vec::new();
    for (duo, n) in forms {
        for k in 0..n {
            let ratio = k as f32 / n as f32;
            let mut s: Vec<f32> = x_mean
                .iter()
                .zip(w_mean)
                .map(|(&x, &w)| {
                    let v = if duo {
                        x.powf(ratio) / (w.powf(1.0 - ratio) + 1e-4)
                    } else {
                        x.powf(ratio)
                    };
                    v.max(1e-4)
                })
                .collect();
            normalise(&mut s);
            out.push(Candidate {
                ratio,
                duo,
                scales: s,
            });
        }
    }
    out
}

/// Divides scales by sqrt(max · min) (no change when that is not a positive finite number).
fn normalise(s: &mut [f32]) {
    let (mn, mx) = s
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let d = (mx * mn).sqrt();
    if d.is_finite() && d > 0.0 {
        for v in s {
            *v /= d;
        }
    }
}

/// Per (row, group) clipping: the step `i` of each group (max = amax · (1 − i / GRID)).
#[derive(Debug, Clone, PartialEq)]
pub struct Clip {
    pub group: usize,
    /// rows × ceil(cols / group) steps, row-major, indexed by source row.
    pub steps: Arc<[u8]>,
}

/// What AWQ does to one stored tensor, element by element for row `r`, column `c`:
/// `(w + offset) · col_mul[c] / col_div[c] / row_div[r] − offset`, then each (row, group)
/// clamped to ±amax · (1 − step / GRID) of the scaled values. 1-D tensors (norms, biases) are
/// one row. `offset`: a norm gain stored as `w` and applied as `w + offset` (Gemma's `1 + w`).
/// A stacked tensor whose parts have their own column factors (a mixture's experts, each
/// scaled for its own inputs) holds one `col_mul` row per `col_mul_rows` rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transform {
    pub col_mul: Option<Arc<[f32]>>,
    pub col_div: Option<Arc<[f32]>>,
    pub row_div: Option<Arc<[f32]>>,
    pub clip: Option<Clip>,
    pub offset: f32,
    /// Rows per `col_mul` row; 0: one row of factors for every row.
    pub col_mul_rows: usize,
}

impl Transform {
    pub fn is_identity(&self) -> bool {
        self.col_mul.is_none()
            && self.col_div.is_none()
            && self.row_div.is_none()
            && self.clip.is_none()
    }

    /// Applies the transform to rows of a tensor: `x` holds `rows.len()` rows of `cols` values,
    /// `rows[k]` being the source row index of the k-th.
    pub fn apply(&self, rows: &[usize], cols: usize, x: &mut [f32]) {
        debug_assert_eq!(x.len(), rows.len() * cols);
        for (&r, row) in rows.iter().zip(x.chunks_exact_mut(cols.max(1))) {
            self.scale_row(r, row);
            if let Some(clip) = &self.clip {
                clip_row(row, clip.group, &clip.steps[r * groups(cols, clip.group)..]);
            }
        }
    }

    /// The same transform on values already stored as applied (`w + offset`).
    pub fn on_applied(&self) -> Transform {
        Transform {
            offset: 0.0,
            ..self.clone()
        }
    }

    /// The scaling part of [`Transform::apply`] on one row (source row `r`).
    pub fn scale_row(&self, r: usize, row: &mut [f32]) {
        if self.offset != 0.0 {
            row.iter_mut().for_each(|v| *v += self.offset);
        }
        if let Some(m) = &self.col_mul {
            let m = match self.col_mul_rows {
                0 => &m[..],
                per => {
                    let at = r / per * row.len();
                    &m[at..at + row.len()]
                }
            };
            for (v, s) in row.iter_mut().zip(m.iter()) {
                *v *= s;
            }
        }
        if let Some(d) = &self.col_div {
            for (v, s) in row.iter_mut().zip(d.iter()) {
                *v /= s;
            }
        }
        if let Some(d) = &self.row_div {
            let s = d[r];
            for v in row.iter_mut() {
                *v /= s;
            }
        }
        if self.offset != 0.0 {
            row.iter_mut().for_each(|v| *v -= self.offset);
        }
    }

    /// The transforms of tensors stacked row-wise into one (Phi-3's fused `qkv_proj`,
    /// `gate_up_proj`; a mixture's experts): `parts` in row order, each with its row count
    /// (`None`: that part is unchanged). Column factors: one row when every part has the same
    /// (parts sharing one input), else one per part, which needs parts of equal rows; row
    /// divisors and clipping steps are joined, 1 and 0 for the parts without.
    pub fn stack(parts: &[(Option<&Transform>, usize)], cols: usize) -> Result<Transform, String> {
        let present = || parts.iter().filter_map(|(t, _)| *t);
        if present().any(|t| t.col_mul_rows != 0) {
            return Err("the parts are stacked already".into());
        }
        if present().any(|t| t.offset != 0.0 || t.col_div.is_some()) {
            return Err("stacked parts are linears, not norm gains".into());
        }
        let rows: usize = parts.iter().map(|(_, n)| n).sum();
        let row_div = present().any(|t| t.row_div.is_some()).then(|| {
            let mut v = Vec::with_capacity(rows);
            for (t, n) in parts {
                match t.and_then(|t| t.row_div.as_ref()) {
                    Some(d) => v.extend_from_slice(&d[..*n]),
                    None => v.extend(std::iter::repeat_n(1.0, *n)),
                }
            }
            v.into()
        });
        let clip = match present()
            .filter_map(|t| t.clip.as_ref())
            .map(|c| c.group)
            .next()
        {
            None => None,
            Some(group) => {
                if present().any(|t| t.clip.as_ref().is_some_and(|c| c.group != group)) {
                    return Err("the stacked parts clip by different groups".into());
                }
                let ng = groups(cols, group);
                let mut steps = Vec::with_capacity(rows * ng);
                for (t, n) in parts {
                    match t.and_then(|t| t.clip.as_ref()) {
                        Some(c) => steps.extend_from_slice(&c.steps[..n * ng]),
                        None => steps.extend(std::iter::repeat_n(0u8, n * ng)),
                    }
                }
                Some(Clip {
                    group,
                    steps: steps.into(),
                })
            }
        };
        // column factors: one row for all parts when every part has the same (an absent part
        // has none), else one per part (parts of equal rows: a mixture's experts)
        let same = parts.iter().all(|(t, _)| {
            t.and_then(|t| t.col_mul.as_ref()) == parts[0].0.and_then(|t| t.col_mul.as_ref())
        });
        let (col_mul, col_mul_rows) = match same {
            true => (
                parts
                    .first()
                    .and_then(|(t, _)| t.and_then(|t| t.col_mul.clone())),
                0,
            ),
            false => {
                let n = parts.first().map_or(0, |p| p.1);
                if n == 0 || parts.iter().any(|p| p.1 != n) {
                    return Err("the stacked parts' column factors differ".into());
                }
                let mut v = Vec::with_capacity(parts.len() * cols);
                for (t, _) in parts {
                    match t.and_then(|t| t.col_mul.as_ref()) {
                        Some(m) => v.extend_from_slice(&m[..cols]),
                        None => v.extend(std::iter::repeat_n(1.0, cols)),
                    }
                }
                (Some(v.into()), n)
            }
        };
        Ok(Transform {
            col_mul,
            col_div: None,
            row_div,
            clip,
            offset: 0.0,
            col_mul_rows,
        })
    }

    /// The transform of rows `start..start + n` of the tensor (a part of a stacked one), as a
    /// transform of their own rows from 0.
    pub fn rows(&self, start: usize, n: usize, cols: usize) -> Transform {
        let (col_mul, col_mul_rows) = match (&self.col_mul, self.col_mul_rows) {
            // a range within one part: that part's factors
            (Some(m), per) if per > 0 && start / per == (start + n.max(1) - 1) / per => {
                let at = start / per * cols;
                (Some(m[at..at + cols].to_vec().into()), 0)
            }
            // across parts: each row's own factors
            (Some(m), per) if per > 0 => {
                let each: Vec<f32> = (start..start + n)
                    .flat_map(|r| m[r / per * cols..(r / per + 1) * cols].iter().copied())
                    .collect();
                (Some(each.into()), 1)
            }
            (m, per) => (m.clone(), per),
        };
        Transform {
            col_mul,
            col_mul_rows,
            row_div: self
                .row_div
                .as_ref()
                .map(|d| d[start..start + n].to_vec().into()),
            clip: self.clip.as_ref().map(|c| {
                let ng = groups(cols, c.group);
                Clip {
                    group: c.group,
                    steps: c.steps[start * ng..(start + n) * ng].to_vec().into(),
                }
            }),
            ..self.clone()
        }
    }

    /// An importance vector (mean x² per input column) for the transformed weight: the inputs
    /// are divided by `col_mul`, so their squares by its square. Either may hold one row per
    /// expert of a stacked tensor (then so does the result).
    pub fn importance(&self, imatrix: &[f32]) -> Vec<f32> {
        match &self.col_mul {
            Some(m) if !imatrix.is_empty() && !m.is_empty() => (0..imatrix.len().max(m.len()))
                .map(|i| {
                    let s = m[i % m.len()];
                    imatrix[i % imatrix.len()] / (s * s)
                })
                .collect(),
            _ => imatrix.to_vec(),
        }
    }
}

/// Groups per row.
pub fn groups(cols: usize, group: usize) -> usize {
    cols.div_ceil(group.max(1))
}

/// Clamps each group of `row` to ±amax · (1 − step / GRID) of that group.
pub fn clip_row(row: &mut [f32], group: usize, steps: &[u8]) {
    for (part, &i) in row.chunks_mut(group.max(1)).zip(steps) {
        if i == 0 {
            continue;
        }
        let amax = part.iter().fold(0f32, |a, v| a.max(v.abs()));
        let m = amax * (1.0 - i as f32 / GRID as f32);
        for v in part.iter_mut() {
            *v = v.clamp(-m, m);
        }
    }
}

/// Output error of each (row, group) for a weight change `d` (rows × cols, row-major), from
/// the blocks of the input's second moment: `err[r, g] = d_gᵀ H_g d_g` with
/// `H_g = Xᵀ_g X_g / n` the `group × group` diagonal block of group g (`blocks[g]`, row-major).
/// This equals the mean over tokens of (x_g · d_g)², AutoAWQ's clipping loss, without a pass
/// over the tokens per candidate. One matrix product per group (`D_g H_g`, then a row-wise
/// dot with `D_g`), in f32, sequential: the caller parallelises over row chunks.
pub fn group_errors(d: &[f32], cols: usize, group: usize, blocks: &[Vec<f32>]) -> Vec<f32> {
    use crate::linalg::matmul;
    use faer::{Accum, Mat, MatRef, Par};
    let (cols, group) = (cols.max(1), group.max(1));
    let rows = d.len() / cols;
    let ng = groups(cols, group);
    let mut out = vec![0f32; rows * ng];
    let dm = MatRef::from_row_major_slice(&d[..rows * cols], rows, cols);
    for (g, c0) in (0..cols).step_by(group).enumerate() {
        let n = group.min(cols - c0);
        let dg = dm.subcols(c0, n);
        let h = MatRef::from_row_major_slice(&blocks[g][..n * n], n, n);
        let mut t = Mat::<f32>::zeros(rows, n);
        matmul(t.as_mut(), Accum::Replace, dg, h, 1.0f32, Par::Seq);
        let mut e = vec![0f32; rows];
        for i in 0..n {
            for ((e, &tv), dv) in e.iter_mut().zip(t.col_as_slice(i)).zip(dg.col(i).iter()) {
                *e += dv * tv;
            }
        }
        for (r, e) in e.into_iter().enumerate() {
            out[r * ng + g] = e;
        }
    }
    out
}

/// The diagonal `group × group` blocks of XᵀX / n for `rows × cols` inputs given element-wise
/// (row-major blocks, f32 products).
pub fn hessian_blocks(
    rows: usize,
    cols: usize,
    group: usize,
    at: impl Fn(usize, usize) -> f32,
) -> Vec<Vec<f32>> {
    use crate::linalg::matmul;
    use faer::{Accum, Mat, Par};
    let group = group.max(1);
    let mut out = Vec::with_capacity(groups(cols, group));
    for c0 in (0..cols).step_by(group) {
        let n = group.min(cols - c0);
        let x = Mat::<f32>::from_fn(rows, n, |r, k| at(r, c0 + k));
        let mut h = Mat::<f32>::zeros(n, n);
        let scale = 1.0 / rows.max(1) as f32;
        matmul(
            h.as_mut(),
            Accum::Replace,
            x.transpose(),
            x.as_ref(),
            scale,
            Par::Seq,
        );
        out.push((0..n * n).map(|k| h[(k / n, k % n)]).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stacked tensor's transform does to each part's rows what the part's own does, and
    /// its row range gives the part's back.
    #[test]
    fn stacked_transforms_act_as_their_parts() {
        let cols = 8;
        let mut rng = crate::synth::Rng::new(3);
        let mut vals = |n: usize| -> Arc<[f32]> {
            (0..n)
                .map(|_| 0.5 + rng.normal().abs() as f32)
                .collect::<Vec<_>>()
                .into()
        };
        let s = vals(cols);
        let a = Transform {
            col_mul: Some(s.clone()),
            clip: Some(Clip {
                group: 4,
                steps: vec![1, 0, 2, 3, 0, 5].into(),
            }),
            ..Default::default()
        };
        let b = Transform {
            col_mul: Some(s.clone()),
            row_div: Some(vals(2)),
            ..Default::default()
        };
        // (a part with only the shared column factors, as k is when v alone has row divisors)
        let c = Transform {
            col_mul: Some(s.clone()),
            ..Default::default()
        };
        let parts = [(Some(&a), 3), (Some(&c), 1), (Some(&b), 2)];
        let t = Transform::stack(&parts, cols).unwrap();
        assert_eq!(t.col_mul_rows, 0);
        // an absent part is unchanged: its column factors are not the others'
        assert!(Transform::stack(&[(Some(&a), 3), (None, 1), (Some(&b), 2)], cols).is_err());
        let mut w: Vec<f32> = (0..6 * cols).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let (mut each, mut ranged) = (w.clone(), w.clone());
        t.apply(&(0..6).collect::<Vec<_>>(), cols, &mut w);
        let mut at = 0;
        for (p, n) in parts {
            let from0: Vec<usize> = (0..n).collect();
            let own = p.cloned().unwrap_or_default();
            own.apply(&from0, cols, &mut each[at * cols..(at + n) * cols]);
            let part = t.rows(at, n, cols);
            part.apply(&from0, cols, &mut ranged[at * cols..(at + n) * cols]);
            at += n;
        }
        assert_eq!(w, each);
        assert_eq!(w, ranged);
        let other = Transform {
            col_mul: Some(vals(cols)),
            ..Default::default()
        };
        assert!(Transform::stack(&[(Some(&a), 3), (Some(&other), 1)], cols).is_err());
        // parts of equal rows with their own column factors (experts): one row of factors
        // each, applied to its part's rows, and their importance per part
        let experts = [(Some(&a), 3), (None, 3), (Some(&other), 3)];
        let t = Transform::stack(&experts, cols).unwrap();
        assert_eq!(t.col_mul_rows, 3);
        let mut w: Vec<f32> = (0..9 * cols).map(|i| ((i * 5) % 13) as f32 - 6.0).collect();
        let w_orig = w.clone();
        let mut each = w.clone();
        t.apply(&(0..9).collect::<Vec<_>>(), cols, &mut w);
        for (k, (p, n)) in experts.into_iter().enumerate() {
            let own = p.cloned().unwrap_or_default();
            let rows = &mut each[k * n * cols..(k + 1) * n * cols];
            own.apply(&(0..n).collect::<Vec<_>>(), cols, rows);
            assert_eq!(
                t.rows(k * n + 1, 2, cols).col_mul,
                own.col_mul.or(Some(vec![1.0; cols].into()))
            );
        }
        assert_eq!(w, each);
        // a row range across experts: each row keeps its expert's factors
        let mut part = w_orig[2 * cols..7 * cols].to_vec();
        t.rows(2, 5, cols)
            .apply(&(0..5).collect::<Vec<_>>(), cols, &mut part);
        assert_eq!(part, w[2 * cols..7 * cols]);
        let im: Vec<f32> = (0..cols).map(|i| 1.0 + i as f32).collect();
        let imp = t.importance(&im);
        assert_eq!(imp.len(), 3 * cols);
        assert_eq!(imp[cols..2 * cols], im[..]);
        assert_eq!(
            imp[2 * cols + 1],
            im[1] / (other.col_mul.as_ref().unwrap()[1]).powi(2)
        );
    }

    #[test]
    fn plain_candidates_are_all_ones_for_flat_activations() {
        let x = vec![0.7f32; 8];
        let w = vec![0.3, 0.9, 0.5, 0.1, 0.2, 0.4, 0.6, 0.8];
        for c in candidates(&x, &w, Scaling::Plain) {
            assert!(c.scales.iter().all(|&s| (s - 1.0).abs() < 1e-6), "{c:?}");
        }
        let d = candidates(&x, &w, Scaling::Duo);
        assert_eq!(d.len(), GRID);
        // ratio 0 duo: 1 / (w + 1e-4), normalised
        let raw: Vec<f32> = w.iter().map(|v| 1.0 / (v + 1e-4)).collect();
        let norm = (raw.iter().cloned().fold(f32::MIN, f32::max)
            * raw.iter().cloned().fold(f32::MAX, f32::min))
        .sqrt();
        for (s, r) in d[0].scales.iter().zip(&raw) {
            assert!((s - r / norm).abs() < 1e-5 * s.abs());
        }
        let b = candidates(&x, &w, Scaling::Both);
        assert_eq!(b.len(), GRID);
        assert_eq!(b.iter().filter(|c| c.duo).count(), GRID / 2);
    }

    #[test]
    fn weight_mean_normalises_by_group_max() {
        // two rows, 4 columns, group 2
        let w = [1.0f32, -2.0, 0.0, 0.0, 4.0, 2.0, 3.0, -6.0];
        let m = weight_mean(&[&w], 4, 2);
        assert_eq!(
            m,
            vec![(0.5 + 1.0) / 2.0, (1.0 + 0.5) / 2.0, 0.5 / 2.0, 1.0 / 2.0]
        );
    }

    #[test]
    fn transform_scales_then_clips() {
        let t = Transform {
            col_mul: Some(vec![2.0, 1.0, 1.0, 1.0].into()),
            col_div: None,
            row_div: Some(vec![1.0, 2.0].into()),
            clip: Some(Clip {
                group: 2,
                steps: vec![0, 0, 10, 0].into(),
            }),
            offset: 0.0,
            col_mul_rows: 0,
        };
        let mut x = vec![1.0f32, 1.0, 1.0, 1.0, 4.0, -2.0, 3.0, 1.0];
        t.apply(&[0, 1], 4, &mut x);
        // row 1: [8, -2, 3, 1] / 2 = [4, -1, 1.5, 0.5]; group 0 clipped to ±2
        assert_eq!(x, vec![2.0, 1.0, 1.0, 1.0, 2.0, -1.0, 1.5, 0.5]);
        // a gain stored as w, applied as 1 + w: (1 + w) / s − 1, or on the applied gain (1 + w) / s
        let g = Transform {
            col_div: Some(vec![2.0, 4.0].into()),
            offset: 1.0,
            ..Default::default()
        };
        let mut w = vec![1.0f32, -0.5];
        g.apply(&[0], 2, &mut w);
        assert_eq!(w, vec![0.0, -0.875]);
        let mut applied = vec![2.0f32, 0.5];
        g.on_applied().apply(&[0], 2, &mut applied);
        assert_eq!(applied, vec![1.0, 0.125]);
        // rows given out of order use their own divisors and steps
        let mut y = vec![4.0f32, -2.0, 3.0, 1.0];
        t.apply(&[1], 4, &mut y);
        assert_eq!(y, vec![2.0, -1.0, 1.5, 0.5]);
        assert_eq!(
            t.importance(&[4.0, 4.0, 1.0, 1.0]),
            vec![1.0, 4.0, 1.0, 1.0]
        );
    }

    #[test]
    fn group_errors_equal_the_token_mean() {
        let mut rng = crate::synth::Rng::new(5);
        // 14 columns: three groups of 4 and a last one of 2
        let (n, rows, cols, group) = (37, 3, 14, 4);
        let x: Vec<f32> = (0..n * cols).map(|_| rng.normal() as f32).collect();
        let d: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32).collect();
        let blocks = hessian_blocks(n, cols, group, |r, c| x[r * cols + c]);
        let e = group_errors(&d, cols, group, &blocks);
        let ng = cols.div_ceil(group);
        for r in 0..rows {
            for g in 0..ng {
                let mut m = 0f64;
                for t in 0..n {
                    let dot: f64 = (g * group..((g + 1) * group).min(cols))
                        .map(|c| x[t * cols + c] as f64 * d[r * cols + c] as f64)
                        .sum();
                    m += dot * dot;
                }
                m /= n as f64;
                let got = e[r * ng + g] as f64;
                assert!((got - m).abs() <= 1e-4 * m.max(1.0), "{got} vs {m}");
            }
        }
    }
}
