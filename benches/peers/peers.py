#!/usr/bin/env python3
"""bnfold against ONNX Runtime on the same seeded networks, in one run, beside the machine's
measured FMA peak and read bandwidth.

For each network shape (the tutorial's 1 -> 7x(30, BN, act) -> 1, the 784 -> 3x(1024, BN, act) -> 10
classifier shape and the 4096 -> 4x(4096, BN, act) -> 4096 memory-bound shape), with tanh and relu:

1. draws seeded weights and non-trivial BN statistics with numpy;
2. writes them as a bnfold weight file (this script's own writer, from docs/FORMAT.md alone), as
   an ONNX graph with BatchNormalization nodes (what the PyTorch exporter produces: Gemm transB=1,
   BatchNormalization, activation), and as a pre-folded ONNX graph (BN folded into the Gemm in f64);
3. checks that bnfold (folded and unfolded, `bnfold run`), ONNX Runtime on both graphs and a numpy
   f64 forward pass give the same outputs;
4. times ONNX Runtime (ORT_ENABLE_ALL, intra-op threads 1 or 2) and `bnfold bench --json` (pool 1 or
   2) alternately, configuration by configuration (ORT on the BN graph, bnfold folded and
   unfolded, ORT on the pre-folded graph), so that drift of the machine hits all alike;
5. runs `bnfold probe --json` (FMA peak and read bandwidth on 1 and 2 threads, the kernel's rate on 1, the kernel path,
   the CPU, the load average) at the start, between shapes and at the end, and records every probe;
6. derives for every configuration and runtime: rows/s, GFLOP/s (2 x batch x the dense weights),
   the fraction of the median measured FMA peak for the thread count, and at batch 1 and 8 the
   weight bandwidth (bytes of f32 dense weights and biases per call / median time) as a fraction
   of the median measured read bandwidth for the thread count;
7. measures the cost of one ORT call from Python on an Identity graph (the floor under every ORT
   batch-1 figure);
8. measures loading on the relu networks (`--load-rounds`, each runtime in a fresh process): bnfold
   from the path to a ready folded plan (`bnfold bench --load`, f32 weights, and f16 and bf16 on the
   wide shape) beside the time to read the file's bytes, and ORT's session creation on both graphs,
   with each process's resident set before loading and its peak (Linux).

Prints a Markdown table and writes everything as JSON (`--json-out`); `benches/peers/report.py`
turns that JSON into the tables, the targets, the machine section and the throughput plot of
docs/BENCHMARKS.md. Run from the repository root with the pinned environment
(benches/peers/requirements.txt), on a machine as quiet as you can get:

    python3 -m venv /tmp/peers && /tmp/peers/bin/pip install -r benches/peers/requirements.txt
    cargo build --release -p bnfold-cli
    target/release/bnfold probe
    /tmp/peers/bin/python benches/peers/peers.py --json-out /tmp/peers.json
    /tmp/peers/bin/python benches/peers/report.py /tmp/peers.json \
        --png docs/benchmarks/throughput.png --md /tmp/benchmarks.md

`--quick` runs the small shapes only, at fewer batches; `--shapes tutorial --threads 1
--min-time 0.05` is a smoke test of the tooling (seconds), not a measurement.
"""

import argparse
import json
import os
import platform
import struct
import subprocess
import sys
import tempfile
import time
import zlib

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

EPS = 1e-3

# ---------------------------------------------------------------------------------------------
# Networks


def make_network(input_width, hidden, output, act, seed, input_bn):
    """Seeded weights (He-style), biases and BN statistics, as f32 numpy arrays.

    Returns a list of layers: ("bn", gamma, beta, mean, var), ("dense", W[out, in], b), ("act", name).
    """
    rng = np.random.default_rng(seed)
    layers = []

    def bn(n):
        gamma = rng.uniform(0.5, 1.5, n).astype(np.float32)
        beta = rng.uniform(-0.5, 0.5, n).astype(np.float32)
        mean = rng.uniform(-1.0, 1.0, n).astype(np.float32)
        var = rng.uniform(0.25, 4.0, n).astype(np.float32)
        return ("bn", gamma, beta, mean, var)

    def dense(n_in, n_out):
        s = np.sqrt(2.0 / n_in)
        w = rng.uniform(-s, s, (n_out, n_in)).astype(np.float32)
        b = rng.uniform(-0.1, 0.1, n_out).astype(np.float32)
        return ("dense", w, b)

    if input_bn:
        layers.append(bn(input_width))
    width = input_width
    for h in hidden:
        layers.append(dense(width, h))
        layers.append(bn(h))
        layers.append(("act", act))
        width = h
    layers.append(dense(width, output))
    return layers


def forward_f64(layers, x):
    y = x.astype(np.float64)
    for layer in layers:
        if layer[0] == "dense":
            y = y @ layer[1].astype(np.float64).T + layer[2].astype(np.float64)
        elif layer[0] == "bn":
            g, b, m, v = (a.astype(np.float64) for a in layer[1:])
            y = g * (y - m) / np.sqrt(v + np.float64(EPS)) + b
        elif layer[1] == "relu":
            y = np.where(y < 0, 0.0, y)
        else:
            y = np.tanh(y)
    return y


# ---------------------------------------------------------------------------------------------
# bnfold weight file, written from docs/FORMAT.md


def write_bnw(path, input_width, layers, metadata):
    def s(text):
        b = text.encode()
        return struct.pack("<I", len(b)) + b

    tensors = []  # (name, array f32)
    table_layers = b""
    for i, layer in enumerate(layers):
        name = f"l{i}"
        if layer[0] == "dense":
            w, b = layer[1], layer[2]
            wi, bi = len(tensors), len(tensors) + 1
            tensors += [(f"{name}.weight", w), (f"{name}.bias", b)]
            table_layers += s(name) + struct.pack("<BIIII", 1, w.shape[1], w.shape[0], wi, bi)
        elif layer[0] == "bn":
            g, b, m, v = layer[1:]
            k = len(tensors)
            tensors += [(f"{name}.gamma", g), (f"{name}.beta", b), (f"{name}.mean", m), (f"{name}.var", v)]
            table_layers += s(name) + struct.pack("<BIdIIII", 2, len(g), EPS, k, k + 1, k + 2, k + 3)
        else:
            code = {"relu": 1, "tanh": 3}[layer[1]]
            table_layers += s(name) + struct.pack("<BBf", 3, code, 0.0)

    meta = struct.pack("<I", len(metadata)) + b"".join(s(k) + s(v) for k, v in metadata)
    ttab = struct.pack("<I", len(tensors))
    offset = 0
    data = bytearray()
    for name, arr in tensors:
        raw = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        ttab += s(name) + struct.pack("<BB", 1, arr.ndim)
        ttab += b"".join(struct.pack("<Q", d) for d in arr.shape)
        ttab += struct.pack("<QQ", offset, len(raw))
        data += raw
        end = offset + len(raw)
        offset = (end + 63) // 64 * 64
        data += b"\0" * (offset - end)
    # The last tensor ends the file: no padding after it.
    data = bytes(data[:end]) if tensors else b""
    table = meta + ttab + struct.pack("<II", input_width, len(layers)) + table_layers
    data_offset = (64 + len(table) + 63) // 64 * 64
    header = bytearray(64)
    header[0:8] = b"\x89BNW\r\n\x1a\n"
    struct.pack_into("<HHIQQQ", header, 8, 1, 0, 0, len(table), data_offset, len(data))
    body = bytes(header) + table + b"\0" * (data_offset - 64 - len(table)) + data
    crc = zlib.crc32(body) & 0xFFFFFFFF  # checksum field is zero here
    body = body[:40] + struct.pack("<I", crc) + body[44:]
    with open(path, "wb") as f:
        f.write(body)


# ---------------------------------------------------------------------------------------------
# ONNX graphs


def to_onnx(layers, input_width, path, fold):
    nodes, inits = [], []
    cur = "x"
    pending = list(layers)
    if fold:
        pending = fold_layers(layers)
    for i, layer in enumerate(pending):
        out = f"h{i}"
        if layer[0] == "dense":
            inits += [numpy_helper.from_array(layer[1], f"w{i}"), numpy_helper.from_array(layer[2], f"b{i}")]
            nodes.append(helper.make_node("Gemm", [cur, f"w{i}", f"b{i}"], [out], transB=1))
        elif layer[0] == "bn":
            names = [f"g{i}", f"be{i}", f"m{i}", f"v{i}"]
            inits += [numpy_helper.from_array(a, n) for a, n in zip(layer[1:], names)]
            nodes.append(helper.make_node("BatchNormalization", [cur] + names, [out], epsilon=EPS))
        elif layer[0] == "affine":
            inits += [numpy_helper.from_array(layer[1], f"s{i}"), numpy_helper.from_array(layer[2], f"t{i}")]
            nodes.append(helper.make_node("Mul", [cur, f"s{i}"], [out + "m"]))
            nodes.append(helper.make_node("Add", [out + "m", f"t{i}"], [out]))
        else:
            nodes.append(helper.make_node({"relu": "Relu", "tanh": "Tanh"}[layer[1]], [cur], [out]))
        cur = out
    nodes.append(helper.make_node("Identity", [cur], ["y"]))
    out_width = [l for l in layers if l[0] == "dense"][-1][1].shape[0]
    graph = helper.make_graph(
        nodes,
        "peers",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", input_width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", out_width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)


def fold_layers(layers):
    """BN folded into the neighbouring Gemm in f64 (backward after a dense layer, forward into the
    first one for an input BN), rounded once to f32: what a pre-folding exporter gives ORT."""
    out = []
    pre = None
    i = 0
    while i < len(layers):
        layer = layers[i]
        if layer[0] == "bn" and (i == 0 or layers[i - 1][0] != "dense"):
            g, b, m, v = (a.astype(np.float64) for a in layer[1:])
            s = g / np.sqrt(v + EPS)
            pre = (s, b - m * s)
            i += 1
            continue
        if layer[0] == "dense":
            w, bias = layer[1].astype(np.float64), layer[2].astype(np.float64)
            if pre is not None:
                bias = bias + w @ pre[1]
                w = w * pre[0][None, :]
                pre = None
            if i + 1 < len(layers) and layers[i + 1][0] == "bn":
                g, b, m, v = (a.astype(np.float64) for a in layers[i + 1][1:])
                s = g / np.sqrt(v + EPS)
                w = w * s[:, None]
                bias = bias * s + (b - m * s)
                i += 1
            out.append(("dense", w.astype(np.float32), bias.astype(np.float32)))
        else:
            out.append(layer)
        i += 1
    return out


# ---------------------------------------------------------------------------------------------
# Timing


def ort_session(path, threads):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def time_ort(sess, x, min_time):
    for _ in range(3):
        sess.run(None, {"x": x})
    times = []
    start = time.perf_counter()
    while len(times) < 10 or (time.perf_counter() - start < min_time and len(times) < 100000):
        t = time.perf_counter()
        sess.run(None, {"x": x})
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e6, float(np.percentile(times, 99)) * 1e6


def time_bnfold(bnfold, path, batch, threads, min_time):
    out = subprocess.run(
        [bnfold, "bench", path, "--batch", str(batch), "--pool", str(threads), "--json",
         "--time-ms", str(int(min_time * 1000)), "--max-memory-mib", "8192"],
        check=True, capture_output=True, text=True,
    ).stdout
    rows = json.loads(out)
    return {r["mode"]: (r["p50_us"], r["p99_us"], r["kernel"]) for r in rows}


# Creating an ORT session in a fresh Python process, as `bnfold bench --load` loads in a fresh
# process: same session options as `ort_session`; the resident set before the first session
# (Python, numpy and ORT's libraries) and the peak after each (Linux's VmRSS and VmHWM).
ORT_LOAD = r"""
import json, sys, time
import onnxruntime as ort

def status(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None

path, rounds, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
base = status("VmRSS")
out = []
for r in range(rounds):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    t = time.perf_counter()
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    out.append({"round": r, "total_ms": (time.perf_counter() - t) * 1e3,
                "peak_rss_bytes": status("VmHWM"), "base_rss_bytes": base})
    del sess
print(json.dumps(out))
"""


def time_load(bnfold, bnw, graphs, rounds, weights):
    """Load times and peaks: `bnfold bench --load` for each precision in `weights`, then ORT's
    session creation for each (label, path) of `graphs`, each in a fresh process."""
    out = {}
    for w in weights:
        res = subprocess.run([bnfold, "bench", bnw, "--load", "--rounds", str(rounds), "--weights", w, "--json"],
                             check=True, capture_output=True, text=True).stdout
        out["bnfold_" + w] = json.loads(res)
    for label, path in graphs:
        res = subprocess.run([sys.executable, "-c", ORT_LOAD, path, str(rounds), "1"],
                             check=True, capture_output=True, text=True).stdout
        out[label] = json.loads(res)
    return out


def identity_floor(tmp):
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "id",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
    )
    path = os.path.join(tmp, "identity.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return time_ort(ort_session(path, 1), np.zeros((1, 1), np.float32), 0.5)[0]


def machine():
    info = {"platform": platform.platform(), "python": sys.version.split()[0],
            "onnxruntime": ort.__version__, "numpy": np.__version__}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        info["cpu"] = next(l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("model name"))
        flags = next(l for l in text.splitlines() if l.startswith("flags"))
        info["avx512f"] = " avx512f" in flags
        info["avx2"] = " avx2" in flags
    except (OSError, StopIteration):
        pass
    info["loadavg"] = os.getloadavg()
    return info


def probe(bnfold, label, time_ms, read_mib):
    """`bnfold probe --json`, labelled, with the UTC time it was taken."""
    out = subprocess.run(
        [bnfold, "probe", "--json", "--time-ms", str(time_ms), "--read-mib", str(read_mib)],
        check=True, capture_output=True, text=True,
    ).stdout
    p = json.loads(out)
    p["label"] = label
    p["utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(p.get("unix_time", time.time())))
    print(f"probe ({label}): FMA {p['fma_gflops_1t']:.1f} / {p['fma_gflops_2t']:.1f} GFLOP/s (1t / 2t, "
          f"ratio {p['fma_2t_over_1t']:.2f}), read {p['read_gbs_1t']:.1f} / {p['read_gbs_2t']:.1f} GB/s, "
          f"kernel {p.get('kernel_over_fma_1t', float('nan')):.0%} of the 1t peak, load {p.get('loadavg')}",
          file=sys.stderr)
    return p


def probe_medians(probes):
    """Median over the probes of the FMA peak (GFLOP/s) and the read bandwidth (GB/s), per thread
    count, with the spread (min, max) beside."""
    med = {}
    for t in (1, 2):
        fma = [p[f"fma_gflops_{t}t"] for p in probes]
        bw = [p[f"read_gbs_{t}t"] for p in probes]
        med[str(t)] = {
            "fma_gflops": float(np.median(fma)), "fma_gflops_min": min(fma), "fma_gflops_max": max(fma),
            "read_gbs": float(np.median(bw)), "read_gbs_min": min(bw), "read_gbs_max": max(bw),
        }
    return med


RUNTIMES = ("bnfold_folded", "bnfold_unfolded", "ort_bn", "ort_folded")
BANDWIDTH_BATCHES = (1, 8)


def derive(run, medians):
    """Rows/s, GFLOP/s, fraction of the FMA peak and (batch 1 and 8) of the read bandwidth, per
    runtime, from the median times and the probes' medians for the run's thread count."""
    m = medians.get(str(run["threads"]))
    run["rows_per_s"], run["gflops"], run["peak_fraction"] = {}, {}, {}
    if run["batch"] in BANDWIDTH_BATCHES:
        run["weight_gbs"], run["bandwidth_fraction"] = {}, {}
    for k in RUNTIMES:
        us = run[k + "_us"]
        run["rows_per_s"][k] = run["batch"] / (us * 1e-6)
        g = run["flop"] / us / 1e3
        run["gflops"][k] = g
        run["peak_fraction"][k] = g / m["fma_gflops"] if m else None
        if run["batch"] in BANDWIDTH_BATCHES:
            gbs = run["weight_bytes"] / us / 1e3
            run["weight_gbs"][k] = gbs
            run["bandwidth_fraction"][k] = gbs / m["read_gbs"] if m else None


def git_state():
    """The commit checked out and whether the tree has uncommitted changes (None, None outside git)."""
    try:
        run = lambda *a: subprocess.run(["git", *a], check=True, capture_output=True, text=True).stdout  # noqa: E731
        return run("rev-parse", "HEAD").strip(), bool(run("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.CalledProcessError):
        return None, None


SHAPES = {
    "tutorial": (1, [30] * 7, 1, True, [1, 8, 64, 256, 1024]),
    "mnist": (784, [1024] * 3, 10, False, [1, 8, 64, 256, 1024]),
    "wide": (4096, [4096] * 4, 4096, False, [1, 8, 64, 256]),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bnfold", default="target/release/bnfold")
    ap.add_argument("--json-out")
    ap.add_argument("--quick", action="store_true", help="small shapes, batches 1, 64 and 1024")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds per configuration and runtime")
    ap.add_argument("--load-rounds", type=int, default=3,
                    help="loads per runtime and network (relu networks; 0: none): bnfold's path to plan, ORT's session")
    ap.add_argument("--probe-ms", type=int, default=250, help="`bnfold probe --time-ms` (each of its four probes)")
    ap.add_argument("--probe-read-mib", type=int, default=256, help="`bnfold probe --read-mib`")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    shapes = args.shapes.split(",")
    if args.quick:
        shapes = [s for s in shapes if s != "wide"]

    commit, dirty = git_state()
    version = subprocess.run([args.bnfold, "--version"], check=True, capture_output=True, text=True).stdout.strip()
    results = {
        "machine": machine(), "bnfold_version": version, "git_commit": commit, "git_dirty": dirty,
        "command": sys.argv, "args": vars(args),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "networks": {}, "probes": [], "runs": [], "loads": [],
    }

    def take_probe(label):
        results["probes"].append(probe(args.bnfold, label, args.probe_ms, args.probe_read_mib))

    with tempfile.TemporaryDirectory() as tmp:
        take_probe("start")
        results["ort_call_floor_us"] = identity_floor(tmp)
        for si, shape in enumerate(shapes):
            if si > 0:
                take_probe(f"between {shapes[si - 1]} and {shape}")
            n_in, hidden, n_out, input_bn, batches = SHAPES[shape]
            if args.quick:
                batches = [b for b in batches if b in (1, 64, 1024)]
            for act in ("tanh", "relu"):
                layers = make_network(n_in, hidden, n_out, act, seed=7, input_bn=input_bn)
                name = f"{shape}-{act}"
                dense = [l for l in layers if l[0] == "dense"]
                results["networks"][name] = {
                    "input": n_in, "hidden": hidden, "output": n_out, "input_bn": input_bn,
                    "activation": act,
                    # f32 weights and biases of the folded network's dense layers, read at least
                    # once per call.
                    "weight_bytes": 4 * sum(l[1].size + l[2].size for l in dense),
                    "flop_per_row": 2 * sum(l[1].size for l in dense),
                }
                bnw = os.path.join(tmp, name + ".bnw")
                write_bnw(bnw, n_in, layers, [("producer", "benches/peers/peers.py"), ("seed", "7")])
                bn_onnx, folded_onnx = (os.path.join(tmp, name + s) for s in (".bn.onnx", ".folded.onnx"))
                to_onnx(layers, n_in, bn_onnx, fold=False)
                to_onnx(layers, n_in, folded_onnx, fold=True)

                # Same outputs everywhere (normwise relative to the f64 forward pass).
                x = np.random.default_rng(1).uniform(-2, 2, (16, n_in)).astype(np.float32)
                want = forward_f64(layers, x)
                scale = np.abs(want).max()
                xs = os.path.join(tmp, "x.npy")
                np.save(xs, x)
                errs = {}
                for mode in ("folded", "unfolded"):
                    ys = os.path.join(tmp, f"y-{mode}.npy")
                    cmd = [args.bnfold, "run", bnw, "-i", xs, "-o", ys] + (["--unfolded"] if mode == "unfolded" else [])
                    subprocess.run(cmd, check=True)
                    errs["bnfold_" + mode] = float(np.abs(np.load(ys) - want).max() / scale)
                for label, path in (("ort_bn", bn_onnx), ("ort_folded", folded_onnx)):
                    y = ort_session(path, 1).run(None, {"x": x})[0]
                    errs[label] = float(np.abs(y - want).max() / scale)
                worst = max(errs.values())
                print(f"{name}: normwise error vs f64 {errs}", file=sys.stderr)
                if worst > 1e-4:
                    sys.exit(f"{name}: outputs disagree (worst normwise {worst:e})")

                # Loading (the activation does not change it: the relu networks only).
                if act == "relu" and args.load_rounds > 0:
                    load = time_load(args.bnfold, bnw, (("ort_bn", bn_onnx), ("ort_folded", folded_onnx)),
                                     args.load_rounds, ["f32", "f16", "bf16"] if shape == "wide" else ["f32"])
                    entry = {"network": name, "file_bytes": os.path.getsize(bnw),
                             "onnx_bytes": os.path.getsize(bn_onnx), "measurements": load}
                    results["loads"].append(entry)
                    print(json.dumps({k: [round(r["total_ms"], 1) for r in v] for k, v in load.items()}),
                          file=sys.stderr)

                for t in threads:
                    sess_bn, sess_f = ort_session(bn_onnx, t), ort_session(folded_onnx, t)
                    for batch in batches:
                        xb = np.random.default_rng(batch).uniform(-1, 1, (batch, n_in)).astype(np.float32)
                        # Alternate: ORT, bnfold, ORT pre-folded.
                        ob = time_ort(sess_bn, xb, args.min_time)
                        bf = time_bnfold(args.bnfold, bnw, batch, t, args.min_time)
                        of = time_ort(sess_f, xb, args.min_time)
                        run = {
                            "network": name, "batch": batch, "threads": t,
                            "flop": batch * results["networks"][name]["flop_per_row"],
                            "weight_bytes": results["networks"][name]["weight_bytes"],
                            "ort_bn_us": ob[0], "ort_folded_us": of[0],
                            "bnfold_folded_us": bf["folded"][0], "bnfold_unfolded_us": bf["unfolded"][0],
                            "ort_bn_p99_us": ob[1], "ort_folded_p99_us": of[1],
                            "bnfold_folded_p99_us": bf["folded"][1], "bnfold_unfolded_p99_us": bf["unfolded"][1],
                            "bnfold_kernel": bf["folded"][2],
                        }
                        run["vs_best_ort"] = min(ob[0], of[0]) / run["bnfold_folded_us"]
                        results["runs"].append(run)
                        print(json.dumps(run), file=sys.stderr)

        take_probe("end")
    results["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results["probe_median"] = medians = probe_medians(results["probes"])
    for run in results["runs"]:
        derive(run, medians)
    kernels = sorted({r["bnfold_kernel"] for r in results["runs"]})
    results["bnfold_kernel"] = kernels[0] if len(kernels) == 1 else kernels

    print(f"\nMachine: {results['machine']}")
    print(f"bnfold kernel path: {results['bnfold_kernel']}; probe medians: {medians}")
    print(f"ORT call floor from Python (Identity graph, batch 1): {results['ort_call_floor_us']:.1f} us\n")
    print("| network | batch | threads | bnfold folded | bnfold unfolded | ORT (BN graph) | ORT (pre-folded) | bnfold vs best ORT | bnfold rows/s | bnfold GFLOP/s | % FMA peak |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results["runs"]:
        pf = r["peak_fraction"]["bnfold_folded"]
        print(f"| {r['network']} | {r['batch']} | {r['threads']} | {r['bnfold_folded_us']:.1f} us | "
              f"{r['bnfold_unfolded_us']:.1f} us | {r['ort_bn_us']:.1f} us | {r['ort_folded_us']:.1f} us | "
              f"{r['vs_best_ort']:.2f}x | {r['rows_per_s']['bnfold_folded']:.0f} | "
              f"{r['gflops']['bnfold_folded']:.1f} | {'-' if pf is None else f'{100 * pf:.1f}%'} |")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
