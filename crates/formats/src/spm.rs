//! SentencePiece model files (`tokenizer.model`): the serialized `ModelProto` protobuf.
//!
//! Only what a GGUF vocabulary needs is read: every piece with its score and type, the
//! trainer's model type and byte fallback, and the normalizer's `add_dummy_prefix`. Unknown
//! fields are skipped by wire type, so newer files still parse. [`encode_model`] writes the
//! same subset back (used by `quantize export` to rebuild a `tokenizer.model` from a GGUF).

use crate::error::{file_err, io_err, Result};
use std::path::Path;

/// Piece types, numbered as in sentencepiece_model.proto (and as GGUF token types).
pub const NORMAL: i32 = 1;
pub const UNKNOWN: i32 = 2;
pub const CONTROL: i32 = 3;
pub const USER_DEFINED: i32 = 4;
pub const UNUSED: i32 = 5;
pub const BYTE: i32 = 6;

#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: i32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SpmModel {
    pub pieces: Vec<Piece>,
    /// TrainerSpec.model_type: 1 unigram, 2 BPE, 3 word, 4 char.
    pub model_type: i32,
    pub byte_fallback: bool,
    /// NormalizerSpec.add_dummy_prefix (protobuf default: true).
    pub add_dummy_prefix: bool,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or("truncated varint at end of data")?;
            self.pos += 1;
            v |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "field of {n} bytes at offset {} runs past the end ({} bytes)",
                    self.pos,
                    self.buf.len()
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Next (field number, value). Length-delimited values come back as their bytes.
    fn field(&mut self) -> std::result::Result<Option<(u64, Field<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let f = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => Field::Fixed(u64::from_le_bytes(self.take(8)?.try_into().expect("8"))),
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| "length too large")?;
                Field::Bytes(self.take(n)?)
            }
            5 => Field::Fixed(u64::from(u32::from_le_bytes(
                self.take(4)?.try_into().expect("4"),
            ))),
            w => return Err(format!("unsupported protobuf wire type {w}")),
        };
        Ok(Some((key >> 3, f)))
    }
}

enum Field<'a> {
    Varint(u64),
    Fixed(u64),
    Bytes(&'a [u8]),
}

fn fields(
    buf: &[u8],
    mut f: impl FnMut(u64, Field) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    let mut r = Reader { buf, pos: 0 };
    while let Some((num, v)) = r.field()? {
        f(num, v)?;
    }
    Ok(())
}

/// Parses a serialized `ModelProto`.
pub fn parse_model(buf: &[u8]) -> std::result::Result<SpmModel, String> {
    let mut m = SpmModel {
        pieces: Vec::new(),
        model_type: 1,
        byte_fallback: false,
        add_dummy_prefix: true,
    };
    fields(buf, |num, v| {
        match (num, v) {
            (1, Field::Bytes(b)) => {
                let mut p = Piece {
                    piece: String::new(),
                    score: 0.0,
                    kind: NORMAL,
                };
                fields(b, |n, v| {
                    match (n, v) {
                        (1, Field::Bytes(s)) => {
                            p.piece = String::from_utf8(s.to_vec())
                                .map_err(|_| "a piece is not valid UTF-8".to_string())?
                        }
                        (2, Field::Fixed(x)) => p.score = f32::from_bits(x as u32),
                        (3, Field::Varint(t)) => p.kind = t as i32,
                        _ => {}
                    }
                    Ok(())
                })?;
                if !(NORMAL..=BYTE).contains(&p.kind) {
                    return Err(format!("piece '{}' has unknown type {}", p.piece, p.kind));
                }
                m.pieces.push(p);
            }
            (2, Field::Bytes(b)) => fields(b, |n, v| {
                match (n, v) {
                    (3, Field::Varint(t)) => m.model_type = t as i32,
                    (35, Field::Varint(t)) => m.byte_fallback = t != 0,
                    _ => {}
                }
                Ok(())
            })?,
            (3, Field::Bytes(b)) => fields(b, |n, v| {
                if let (3, Field::Varint(t)) = (n, v) {
                    m.add_dummy_prefix = t != 0;
                }
                Ok(())
            })?,
            _ => {}
        }
        Ok(())
    })?;
    if m.pieces.is_empty() {
        return Err("no pieces (not a SentencePiece model?)".into());
    }
    Ok(m)
}

/// Reads and parses `tokenizer.model`; errors name the file.
pub fn read_model(path: &Path) -> Result<SpmModel> {
    let buf = std::fs::read(path).map_err(io_err(path))?;
    parse_model(&buf).map_err(|m| file_err(path, format!("not a SentencePiece model: {m}")))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn put_bytes(out: &mut Vec<u8>, num: u64, b: &[u8]) {
    put_varint(out, num << 3 | 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_uint(out: &mut Vec<u8>, num: u64, v: u64) {
    put_varint(out, num << 3);
    put_varint(out, v);
}

/// Serializes the subset [`parse_model`] reads, with the normalizer llama-family models use
/// (identity, spaces escaped to U+2581, runs of spaces kept).
pub fn encode_model(m: &SpmModel) -> Vec<u8> {
    let mut out = Vec::new();
    for p in &m.pieces {
        let mut b = Vec::new();
        put_bytes(&mut b, 1, p.piece.as_bytes());
        put_varint(&mut b, 2 << 3 | 5);
        b.extend_from_slice(&p.score.to_le_bytes());
        if p.kind != NORMAL {
            put_uint(&mut b, 3, p.kind as u64);
        }
        put_bytes(&mut out, 1, &b);
    }
    let mut t = Vec::new();
    put_uint(&mut t, 3, m.model_type as u64);
    put_uint(&mut t, 4, m.pieces.len() as u64);
    put_uint(&mut t, 35, u64::from(m.byte_fallback));
    put_bytes(&mut out, 2, &t);
    let mut n = Vec::new();
    put_bytes(&mut n, 1, b"identity");
    put_uint(&mut n, 3, u64::from(m.add_dummy_prefix));
    put_uint(&mut n, 4, 0);
    put_uint(&mut n, 5, 1);
    put_bytes(&mut out, 3, &n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SpmModel {
        SpmModel {
            pieces: vec![
                Piece {
                    piece: "<unk>".into(),
                    score: 0.0,
                    kind: UNKNOWN,
                },
                Piece {
                    piece: "<0x0A>".into(),
                    score: 0.0,
                    kind: BYTE,
                },
                Piece {
                    piece: "\u{2581}the".into(),
                    score: -3.5,
                    kind: NORMAL,
                },
                Piece {
                    piece: "ü".into(),
                    score: -1e4,
                    kind: USER_DEFINED,
                },
            ],
            model_type: 2,
            byte_fallback: true,
            add_dummy_prefix: false,
        }
    }

    #[test]
    fn encode_then_parse_round_trips() {
        let m = sample();
        assert_eq!(parse_model(&encode_model(&m)).unwrap(), m);
    }

    #[test]
    fn truncations_parse_only_at_field_boundaries() {
        let m = sample();
        let buf = encode_model(&m);
        // top-level field boundaries: after each piece, then the trainer and normalizer specs
        let mut ends = Vec::new();
        let mut r = Reader { buf: &buf, pos: 0 };
        while r.field().unwrap().is_some() {
            ends.push(r.pos);
        }
        assert_eq!(ends.len(), m.pieces.len() + 2);
        for n in 0..buf.len() {
            let got = parse_model(&buf[..n]);
            match ends.iter().position(|&e| e == n) {
                // a prefix ending after k whole pieces: those k pieces
                Some(k) => assert_eq!(
                    got.unwrap().pieces,
                    m.pieces[..(k + 1).min(4)],
                    "cut at {n}"
                ),
                // inside a field, or before any piece: an error, never a panic
                None => assert!(got.is_err(), "cut at {n} parsed"),
            }
        }
    }

    #[test]
    fn unknown_fields_are_skipped_and_bad_types_rejected() {
        let mut buf = Vec::new();
        put_uint(&mut buf, 99, 7); // unknown varint field
        put_varint(&mut buf, 98 << 3 | 1); // unknown fixed64
        buf.extend_from_slice(&[0; 8]);
        buf.extend_from_slice(&encode_model(&sample()));
        assert_eq!(parse_model(&buf).unwrap(), sample());
        let mut bad = sample();
        bad.pieces[2].kind = 9;
        assert!(parse_model(&encode_model(&bad))
            .unwrap_err()
            .contains("unknown type 9"));
        assert!(parse_model(b"").is_err());
        assert!(parse_model(&[0x0b]).is_err()); // wire type 3 (groups) unsupported
    }
}
