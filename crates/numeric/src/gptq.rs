//! GPTQ (Frantar et al. 2022): quantize a linear layer's weight column by column, pushing each
//! column's rounding error onto the columns not yet quantized, weighted by the inverse Hessian
//! of the layer's calibration inputs. Follows the reference implementation (IST-DASLab
//! `gptq.py`, as GPTQModel and llm-compressor run it): dead inputs, relative damping (raised
//! until the Cholesky factorisations succeed), blocks of 128 with lazy batch updates, group
//! parameters fitted inside the loop, act-order with `g_idx`, static groups.
//!
//! Pure: weights and Hessian in, codes and parameters out. Parameters follow the
//! compressed-tensors conventions of [`crate::rtn`].

use crate::dtype::DType;
use crate::ggml::GgmlType;
use crate::linalg::matmul;
use crate::rtn::{self, IntSpec, QParams};
use faer::linalg::solvers::DenseSolveCore;
use faer::{Accum, Mat, Par, Side};

/// Options of a GPTQ run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GptqConfig {
    pub spec: IntSpec,
    /// Columns per group; `None`: one set of parameters per output row.
    pub group: Option<usize>,
    /// Columns per lazy-update block (128 in the reference).
    pub block: usize,
    /// Damping, relative to the mean of diag(H) (0.01 in the reference).
    pub percdamp: f64,
    /// Quantize columns in decreasing order of diag(H).
    pub act_order: bool,
    /// With groups: fit every group's parameters on the unpermuted weights first, so `g_idx`
    /// stays monotone.
    pub static_groups: bool,
    /// Storage type of the scales (they are rounded to it before codes are chosen).
    pub scale_dtype: DType,
    /// The grid codes live on: compressed-tensors integers (`spec`), or a ggml block type.
    pub grid: Grid,
    /// Integer grids: search each group's clipping (min and max shrunk by 0–20 % in steps of
    /// 1 %) for the least Σ|x − x̂|^2.4, as the reference quantizer's `mse` option does.
    pub mse_clip: bool,
}

/// Where GPTQ's codes go. For a ggml type with a code grid (see [`crate::ggml::CodeGrid`]: the
/// legacy types, the K-quants, IQ4_NL and IQ4_XS) the group is the grid's (the 32-value block; a
/// K-quant's 32- or 16-value sub-block) and each block's parameters are fitted as ggml fits
/// them, on the weights as GPTQ has updated them when the loop enters the block, and read back
/// as stored; codes are the nearest point of that stored grid (on IQ4's non-linear grid the
/// nearest level, whose value is the code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grid {
    /// `spec` bits, compressed-tensors conventions.
    Int,
    /// A ggml block type's grid.
    Ggml(GgmlType),
}

/// One group's grid: value = (q - zero)·scale + offset, q in qmin..=qmax.
#[derive(Debug, Clone, Copy, PartialEq)]
struct GroupGrid {
    p: QParams,
    offset: f32,
}

fn code_grid(ty: GgmlType) -> &'static dyn crate::ggml::CodeGrid {
    ty.grid()
        .unwrap_or_else(|| panic!("{ty} has no code grid (checked by gptq())"))
}

impl Grid {
    /// Parameters of the groups of one fitting unit `w` (a group for integer grids, a block for
    /// ggml grids: Q4_K fits 256 values at once into eight 32-value groups).
    fn fit(self, cfg: &GptqConfig, w: &[f32], out: &mut Vec<GroupGrid>) {
        out.clear();
        if let Grid::Ggml(ty) = self {
            let g = code_grid(ty);
            let mut ps = vec![(QParams::default(), 0.0); w.len() / g.group()];
            g.fit(w, &mut ps);
            out.extend(ps.into_iter().map(|(p, offset)| GroupGrid { p, offset }));
            return;
        }
        out.push(self.fit_int(cfg, w));
    }

    fn fit_int(self, cfg: &GptqConfig, w: &[f32]) -> GroupGrid {
        match self {
            Grid::Int => {
                let (mn, mx) = rtn::min_max(w);
                let mut best = rtn::fit(cfg.spec, mn, mx, cfg.scale_dtype);
                if cfg.mse_clip {
                    let err = |g: QParams| -> f64 {
                        let mut q = vec![0i8; w.len()];
                        rtn::quantize(cfg.spec, g, w, &mut q);
                        w.iter()
                            .zip(&q)
                            .map(|(&x, &c)| {
                                let y = (c as i32 - g.zero) as f32 * g.scale;
                                ((x - y).abs() as f64).powf(2.4)
                            })
                            .sum()
                    };
                    let mut best_err = err(best);
                    for i in 1..80 {
                        let p = 1.0 - i as f32 / 100.0;
                        let g = rtn::fit(cfg.spec, p * mn, p * mx, cfg.scale_dtype);
                        let e = err(g);
                        if e < best_err {
                            (best, best_err) = (g, e);
                        }
                    }
                }
                GroupGrid {
                    p: best,
                    offset: 0.0,
                }
            }
            Grid::Ggml(_) => unreachable!("ggml grids are fitted block by block"),
        }
    }

    /// The code for `x` and the value it stands for.
    fn quantize(self, cfg: &GptqConfig, g: GroupGrid, x: f32) -> (i8, f32) {
        let ty = match self {
            Grid::Int => {
                let mut q = [0i8];
                rtn::quantize(cfg.spec, g.p, &[x], &mut q);
                return (q[0], (q[0] as i32 - g.p.zero) as f32 * g.p.scale);
            }
            Grid::Ggml(ty) => ty,
        };
        let grid = code_grid(ty);
        if let Some(l) = grid.levels() {
            // a non-linear grid: the nearest level (its value is the code)
            let y = if g.p.scale == 0.0 { 0.0 } else { x / g.p.scale };
            let q = l.code(y, 0.0).0;
            return (q as i8, q * g.p.scale);
        }
        let (qmin, qmax) = grid.code_range();
        let q = if g.p.scale == 0.0 {
            g.p.zero.clamp(qmin, qmax)
        } else {
            (((x - g.offset) / g.p.scale).round() as i32 + g.p.zero).clamp(qmin, qmax)
        };
        (q as i8, (q - g.p.zero) as f32 * g.p.scale + g.offset)
    }
}

impl Default for GptqConfig {
    fn default() -> Self {
        GptqConfig {
            spec: IntSpec {
                bits: 4,
                symmetric: true,
            },
            group: Some(128),
            block: 128,
            percdamp: 0.01,
            act_order: false,
            static_groups: false,
            scale_dtype: DType::F32,
            grid: Grid::Int,
            mse_clip: false,
        }
    }
}

/// Codes and parameters of a quantized weight, in the original column order.
#[derive(Debug, Clone, PartialEq)]
pub struct GptqOutput {
    /// `rows × cols` signed codes.
    pub codes: Vec<i8>,
    /// `rows × groups` parameters (one group per row without groups); group `g` of row `r` at
    /// `r * groups + g`.
    pub params: Vec<QParams>,
    /// Per group (as `params`): the value added after scaling (Q4_1's minimum; else 0).
    pub offsets: Vec<f32>,
    /// The group of each input column (`cols` entries).
    pub g_idx: Vec<u32>,
    /// The damping (relative) that made the factorisations succeed.
    pub percdamp: f64,
    /// `rows × cols`, original order: the value each code was rounded from (the weight after
    /// the earlier columns' error feedback), from which learned rounding starts.
    pub pre_rounding: Vec<f32>,
}

impl GptqOutput {
    /// Dequantized weights, `rows × cols`.
    pub fn dequantize(&self, rows: usize, cols: usize) -> Vec<f32> {
        debug_assert_eq!(self.codes.len(), rows * cols);
        crate::layout::Codes {
            codes: &self.codes,
            params: &self.params,
            offsets: &self.offsets,
            g_idx: &self.g_idx,
        }
        .values(cols)
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GptqError {
    #[error("{0} has no code grid GPTQ can choose codes on")]
    NoGrid(GgmlType),
    #[error("Hessian is {got} values, expected {cols}×{cols}")]
    HessianShape { got: usize, cols: usize },
    #[error("row length {cols} is not a multiple of the group size {group}")]
    Group { cols: usize, group: usize },
    #[error("{got} group parameters given, the weight has {groups} groups")]
    GridShape { got: usize, groups: usize },
    #[error("the Hessian stays indefinite even with damping {0} (non-finite calibration inputs?)")]
    Indefinite(f64),
}

/// Accumulates `H = (2/n) Σ xᵀx` over calibration rows `x` (length `cols`), in f64.
#[derive(Debug, Clone)]
pub struct Hessian {
    pub h: Mat<f64>,
    pub n: usize,
}

impl Hessian {
    pub fn new(cols: usize) -> Hessian {
        Hessian {
            h: Mat::zeros(cols, cols),
            n: 0,
        }
    }

    /// Adds the rows of a (tokens × cols) activation matrix. The batch's XᵀX is one f32
    /// symmetric rank-k update (the lower triangle only, as the reference computes the whole
    /// Hessian in f32 on a GPU; its values are those of the full product, which is exactly
    /// symmetric); the running mean across batches is kept in f64, mirrored.
    pub fn add_mat(&mut self, x: faer::MatRef<'_, f32>) {
        let (tokens, cols) = (x.nrows(), x.ncols());
        assert_eq!(cols, self.h.nrows());
        if tokens == 0 {
            return;
        }
        let mut g = Mat::<f32>::zeros(cols, cols);
        crate::linalg::gram_lower(g.as_mut(), x, Par::rayon(0));
        let total = (self.n + tokens) as f64;
        let keep = self.n as f64 / total;
        let scale = 2.0 / total;
        for j in 0..cols {
            for i in j..cols {
                let v = self.h[(i, j)] * keep + g[(i, j)] as f64 * scale;
                self.h[(i, j)] = v;
                self.h[(j, i)] = v;
            }
        }
        self.n += tokens;
    }

    /// Adds `tokens` rows of activations (`tokens × cols`, row-major f32). The running mean is
    /// kept as in the reference (`H *= n/(n+t); H += 2/(n+t) XᵀX`).
    pub fn add(&mut self, x: &[f32], tokens: usize) {
        let cols = self.h.nrows();
        assert_eq!(x.len(), tokens * cols);
        self.add_mat(faer::MatRef::from_row_major_slice(x, tokens, cols));
    }
}

/// Runs GPTQ on `w` (`rows × cols`, row-major; `[out, in]` as a Linear stores it) with the
/// Hessian `h` of its inputs.
pub fn gptq(
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &Mat<f64>,
    cfg: &GptqConfig,
) -> Result<GptqOutput, GptqError> {
    run(w, rows, cols, h, cfg, None)
}

/// GPTQ on a grid chosen beforehand: group `g` of row `r` takes `params[r * groups + g]` and
/// `offsets[r * groups + g]` (the value added after scaling, 0 but for a minimum), whatever
/// the error feedback does to its weights — static groups whose parameters come from
/// elsewhere (learned rounding's importance-weighted search). Without `cfg.group` (one grid
/// per row) `params` has one entry per row. The codes are the nearest points of those grids as
/// in [`gptq`].
pub fn gptq_on_grid(
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &Mat<f64>,
    cfg: &GptqConfig,
    params: &[QParams],
    offsets: &[f32],
) -> Result<GptqOutput, GptqError> {
    let group = cfg.group.unwrap_or(cols);
    // a row's grid is one group of the whole row
    let cfg = &GptqConfig {
        group: Some(group),
        ..*cfg
    };
    if group == 0 || !cols.is_multiple_of(group) {
        return Err(GptqError::Group { cols, group });
    }
    let n = rows * (cols / group);
    if params.len() != n || offsets.len() != n {
        return Err(GptqError::GridShape {
            got: params.len().min(offsets.len()),
            groups: n,
        });
    }
    let given = params
        .iter()
        .zip(offsets)
        .map(|(&p, &offset)| GroupGrid { p, offset })
        .collect();
    run(w, rows, cols, h, cfg, Some(given))
}

fn run(
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &Mat<f64>,
    cfg: &GptqConfig,
    given: Option<Vec<GroupGrid>>,
) -> Result<GptqOutput, GptqError> {
    if h.nrows() != cols || h.ncols() != cols {
        return Err(GptqError::HessianShape {
            got: h.nrows() * h.ncols(),
            cols,
        });
    }
    let group = cfg.group.unwrap_or(cols).max(1);
    if !cols.is_multiple_of(group) {
        return Err(GptqError::Group { cols, group });
    }
    let ngroups = cols / group;
    let mut wm = Mat::<f32>::from_fn(rows, cols, |r, c| w[r * cols + c]);
    let mut hm = h.clone();
    // dead inputs: no signal, weight irrelevant
    for c in 0..cols {
        if hm[(c, c)] == 0.0 {
            hm[(c, c)] = 1.0;
            for r in 0..rows {
                wm[(r, c)] = 0.0;
            }
        }
    }
    // the columns fitted at once: the group, or a ggml block of several groups
    let span = match cfg.grid {
        Grid::Int => group,
        Grid::Ggml(ty) => {
            let g = ty.grid().ok_or(GptqError::NoGrid(ty))?;
            if cfg.group != Some(g.group()) {
                return Err(GptqError::Group {
                    cols,
                    group: g.group(),
                });
            }
            let block = ty.block().0;
            if !cols.is_multiple_of(block) {
                return Err(GptqError::Group { cols, group: block });
            }
            block
        }
    };
    let fit_unit = |wm: &Mat<f32>, r: usize, c0: usize, out: &mut Vec<GroupGrid>| {
        let mut col = Vec::with_capacity(span);
        for c in c0..c0 + span {
            col.push(wm[(r, c)]);
        }
        cfg.grid.fit(cfg, &col, out)
    };
    let mut fitted = Vec::with_capacity(span / group);
    // static groups: parameters of the original column groups, before any permutation
    let static_params: Option<Vec<GroupGrid>> = given.or_else(|| {
        (cfg.group.is_some() && cfg.static_groups).then(|| {
            let mut v = Vec::with_capacity(rows * ngroups);
            for r in 0..rows {
                for u in 0..cols / span {
                    fit_unit(&wm, r, u * span, &mut fitted);
                    v.extend_from_slice(&fitted);
                }
            }
            v
        })
    });
    // act order: columns by decreasing diag(H) (stable for ties)
    let perm: Vec<usize> = if cfg.act_order {
        let mut p: Vec<usize> = (0..cols).collect();
        p.sort_by(|&a, &b| hm[(b, b)].total_cmp(&hm[(a, a)]));
        p
    } else {
        (0..cols).collect()
    };
    if cfg.act_order {
        wm = Mat::from_fn(rows, cols, |r, c| wm[(r, perm[c])]);
        hm = Mat::from_fn(cols, cols, |i, j| hm[(perm[i], perm[j])]);
    }
    // per-channel parameters are fitted once on the whole row
    let channel_params: Option<Vec<GroupGrid>> = cfg.group.is_none().then(|| {
        (0..rows)
            .map(|r| {
                fit_unit(&wm, r, 0, &mut fitted);
                fitted[0]
            })
            .collect()
    });

    // U: upper Cholesky factor of (H + λI)⁻¹, raising λ until both factorisations succeed
    let mean_diag = (0..cols).map(|c| hm[(c, c)]).sum::<f64>() / cols as f64;
    let mut percdamp = cfg.percdamp;
    let u: Mat<f32> = loop {
        let damp = percdamp * mean_diag;
        // one cols × cols f64 matrix at a time besides `hm` (each step drops its input): for
        // a 11008-wide down_proj each copy is 0.97 GB
        let attempt = (|| {
            let mut hd = hm.clone();
            for c in 0..cols {
                hd[(c, c)] += damp;
            }
            let l = hd.llt(Side::Lower).ok()?;
            drop(hd);
            let hinv = l.inverse();
            drop(l);
            let l2 = hinv.llt(Side::Lower).ok()?;
            drop(hinv);
            let lo = l2.L();
            Some(Mat::<f32>::from_fn(cols, cols, |i, j| {
                if j >= i {
                    lo[(j, i)] as f32
                } else {
                    0.0
                }
            }))
        })();
        // (faer's factorisations leave the vector registers dirty, as its products do)
        crate::linalg::clear_upper_everywhere();
        match attempt {
            Some(u) if (0..cols).all(|c| u[(c, c)].is_finite() && u[(c, c)] > 0.0) => break u,
            _ if percdamp < 1e3 => percdamp = if percdamp > 0.0 { percdamp * 2.0 } else { 0.01 },
            _ => return Err(GptqError::Indefinite(percdamp)),
        }
    };
    drop(hm);

    let mut codes_p = vec![0i8; rows * cols]; // permuted column order
    let mut pre_p = vec![0f32; rows * cols];
    let unit = GroupGrid {
        p: QParams {
            scale: 1.0,
            zero: 0,
        },
        offset: 0.0,
    };
    let mut params_p: Vec<GroupGrid> = vec![unit; rows * ngroups];
    let mut cur: Vec<GroupGrid> = vec![unit; rows];
    let block = cfg.block.max(1);
    let mut i1 = 0;
    while i1 < cols {
        let i2 = (i1 + block).min(cols);
        let count = i2 - i1;
        let mut w1 = Mat::<f32>::from_fn(rows, count, |r, c| wm[(r, i1 + c)]);
        let mut err1 = Mat::<f32>::zeros(rows, count);
        for i in 0..count {
            let c = i1 + i;
            // parameters for this column's group
            if let Some(sp) = &static_params {
                let g = perm[c] / group;
                for (r, p) in cur.iter_mut().enumerate() {
                    *p = sp[r * ngroups + g];
                }
            } else if let Some(cp) = &channel_params {
                cur.copy_from_slice(cp);
            } else if c % group == 0 {
                if c % span == 0 {
                    // fitted on W as it stands (in-block updates not yet written back), as
                    // the reference does
                    for r in 0..rows {
                        fit_unit(&wm, r, c, &mut fitted);
                        let at = r * ngroups + c / group;
                        params_p[at..at + fitted.len()].copy_from_slice(&fitted);
                    }
                }
                for (r, p) in cur.iter_mut().enumerate() {
                    *p = params_p[r * ngroups + c / group];
                }
            }
            let d = u[(c, c)];
            let mut e = vec![0f32; rows];
            for r in 0..rows {
                let x = w1[(r, i)];
                let (q, xq) = cfg.grid.quantize(cfg, cur[r], x);
                codes_p[r * cols + c] = q;
                pre_p[r * cols + c] = x;
                e[r] = (x - xq) / d;
            }
            for j in i..count {
                let uij = u[(c, i1 + j)];
                if uij != 0.0 {
                    for r in 0..rows {
                        w1[(r, j)] -= e[r] * uij;
                    }
                }
            }
            for r in 0..rows {
                err1[(r, i)] = e[r];
            }
        }
        for r in 0..rows {
            for i in 0..count {
                wm[(r, i1 + i)] = w1[(r, i)];
            }
        }
        if i2 < cols {
            let rest = wm.as_mut().submatrix_mut(0, i2, rows, cols - i2);
            matmul(
                rest,
                Accum::Add,
                err1.as_ref(),
                u.as_ref().submatrix(i1, i2, count, cols - i2),
                -1.0f32,
                Par::rayon(0),
            );
        }
        i1 = i2;
    }

    // back to the original column order
    let mut codes = vec![0i8; rows * cols];
    let mut pre_rounding = vec![0f32; rows * cols];
    let mut g_idx = vec![0u32; cols];
    for (c, &orig) in perm.iter().enumerate() {
        for r in 0..rows {
            codes[r * cols + orig] = codes_p[r * cols + c];
            pre_rounding[r * cols + orig] = pre_p[r * cols + c];
        }
        g_idx[orig] = if static_params.is_some() {
            (orig / group) as u32
        } else if channel_params.is_some() {
            0
        } else {
            (c / group) as u32
        };
    }
    let grids = match (static_params, channel_params) {
        (Some(sp), _) => sp,
        (_, Some(cp)) => cp,
        _ => params_p,
    };
    Ok(GptqOutput {
        codes,
        params: grids.iter().map(|g| g.p).collect(),
        offsets: grids.iter().map(|g| g.offset).collect(),
        g_idx,
        percdamp,
        pre_rounding,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{weight_matrix, Rng};

    /// Calibration inputs with correlated channels and a few loud ones.
    fn inputs(tokens: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        let k = 16; // latent factors → strong correlations
        let mix: Vec<f64> = (0..k * cols).map(|_| rng.normal()).collect();
        let mut x = vec![0f32; tokens * cols];
        for t in 0..tokens {
            let z: Vec<f64> = (0..k).map(|_| rng.normal()).collect();
            for c in 0..cols {
                let mut v = 0.3 * rng.normal();
                for f in 0..k {
                    v += z[f] * mix[f * cols + c];
                }
                if c % 37 == 3 {
                    v *= 8.0;
                }
                x[t * cols + c] = v as f32;
            }
        }
        x
    }

    /// ‖XWᵀ − XŴᵀ‖² / ‖XWᵀ‖²
    fn output_error(
        x: &[f32],
        tokens: usize,
        w: &[f32],
        wq: &[f32],
        rows: usize,
        cols: usize,
    ) -> f64 {
        let (mut num, mut den) = (0f64, 0f64);
        for t in 0..tokens {
            for r in 0..rows {
                let (mut a, mut b) = (0f64, 0f64);
                for c in 0..cols {
                    let xv = x[t * cols + c] as f64;
                    a += xv * w[r * cols + c] as f64;
                    b += xv * wq[r * cols + c] as f64;
                }
                num += (a - b) * (a - b);
                den += a * a;
            }
        }
        num / den
    }

    fn rtn_dequant(w: &[f32], cols: usize, cfg: &GptqConfig) -> Vec<f32> {
        let group = cfg.group.unwrap_or(cols);
        let q = rtn::quantize_rows(cfg.spec, w, cols, group, cfg.scale_dtype, None);
        let mut out = vec![0f32; w.len()];
        for (g, p) in q.params.iter().enumerate() {
            rtn::dequantize(
                *p,
                &q.codes[g * group..(g + 1) * group],
                &mut out[g * group..(g + 1) * group],
            );
        }
        out
    }

    fn hessian_of(x: &[f32], tokens: usize, cols: usize) -> Mat<f64> {
        let mut h = Hessian::new(cols);
        // in two parts, to exercise the running mean
        h.add(&x[..tokens / 2 * cols], tokens / 2);
        h.add(&x[tokens / 2 * cols..], tokens - tokens / 2);
        h.h
    }

    #[test]
    fn hessian_running_mean_equals_direct_sum() {
        let (t, c) = (100, 12);
        let x = inputs(t, c, 4);
        let h = hessian_of(&x, t, c);
        for i in 0..c {
            for j in 0..c {
                let direct: f64 = (0..t)
                    .map(|k| x[k * c + i] as f64 * x[k * c + j] as f64)
                    .sum::<f64>()
                    * 2.0
                    / t as f64;
                // each batch's product is f32 (as in the reference): ~1e-7 relative per term
                assert!(
                    (h[(i, j)] - direct).abs() <= 1e-5 * direct.abs().max(1.0),
                    "{i},{j}: {} vs {direct}",
                    h[(i, j)]
                );
            }
        }
    }

    #[test]
    fn gptq_beats_rtn_on_correlated_inputs() {
        let (rows, cols, tokens) = (48, 256, 1024);
        let w = weight_matrix(rows, cols, 0.02, 3);
        let x = inputs(tokens, cols, 9);
        let h = hessian_of(&x, tokens, cols);
        for (group, act_order, static_groups) in [
            (Some(64), false, false),
            (Some(64), true, false),
            (Some(64), true, true),
            (None, false, false),
            (Some(32), true, false),
        ] {
            for symmetric in [true, false] {
                let cfg = GptqConfig {
                    spec: IntSpec { bits: 4, symmetric },
                    group,
                    act_order,
                    static_groups,
                    ..Default::default()
                };
                let out = gptq(&w, rows, cols, &h, &cfg).unwrap();
                let wq = out.dequantize(rows, cols);
                assert!(wq.iter().all(|v| v.is_finite()));
                let (eg, er) = (
                    output_error(&x, tokens, &w, &wq, rows, cols),
                    output_error(&x, tokens, &w, &rtn_dequant(&w, cols, &cfg), rows, cols),
                );
                assert!(eg < 0.8 * er, "{cfg:?}: GPTQ {eg:.5} vs RTN {er:.5}");
                let groups = out.params.len() / rows;
                assert_eq!(groups, group.map_or(1, |g| cols / g));
                if static_groups || !act_order {
                    assert!(out.g_idx.windows(2).all(|p| p[0] <= p[1]), "monotone g_idx");
                }
                // every group holds exactly `group` columns
                if let Some(g) = group {
                    let mut count = vec![0; groups];
                    out.g_idx.iter().for_each(|&i| count[i as usize] += 1);
                    assert!(count.iter().all(|&n| n == g));
                }
            }
        }
    }

    /// On a grid given beforehand: the groups keep the given parameters; with uncorrelated
    /// inputs of equal power (H = I: no error feedback) the codes are round to nearest on that
    /// grid; with correlated inputs the feedback lowers the layer's output error below it; a
    /// grid of the wrong size is refused.
    #[test]
    fn gptq_on_a_given_grid() {
        let (rows, cols, tokens, group) = (24, 128, 512, 32);
        let w = weight_matrix(rows, cols, 0.02, 5);
        for symmetric in [true, false] {
            let cfg = GptqConfig {
                spec: IntSpec { bits: 3, symmetric },
                group: Some(group),
                ..Default::default()
            };
            // each group's grid fitted to 80 % of its range: not what GPTQ would fit
            let shrunk: Vec<f32> = w.iter().map(|v| 0.8 * v).collect();
            let q = rtn::quantize_rows(cfg.spec, &shrunk, cols, group, cfg.scale_dtype, None);
            let offsets = vec![0f32; q.params.len()];
            let nearest: Vec<f32> = w
                .chunks(group)
                .zip(&q.params)
                .flat_map(|(x, &p)| {
                    let mut c = vec![0i8; x.len()];
                    rtn::quantize(cfg.spec, p, x, &mut c);
                    c.into_iter()
                        .map(move |k| (k as i32 - p.zero) as f32 * p.scale)
                })
                .collect();
            let eye = Mat::<f64>::identity(cols, cols);
            let out = gptq_on_grid(&w, rows, cols, &eye, &cfg, &q.params, &offsets).unwrap();
            assert_eq!(out.params, q.params);
            assert_eq!(out.dequantize(rows, cols), nearest);
            let x = inputs(tokens, cols, 6);
            let h = hessian_of(&x, tokens, cols);
            let out = gptq_on_grid(&w, rows, cols, &h, &cfg, &q.params, &offsets).unwrap();
            assert_eq!(out.params, q.params);
            let (eg, er) = (
                output_error(&x, tokens, &w, &out.dequantize(rows, cols), rows, cols),
                output_error(&x, tokens, &w, &nearest, rows, cols),
            );
            assert!(eg < 0.8 * er, "symmetric {symmetric}: {eg} vs {er}");
            // one grid per row (no groups): the same as one group of the whole row
            let per_row = rtn::quantize_rows(cfg.spec, &shrunk, cols, cols, cfg.scale_dtype, None);
            let zeros = vec![0f32; rows];
            let row_cfg = GptqConfig { group: None, ..cfg };
            let a = gptq_on_grid(&w, rows, cols, &h, &row_cfg, &per_row.params, &zeros).unwrap();
            let whole = GptqConfig {
                group: Some(cols),
                ..cfg
            };
            let b = gptq_on_grid(&w, rows, cols, &h, &whole, &per_row.params, &zeros).unwrap();
            assert_eq!(a, b);
            assert_eq!(a.params, per_row.params);
            let short = &q.params[1..];
            assert_eq!(
                gptq_on_grid(&w, rows, cols, &h, &cfg, short, &offsets[1..]),
                Err(GptqError::GridShape {
                    got: short.len(),
                    groups: q.params.len()
                })
            );
        }
    }

    /// On ggml's grids (the legacy types, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS): the packed blocks decode (with
    /// ggml's dequantizer) to GPTQ's values, the legacy blocks' parameters are f16, and the layer
    /// output error is well below llama.cpp's own round-to-nearest for the type.
    #[test]
    fn gptq_on_ggml_grids_beats_ggml_rtn() {
        use crate::ggml::{dequantize_row, pack_codes_row, quantize_row};
        let (rows, cols, tokens) = (32, 512, 1024);
        let w = weight_matrix(rows, cols, 0.02, 11);
        let x = inputs(tokens, cols, 12);
        let h = hessian_of(&x, tokens, cols);
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
            GgmlType::IQ4_NL,
            GgmlType::IQ4_XS,
        ] {
            let grid = Grid::Ggml(ty);
            let group = ty.grid().unwrap().group();
            for act_order in [false, true] {
                let cfg = GptqConfig {
                    group: Some(group),
                    grid,
                    act_order,
                    static_groups: act_order,
                    scale_dtype: DType::F16,
                    ..Default::default()
                };
                let out = gptq(&w, rows, cols, &h, &cfg).unwrap();
                let wq = out.dequantize(rows, cols);
                let groups = cols / group;
                let rb = ty.row_bytes(cols);
                let (mut packed, mut rtn) = (vec![0f32; rows * cols], vec![0f32; rows * cols]);
                let mut bytes = vec![0u8; rb];
                for r in 0..rows {
                    let d: Vec<f32> = out.params[r * groups..(r + 1) * groups]
                        .iter()
                        .map(|p| p.scale)
                        .collect();
                    if group == ty.block().0 {
                        assert!(d.iter().all(|&v| half::f16::from_f32(v).to_f32() == v));
                    }
                    pack_codes_row(
                        ty,
                        &out.codes[r * cols..(r + 1) * cols],
                        &d,
                        &out.offsets[r * groups..(r + 1) * groups],
                        &mut bytes,
                    );
                    dequantize_row(ty, &bytes, &mut packed[r * cols..(r + 1) * cols]);
                    quantize_row(ty, &w[r * cols..(r + 1) * cols], &mut bytes);
                    dequantize_row(ty, &bytes, &mut rtn[r * cols..(r + 1) * cols]);
                }
                assert_eq!(packed, wq, "{ty}: packed blocks decode to GPTQ's values");
                let (eg, er) = (
                    output_error(&x, tokens, &w, &wq, rows, cols),
                    output_error(&x, tokens, &w, &rtn, rows, cols),
                );
                assert!(
                    eg < 0.5 * er,
                    "{ty} act_order={act_order}: GPTQ {eg:.6} vs RTN {er:.6}"
                );
            }
        }
    }

    /// The clipping search shrinks ranges where outliers waste levels: with H = I (GPTQ is then
    /// round-to-nearest on its grid) the weight error drops on heavy-tailed weights, and some
    /// groups end up clipped.
    #[test]
    fn mse_clip_lowers_weight_error() {
        let (rows, cols) = (32, 256);
        let w = weight_matrix(rows, cols, 0.02, 21);
        let mut h = Mat::<f64>::zeros(cols, cols);
        for c in 0..cols {
            h[(c, c)] = 1.0;
        }
        let run = |mse_clip| {
            let cfg = GptqConfig {
                group: Some(64),
                mse_clip,
                ..Default::default()
            };
            let out = gptq(&w, rows, cols, &h, &cfg).unwrap();
            let wq = out.dequantize(rows, cols);
            let e: f64 = w
                .iter()
                .zip(&wq)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum();
            (e, out.params)
        };
        let ((e0, p0), (e1, p1)) = (run(false), run(true));
        assert!(e1 < 0.97 * e0, "clipped {e1} vs plain {e0}");
        let smaller = p0
            .iter()
            .zip(&p1)
            .filter(|(a, b)| b.scale < a.scale)
            .count();
        assert!(smaller > 0 && p0.iter().zip(&p1).all(|(a, b)| b.scale <= a.scale));
    }

    #[test]
    fn act_order_permutes_groups() {
        let (rows, cols, tokens) = (8, 128, 256);
        let w = weight_matrix(rows, cols, 0.02, 1);
        let x = inputs(tokens, cols, 2);
        let h = hessian_of(&x, tokens, cols);
        let cfg = GptqConfig {
            group: Some(32),
            act_order: true,
            ..Default::default()
        };
        let out = gptq(&w, rows, cols, &h, &cfg).unwrap();
        // the loudest input column is quantized first, so it belongs to group 0
        let loudest = (0..cols)
            .max_by(|&a, &b| h[(a, a)].total_cmp(&h[(b, b)]))
            .unwrap();
        assert_eq!(out.g_idx[loudest], 0);
        assert!(
            out.g_idx.windows(2).any(|p| p[0] > p[1]),
            "not monotone without static groups"
        );
    }

    #[test]
    fn rank_deficient_and_dead_inputs_stay_finite() {
        let (rows, cols, tokens) = (16, 64, 20); // fewer tokens than columns: singular H
        let w = weight_matrix(rows, cols, 0.02, 5);
        let mut x = inputs(tokens, cols, 6);
        for t in 0..tokens {
            x[t * cols + 7] = 0.0; // dead input
            x[t * cols + 9] = x[t * cols + 8]; // duplicate input
        }
        let h = hessian_of(&x, tokens, cols);
        for bits in [2, 3, 4, 8] {
            let cfg = GptqConfig {
                spec: IntSpec {
                    bits,
                    symmetric: true,
                },
                group: Some(32),
                percdamp: 0.0,
                ..Default::default()
            };
            let out = gptq(&w, rows, cols, &h, &cfg).unwrap();
            let wq = out.dequantize(rows, cols);
            assert!(wq.iter().all(|v| v.is_finite()), "{bits} bits");
            assert!(out.percdamp > 0.0, "damping raised from 0");
            for r in 0..rows {
                assert_eq!(wq[r * cols + 7], 0.0, "dead input's weight is zeroed");
            }
        }
    }
}
