//! The safetensors header parser over the whole file's bytes (what `SafetensorsFile::open`
//! hands it after mapping the file). Errors are fine; what it accepts must hold together:
//! every tensor's byte range lies inside the buffer and matches its shape and dtype.

use std::path::Path;

/// One fuzz input (any bytes): returns normally or panics on a finding.
pub fn run(data: &[u8]) {
    let Ok((tensors, _metadata)) =
        qs_formats::safetensors::parse_header(Path::new("fuzz.safetensors"), data)
    else {
        return;
    };
    for t in &tensors {
        assert!(
            t.start <= t.end && t.end <= data.len(),
            "{}: range {}..{} of {}",
            t.name,
            t.start,
            t.end,
            data.len()
        );
        assert_eq!(t.end - t.start, t.numel() * t.dtype.size(), "{}", t.name);
    }
}
