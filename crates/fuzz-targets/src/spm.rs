//! The SentencePiece `ModelProto` parser; what it accepts survives our own encoder unchanged.

use qs_formats::spm::{encode_model, parse_model};

/// One fuzz input (any bytes): returns normally or panics on a finding.
pub fn run(data: &[u8]) {
    let Ok(m) = parse_model(data) else {
        return;
    };
    let again = parse_model(&encode_model(&m)).expect("our own encoding parses");
    assert_eq!(again.pieces.len(), m.pieces.len());
    for (a, b) in again.pieces.iter().zip(&m.pieces) {
        assert_eq!(
            (&a.piece, a.score.to_bits(), a.kind),
            (&b.piece, b.score.to_bits(), b.kind)
        );
    }
    assert_eq!(
        (
            again.model_type,
            again.byte_fallback,
            again.add_dummy_prefix
        ),
        (m.model_type, m.byte_fallback, m.add_dummy_prefix)
    );
}
