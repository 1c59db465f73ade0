//! Reading input batches from `.npy` and CSV files, and writing outputs: the command line's, not
//! the core library's (a serving binary brings its own input format).

use std::path::Path;

/// Why an input file could not be read or an output file written: the file and what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The operating system refused.
    #[error("{}: {source}", path.display())]
    Os {
        /// The file.
        path: std::path::PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The contents are not a matrix this tool reads.
    #[error("{}: {message}", path.display())]
    Contents {
        /// The file.
        path: std::path::PathBuf,
        /// What was wrong, and where in the file.
        message: String,
    },
}

/// Result of the readers and writers.
pub type Result<T, E = IoError> = std::result::Result<T, E>;

/// A `[rows, cols]` row-major f32 matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Number of rows (the batch).
    pub rows: usize,
    /// Number of columns (the features).
    pub cols: usize,
    /// `rows * cols` values, row-major.
    pub data: Vec<f32>,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> IoError + '_ {
    move |source| IoError::Os {
        path: path.to_owned(),
        source,
    }
}

fn other(path: &Path, msg: impl std::fmt::Display) -> IoError {
    IoError::Contents {
        path: path.to_owned(),
        message: msg.to_string(),
    }
}

/// The most bytes read from standard input (`-`); a regular file is bounded by its own size.
pub const MAX_STDIN_BYTES: u64 = 1 << 30;

/// The longest `.npy` header accepted, numpy's own default limit (`max_header_size`, numpy 1.24+):
/// real headers of 1-D and 2-D arrays are under 128 bytes.
pub const MAX_NPY_HEADER: usize = 10_000;

/// How to read an input batch.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// The CSV input starts with a header line.
    pub header: bool,
    /// The row width the caller needs (the model's input width), if known: rows of another width
    /// are an error, found before a long line is parsed.
    pub expected_cols: Option<usize>,
    /// Let NaN and infinite values through (by default each is an error naming its row and
    /// column, and so is a finite value that overflows f32, such as `1e39`).
    pub allow_non_finite: bool,
}

/// Read a matrix with default options (see [`read_matrix_with`]) but letting non-finite values
/// through: for reading back outputs.
pub fn read_matrix(path: &Path, header: bool) -> Result<Matrix> {
    read_matrix_with(
        path,
        &ReadOptions {
            header,
            allow_non_finite: true,
            ..ReadOptions::default()
        },
    )
}

/// Read a matrix from `path`, or from standard input when `path` is `-`: a `.npy` array (f32 or
/// f64, 1-D = one row, or 2-D, C order), recognised by its magic bytes, else CSV (one row per
/// line, comma-separated numbers).
///
/// Only regular files and standard input are read (a device such as `/dev/zero` is refused), and
/// standard input at most [`MAX_STDIN_BYTES`]; nothing is allocated beyond what the input holds.
pub fn read_matrix_with(path: &Path, opts: &ReadOptions) -> Result<Matrix> {
    let bytes = read_bounded(path)?;
    let m = if bytes.starts_with(NPY_MAGIC) {
        read_npy(path, &bytes)?
    } else {
        read_csv(path, &bytes, opts)?
    };
    if let Some(cols) = opts.expected_cols
        && m.cols != cols
    {
        return Err(other(
            path,
            format!(
                "rows have {} values, the model takes {cols} input features",
                m.cols
            ),
        ));
    }
    if !opts.allow_non_finite
        && let Some(i) = m.data.iter().position(|v| !v.is_finite())
    {
        return Err(other(
            path,
            format!(
                "row {}, column {}: {} is not a finite f32 (pass --allow-non-finite to run it anyway)",
                i / m.cols.max(1) + 1,
                i % m.cols.max(1) + 1,
                m.data[i]
            ),
        ));
    }
    Ok(m)
}

/// The whole input: a regular file, or standard input up to [`MAX_STDIN_BYTES`].
fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .lock()
            .take(MAX_STDIN_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err(path))?;
        if bytes.len() as u64 > MAX_STDIN_BYTES {
            return Err(other(
                path,
                format!("standard input is longer than {MAX_STDIN_BYTES} bytes"),
            ));
        }
        return Ok(bytes);
    }
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let meta = file.metadata().map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(other(
            path,
            "not a regular file (devices, directories and pipes are not read; use - for standard input)",
        ));
    }
    let mut bytes = Vec::new();
    // Bounded by the size the file had when opened, even if it grows while being read.
    file.take(meta.len())
        .read_to_end(&mut bytes)
        .map_err(io_err(path))?;
    Ok(bytes)
}

const NPY_MAGIC: &[u8] = b"\x93NUMPY";

fn read_npy(path: &Path, bytes: &[u8]) -> Result<Matrix> {
    // The header length is read (and bounded) before npyz parses anything.
    let header_len = match bytes.get(6..8) {
        Some([1, _]) => bytes
            .get(8..10)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize),
        Some([2 | 3, _]) => bytes
            .get(8..12)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize),
        _ => return Err(other(path, "not a valid .npy file: unknown version")),
    }
    .ok_or_else(|| other(path, "not a valid .npy file: truncated header"))?;
    if header_len > MAX_NPY_HEADER {
        return Err(other(
            path,
            format!(
                "not a valid .npy file: header of {header_len} bytes (the limit is {MAX_NPY_HEADER})"
            ),
        ));
    }
    let npy = npyz::NpyFile::new(bytes).map_err(|e| {
        other(
            path,
            format!("not a valid .npy file: {}", one_line(&e.to_string())),
        )
    })?;
    if npy.order() != npyz::Order::C {
        return Err(other(
            path,
            "Fortran-order arrays are not supported; save with C order",
        ));
    }
    let shape = npy.shape().to_vec();
    let (rows, cols) = match shape[..] {
        [n] => (1, n),
        [r, c] => (r, c),
        _ => {
            return Err(other(
                path,
                format!("array has shape {shape:?}, expected [features] or [batch, features]"),
            ));
        }
    };
    // `descr()` is the Python literal, quotes included: '<f4'.
    let descr = npy.dtype().descr();
    let size = match descr.trim_matches('\'') {
        "<f4" => 4,
        "<f8" => 8,
        d => {
            return Err(other(
                path,
                format!("dtype {d} is not supported; use float32 or float64"),
            ));
        }
    };
    // The data the header claims must be in the file before anything is allocated for it.
    let claimed = rows.checked_mul(cols).and_then(|n| n.checked_mul(size));
    let available = (bytes.len() as u64).saturating_sub(header_len as u64);
    if claimed.is_none_or(|c| c > available) {
        return Err(other(
            path,
            format!(
                "array data is shorter than its shape {shape:?} ({available} bytes in the file)"
            ),
        ));
    }
    let (rows, cols) = (
        usize::try_from(rows).map_err(|_| other(path, "too many rows"))?,
        usize::try_from(cols).map_err(|_| other(path, "too many columns"))?,
    );
    let data: Vec<f32> = if size == 4 {
        npy.into_vec::<f32>()
    } else {
        npy.into_vec::<f64>()
            .map(|v| v.into_iter().map(|x| x as f32).collect())
    }
    .map_err(|e| {
        other(
            path,
            format!("reading the array data: {}", one_line(&e.to_string())),
        )
    })?;
    if Some(data.len()) != rows.checked_mul(cols) {
        return Err(other(path, "array data is shorter than its shape"));
    }
    Ok(Matrix { rows, cols, data })
}

/// The longest CSV line accepted: 64 KiB, or 48 bytes per expected value (a `-1.2345678e-38,`
/// is 15), whichever is larger. A longer line is refused before it is parsed, so a file of one
/// huge line cannot make the parser hold many times its size.
fn max_csv_line(expected_cols: Option<usize>) -> usize {
    expected_cols.map_or(usize::MAX, |c| c.saturating_mul(48).max(64 << 10))
}

fn read_csv(path: &Path, bytes: &[u8], opts: &ReadOptions) -> Result<Matrix> {
    let max_line = max_csv_line(opts.expected_cols);
    for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.len() > max_line {
            return Err(other(
                path,
                format!(
                    "line {} is {} bytes long, more than {max_line} for {} values",
                    n + 1,
                    line.len(),
                    opts.expected_cols.unwrap_or(0)
                ),
            ));
        }
    }
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(opts.header)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let mut data = Vec::new();
    let mut cols = None;
    let mut rows = 0;
    let mut rec = csv::StringRecord::new();
    let mut r = 0;
    loop {
        match rdr.read_record(&mut rec) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(other(path, one_line(&e.to_string()))),
        }
        let line = rec.position().map_or(r + 1, |p| p.line() as usize);
        match cols {
            None => cols = Some(rec.len()),
            Some(c) if c != rec.len() => {
                return Err(other(
                    path,
                    format!(
                        "line {line} has {} values, earlier lines have {c}",
                        rec.len()
                    ),
                ));
            }
            _ => {}
        }
        if let Some(want) = opts.expected_cols
            && rec.len() != want
        {
            return Err(other(
                path,
                format!(
                    "line {line} has {} values, the model takes {want} input features",
                    rec.len()
                ),
            ));
        }
        for (c, field) in rec.iter().enumerate() {
            let v: f32 = field.parse().map_err(|_| {
                other(
                    path,
                    format!(
                        "line {line}, column {}: '{}' is not a number{}",
                        c + 1,
                        one_line(&field.chars().take(40).collect::<String>()),
                        if r == 0 && !opts.header {
                            " (if this is a header line, pass --header)"
                        } else {
                            ""
                        }
                    ),
                )
            })?;
            data.push(v);
        }
        rows += 1;
        r += 1;
    }
    match cols {
        Some(cols) if rows > 0 && cols > 0 => Ok(Matrix { rows, cols, data }),
        _ => Err(other(path, "no data rows")),
    }
}

/// `s` on one line: line breaks and other control characters escaped.
fn one_line(s: &str) -> String {
    crate::text::escape(s, usize::MAX)
}

/// Write a matrix as a 2-D f32 `.npy` file, or to standard output when `path` is `-`.
pub fn write_npy(path: &Path, m: &Matrix) -> Result<()> {
    use npyz::WriterBuilder;
    let sink: Box<dyn std::io::Write> = if path.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::fs::File::create(path).map_err(io_err(path))?)
    };
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[m.rows as u64, m.cols as u64])
        .writer(std::io::BufWriter::new(sink))
        .begin_nd()
        .map_err(io_err(path))?;
    w.extend(m.data.iter().copied()).map_err(io_err(path))?;
    w.finish().map_err(io_err(path))
}

/// Write a matrix as CSV (shortest round-trip representation of each f32) to `out`.
pub fn write_csv(out: &mut impl std::io::Write, m: &Matrix) -> std::io::Result<()> {
    for row in m.data.chunks(m.cols.max(1)) {
        let mut first = true;
        for v in row {
            if !first {
                out.write_all(b",")?;
            }
            first = false;
            write!(out, "{v}")?;
        }
        out.write_all(b"\n")?;
    }
    Ok(())
}
