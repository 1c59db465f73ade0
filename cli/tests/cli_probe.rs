//! `bnfold probe`: the machine's FMA peak and read bandwidth, as JSON for the benchmark scripts
//! (`benches/peers/peers.py` records it beside every figure) and as text.

use std::process::Command;

fn bnfold() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bnfold"))
}

#[test]
fn probe_json_has_positive_finite_figures() {
    // A 16 MiB buffer instead of the default 256: a debug build reads a few hundred MB/s, and
    // the probe reads the buffer at least four times per thread count.
    let out = bnfold()
        .args(["probe", "--json", "--time-ms", "20", "--read-mib", "16"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "fma_gflops_1t",
        "fma_gflops_2t",
        "fma_2t_over_1t",
        "read_gbs_1t",
        "read_gbs_2t",
        "read_2t_over_1t",
        "kernel_gflops_1t",
        "kernel_over_fma_1t",
    ] {
        let x = v[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing: {v}"));
        assert!(x.is_finite() && x > 0.0, "{key} = {x}");
    }
    // Two threads can neither do much worse than one nor more than twice (plus noise).
    let ratio = v["fma_2t_over_1t"].as_f64().unwrap();
    assert!((0.2..2.6).contains(&ratio), "{ratio}");
    assert_eq!(v["time_ms"], 20);
    assert_eq!(v["read_bytes"], 16 << 20);
    // The probed path is auto's, one of the supported ones, which are named by the code.
    let kernel = v["kernel"].as_str().unwrap();
    assert_eq!(kernel, bnfold::KernelChoice::Auto.resolve().name());
    let supported: Vec<&str> = v["supported_kernels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let want: Vec<&str> = bnfold::Isa::supported().iter().map(|i| i.name()).collect();
    assert_eq!(supported, want);
    assert!(v["logical_cpus"].as_u64().unwrap() >= 1);
    assert!(v["unix_time"].as_u64().unwrap() > 1_600_000_000);
    // Present, null where the platform has no /proc.
    for key in ["cpu_model", "loadavg"] {
        assert!(v.get(key).is_some(), "{key} missing: {v}");
    }
    // The caches the kernels were blocked for, and the blocking, as the library derives them.
    let caches = bnfold::kernels::Caches::detect();
    assert_eq!(v["caches"]["l1d"], caches.l1d);
    assert_eq!(v["caches"]["l2"], caches.l2);
    assert_eq!(v["caches"]["l3_share"], caches.l3_share);
    let isa = bnfold::KernelChoice::Auto.resolve();
    for (key, dtype) in [
        ("f32", bnfold::DType::F32),
        ("f16_bf16", bnfold::DType::F16),
    ] {
        let b = bnfold::kernels::blocking_for(isa, dtype, &caches);
        assert_eq!(v["blocking"][key]["kc"], b.kc, "{key}");
        assert_eq!(v["blocking"][key]["mc"], b.mc, "{key}");
        assert_eq!(v["blocking"][key]["nc"], b.nc, "{key}");
    }
    if std::path::Path::new("/proc/loadavg").exists() {
        let l = v["loadavg"].as_array().unwrap();
        assert_eq!(l.len(), 3);
        assert!(l.iter().all(|x| x.as_f64().is_some_and(|x| x >= 0.0)));
    }
}

#[test]
fn probe_text_names_the_figures() {
    let out = bnfold()
        .args(["probe", "--time-ms", "5", "--read-mib", "4"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in ["kernel path", "GFLOP/s", "GB/s", "2t/1t", "of the FMA peak"] {
        assert!(text.contains(needle), "{needle} missing: {text}");
    }
    let out = bnfold().args(["probe", "--time-ms", "0"]).output().unwrap();
    assert!(!out.status.success());
}
