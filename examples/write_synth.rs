//! Write a seeded synthetic network (`bnfold::synth::mlp`: Dense, BN and the activation per hidden
//! layer, non-trivial BN statistics) to a file, for `bnfold bench`, `bnfold verify` and peers.
//!
//!     cargo run --release --example write_synth -- OUT.bnw ACTIVATION INPUTS HIDDEN OUTPUTS [SEED]
//!
//! `HIDDEN` is comma-separated widths, with `WxN` for N layers of width W: the tutorial's tanh
//! network is `write_synth tanh30.bnw tanh 1 30x7 1 42` (with a BN on the input).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: write_synth OUT.bnw ACTIVATION INPUTS HIDDEN OUTPUTS [SEED]";
    let [out, act, inputs, hidden, outputs, rest @ ..] = &args[..] else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let parse = |s: &str| -> usize {
        s.parse().unwrap_or_else(|_| {
            eprintln!("not a number: {s}\n{usage}");
            std::process::exit(2)
        })
    };
    let act: bnfold::Activation = act.parse().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let mut widths = Vec::new();
    for part in hidden.split(',') {
        match part.split_once('x') {
            Some((w, n)) => widths.extend(std::iter::repeat_n(parse(w), parse(n))),
            None => widths.push(parse(part)),
        }
    }
    let seed = rest.first().map_or(42, |s| parse(s) as u64);
    let bytes = bnfold::synth::mlp(parse(inputs), true, &widths, act, parse(outputs), seed)
        .unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(1)
        });
    std::fs::write(out, &bytes).unwrap_or_else(|e| {
        eprintln!("{out}: {e}");
        std::process::exit(1)
    });
    println!("{out}: {} bytes", bytes.len());
}
