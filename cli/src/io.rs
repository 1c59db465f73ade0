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

/// Read a matrix from `path`: `.npy` (f32 or f64, 1-D = one row, or 2-D, C order) by extension,
/// anything else as CSV (one row per line, comma-separated numbers; `header` skips a first line).
pub fn read_matrix(path: &Path, header: bool) -> Result<Matrix> {
    let is_npy = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    if is_npy {
        read_npy(path)
    } else {
        read_csv(path, header)
    }
}

fn read_npy(path: &Path) -> Result<Matrix> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let npy = npyz::NpyFile::new(&bytes[..])
        .map_err(|e| other(path, format!("not a valid .npy file: {e}")))?;
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
    let (rows, cols) = (
        usize::try_from(rows).map_err(|_| other(path, "too many rows"))?,
        usize::try_from(cols).map_err(|_| other(path, "too many columns"))?,
    );
    // `descr()` is the Python literal, quotes included: '<f4'.
    let descr = npy.dtype().descr();
    let data: Vec<f32> = match descr.trim_matches('\'') {
        "<f4" => npy.into_vec::<f32>(),
        "<f8" => npy
            .into_vec::<f64>()
            .map(|v| v.into_iter().map(|x| x as f32).collect()),
        d => {
            return Err(other(
                path,
                format!("dtype {d} is not supported; use float32 or float64"),
            ));
        }
    }
    .map_err(|e| other(path, format!("reading the array data: {e}")))?;
    if Some(data.len()) != rows.checked_mul(cols) {
        return Err(other(path, "array data is shorter than its shape"));
    }
    Ok(Matrix { rows, cols, data })
}

fn read_csv(path: &Path, header: bool) -> Result<Matrix> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(header)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| other(path, e))?;
    let mut data = Vec::new();
    let mut cols = None;
    let mut rows = 0;
    for (r, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| other(path, e))?;
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
        for (c, field) in rec.iter().enumerate() {
            let v: f32 = field.parse().map_err(|_| {
                other(
                    path,
                    format!(
                        "line {line}, column {}: '{field}' is not a number{}",
                        c + 1,
                        if r == 0 && !header {
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
    }
    match cols {
        Some(cols) if rows > 0 && cols > 0 => Ok(Matrix { rows, cols, data }),
        _ => Err(other(path, "no data rows")),
    }
}

/// Write a matrix as a 2-D f32 `.npy` file.
pub fn write_npy(path: &Path, m: &Matrix) -> Result<()> {
    use npyz::WriterBuilder;
    let file = std::fs::File::create(path).map_err(io_err(path))?;
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[m.rows as u64, m.cols as u64])
        .writer(std::io::BufWriter::new(file))
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
