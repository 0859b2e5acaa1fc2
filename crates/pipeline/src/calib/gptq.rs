//! GPTQ as a calibration method: each linear's codes from the Hessian of its inputs
//! ([`qs_numeric::gptq`]), on compressed-tensors integer grids (with act-order, static or
//! activation-ordered groups, MSE clipping) or on a ggml type's block grid.

use super::{CodeSet, LinearJob, Method};
use crate::config::QuantizeConfig;
use crate::error::{Error, Result};
use qs_numeric::gptq::{gptq, gptq_on_grid, GptqConfig, GptqOutput, Grid};
use qs_numeric::layout::CodeGrid;
use qs_numeric::Scheme;

#[derive(Debug)]
pub struct Gptq;

impl Method for Gptq {
    fn name(&self) -> &'static str {
        "gptq"
    }

    fn check_options(&self, cfg: &QuantizeConfig) -> Result<()> {
        if !(cfg.damp > 0.0 && cfg.damp.is_finite()) {
            return Err(Error::Config(format!(
                "--damp {}: the Hessian damping must be positive",
                cfg.damp
            )));
        }
        Ok(())
    }

    fn supports(
        &self,
        scheme: &Scheme,
        grid: Option<&CodeGrid>,
    ) -> std::result::Result<(), String> {
        match grid {
            Some(CodeGrid::Int { .. }) => Ok(()),
            Some(CodeGrid::Ggml(t)) if t.grid().is_some() => Ok(()),
            Some(CodeGrid::Ggml(t)) => Err(format!("{t} has no code grid")),
            None => Err(format!("{} takes no chosen codes", scheme.label())),
        }
    }

    fn quantize(&self, job: &LinearJob<'_>) -> Result<CodeSet> {
        let out = run(job)?;
        Ok(CodeSet {
            codes: out.codes,
            params: out.params,
            offsets: out.offsets,
            g_idx: out.g_idx,
        })
    }
}

/// GPTQ on one linear, with everything it computed (learned rounding starts from its
/// pre-rounding weights).
pub(crate) fn run(job: &LinearJob<'_>) -> Result<GptqOutput> {
    run_on(job, None)
}

/// [`run`], on the given grid when there is one: each group's parameters and offsets (row by
/// row, `rows × groups`), fixed, instead of GPTQ's own fit as it reaches the group.
pub(crate) fn run_on(
    job: &LinearJob<'_>,
    given: Option<(&[qs_numeric::rtn::QParams], &[f32])>,
) -> Result<GptqOutput> {
    let cfg = job.cfg;
    let gc = match job.grid {
        CodeGrid::Int {
            spec,
            group,
            scale_dtype,
            stores_g_idx,
        } => GptqConfig {
            spec,
            group,
            block: 128,
            percdamp: cfg.damp,
            act_order: cfg.act_order,
            // act-order: static groups (the identity grouping, which every loader reads
            // without a g_idx) unless the layout stores a g_idx and `--act-order group`
            // asks for groups in activation order
            static_groups: if stores_g_idx {
                !cfg.act_order_group
            } else {
                cfg.act_order
            },
            scale_dtype,
            grid: Grid::Int,
            mse_clip: cfg.mse_clip,
        },
        CodeGrid::Ggml(ty) => {
            let grid = ty
                .grid()
                .ok_or_else(|| Error::Config(format!("{ty} has no code grid")))?;
            GptqConfig {
                spec: grid.spec(),
                group: Some(grid.group()),
                block: 128,
                percdamp: cfg.damp,
                act_order: cfg.act_order,
                static_groups: cfg.act_order,
                scale_dtype: qs_numeric::DType::F16,
                grid: Grid::Ggml(ty),
                mse_clip: false,
            }
        }
    };
    let hessian = job.stats.hessian.ok_or_else(|| Error::Tensor {
        file: job.file.to_path_buf(),
        tensor: job.name.to_string(),
        msg: "GPTQ needs the Hessian of the linear's inputs (none was computed)".into(),
    })?;
    match given {
        Some((params, offsets)) => {
            gptq_on_grid(job.w, job.rows, job.cols, &hessian.h, &gc, params, offsets)
        }
        None => gptq(job.w, job.rows, job.cols, &hessian.h, &gc),
    }
    .map_err(|err| Error::Gptq {
        file: job.file.to_path_buf(),
        tensor: job.name.to_string(),
        err,
    })
}
