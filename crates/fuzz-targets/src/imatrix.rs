//! The importance-matrix reader `imatrix::load` (GGUF or legacy .dat, chosen by the magic).
//! What it returns is not checked further: the planner checks each entry's length against the
//! row it weights (an empty GGUF entry is accepted here and refused there; see
//! docs/RELIABILITY.md).

use crate::Scratch;

/// One fuzz input (any bytes): returns normally or panics on a finding.
pub fn run(data: &[u8]) {
    let dir = Scratch::new();
    let path = dir.write("imatrix.dat", data);
    let _ = qs_formats::imatrix::load(&path);
}
