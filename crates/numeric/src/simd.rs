//! Vector lanes for the numeric kernels, in one place: the [`Lanes`] operations (each exactly
//! the IEEE operation scalar code performs lane by lane), their implementations as a plain
//! array (any target), AVX2 and AVX-512 registers, run-time detection ([`level`]), and
//! `multiversion!`, which compiles a kernel generic over [`Lanes`] once per vector width and
//! picks one at run time. Kernels written on these lanes have a scalar reference and a unit test
//! comparing the two at every level the CPU has.

use crate::ggml::kquants::nearest_int;

/// How the vector kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// The scalar references, one candidate after another (as ggml runs them).
    Scalar,
    /// Lanes at the compilation target's baseline (SSE2 on x86-64, NEON on aarch64).
    Base,
    Avx2,
    Avx512,
}

/// The widest level this CPU runs, detected once; the environment variable `QS_SIMD`
/// (`scalar`, `base`, `avx2`, `avx512`) caps it, for benchmarks and for ruling the vector code
/// out when chasing a problem. Every level writes the same bytes.
pub fn level() -> Level {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cpu = cpu_level();
        let cap = match std::env::var("QS_SIMD").as_deref() {
            Ok("scalar") => Level::Scalar,
            Ok("base") => Level::Base,
            Ok("avx2") => Level::Avx2,
            _ => Level::Avx512,
        };
        let rank = |l: Level| l as u8;
        if rank(cap) < rank(cpu) {
            cap
        } else {
            cpu
        }
    })
}

pub(crate) fn cpu_level() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            return Level::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return Level::Avx2;
        }
    }
    Level::Base
}

/// `pub(crate) fn $name(args) -> R` running `$body::<V>(args)` at [`level`]'s width (or the
/// scalar reference `$scalar`), and `$at(level, args)` running it at a given level (tests; a
/// vector level the CPU lacks runs the baseline).
macro_rules! multiversion {
    ($name:ident, $at:ident, $body:ident, $scalar:path, ($($a:ident : $t:ty),*) -> $r:ty) => {
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn $name($($a: $t),*) -> $r {
            $at($crate::simd::level(), $($a),*)
        }

        #[allow(clippy::too_many_arguments)]
        pub(crate) fn $at(lv: $crate::simd::Level, $($a: $t),*) -> $r {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
                #[allow(clippy::too_many_arguments)]
                fn w16($($a: $t),*) -> $r {
                    $body::<$crate::simd::x86::Avx512>($($a),*)
                }
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                fn w8($($a: $t),*) -> $r {
                    $body::<$crate::simd::x86::Avx2>($($a),*)
                }
                match (lv, $crate::simd::cpu_level()) {
                    // SAFETY: the CPU has AVX-512 (F, BW, VL) and AVX2 (`cpu_level` checked)
                    ($crate::simd::Level::Avx512, $crate::simd::Level::Avx512) => return unsafe { w16($($a),*) },
                    // SAFETY: the CPU has AVX2 (`cpu_level` checked)
                    ($crate::simd::Level::Avx2, $crate::simd::Level::Avx512 | $crate::simd::Level::Avx2) => return unsafe { w8($($a),*) },
                    _ => {}
                }
            }
            if lv == $crate::simd::Level::Scalar {
                return $scalar($($a),*);
            }
            $body::<$crate::simd::Portable>($($a),*)
        }
    };
}

/// `L` f32 lanes and the handful of operations the searches need, each exactly the IEEE
/// operation the scalar code performs lane by lane.
pub(crate) trait Lanes: Copy {
    const L: usize;
    /// Half as many lanes (or the same type, at 8).
    type Half: Lanes;
    fn splat(v: f32) -> Self;
    /// The first `L` values of `s`.
    fn load(s: &[f32]) -> Self;
    /// The first `L / 2` values of `a` in the low lanes, the first `L / 2` of `b` above them.
    fn load2(a: &[f32], b: &[f32]) -> Self;
    /// Into the first `L` values of `s`.
    fn store(self, s: &mut [f32]);
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn abs(self) -> Self;
    /// ggml's `nearest_int` (the 1.5·2^23 trick) clamped to `lo..=hi`, back as f32.
    fn round_clamp(self, lo: i32, hi: i32) -> Self;
    /// `t` where `a >= b` (false for NaN), else 0.
    fn ge_then(a: Self, b: Self, t: Self) -> Self;
    fn div(self, o: Self) -> Self;
    /// `a` where `m < n`, else `b` (each lane's `if m < n { a } else { b }`).
    fn if_lt(m: Self, n: Self, a: Self, b: Self) -> Self;
    /// Lanes where `p` is non-zero take `a`, the others `b`.
    fn if_nonzero(p: Self, a: Self, b: Self) -> Self;
    /// All-ones bits where `m < n`, else 0.
    fn lt_mask(m: Self, n: Self) -> Self;
    /// All-ones bits where `m != n` (true for NaN, as Rust's `!=`), else 0.
    fn ne_mask(m: Self, n: Self) -> Self;
    fn and(self, o: Self) -> Self;
}

/// Eight lanes as a plain array: any target (LLVM vectorizes some of it).
#[derive(Clone, Copy)]
pub(crate) struct Portable(pub(crate) [f32; 8]);

impl Lanes for Portable {
    const L: usize = 8;
    type Half = Portable;
    #[inline(always)]
    fn div(self, o: Self) -> Self {
        Portable(std::array::from_fn(|k| self.0[k] / o.0[k]))
    }
    #[inline(always)]
    fn if_lt(m: Self, n: Self, a: Self, b: Self) -> Self {
        Portable(std::array::from_fn(|k| {
            if m.0[k] < n.0[k] {
                a.0[k]
            } else {
                b.0[k]
            }
        }))
    }
    #[inline(always)]
    fn if_nonzero(p: Self, a: Self, b: Self) -> Self {
        Portable(std::array::from_fn(|k| {
            if p.0[k].to_bits() != 0 {
                a.0[k]
            } else {
                b.0[k]
            }
        }))
    }
    #[inline(always)]
    fn lt_mask(m: Self, n: Self) -> Self {
        Portable(std::array::from_fn(|k| {
            f32::from_bits(if m.0[k] < n.0[k] { u32::MAX } else { 0 })
        }))
    }
    #[inline(always)]
    fn ne_mask(m: Self, n: Self) -> Self {
        Portable(std::array::from_fn(|k| {
            f32::from_bits(if m.0[k] != n.0[k] { u32::MAX } else { 0 })
        }))
    }
    #[inline(always)]
    fn and(self, o: Self) -> Self {
        Portable(std::array::from_fn(|k| {
            f32::from_bits(self.0[k].to_bits() & o.0[k].to_bits())
        }))
    }
    #[inline(always)]
    fn splat(v: f32) -> Self {
        Portable([v; 8])
    }
    #[inline(always)]
    fn load(s: &[f32]) -> Self {
        Portable(s[..8].try_into().expect("8 lanes"))
    }
    #[inline(always)]
    fn load2(a: &[f32], b: &[f32]) -> Self {
        let (a, b) = (&a[..4], &b[..4]);
        Portable(std::array::from_fn(|k| if k < 4 { a[k] } else { b[k - 4] }))
    }
    #[inline(always)]
    fn store(self, s: &mut [f32]) {
        s[..8].copy_from_slice(&self.0)
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        Portable(std::array::from_fn(|k| self.0[k] + o.0[k]))
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        Portable(std::array::from_fn(|k| self.0[k] - o.0[k]))
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        Portable(std::array::from_fn(|k| self.0[k] * o.0[k]))
    }
    #[inline(always)]
    fn abs(self) -> Self {
        Portable(self.0.map(f32::abs))
    }
    #[inline(always)]
    fn round_clamp(self, lo: i32, hi: i32) -> Self {
        Portable(self.0.map(|v| nearest_int(v).clamp(lo, hi) as f32))
    }
    #[inline(always)]
    fn ge_then(a: Self, b: Self, t: Self) -> Self {
        Portable(std::array::from_fn(|k| {
            if a.0[k] >= b.0[k] {
                t.0[k]
            } else {
                0.0
            }
        }))
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    //! The lanes as AVX2 and AVX-512 registers. Only the `multiversion!` wrappers compiled
    //! with those features (and entered after the CPU check) create these values, so every
    //! intrinsic below runs on a CPU that has it.
    use super::Lanes;
    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub(crate) struct Avx2(pub(crate) __m256);

    impl Lanes for Avx2 {
        const L: usize = 8;
        type Half = Avx2;
        #[inline(always)]
        fn div(self, o: Self) -> Self {
            unsafe { Avx2(_mm256_div_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn if_lt(m: Self, n: Self, a: Self, b: Self) -> Self {
            unsafe {
                Avx2(_mm256_blendv_ps(
                    b.0,
                    a.0,
                    _mm256_cmp_ps::<_CMP_LT_OQ>(m.0, n.0),
                ))
            }
        }
        #[inline(always)]
        fn if_nonzero(p: Self, a: Self, b: Self) -> Self {
            unsafe {
                let z = _mm256_cmpeq_epi32(_mm256_castps_si256(p.0), _mm256_setzero_si256());
                Avx2(_mm256_blendv_ps(a.0, b.0, _mm256_castsi256_ps(z)))
            }
        }
        #[inline(always)]
        fn lt_mask(m: Self, n: Self) -> Self {
            unsafe { Avx2(_mm256_cmp_ps::<_CMP_LT_OQ>(m.0, n.0)) }
        }
        #[inline(always)]
        fn ne_mask(m: Self, n: Self) -> Self {
            unsafe { Avx2(_mm256_cmp_ps::<_CMP_NEQ_UQ>(m.0, n.0)) }
        }
        #[inline(always)]
        fn and(self, o: Self) -> Self {
            unsafe { Avx2(_mm256_and_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn splat(v: f32) -> Self {
            // SAFETY (every block here): AVX2 is present, see the module comment
            unsafe { Avx2(_mm256_set1_ps(v)) }
        }
        #[inline(always)]
        fn load(s: &[f32]) -> Self {
            assert!(s.len() >= 8);
            // SAFETY: 8 values readable (checked), unaligned load
            unsafe { Avx2(_mm256_loadu_ps(s.as_ptr())) }
        }
        #[inline(always)]
        fn load2(a: &[f32], b: &[f32]) -> Self {
            assert!(a.len() >= 4 && b.len() >= 4);
            // SAFETY: 4 values readable from each (checked), unaligned loads
            unsafe { Avx2(_mm256_loadu2_m128(b.as_ptr(), a.as_ptr())) }
        }
        #[inline(always)]
        fn store(self, s: &mut [f32]) {
            assert!(s.len() >= 8);
            // SAFETY: 8 values writable (checked), unaligned store
            unsafe { _mm256_storeu_ps(s.as_mut_ptr(), self.0) }
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            unsafe { Avx2(_mm256_add_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            unsafe { Avx2(_mm256_sub_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            unsafe { Avx2(_mm256_mul_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn abs(self) -> Self {
            unsafe {
                let m = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
                Avx2(_mm256_and_ps(self.0, m))
            }
        }
        #[inline(always)]
        fn round_clamp(self, lo: i32, hi: i32) -> Self {
            unsafe {
                let t = _mm256_add_ps(self.0, _mm256_set1_ps(12_582_912.0));
                let b = _mm256_and_si256(_mm256_castps_si256(t), _mm256_set1_epi32(0x007f_ffff));
                let i = _mm256_sub_epi32(b, _mm256_set1_epi32(0x0040_0000));
                let i = _mm256_max_epi32(
                    _mm256_min_epi32(i, _mm256_set1_epi32(hi)),
                    _mm256_set1_epi32(lo),
                );
                Avx2(_mm256_cvtepi32_ps(i))
            }
        }
        #[inline(always)]
        fn ge_then(a: Self, b: Self, t: Self) -> Self {
            unsafe { Avx2(_mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(a.0, b.0), t.0)) }
        }
    }

    #[derive(Clone, Copy)]
    pub(crate) struct Avx512(pub(crate) __m512);

    impl Lanes for Avx512 {
        const L: usize = 16;
        type Half = Avx2;
        #[inline(always)]
        fn div(self, o: Self) -> Self {
            unsafe { Avx512(_mm512_div_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn if_lt(m: Self, n: Self, a: Self, b: Self) -> Self {
            unsafe {
                let k = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(m.0, n.0);
                Avx512(_mm512_mask_mov_ps(b.0, k, a.0))
            }
        }
        #[inline(always)]
        fn if_nonzero(p: Self, a: Self, b: Self) -> Self {
            unsafe {
                let k = _mm512_test_epi32_mask(_mm512_castps_si512(p.0), _mm512_castps_si512(p.0));
                Avx512(_mm512_mask_mov_ps(b.0, k, a.0))
            }
        }
        #[inline(always)]
        fn lt_mask(m: Self, n: Self) -> Self {
            unsafe {
                let k = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(m.0, n.0);
                Avx512(_mm512_castsi512_ps(_mm512_maskz_mov_epi32(
                    k,
                    _mm512_set1_epi32(-1),
                )))
            }
        }
        #[inline(always)]
        fn ne_mask(m: Self, n: Self) -> Self {
            unsafe {
                let k = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(m.0, n.0);
                Avx512(_mm512_castsi512_ps(_mm512_maskz_mov_epi32(
                    k,
                    _mm512_set1_epi32(-1),
                )))
            }
        }
        #[inline(always)]
        fn and(self, o: Self) -> Self {
            unsafe {
                Avx512(_mm512_castsi512_ps(_mm512_and_si512(
                    _mm512_castps_si512(self.0),
                    _mm512_castps_si512(o.0),
                )))
            }
        }
        #[inline(always)]
        fn splat(v: f32) -> Self {
            // SAFETY (every block here): AVX-512F is present, see the module comment
            unsafe { Avx512(_mm512_set1_ps(v)) }
        }
        #[inline(always)]
        fn load(s: &[f32]) -> Self {
            assert!(s.len() >= 16);
            // SAFETY: 16 values readable (checked), unaligned load
            unsafe { Avx512(_mm512_loadu_ps(s.as_ptr())) }
        }
        #[inline(always)]
        fn load2(a: &[f32], b: &[f32]) -> Self {
            assert!(a.len() >= 8 && b.len() >= 8);
            // SAFETY: 8 values readable from each (checked), unaligned loads
            unsafe {
                // (as f64 lanes: AVX-512F has no 8 x f32 insert)
                let lo = _mm512_castpd256_pd512(_mm256_castps_pd(_mm256_loadu_ps(a.as_ptr())));
                let hi = _mm256_castps_pd(_mm256_loadu_ps(b.as_ptr()));
                Avx512(_mm512_castpd_ps(_mm512_insertf64x4::<1>(lo, hi)))
            }
        }
        #[inline(always)]
        fn store(self, s: &mut [f32]) {
            assert!(s.len() >= 16);
            // SAFETY: 16 values writable (checked), unaligned store
            unsafe { _mm512_storeu_ps(s.as_mut_ptr(), self.0) }
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            unsafe { Avx512(_mm512_add_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            unsafe { Avx512(_mm512_sub_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            unsafe { Avx512(_mm512_mul_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn abs(self) -> Self {
            unsafe {
                let b =
                    _mm512_and_si512(_mm512_castps_si512(self.0), _mm512_set1_epi32(0x7fff_ffff));
                Avx512(_mm512_castsi512_ps(b))
            }
        }
        #[inline(always)]
        fn round_clamp(self, lo: i32, hi: i32) -> Self {
            unsafe {
                let t = _mm512_add_ps(self.0, _mm512_set1_ps(12_582_912.0));
                let b = _mm512_and_si512(_mm512_castps_si512(t), _mm512_set1_epi32(0x007f_ffff));
                let i = _mm512_sub_epi32(b, _mm512_set1_epi32(0x0040_0000));
                let i = _mm512_max_epi32(
                    _mm512_min_epi32(i, _mm512_set1_epi32(hi)),
                    _mm512_set1_epi32(lo),
                );
                Avx512(_mm512_cvtepi32_ps(i))
            }
        }
        #[inline(always)]
        fn ge_then(a: Self, b: Self, t: Self) -> Self {
            unsafe {
                let m = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(a.0, b.0);
                Avx512(_mm512_maskz_mov_ps(m, t.0))
            }
        }
    }
}

pub(crate) use multiversion;
