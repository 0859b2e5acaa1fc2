//! Property tests over every registered layout and ggml block type (issue 9): encode random
//! finite weights, adversarial ones included (zeros, ±0, constant rows, one outlier per row,
//! subnormals, magnitudes at the storage types' limits), decode, and check
//! - the encoded pieces fill exactly the slots' byte ranges and decode to the tensor's shape;
//! - every decoded value, and every stored scale, is finite;
//! - the error is within a known bound: float layouts exact on values they can represent (and
//!   rounded to nearest otherwise), integer layouts within half a step of the stored scale (plus
//!   what rounding the scale to its dtype can move the grid's end by), FP8 within half an ulp of
//!   the code's precision, legacy ggml types within one step of the block scale.
//!
//! Deterministic: a fixed seed (set `PROPTEST_RNG_SEED` for another one, `PROPTEST_CASES` for
//! more cases), no failure files written.

use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use qs_numeric::ggml::{GgmlType, CODECS};
use qs_numeric::layout::{
    check_written, AutoAwq, AutoGptq, FloatLayout, FloatQuantized, GgmlBlocks, PackQuantized,
};
use qs_numeric::rtn::IntSpec;
use qs_numeric::{DType, Granularity, Scheme, TensorStats};

/// `cases` cases unless PROPTEST_CASES says otherwise; a fixed seed unless PROPTEST_RNG_SEED
/// gives one.
fn config(cases: u32) -> Config {
    let mut c = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = cases;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        c.rng_seed = RngSeed::Fixed(0x5eed_0009);
    }
    c.failure_persistence = None;
    c
}

/// Largest finite f16, the scale type of the ggml blocks and of the GPTQ layout.
const F16_MAX: f32 = 65504.0;

/// One finite value, |v| <= limit: mostly weights-like, often adversarial.
fn value(limit: f32) -> impl Strategy<Value = f32> {
    let scaled = (
        -1.0f32..1.0,
        prop::sample::select(vec![1e-3f32, 0.02, 1.0, 300.0]),
    )
        .prop_map(move |(u, s)| (u * s).clamp(-limit, limit));
    let huge = (0.5f32..=1.0, any::<bool>()).prop_map(move |(u, neg)| {
        let v = u * limit;
        if neg {
            -v
        } else {
            v
        }
    });
    let subnormal = (1u32..0x0080_0000, any::<bool>())
        .prop_map(|(m, neg)| f32::from_bits(m | if neg { 0x8000_0000 } else { 0 }));
    let edges = prop::sample::select(vec![
        0.0f32,
        -0.0,
        F16_MAX,
        -F16_MAX,
        65519.0, // the largest value that still rounds to a finite f16
        f16::MIN_POSITIVE.to_f32(),
        f16::from_bits(1).to_f32(), // smallest f16 subnormal
        bf16::MAX.to_f32(),
        -bf16::MAX.to_f32(),
        f32::MAX,
        f32::MIN_POSITIVE,
    ])
    .prop_map(move |v| v.clamp(-limit, limit));
    prop_oneof![6 => scaled, 1 => huge, 1 => subnormal, 1 => edges]
}

/// A `rows × cols` matrix, values |v| <= limit, in one of four shapes: free, constant rows,
/// all zero, or small values with one outlier per row.
fn matrix_rc(rows: usize, cols: usize, limit: f32) -> impl Strategy<Value = Vec<f32>> {
    (
        0u8..4,
        prop::collection::vec(value(limit), rows * cols),
        prop::collection::vec(0..cols, rows),
    )
        .prop_map(move |(kind, mut x, outliers)| {
            for (r, row) in x.chunks_exact_mut(cols).enumerate() {
                match kind {
                    1 => {
                        let v = row[0];
                        row.fill(v);
                    }
                    2 => row.fill(0.0),
                    3 => {
                        let big = row[outliers[r]];
                        row.iter_mut().for_each(|v| *v = v.clamp(-1e-2, 1e-2));
                        row[outliers[r]] = big;
                    }
                    _ => {}
                }
            }
            x
        })
}

/// `(rows, cols, values)`: 1..=max_rows rows of 1..=max_blocks blocks of `block` values.
fn matrix(
    block: usize,
    max_blocks: usize,
    max_rows: usize,
    limit: f32,
) -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (1..=max_rows, 1..=max_blocks).prop_flat_map(move |(rows, nb)| {
        let cols = nb * block;
        matrix_rc(rows, cols, limit).prop_map(move |x| (rows, cols, x))
    })
}

/// Encodes the whole tensor in one chunk, checks each piece fills its slot's range, decodes.
/// Returns the slots' bytes and the decoded values.
fn round_trip(s: &Scheme, rows: usize, cols: usize, x: &[f32]) -> (Vec<Vec<u8>>, Vec<f32>) {
    let shape = [rows, cols];
    s.check(&shape)
        .expect("the generated shape suits the layout");
    let (mn, mx) = x
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let stats = TensorStats { min: mn, max: mx };
    let slots = s.slots(&shape);
    let mut bufs: Vec<Vec<u8>> = slots.iter().map(|sl| vec![0u8; sl.nbytes]).collect();
    let mut filled = vec![false; slots.len()];
    for p in s.encode(&shape, 0, x, stats).pieces {
        let range = s.slot_range(p.slot, &shape, 0, rows);
        assert_eq!(
            p.offset..p.offset + p.bytes.len(),
            range,
            "{} slot {}",
            s.label(),
            p.slot
        );
        bufs[p.slot][range].copy_from_slice(&p.bytes);
        filled[p.slot] = true;
    }
    assert!(
        filled.iter().all(|&f| f),
        "{}: a slot was not written",
        s.label()
    );
    let parts: Vec<&[u8]> = bufs.iter().map(|b| b.as_slice()).collect();
    let mut y = vec![f32::NAN; rows * cols];
    s.decode(&shape, 0, rows, &parts, &mut y);
    (bufs, y)
}

fn decode_floats(dt: DType, b: &[u8]) -> Vec<f32> {
    match dt {
        DType::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        DType::F16 => b
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::BF16 => b
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        d => panic!("{d} is not a scale dtype"),
    }
}

/// Relative precision (unit roundoff) of a scale dtype, and its largest absolute rounding error
/// among subnormals (half the smallest subnormal: f32 2^-150, rounded up to 2^-149; f16 2^-25;
/// bf16 2^-134).
fn scale_precision(dt: DType) -> (f32, f32) {
    match dt {
        DType::F32 => (2f32.powi(-24), f32::from_bits(1)),
        DType::F16 => (2f32.powi(-11), 2f32.powi(-25)),
        DType::BF16 => (2f32.powi(-9), f32::from_bits(1 << 15)),
        d => panic!("{d} is not a scale dtype"),
    }
}

// ---------------------------------------------------------------- float layouts

/// A value the dtype represents exactly (any finite bit pattern of it).
fn representable(dt: DType) -> BoxedStrategy<f32> {
    match dt {
        DType::F32 => any::<u32>()
            .prop_map(f32::from_bits)
            .prop_filter("finite", |v| v.is_finite())
            .boxed(),
        DType::F16 => any::<u16>()
            .prop_map(|b| f16::from_bits(b).to_f32())
            .prop_filter("finite", |v| v.is_finite())
            .boxed(),
        DType::BF16 => any::<u16>()
            .prop_map(|b| bf16::from_bits(b).to_f32())
            .prop_filter("finite", |v| v.is_finite())
            .boxed(),
        d => panic!("{d}"),
    }
}

fn float_layout(dt: DType, clamp: bool) -> Scheme {
    Scheme::Float(FloatLayout { dtype: dt, clamp })
}

proptest! {
    #![proptest_config(config(64))]

    /// Values a float layout can represent come back bit for bit (signed zeros, subnormals and
    /// the type's extremes included).
    #[test]
    fn float_layouts_store_representable_values_exactly(
        (dt, rows, cols, x) in (
            prop::sample::select(vec![DType::F32, DType::F16, DType::BF16]),
            1usize..4,
            1usize..40,
        )
            .prop_flat_map(|(dt, rows, cols)| {
                (Just(dt), Just(rows), Just(cols), prop::collection::vec(representable(dt), rows * cols))
            }),
    ) {
        for clamp in [false, true] {
            let (_, y) = round_trip(&float_layout(dt, clamp), rows, cols, &x);
            let xb: Vec<u32> = x.iter().map(|v| v.to_bits()).collect();
            let yb: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
            prop_assert_eq!(xb, yb, "{} clamp {}", dt, clamp);
        }
    }

    /// Any finite value, clamped: finite, and what `half` rounds the saturated value to.
    #[test]
    fn clamped_float_layouts_round_to_nearest_and_stay_finite(
        dt in prop::sample::select(vec![DType::F16, DType::BF16]),
        (rows, cols, x) in matrix(1, 40, 3, f32::MAX),
    ) {
        let (_, y) = round_trip(&float_layout(dt, true), rows, cols, &x);
        for (a, b) in x.iter().zip(&y) {
            let want = match dt {
                DType::F16 => f16::from_f32(a.clamp(-F16_MAX, F16_MAX)).to_f32(),
                _ => bf16::from_f32(a.clamp(-bf16::MAX.to_f32(), bf16::MAX.to_f32())).to_f32(),
            };
            prop_assert!(b.is_finite(), "{}: {} -> {}", dt, a, b);
            prop_assert_eq!(b.to_bits(), want.to_bits(), "{}: {}", dt, a);
        }
    }
}

// ---------------------------------------------------------------- ggml block types

/// Byte offsets of the f16 scale fields (d, dmin, m) in one block, from ggml's block structs
/// (ggml-common.h); `None` for the float types.
fn block_scale_offsets(t: GgmlType) -> Option<&'static [usize]> {
    use GgmlType::*;
    Some(match t {
        Q4_0 | Q5_0 | Q8_0 | IQ4_NL | IQ4_XS => &[0],
        Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
        Q2_K => &[80, 82], // scales[16], qs[64], d, dmin
        Q3_K => &[108],    // hmask[32], qs[64], scales[12], d
        Q6_K => &[208],    // ql[128], qh[64], scales[16], d
        MXFP4 => &[],      // e (E8M0: a power of two, always finite), qs[16]
        F32 | F16 | BF16 => return None,
        t => panic!("no block layout known for {t}: add it here"),
    })
}

/// Checks `t`'s blocks for `x` (`rows × cols`): slot sizes, finite stored scales, finite values.
/// Returns the decoded values.
fn check_ggml_finite(
    t: GgmlType,
    rows: usize,
    cols: usize,
    x: &[f32],
) -> Result<Vec<f32>, TestCaseError> {
    let s = Scheme::Ggml(GgmlBlocks(t));
    let (bufs, y) = round_trip(&s, rows, cols, x);
    prop_assert_eq!(bufs[0].len(), rows * t.row_bytes(cols));
    if let Some(offs) = block_scale_offsets(t) {
        let bb = t.block().1;
        for (i, b) in bufs[0].chunks_exact(bb).enumerate() {
            for &o in offs {
                let v = f16::from_le_bytes([b[o], b[o + 1]]);
                prop_assert!(
                    v.is_finite(),
                    "{}: block {} stores a scale {} at byte {}",
                    t,
                    i,
                    v,
                    o
                );
            }
        }
    }
    for (i, v) in y.iter().enumerate() {
        prop_assert!(
            v.is_finite(),
            "{}: value {} ({}) decodes to {}",
            t,
            i,
            x[i],
            v
        );
    }
    Ok(y)
}

/// A registered ggml type with a matrix its blocks fit, values |v| <= limit.
fn ggml_case(limit: f32) -> impl Strategy<Value = (GgmlType, (usize, usize, Vec<f32>))> {
    prop::sample::select(CODECS.iter().map(|c| c.ty()).collect::<Vec<_>>()).prop_flat_map(
        move |t| {
            let bs = t.block().0;
            let max_blocks = if bs == 1 {
                64
            } else if bs == 32 {
                4
            } else {
                2
            };
            (Just(t), matrix(bs, max_blocks, 2, limit))
        },
    )
}

proptest! {
    #![proptest_config(config(256))]

    /// Every registered ggml type: finite stored scales and finite values for finite input.
    // Within the largest f16 no block scale can overflow; beyond it,
    // `ggml_types_full_range_refused_or_finite` below.
    #[test]
    fn ggml_types_store_finite_scales_and_values((t, (rows, cols, x)) in ggml_case(F16_MAX)) {
        let y = check_ggml_finite(t, rows, cols, &x)?;
        // all-zero input decodes to exact zeros
        if x.iter().all(|&v| v == 0.0) {
            prop_assert!(y.iter().all(|&v| v == 0.0), "{}: zeros decode to {:?}", t, y);
        }
    }

    /// The legacy types' known bound: each value within one step of its block's scale (Q8_0
    /// half of one), the f16 rounding of the stored scale and offset aside; the float types
    /// round to nearest.
    #[test]
    fn legacy_ggml_types_are_within_a_step(
        t in prop::sample::select(vec![GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0]),
        (rows, cols, x) in matrix(32, 4, 2, F16_MAX),
    ) {
        let (_, y) = round_trip(&Scheme::Ggml(GgmlBlocks(t)), rows, cols, &x);
        for (bx, by) in x.chunks(32).zip(y.chunks(32)) {
            let amax = bx.iter().fold(0f32, |a, v| a.max(v.abs()));
            let (mn, mx) = bx.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            // ggml's scales: d = max/-8 (Q4_0), max/-16 (Q5_0), amax/127 (Q8_0, error d/2),
            // (max-min)/15 and /31 with the minimum as offset (Q4_1, Q5_1, error d/2)
            let step = match t {
                GgmlType::Q4_0 => amax / 8.0,
                GgmlType::Q5_0 => amax / 16.0,
                GgmlType::Q8_0 => amax / 127.0 / 2.0,
                GgmlType::Q4_1 => (mx - mn) / 15.0 / 2.0,
                _ => (mx - mn) / 31.0 / 2.0,
            };
            // f16 rounding of the scale (relative 2^-11, absolute 2^-25 when subnormal) moves a
            // code of magnitude up to 128 by that much (at most 2·amax·2^-11 for a code times
            // its scale), the offset's (the minimum's) rounding by |min|·2^-11 + 2^-25
            let codes = 128.0;
            let slack = amax * 2f32.powi(-9) + (codes + 1.0) * 2f32.powi(-25);
            for (a, b) in bx.iter().zip(by) {
                prop_assert!((a - b).abs() <= step + slack, "{}: {} -> {} (step {}, block amax {})", t, a, b, step, amax);
            }
        }
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// Over the whole f32 range, finite values either quantize to finite blocks (stored scales
    /// included) or the writer's check (`layout::check_written`, which `quantize` runs on every
    /// chunk and turns into an error naming tensor, row and value) refuses them: no silent
    /// non-finite block. (ggml's own quantizers overflow f16 block scales the same way, e.g.
    /// Q4_0's d = max / -8 of 1e6; we refuse rather than write them.)
    #[test]
    fn ggml_types_full_range_refused_or_finite((t, (rows, cols, x)) in ggml_case(f32::MAX)) {
        let (_, y) = round_trip(&Scheme::Ggml(GgmlBlocks(t)), rows, cols, &x);
        if check_written(None, &x, &y, cols).is_ok() {
            check_ggml_finite(t, rows, cols, &x)?;
        }
    }
}

// ---------------------------------------------------------------- integer layouts

/// The stored scale of each value of a `rows × cols` tensor, read back from the scale slot.
fn int_scales(p: &PackQuantized, rows: usize, cols: usize, scale_bytes: &[u8]) -> Vec<f32> {
    let s = decode_floats(p.scale_dtype, scale_bytes);
    (0..rows * cols)
        .map(|i| {
            let (r, c) = (i / cols, i % cols);
            match p.granularity {
                Granularity::Tensor => s[0],
                Granularity::Channel => s[r],
                Granularity::Group(g) => s[r * (cols / g) + c / g],
                Granularity::Block(..) => unreachable!("no block scales for integers"),
            }
        })
        .collect()
}

/// Largest magnitude an integer layout with scales of `dt` is tested with: one that cannot
/// overflow the scale (f16: 65504 ≥ amax / 1.5, the int2 scale), or far from f32's limit.
fn int_limit(dt: DType) -> f32 {
    match dt {
        DType::F16 => F16_MAX,
        _ => 1e37,
    }
}

fn int_scheme() -> impl Strategy<Value = PackQuantized> {
    (
        prop::sample::select(vec![2u32, 3, 4, 8]),
        any::<bool>(),
        prop::sample::select(vec![
            Granularity::Tensor,
            Granularity::Channel,
            Granularity::Group(32),
        ]),
        prop::sample::select(vec![DType::F32, DType::F16, DType::BF16]),
    )
        .prop_map(
            |(bits, symmetric, granularity, scale_dtype)| PackQuantized {
                spec: IntSpec { bits, symmetric },
                granularity,
                scale_dtype,
                g_idx: false,
            },
        )
}

/// Half a step of the stored scale `s`, plus how far rounding the scale to its dtype can move
/// the grid's far end (the codes reach at most `levels` steps from zero).
fn int_bound(s: f32, levels: f32, dt: DType) -> f32 {
    let (u, tiny) = scale_precision(dt);
    s * (0.5 + levels * u) + levels * tiny + f32::from_bits(1)
}

proptest! {
    #![proptest_config(config(256))]

    /// compressed-tensors integers: finite scales and values, each value within half a step
    /// of its group's stored scale.
    #[test]
    fn int_layouts_are_within_half_a_step(
        (p, (rows, cols, x)) in int_scheme().prop_flat_map(|p| (Just(p), matrix(32, 3, 3, int_limit(p.scale_dtype)))),
    ) {
        let s = Scheme::Int(p);
        let (bufs, y) = round_trip(&s, rows, cols, &x);
        let scales = int_scales(&p, rows, cols, &bufs[1]);
        let levels = (p.spec.qmax() - p.spec.qmin() + 1) as f32;
        for i in 0..x.len() {
            prop_assert!(scales[i].is_finite() && scales[i] > 0.0, "{}: scale {}", s.label(), scales[i]);
            prop_assert!(y[i].is_finite(), "{}: {} -> {}", s.label(), x[i], y[i]);
            let bound = int_bound(scales[i], levels, p.scale_dtype);
            prop_assert!((x[i] - y[i]).abs() <= bound, "{}: {} -> {} (scale {}, bound {})", s.label(), x[i], y[i], scales[i], bound);
        }
    }

    /// AutoGPTQ v1 (f16 scales stored per group and output row, transposed): the same bound.
    #[test]
    fn gptq_layout_is_within_half_a_step(
        bits in prop::sample::select(vec![2u32, 4, 8]),
        (cols, x) in (1usize..=3).prop_flat_map(|nb| matrix_rc(16, nb * 32, F16_MAX).prop_map(move |x| (nb * 32, x))),
    ) {
        // 16 output rows: a multiple of what one int32 packs for every bit width
        let rows = 16;
        let group = 32;
        let s = Scheme::Gptq(AutoGptq { bits, group });
        let (bufs, y) = round_trip(&s, rows, cols, &x);
        let sc = decode_floats(DType::F16, &bufs[2]);
        let levels = (1u32 << bits) as f32;
        for i in 0..x.len() {
            let (r, c) = (i / cols, i % cols);
            let scale = sc[(c / group) * rows + r];
            prop_assert!(scale.is_finite() && scale > 0.0, "{}: scale {}", s.label(), scale);
            prop_assert!(y[i].is_finite(), "{}: {} -> {}", s.label(), x[i], y[i]);
            let bound = int_bound(scale, levels, DType::F16);
            prop_assert!((x[i] - y[i]).abs() <= bound, "{}: {} -> {} (scale {})", s.label(), x[i], y[i], scale);
        }
    }

    /// AutoAWQ GEMM (f16 scales and zero points per group and output row, transposed): within
    /// half a step where the group spans zero; a group all of one sign clips at its far end as
    /// AutoAWQ's rule does (its range is not widened to include zero), so there only within the
    /// group's largest magnitude.
    #[test]
    fn awq_layout_is_within_half_a_step(
        group in prop::sample::select(vec![32usize, 64]),
        (cols, x) in (1usize..=2).prop_flat_map(|nb| matrix_rc(16, nb * 64, F16_MAX).prop_map(move |x| (nb * 64, x))),
    ) {
        let rows = 16;
        let s = Scheme::Awq(AutoAwq { group });
        let (bufs, y) = round_trip(&s, rows, cols, &x);
        let sc = decode_floats(DType::F16, &bufs[2]);
        for i in 0..x.len() {
            let (r, c) = (i / cols, i % cols);
            let scale = sc[(c / group) * rows + r];
            prop_assert!(scale.is_finite() && scale > 0.0, "{}: scale {}", s.label(), scale);
            prop_assert!(y[i].is_finite(), "{}: {} -> {}", s.label(), x[i], y[i]);
            let g = &x[r * cols + c / group * group..][..group];
            let (mn, mx) = g.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
            let mut bound = int_bound(scale, 16.0, DType::F16);
            if mn > 0.0 || mx < 0.0 {
                bound += mn.abs().max(mx.abs());
            }
            prop_assert!((x[i] - y[i]).abs() <= bound, "{}: {} -> {} (scale {})", s.label(), x[i], y[i], scale);
        }
    }
}

// ---------------------------------------------------------------- FP8

fn fp8_scheme() -> impl Strategy<Value = FloatQuantized> {
    (
        prop::sample::select(vec![DType::F8E4M3, DType::F8E5M2]),
        prop::sample::select(vec![
            Granularity::Tensor,
            Granularity::Channel,
            Granularity::Group(32),
            Granularity::Block(2, 32),
        ]),
        prop::sample::select(vec![DType::F32, DType::F16, DType::BF16]),
    )
        .prop_map(|(format, granularity, scale_dtype)| FloatQuantized {
            format,
            granularity,
            scale_dtype,
        })
}

fn fp8_scales(p: &FloatQuantized, rows: usize, cols: usize, scale_bytes: &[u8]) -> Vec<f32> {
    let s = decode_floats(p.scale_dtype, scale_bytes);
    (0..rows * cols)
        .map(|i| {
            let (r, c) = (i / cols, i % cols);
            match p.granularity {
                Granularity::Tensor => s[0],
                Granularity::Channel => s[r],
                Granularity::Group(g) => s[r * (cols / g) + c / g],
                Granularity::Block(br, bc) => s[(r / br) * cols.div_ceil(bc) + c / bc],
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(config(256))]

    /// compressed-tensors FP8: finite scales and values; each value within half an ulp of
    /// the format (3 mantissa bits for E4M3, 2 for E5M2) at its scale, or of the smallest
    /// subnormal step, plus the scale's own rounding at the top of the range.
    #[test]
    fn fp8_layouts_are_within_half_an_ulp(
        (p, (rows, cols, x)) in fp8_scheme().prop_flat_map(|p| (Just(p), matrix(32, 3, 4, int_limit(p.scale_dtype)))),
    ) {
        let s = Scheme::Fp8(p);
        let (bufs, y) = round_trip(&s, rows, cols, &x);
        let scales = fp8_scales(&p, rows, cols, &bufs[1]);
        // (mantissa bits, smallest subnormal, largest finite)
        let (m, sub, max) = match p.format {
            DType::F8E4M3 => (3, 2f32.powi(-9), 448.0),
            _ => (2, 2f32.powi(-16), 57344.0),
        };
        let (u, tiny) = scale_precision(p.scale_dtype);
        for i in 0..x.len() {
            let sc = scales[i];
            prop_assert!(sc.is_finite() && sc > 0.0, "{}: scale {}", s.label(), sc);
            prop_assert!(y[i].is_finite(), "{}: {} -> {}", s.label(), x[i], y[i]);
            let bound = x[i].abs() * 2f32.powi(-(m + 1)) + sc * sub / 2.0 + (sc * max) * (2.0 * u) + max * tiny + f32::from_bits(1);
            prop_assert!((x[i] - y[i]).abs() <= bound, "{}: {} -> {} (scale {}, bound {})", s.label(), x[i], y[i], sc, bound);
        }
    }
}

// ---------------------------------------------------------------- every scheme, full range

/// Every registered layout in the configurations the planner chooses.
fn all_schemes() -> Vec<Scheme> {
    let mut v = vec![];
    for dt in [DType::F32, DType::F16, DType::BF16] {
        v.push(float_layout(dt, true));
    }
    for t in CODECS.iter().map(|c| c.ty()) {
        v.push(Scheme::Ggml(GgmlBlocks(t)));
    }
    for bits in [2, 3, 4, 8] {
        for symmetric in [true, false] {
            for granularity in [
                Granularity::Tensor,
                Granularity::Channel,
                Granularity::Group(32),
            ] {
                for scale_dtype in [DType::F32, DType::F16, DType::BF16] {
                    v.push(Scheme::Int(PackQuantized {
                        spec: IntSpec { bits, symmetric },
                        granularity,
                        scale_dtype,
                        g_idx: false,
                    }));
                }
            }
        }
    }
    for format in [DType::F8E4M3, DType::F8E5M2] {
        for granularity in [
            Granularity::Tensor,
            Granularity::Channel,
            Granularity::Block(2, 32),
        ] {
            for scale_dtype in [DType::F32, DType::F16, DType::BF16] {
                v.push(Scheme::Fp8(FloatQuantized {
                    format,
                    granularity,
                    scale_dtype,
                }));
            }
        }
    }
    for bits in [2, 4, 8] {
        v.push(Scheme::Gptq(AutoGptq { bits, group: 32 }));
    }
    v.push(Scheme::Awq(AutoAwq { group: 32 }));
    v
}

proptest! {
    #![proptest_config(config(64))]

    /// Whatever finite values (up to f32's limit) a layout is given, what it stores decodes to
    /// finite values, or the writer's check refuses the chunk (the run's error). Narrowing
    /// floats without --clamp is left out: the run refuses values beyond the target's range
    /// before encoding (its overflow audit).
    #[test]
    fn every_scheme_full_range_refused_or_finite(
        si in 0..all_schemes().len(),
        x in matrix_rc(16, 256, f32::MAX),
    ) {
        let s = all_schemes()[si];
        if matches!(s, Scheme::Float(f) if !f.clamp && f.dtype != DType::F32) {
            return Ok(());
        }
        let (_, y) = round_trip(&s, 16, 256, &x);
        if check_written(None, &x, &y, 256).is_ok() {
            for (a, b) in x.iter().zip(&y) {
                prop_assert!(b.is_finite(), "{}: {} -> {} accepted", s.label(), a, b);
            }
        }
    }
}

/// The registry and this file agree: every codec has a known block layout above, and the
/// schemes tested cover every layout variant.
#[test]
fn every_registered_type_and_layout_is_covered() {
    for c in CODECS {
        let t = c.ty();
        let _ = block_scale_offsets(t); // panics on a type with no known block layout
    }
    let variants: std::collections::BTreeSet<&str> = all_schemes()
        .iter()
        .map(|s| match s {
            Scheme::Float(_) => "float",
            Scheme::Ggml(_) => "ggml",
            Scheme::Int(_) => "int",
            Scheme::Fp8(_) => "fp8",
            Scheme::Gptq(_) => "gptq",
            Scheme::Awq(_) => "awq",
        })
        .collect();
    assert_eq!(variants.len(), 6);
}
