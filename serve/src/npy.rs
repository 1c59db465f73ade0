//! `.npy` request bodies and answers: a bounded reader (the header's length is capped and the
//! data's length checked against the shape before anything is allocated for it) and a writer of
//! `[rows, cols]` float32 arrays.
//!
//! The server's reader, not the command line's: `bnfold_cli::io` reads files, and the command line
//! depends on this crate, so it cannot be used from here.

/// The longest `.npy` header accepted: numpy's own default limit (`max_header_size`, numpy 1.24+).
/// Real headers of 1-D and 2-D arrays are under 128 bytes.
pub const MAX_HEADER: usize = 10_000;

const MAGIC: &[u8] = b"\x93NUMPY";

/// A `[rows, cols]` row-major f32 matrix read from a body.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// `rows * cols` values, row-major.
    pub data: Vec<f32>,
}

/// Why a body is not an array this server runs; the message is for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyError {
    /// The body has more rows than the limit (the answer is 413, not 400).
    pub too_many_rows: bool,
    /// What is wrong.
    pub message: String,
}

fn bad(message: impl Into<String>) -> NpyError {
    NpyError {
        too_many_rows: false,
        message: format!("not a valid .npy body: {}", message.into()),
    }
}

/// Whether `bytes` start like an `.npy` file.
pub fn is_npy(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// The element types a body may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dtype {
    F32,
    F64,
}

/// Read a float32 or float64, C-order, 1-D (one row) or 2-D (`[rows, cols]`) array whose rows have
/// `cols` values, with at most `max_rows` rows, every value finite.
pub fn parse(bytes: &[u8], cols: usize, max_rows: usize) -> Result<Matrix, NpyError> {
    if !is_npy(bytes) {
        return Err(bad("it does not start with the .npy magic bytes"));
    }
    let (len_bytes, start) = match bytes.get(6..8) {
        Some([1, 0]) => (2, 10),
        Some([2 | 3, 0]) => (4, 12),
        Some([major, minor]) => return Err(bad(format!("unknown version {major}.{minor}"))),
        _ => return Err(bad("truncated before the version")),
    };
    let header_len = match bytes.get(8..8 + len_bytes) {
        Some(&[a, b]) => u16::from_le_bytes([a, b]) as usize,
        Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]) as usize,
        _ => return Err(bad("truncated header length")),
    };
    if header_len > MAX_HEADER {
        return Err(bad(format!(
            "header of {header_len} bytes (the limit is {MAX_HEADER})"
        )));
    }
    let header = bytes
        .get(start..start + header_len)
        .ok_or_else(|| bad("the header is longer than the body"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("the header is not text"))?;
    let h = parse_header(header)?;
    if h.fortran_order {
        return Err(bad(
            "Fortran-order arrays are not supported; send a C-order array",
        ));
    }
    let (rows, width) = match h.shape[..] {
        [n] => (1u64, n),
        [r, c] => (r, c),
        _ => {
            return Err(bad(format!(
                "shape {:?}: expected (features,) or (batch, features)",
                h.shape
            )));
        }
    };
    if rows == 0 {
        return Err(bad("the array has no rows"));
    }
    if width != cols as u64 {
        return Err(NpyError {
            too_many_rows: false,
            message: format!("rows have {width} values, the model takes {cols} input features"),
        });
    }
    if rows > max_rows as u64 {
        return Err(NpyError {
            too_many_rows: true,
            message: format!("{rows} rows, more than the limit of {max_rows} per request"),
        });
    }
    // rows <= max_rows and width == cols, both usize: the products below are checked anyway.
    let rows = rows as usize;
    let size = match h.dtype {
        Dtype::F32 => 4,
        Dtype::F64 => 8,
    };
    let data = &bytes[start + header_len..];
    let want = rows.checked_mul(cols).and_then(|n| n.checked_mul(size));
    if want != Some(data.len()) {
        return Err(bad(format!(
            "shape {:?} of {} needs {} bytes of data, the body has {}",
            h.shape,
            if size == 4 { "float32" } else { "float64" },
            want.map_or_else(|| "more than usize::MAX".to_string(), |w| w.to_string()),
            data.len()
        )));
    }
    let values: Vec<f32> = match h.dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("chunks of 8")) as f32)
            .collect(),
    };
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(NpyError {
            too_many_rows: false,
            message: format!(
                "row {}, column {}: {} is not a finite float32",
                i / cols.max(1) + 1,
                i % cols.max(1) + 1,
                values[i]
            ),
        });
    }
    Ok(Matrix {
        rows,
        cols,
        data: values,
    })
}

struct Header {
    dtype: Dtype,
    fortran_order: bool,
    shape: Vec<u64>,
}

/// The header is a Python dict literal: `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 64), }`
/// followed by spaces and a newline.
fn parse_header(text: &str) -> Result<Header, NpyError> {
    let mut p = Lexer {
        s: text.as_bytes(),
        i: 0,
    };
    p.expect(b'{')?;
    let (mut dtype, mut fortran, mut shape) = (None, None, None);
    loop {
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.expect(b':')?;
        match key {
            "descr" => {
                let d = p.string()?;
                dtype = Some(match d {
                    "<f4" => Dtype::F32,
                    "<f8" => Dtype::F64,
                    d => {
                        return Err(bad(format!(
                            "dtype '{}' is not supported; send little-endian float32 or float64",
                            d.escape_default()
                        )));
                    }
                });
            }
            "fortran_order" => fortran = Some(p.boolean()?),
            "shape" => shape = Some(p.tuple()?),
            k => return Err(bad(format!("unknown header key '{}'", k.escape_default()))),
        }
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        p.expect(b',')?;
    }
    if !p.s[p.i..].iter().all(u8::is_ascii_whitespace) {
        return Err(bad("text after the header's closing brace"));
    }
    match (dtype, fortran, shape) {
        (Some(dtype), Some(fortran_order), Some(shape)) => Ok(Header {
            dtype,
            fortran_order,
            shape,
        }),
        _ => Err(bad("the header lacks descr, fortran_order or shape")),
    }
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Lexer<'a> {
    fn skip_ws(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), NpyError> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(bad(format!(
                "malformed header: expected '{}' at byte {}",
                c as char, self.i
            )))
        }
    }

    fn string(&mut self) -> Result<&'a str, NpyError> {
        self.skip_ws();
        let quote = match self.s.get(self.i) {
            Some(&q @ (b'\'' | b'"')) => q,
            _ => {
                return Err(bad(format!(
                    "malformed header: expected a string at byte {}",
                    self.i
                )));
            }
        };
        let start = self.i + 1;
        let len = self.s[start..]
            .iter()
            .position(|&b| b == quote)
            .ok_or_else(|| bad("malformed header: unterminated string"))?;
        self.i = start + len + 1;
        // The header was checked to be UTF-8 and the quotes are ASCII: a valid boundary.
        std::str::from_utf8(&self.s[start..start + len])
            .map_err(|_| bad("malformed header: a string is not text"))
    }

    fn boolean(&mut self) -> Result<bool, NpyError> {
        self.skip_ws();
        for (word, v) in [(&b"True"[..], true), (&b"False"[..], false)] {
            if self.s[self.i..].starts_with(word) {
                self.i += word.len();
                return Ok(v);
            }
        }
        Err(bad("malformed header: fortran_order is not True or False"))
    }

    fn tuple(&mut self) -> Result<Vec<u64>, NpyError> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        loop {
            if self.eat(b')') {
                return Ok(dims);
            }
            if dims.len() == 32 {
                return Err(bad("the shape has more than 32 dimensions"));
            }
            self.skip_ws();
            let start = self.i;
            while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
                self.i += 1;
            }
            let digits = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
            let n: u64 = digits
                .parse()
                .map_err(|_| bad(format!("malformed header: bad dimension at byte {start}")))?;
            dims.push(n);
            if self.eat(b')') {
                return Ok(dims);
            }
            self.expect(b',')?;
        }
    }
}

/// A `[rows, cols]` float32 array as an `.npy` file (version 1.0, C order, the header padded so
/// that the data starts at a multiple of 64 bytes, as numpy writes it).
pub fn encode(rows: usize, cols: usize, data: &[f32]) -> Vec<u8> {
    debug_assert_eq!(data.len(), rows * cols);
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // magic (6) + version (2) + length (2) + dict + padding + '\n', a multiple of 64.
    let total = (10 + dict.len() + 1).div_ceil(64) * 64;
    let header_len = total - 10;
    let mut out = Vec::with_capacity(total + data.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header_len as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_one_dimensional_rows() {
        let data: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
        let bytes = encode(2, 3, &data);
        assert_eq!((bytes.len() - 6 * 4) % 64, 0);
        let m = parse(&bytes, 3, 10).unwrap();
        assert_eq!((m.rows, m.cols, m.data), (2, 3, data));
        let mut one = b"\x93NUMPY\x01\x00".to_vec();
        let dict = b"{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }\n";
        one.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        one.extend_from_slice(dict);
        one.extend_from_slice(&1.5f64.to_le_bytes());
        one.extend_from_slice(&(-2.0f64).to_le_bytes());
        let m = parse(&one, 2, 1).unwrap();
        assert_eq!((m.rows, m.data), (1, vec![1.5, -2.0]));
    }

    #[test]
    fn refusals_name_the_problem() {
        let good = encode(2, 3, &[0.0; 6]);
        let err = |b: &[u8], cols, max| parse(b, cols, max).unwrap_err();
        assert!(err(&good, 4, 10).message.contains("model takes 4"));
        assert!(err(&good, 3, 1).too_many_rows);
        assert!(
            err(&good[..good.len() - 1], 3, 10)
                .message
                .contains("bytes of data")
        );
        assert!(
            err(&good[..20], 3, 10)
                .message
                .contains("longer than the body")
        );
        let mut huge = good.clone();
        huge[8..10].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(err(&huge, 3, 10).message.contains("limit"));
        let with = |dict: &str| {
            let mut b = b"\x93NUMPY\x01\x00".to_vec();
            b.extend_from_slice(&(dict.len() as u16).to_le_bytes());
            b.extend_from_slice(dict.as_bytes());
            b.extend_from_slice(&[0; 24]);
            b
        };
        let ok = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n";
        assert_eq!(parse(&with(ok), 3, 10).unwrap().data, vec![0.0; 6]);
        let e = |from: &str, to: &str| err(&with(&ok.replace(from, to)), 3, 10).message;
        assert!(e("<f4", ">f4").contains("dtype"));
        assert!(e("False", "True").contains("Fortran"));
        assert!(e("(2, 3)", "(99999999999999999999999, 3)").contains("dimension"));
        assert!(e("(2, 3)", "(1, 2, 3)").contains("expected"));
        assert!(e("'shape'", "'shapes'").contains("unknown header key"));
        assert!(e("}", "} x").contains("after"));
        let nan = encode(1, 2, &[1.0, f32::NAN]);
        assert!(err(&nan, 2, 1).message.contains("column 2"));
    }
}
