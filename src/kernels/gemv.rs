//! Narrow dense layers (fewer output features than a vector has lanes) in their stored row layout.
//!
//! The panel layout of `gemm.rs` puts output features along the vector lanes, so a layer with
//! `n < LANES` outputs would be padded to a whole panel: `LANES / n` times its f32 size (16x for
//! `Dense(k -> 1)` on AVX-512). Here the weights stay `[n, k]` row-major (exactly their f32 size,
//! plus the bias), and each output is a dot product along `k`, vectorised over `k`: for each input
//! row, blocks of up to [`OUTS`] outputs share every load of the input. Sums run in a fixed order
//! (lane-wise along `k`, then the lanes in index order), whatever the thread count.

use super::EpilogueOp;
use super::simd::{Simd, lanes};

/// Outputs computed together per input row: their accumulators and the shared input vector stay
/// in registers (4 + 1 + 4 of 16 on AVX2), 5 loads per 4 FMAs.
pub(crate) const OUTS: usize = 4;

/// A narrow layer's weights `[n, k]` row-major and its bias.
#[derive(Debug, Clone)]
pub(crate) struct Rows {
    pub(crate) k: usize,
    pub(crate) n: usize,
    pub(crate) w: Vec<f32>,
    pub(crate) bias: Vec<f32>,
}

impl Rows {
    /// Copy `w` (`[n, k]` row-major) and `bias` (`n`).
    pub(crate) fn new(w: &[f32], bias: &[f32], n: usize, k: usize) -> Rows {
        Rows {
            k,
            n,
            w: w.to_vec(),
            bias: bias.to_vec(),
        }
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        (self.w.len() + self.bias.len()) * 4
    }
}

/// Arguments of one call of a row kernel: rows `rows` of `x` (`[batch, k]`) into `y`, bias
/// added, no epilogue.
pub(crate) struct RowArgs<'a> {
    pub(crate) w: &'a Rows,
    /// The whole input, row `r` at `x + r * k`.
    pub(crate) x: *const f32,
    /// The output rows `rows` only: row `r` at `y + (r - rows.start) * n`.
    pub(crate) y: *mut f32,
    pub(crate) rows: std::ops::Range<usize>,
}

/// A row-kernel entry point for one ISA.
///
/// # Safety
/// The CPU supports the ISA; `x` is valid for `rows.end * k` reads and `y` for `rows.len() * n`
/// writes that no other thread touches.
pub(crate) type RowFn = unsafe fn(&RowArgs<'_>);

/// The body of every ISA's row kernel.
///
/// # Safety
/// As [`RowFn`], with `V` the ISA's vector type.
#[inline(always)]
pub(crate) unsafe fn rows<V: Simd>(t: &RowArgs<'_>) {
    let (k, n, l) = (t.w.k, t.w.n, V::LANES);
    let full = k / l * l;
    // SAFETY: the function contract; every pointer below is inside row `r` of `x` (`k` values),
    // row `o` of the weights (`k` values), or row `r` of `y` (`n` values).
    unsafe {
        for r in t.rows.clone() {
            let xr = t.x.add(r * k);
            let yr = t.y.add((r - t.rows.start) * n);
            let mut o0 = 0;
            while o0 < n {
                let m = OUTS.min(n - o0);
                let w0 = t.w.w.as_ptr().add(o0 * k);
                let mut acc = [V::zero(); OUTS];
                let mut kk = 0;
                while kk < full {
                    let xv = V::load(xr.add(kk));
                    for (j, a) in acc.iter_mut().enumerate().take(m) {
                        *a = V::fma(V::load(w0.add(j * k + kk)), xv, *a);
                    }
                    kk += l;
                }
                if full < k {
                    let xv = V::load_partial(xr.add(full), k - full);
                    for (j, a) in acc.iter_mut().enumerate().take(m) {
                        *a = V::fma(V::load_partial(w0.add(j * k + full), k - full), xv, *a);
                    }
                }
                for (j, a) in acc.iter().enumerate().take(m) {
                    let s = lanes(*a)[..l].iter().fold(0.0f32, |s, v| s + v);
                    *yr.add(o0 + j) = s + t.w.bias[o0 + j];
                }
                o0 += m;
            }
        }
    }
}

/// Whether a layer of `n` outputs takes the row layout on an ISA of `lanes` lanes: when a panel
/// would be less than half full. Every other layer takes panels, whose padding is then below 2x.
pub(crate) fn narrow(n: usize, lanes: usize) -> bool {
    2 * n < lanes
}

/// Apply the epilogue to rows `rows` of `y` (`[batch, n]`), after [`rows`] wrote them.
pub(crate) fn epilogue(y: &mut [f32], n: usize, ops: &[EpilogueOp]) {
    if !ops.is_empty() {
        for row in y.chunks_exact_mut(n) {
            super::apply_epilogue(ops, row, 0);
        }
    }
}
