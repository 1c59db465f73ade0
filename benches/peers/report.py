#!/usr/bin/env python3
"""Tables, targets, machine section and throughput plot of docs/BENCHMARKS.md, from the JSON of
`benches/peers/peers.py --json-out`.

Writes:

- a PNG (`--png`, default docs/benchmarks/throughput.png): one subplot per network (tutorial,
  mnist and wide shapes, tanh and relu), rows/s against batch size (both logarithmic), a line for
  each of bnfold folded, bnfold unfolded, ONNX Runtime on the BN graph and on the pre-folded
  graph, 1 thread solid and 2 threads dashed;
- a Markdown fragment (`--md`, default standard output): the machine (CPU, kernel path, caches and
  blocking where the probe reports them, FMA peaks and read bandwidths on 1 and 2 threads, their
  2t/1t ratios, load averages at every probe, dates, software), one table per network (median
  latencies, ratio to the better ORT graph, rows/s, GFLOP/s, fraction of the FMA peak and, at
  batch 1 and 8, of the read bandwidth), the loading table (`--load-rounds`: time from the file to
  a ready plan or session, the read floor, peak resident memory), the targets with every
  configuration that misses one, and the commands to reproduce.

    /tmp/peers/bin/python benches/peers/report.py /tmp/peers.json \\
        --png docs/benchmarks/throughput.png --md /tmp/benchmarks.md

Needs the standard library and matplotlib only (pinned in benches/peers/requirements.txt).
"""

import argparse
import json
import os
import sys

NETWORKS = ["tutorial-tanh", "tutorial-relu", "mnist-tanh", "mnist-relu", "wide-tanh", "wide-relu"]

# (JSON key prefix, label, colour)
RUNTIMES = [
    ("bnfold_folded", "bnfold folded", "#1f5fbf"),
    ("bnfold_unfolded", "bnfold unfolded", "#7fb0e8"),
    ("ort_bn", "ORT, BN graph", "#c0392b"),
    ("ort_folded", "ORT, pre-folded graph", "#e69a2e"),
]
THREAD_STYLE = {1: ("-", "o"), 2: ("--", "s")}

# The targets of issue 10. "The tanh net" is the tutorial's tanh network (the subject,
# 7-17x slower than ORT before); "the 784-wide net" is the mnist shape, both activations.
TANH_NET = "tutorial-tanh"
WIDE784 = ("mnist-tanh", "mnist-relu")


def fmt_us(us):
    if us >= 10_000:
        return f"{us / 1000:.1f} ms"
    if us >= 100:
        return f"{us:.0f} us"
    if us >= 10:
        return f"{us:.1f} us"
    return f"{us:.2f} us"


def fmt_rate(x):
    for div, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if x >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def fmt_pct(f):
    return "-" if f is None else f"{100 * f:.1f}%"


def fmt_bytes(n):
    for div, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= div:
            return f"{n / div:.3g} {suffix}"
    return f"{n} B"


def describe(name, net):
    """`1 -> BN -> 7 x (Dense 30, BN, tanh) -> Dense 1` from the network record."""
    hidden = net["hidden"]
    widths = sorted(set(hidden))
    if len(widths) == 1:
        body = f"{len(hidden)} x (Dense {widths[0]}, BN, {net['activation']})"
    else:
        body = ", ".join(f"(Dense {h}, BN, {net['activation']})" for h in hidden)
    bn = " -> BN" if net["input_bn"] else ""
    return f"{net['input']}{bn} -> {body} -> Dense {net['output']}"


def runs_of(data, network):
    return sorted((r for r in data["runs"] if r["network"] == network), key=lambda r: (r["threads"], r["batch"]))


# ---------------------------------------------------------------------------------------------
# Plot


def plot(data, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullLocator, ScalarFormatter

    fig, axes = plt.subplots(3, 2, figsize=(11, 12.5), dpi=110)
    for ax, network in zip(axes.flat, NETWORKS):
        runs = runs_of(data, network)
        net = data.get("networks", {}).get(network)
        title = network if net is None else f"{network}\n{describe(network, net)}"
        ax.set_title(title, fontsize=10)
        if not runs:
            ax.text(0.5, 0.5, "not measured in this run", ha="center", va="center",
                    transform=ax.transAxes, color="grey")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        batches = sorted({r["batch"] for r in runs})
        for t in sorted({r["threads"] for r in runs}):
            rs = [r for r in runs if r["threads"] == t]
            ls, marker = THREAD_STYLE.get(t, (":", "^"))
            for key, _, colour in RUNTIMES:
                ax.plot([r["batch"] for r in rs], [r["rows_per_s"][key] for r in rs], ls=ls,
                        marker=marker, color=colour, lw=1.6, ms=4.5)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(FixedLocator(batches))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(ScalarFormatter())
        # 1, 2 and 5 times each power of ten, labelled 200k, 1M, ...
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: fmt_rate(y).replace(" ", "")))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: ""))
        ax.set_xlabel("batch (rows per call)")
        ax.set_ylabel("rows/s (median latency)")
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", axis="y", alpha=0.12)

    handles = [Line2D([], [], color=c, lw=2.2, label=label) for _, label, c in RUNTIMES]
    threads = sorted({r["threads"] for r in data["runs"]})
    handles += [Line2D([], [], color="black", ls=THREAD_STYLE.get(t, (":", "^"))[0],
                       marker=THREAD_STYLE.get(t, (":", "^"))[1], label=f"{t} thread{'s' if t > 1 else ''}")
                for t in threads]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, 0.965))
    probe = (data.get("probes") or [{}])[0]
    cpu = probe.get("cpu_model") or data.get("machine", {}).get("cpu", "unknown CPU")
    fig.suptitle(f"Throughput against batch size: bnfold ({data.get('bnfold_kernel', '?')} path) and "
                 f"ONNX Runtime {data.get('machine', {}).get('onnxruntime', '')}\n"
                 f"{cpu}, {data.get('started_utc', '')[:10]}", fontsize=11, y=0.995)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Markdown


def verdict(ratio):
    """What the 2-thread / 1-thread FMA ratio says (the thresholds of `bnfold probe`)."""
    if ratio >= 1.7:
        return "two real cores"
    if ratio <= 1.3:
        return "one shared core, or a busy neighbour"
    return "partly shared: SMT siblings or a neighbour's load"


def kv(value):
    """A cache or blocking record from the probe, whatever its shape, as text."""
    if isinstance(value, dict):
        parts = []
        for k, v in value.items():
            if isinstance(v, int) and "byte" in k.lower():
                v = fmt_bytes(v)
            parts.append(f"{k} {kv(v)}")
        return ", ".join(parts)
    if isinstance(value, list):
        return "; ".join(kv(v) for v in value)
    return str(value)


def yes(flag):
    return "?" if flag is None else ("yes" if flag else "no")


def machine_section(data, out):
    probes = data.get("probes", [])
    med = data.get("probe_median", {})
    m = data.get("machine", {})
    p0 = probes[0] if probes else {}
    out.append("## Machine and conditions\n")
    out.append("| | |")
    out.append("|---|---|")
    out.append(f"| CPU | {p0.get('cpu_model') or m.get('cpu', 'unknown')} |")
    out.append(f"| logical CPUs | {p0.get('logical_cpus', '?')} |")
    kernels = data.get("bnfold_kernel")
    out.append(f"| instruction set used (bnfold kernel path) | {kernels} (this CPU supports: "
               f"{', '.join(p0.get('supported_kernels', []))}; /proc/cpuinfo flags: avx512f {yes(m.get('avx512f'))}, "
               f"avx2 {yes(m.get('avx2'))}) |")
    caches, blocking = p0.get("caches"), p0.get("blocking")
    out.append(f"| caches | {kv(caches) if caches else 'not reported by this bnfold probe'} |")
    out.append(f"| GEMM blocking | {kv(blocking) if blocking else 'not reported by this bnfold probe'} |")
    n = len(probes)
    for t in (1, 2):
        s = med.get(str(t))
        if s:
            out.append(f"| FMA peak, {t} thread{'s' if t > 1 else ''} | {s['fma_gflops']:.1f} GFLOP/s "
                       f"(median of {n} probes, {s['fma_gflops_min']:.1f} to {s['fma_gflops_max']:.1f}) |")
    if med.get("1") and med.get("2"):
        r = med["2"]["fma_gflops"] / med["1"]["fma_gflops"]
        per = ", ".join(f"{p['fma_2t_over_1t']:.2f}" for p in probes)
        out.append(f"| FMA peak 2 threads / 1 thread | **{r:.2f}: {verdict(r)}** (each probe: {per}) |")
    for t in (1, 2):
        s = med.get(str(t))
        if s:
            out.append(f"| read bandwidth, {t} thread{'s' if t > 1 else ''} | {s['read_gbs']:.1f} GB/s "
                       f"(median of {n} probes, {s['read_gbs_min']:.1f} to {s['read_gbs_max']:.1f}; "
                       f"{fmt_bytes(p0.get('read_bytes', 0))} buffer) |")
    if med.get("1") and med.get("2"):
        out.append(f"| read bandwidth 2 threads / 1 thread | {med['2']['read_gbs'] / med['1']['read_gbs']:.2f} |")
    if any("kernel_over_fma_1t" in p for p in probes):
        # The dense kernel on an in-cache layer over the FMA peak of the same probe: well below 0.9
        # says a neighbour slows code that loads as it multiplies (the FMA probe does not see it).
        per = "; ".join(f"{p['label']}: {p['kernel_over_fma_1t']:.0%}"
                        for p in probes if "kernel_over_fma_1t" in p)
        out.append(f"| bnfold kernel on an in-cache layer, 1 thread, share of the FMA peak | {per} |")
    loads = "; ".join(f"{p['label']} ({p.get('utc', '?')[11:16]}): "
                      + (" ".join(f"{x:.2f}" for x in p["loadavg"]) if p.get("loadavg") else "?")
                      for p in probes)
    out.append(f"| load average (1, 5, 15 min) at each probe | {loads} |")
    out.append(f"| date (UTC) | {data.get('started_utc', '?')} to {data.get('finished_utc', '?')} |")
    commit = data.get("git_commit")
    dirty = " with uncommitted changes" if data.get("git_dirty") else ""
    out.append(f"| software | {data.get('bnfold_version', 'bnfold ?')}"
               f"{f' (commit {commit[:10]}{dirty})' if commit else ''}; ONNX Runtime {m.get('onnxruntime', '?')} "
               f"(ORT_ENABLE_ALL, CPU provider, called from Python {m.get('python', '?')}); numpy "
               f"{m.get('numpy', '?')}; {m.get('platform', '?')} |")
    if "ort_call_floor_us" in data:
        out.append(f"| ORT call floor from Python (Identity graph, batch 1) | {fmt_us(data['ort_call_floor_us'])} |")
    out.append("")


def network_tables(data, out):
    out.append("## Results\n")
    args = data.get("args", {})
    out.append(
        "Median latency of one call over at least "
        f"{args.get('min_time', '?')} s per configuration and runtime, the runtimes alternating (ORT on "
        "the BN graph, bnfold folded and unfolded, ORT on the pre-folded graph). *vs best ORT*: the "
        "better ORT median over bnfold folded's. rows/s, GFLOP/s (2 x batch x the dense weights), "
        "% of the FMA peak and % of the read bandwidth are bnfold folded's, against the median probe "
        "figures for the same thread count; bandwidth: the f32 dense weights and biases per call "
        "over the median latency, at batch 1 and 8 only, against the bandwidth of memory (a buffer "
        "several times the last-level cache): meaningful for weights that do not fit in the caches "
        "(the wide shape); smaller weights come from cache, where this bandwidth is no bound (a "
        "figure above 100% says so).\n")
    for network in NETWORKS:
        runs = runs_of(data, network)
        if not runs:
            continue
        net = data.get("networks", {}).get(network)
        head = f"### {network}"
        if net:
            head += (f": {describe(network, net)}; {fmt_bytes(net['weight_bytes'])} of f32 weights, "
                     f"{net['flop_per_row'] / 1e6:.3g} MFLOP per row")
        out.append(head + "\n")
        out.append("| batch | threads | bnfold folded | bnfold unfolded | ORT BN graph | ORT pre-folded | "
                   "vs best ORT | rows/s | GFLOP/s | % FMA peak | % bandwidth |")
        out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in runs:
            bw = (r.get("bandwidth_fraction") or {}).get("bnfold_folded")
            out.append(
                f"| {r['batch']} | {r['threads']} | {fmt_us(r['bnfold_folded_us'])} | "
                f"{fmt_us(r['bnfold_unfolded_us'])} | {fmt_us(r['ort_bn_us'])} | {fmt_us(r['ort_folded_us'])} | "
                f"{r['vs_best_ort']:.2f}x | {fmt_rate(r['rows_per_s']['bnfold_folded'])} | "
                f"{r['gflops']['bnfold_folded']:.2f} | {fmt_pct(r['peak_fraction']['bnfold_folded'])} | "
                f"{fmt_pct(bw) if r['batch'] in (1, 8) else ''} |")
        out.append("")


LOAD_LABELS = {"bnfold_f32": "bnfold, f32 weights", "bnfold_f16": "bnfold, f16 weights",
               "bnfold_bf16": "bnfold, bf16 weights", "ort_bn": "ORT, BN graph", "ort_folded": "ORT, pre-folded graph"}


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else None


def load_summary(rounds):
    """Median and first-round time, peak and base resident set of one runtime's loads."""
    first = rounds[0]
    return {"median_ms": median([r["total_ms"] for r in rounds]), "first_ms": first["total_ms"],
            "peak": first.get("peak_rss_bytes"), "base": first.get("base_rss_bytes"),
            "read_ms": median([r["read_ms"] for r in rounds if "read_ms" in r]),
            "packed": first.get("plan_weight_bytes")}


def load_tables(data, out):
    loads = data.get("loads") or []
    if not loads:
        return
    out.append("## Loading\n")
    out.append("From the path to a ready plan: bnfold's `Model::load` (map, checksum, validate) and "
               "`Model::compile` (fold in f64, round, pack) in `bnfold bench --load`, ORT's "
               "`InferenceSession` (ORT_ENABLE_ALL, one thread) from Python; each runtime in a fresh "
               "process, its rounds one after another (round 0 may be slower: the first touch of "
               "fresh memory), the file in the page cache after round 0. *Floor*: reading the "
               ".bnw file's bytes through a 1 MiB buffer (median over bnfold's rounds). Peak: the "
               "process's peak resident set after its first load (Linux's VmHWM), and above the "
               "resident set it had before loading (Python and ORT's libraries for ORT, the binary "
               "for bnfold). *x packed*: bnfold's peak over its plan's packed weights (meaningful where "
               "the weights outweigh the binary: the wide shape).\n")
    out.append("| network | runtime | median | round 0 | floor | peak | above the start | x packed | vs best ORT |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for entry in loads:
        m = entry["measurements"]
        sums = {k: load_summary(v) for k, v in m.items() if v}
        ort_best = min((sums[k]["median_ms"] for k in ("ort_bn", "ort_folded") if k in sums), default=None)
        for key, label in LOAD_LABELS.items():
            if key not in sums:
                continue
            x = sums[key]
            mb = lambda b: "-" if b is None else f"{b / 1e6:.1f} MB"  # noqa: E731
            above = None if x["peak"] is None or x["base"] is None else x["peak"] - x["base"]
            packed = f"{x['peak'] / x['packed']:.2f}x" if x["packed"] and x["peak"] else ""
            ms = lambda v: f"{v:.3g} ms"  # noqa: E731
            vs = f"{ort_best / x['median_ms']:.2f}x" if key.startswith("bnfold") and ort_best else ""
            floor = ms(x["read_ms"]) if x["read_ms"] is not None else ""
            out.append(f"| {entry['network']} | {label} | {ms(x['median_ms'])} | {ms(x['first_ms'])} | "
                       f"{floor} | {mb(x['peak'])} | {mb(above)} | {packed} | {vs} |")
    out.append("")


def targets(data, noise, out):
    runs = data["runs"]

    def where(r):
        if "batch" not in r:  # a load
            return f"{r['network']}, {LOAD_LABELS.get(r['key'], r['key'])}"
        return f"{r['network']} batch {r['batch']}, {r['threads']}t"

    rows = []

    def target(text, selected, ok, show):
        misses = [r for r in selected if not ok(r)]
        if not selected:
            rows.append((text, 0, "not measured", "-"))
            return
        listed = "; ".join(f"{where(r)}: {show(r)}" for r in misses) or "-"
        rows.append((text, len(selected), "**yes**" if not misses else f"**no** ({len(misses)} miss{'es' if len(misses) > 1 else ''})", listed))

    vs = lambda r: f"{r['vs_best_ort']:.2f}x"  # noqa: E731
    target(f"the tanh net ({TANH_NET}) >= 1.5x best ORT at every batch",
           [r for r in runs if r["network"] == TANH_NET], lambda r: r["vs_best_ort"] >= 1.5, vs)
    target(">= 1.0x best ORT everywhere", runs, lambda r: r["vs_best_ort"] >= 1.0, vs)
    target(f">= 1.3x best ORT at batch 1-8 on the 784-wide net ({', '.join(WIDE784)})",
           [r for r in runs if r["network"] in WIDE784 and 1 <= r["batch"] <= 8],
           lambda r: r["vs_best_ort"] >= 1.3, vs)
    target(f"folded never slower than unfolded beyond noise (folded <= {1 + noise:.2f} x unfolded)", runs,
           lambda r: r["bnfold_folded_us"] <= (1 + noise) * r["bnfold_unfolded_us"],
           lambda r: f"folded / unfolded {r['bnfold_folded_us'] / r['bnfold_unfolded_us']:.2f}")
    # Loading, on the subject: the 4096-wide network (relu; the activation does not matter).
    for entry in data.get("loads") or []:
        if not entry["network"].startswith("wide"):
            continue
        m = entry["measurements"]
        sums = {k: load_summary(v) for k, v in m.items() if v}
        ort_best = min((sums[k]["median_ms"] for k in ("ort_bn", "ort_folded") if k in sums), default=None)
        mine = [dict(sums[k], key=k, network=entry["network"]) for k in sums if k.startswith("bnfold")]
        if ort_best is not None:
            target(f"loading {entry['network']}: bnfold's median from path to plan <= ORT's best session creation",
                   mine, lambda x: x["median_ms"] <= ort_best,
                   lambda x: f"{x['median_ms']:.0f} ms vs {ort_best:.0f} ms")
        target(f"loading {entry['network']}: bnfold's peak resident <= 1.3x its packed weights",
               [x for x in mine if x["peak"] and x["packed"]], lambda x: x["peak"] <= 1.3 * x["packed"],
               lambda x: f"{x['peak'] / x['packed']:.2f}x")
    out.append("## Targets\n")
    out.append("Ratios are ORT's median over bnfold folded's (the better of ORT's two graphs); every "
               "configuration that misses is listed.\n")
    out.append("| target | configurations | met | misses |")
    out.append("|---|---:|---|---|")
    for text, n, met, listed in rows:
        out.append(f"| {text} | {n} | {met} | {listed} |")
    out.append("")


def reproduce(data, png_link, out):
    # The recorded command line, its output file renamed.
    recorded, args = (data.get("command") or ["peers.py"])[1:], []
    while recorded:
        a = recorded.pop(0)
        if a == "--json-out" and recorded:
            recorded.pop(0)
        elif not a.startswith("--json-out="):
            args.append(a)
    cmd = " ".join(["benches/peers/peers.py"] + args + ["--json-out", "peers.json"])
    commit = data.get("git_commit")
    out.append("## Reproduce\n")
    out.append("From the repository root" + (f", at commit `{commit}`" if commit else "")
               + ", on a machine as quiet as you can get (the load averages above say how quiet this "
                 "one was):\n")
    out.append("```sh")
    out.append("cargo build --release -p bnfold-cli")
    out.append("target/release/bnfold probe        # FMA peak, read bandwidth, kernel rate, 2t/1t: check the machine first")
    out.append("python3 -m venv /tmp/peers && /tmp/peers/bin/pip install -r benches/peers/requirements.txt")
    out.append(f"/tmp/peers/bin/python {cmd}")
    out.append("/tmp/peers/bin/python benches/peers/report.py peers.json \\")
    out.append(f"    --png docs/{png_link} --md benchmarks.md")
    out.append("```\n")
    out.append("`peers.py` builds the six seeded networks (tanh and relu at each shape), checks that "
               "bnfold folded and unfolded, ORT on both graphs and an f64 numpy forward pass agree, "
               "then times ORT and `bnfold bench --json` alternately and runs `bnfold probe --json` at "
               "the start, between shapes and at the end; `report.py` writes this page's tables, "
               "targets, machine section and plot from its JSON.\n")


def markdown(data, noise, png_link):
    out = [f"![Throughput against batch size, per network]({png_link})\n"]
    machine_section(data, out)
    network_tables(data, out)
    load_tables(data, out)
    targets(data, noise, out)
    reproduce(data, png_link, out)
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", help="peers.py --json-out file")
    ap.add_argument("--png", default="docs/benchmarks/throughput.png")
    ap.add_argument("--png-link", default="benchmarks/throughput.png",
                    help="the PNG's path as the Markdown links it (relative to docs/)")
    ap.add_argument("--md", help="write the Markdown here (default: standard output)")
    ap.add_argument("--noise", type=float, default=0.05,
                    help="relative margin within which folded slower than unfolded counts as noise")
    args = ap.parse_args()
    with open(args.json) as f:
        data = json.load(f)
    if not data.get("runs"):
        sys.exit(f"{args.json}: no runs")
    if "rows_per_s" not in data["runs"][0]:
        sys.exit(f"{args.json}: no derived figures (written by a peers.py older than its probes)")
    plot(data, args.png)
    text = markdown(data, args.noise, args.png_link)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    print(f"wrote {args.png}" + (f" and {args.md}" if args.md else ""), file=sys.stderr)


if __name__ == "__main__":
    main()
