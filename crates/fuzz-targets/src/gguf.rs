//! The GGUF reader (`GgufFile::open` over a scratch file), then what reads its result: every
//! tensor's bytes, every value's display, `ModelSource::open` (a GGUF input), `inspect`, and
//! decoding each small tensor with its layout (as `verify`/`eval`/`export` do).

use crate::Scratch;
use qs_formats::gguf::GgufFile;
use qs_formats::source::ModelSource;
use qs_numeric::Scheme;

/// Decode only tensors up to this many values (the harness's memory, not the reader's).
const MAX_DECODE: usize = 1 << 16;

/// One fuzz input (any bytes): returns normally or panics on a finding.
pub fn run(data: &[u8]) {
    let dir = Scratch::new();
    let path = dir.write("model.gguf", data);
    let _ = quantsmith::inspect(&path);
    let _ = ModelSource::open(&path);
    let Ok(g) = GgufFile::open(&path) else {
        return;
    };
    for (_, v) in &g.kvs {
        let _ = v.display();
        let _ = v.as_u64();
    }
    for t in &g.tensors {
        let b = g.bytes(t);
        let shape = t.shape();
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let (bs, bb) = t.ty.block();
        assert_eq!(
            Some(b.len()),
            n.map(|n| n / bs * bb),
            "{}: {:?} {}",
            t.name,
            shape,
            t.ty
        );
        let Some(n) = n.filter(|&n| n <= MAX_DECODE) else {
            continue;
        };
        if let Some(s) = Scheme::for_ggml(t.ty) {
            let (rows, _) = qs_numeric::layout::rows_cols(&shape);
            let mut out = vec![0f32; n];
            s.decode(&shape, 0, rows, &[b], &mut out);
        }
    }
}
