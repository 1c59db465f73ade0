#!/usr/bin/env python3
"""Generate the importer test fixtures for `bnfold convert`.

Run from the repository root, in the venv described in import/tools/README.md:

    python import/tools/make_fixtures.py            # all fixtures
    python import/tools/make_fixtures.py --only 'torch_.*'   # a subset (manifest entries merged)

For every fixture it trains a small dense BatchNorm network in the real
framework (so the BN moving statistics are real), puts it in inference mode,
exports it with the real exporter, and records the outputs of the framework
itself and of ONNX Runtime on fixed, seeded inputs.  Everything goes to
import/tests/fixtures/ plus one manifest.json describing each fixture.
"""

import argparse
import hashlib
import json
import os
import random
import re
import sys
from pathlib import Path

# Thread counts must be pinned before the frameworks start their pools.
for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
           "TF_NUM_INTEROP_THREADS"):
    os.environ[_v] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # oneDNN reorders sums: keep TF results reproducible
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("PYTHONHASHSEED", "0")

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "import" / "tests" / "fixtures"
ROWS = 16
TRAIN_STEPS = 300
BATCH = 32
TOL_F32 = 1e-5   # max |framework - ort| for float32 fixtures (absolute)
TOL_F16 = 2e-2   # for the fixture that computes in float16 in both runtimes

MANIFEST = {}     # name -> entry
ORDER = []        # definition order, for a stable manifest


# ---------------------------------------------------------------- helpers

def seed_all(seed):
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
        torch.manual_seed(seed)
    except ImportError:
        pass


def make_inputs(seed, width, rows=ROWS):
    """Fixed inference inputs: standard normal, with a few values of magnitude ~3."""
    rng = np.random.default_rng(1000 + seed)
    x = rng.standard_normal((rows, width)).astype(np.float32)
    x[0, 0] = 3.0
    x[1, width - 1] = -3.0
    x[2, width // 2] = 2.75
    x[3, :] = np.linspace(-3.0, 3.0, width, dtype=np.float32)
    x[4, :] = 0.0
    return np.ascontiguousarray(x, dtype=np.float32)


def make_task(seed, n_in, n_out, n=1024, classes=None):
    """Synthetic data with non-zero means and non-unit scales per feature, so BN statistics move."""
    rng = np.random.default_rng(seed)
    mu = rng.uniform(-1.0, 2.0, n_in).astype(np.float32)
    sd = rng.uniform(0.5, 3.0, n_in).astype(np.float32)
    x = (rng.standard_normal((n, n_in)).astype(np.float32) * sd + mu).astype(np.float32)
    z = (x - mu) / sd
    w1 = rng.standard_normal((n_in, 16)).astype(np.float32) / np.sqrt(n_in)
    w2 = rng.standard_normal((16, n_out if classes is None else classes)).astype(np.float32) / 4.0
    t = np.tanh(z @ w1) @ w2
    if classes is None:
        return x, t.astype(np.float32)
    return x, np.argmax(t, axis=1).astype(np.int64)


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_npy(name, suffix, arr):
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    path = OUT / f"{name}.{suffix}.npy"
    np.save(path, arr, allow_pickle=False)
    return path.name


DTYPE_NAMES = {v: k for k, v in onnx.TensorProto.DataType.items()}


def tensor_storage(t):
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return "external_data"
    if t.raw_data:
        return "raw_data"
    for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        if len(getattr(t, field)):
            return field
    return "empty"


def describe_onnx(path):
    """What the graph really contains: ops, initializers (dtype, storage), constants, BN attrs, io."""
    m = onnx.load(str(path), load_external_data=False)
    g = m.graph
    ops = [n.op_type for n in g.node]

    def vi(v):
        tt = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
        return {"name": v.name, "dtype": DTYPE_NAMES[tt.elem_type], "shape": dims}

    inits = [{"name": t.name, "dtype": DTYPE_NAMES[t.data_type], "dims": list(t.dims),
              "storage": tensor_storage(t)} for t in g.initializer]
    consts = []
    bn = []
    attrs = {}
    for n in g.node:
        if n.op_type == "Constant":
            a = n.attribute[0]
            if a.type == onnx.AttributeProto.TENSOR:
                consts.append({"output": n.output[0], "attr": a.name, "dtype": DTYPE_NAMES[a.t.data_type],
                               "dims": list(a.t.dims), "storage": tensor_storage(a.t)})
            else:
                consts.append({"output": n.output[0], "attr": a.name})
        if n.op_type == "BatchNormalization":
            d = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            bn.append({"node": n.name, "inputs": list(n.input), "epsilon": float(np.float32(d.get("epsilon", 1e-5))),
                       "momentum": float(np.float32(d["momentum"])) if "momentum" in d else None,
                       "training_mode": d.get("training_mode", 0), "outputs": len(n.output)})
        if n.attribute and n.op_type not in ("Constant", "BatchNormalization"):
            d = {}
            for a in n.attribute:
                v = onnx.helper.get_attribute_value(a)
                if isinstance(v, bytes):
                    v = v.decode()
                if isinstance(v, (int, float, str)) or (isinstance(v, list) and all(isinstance(e, (int, float)) for e in v)):
                    d[a.name] = v
            if d:
                attrs.setdefault(n.op_type, [])
                if d not in attrs[n.op_type]:
                    attrs[n.op_type].append(d)
    ext_files = sorted({e.value for t in g.initializer for e in t.external_data if e.key == "location"})
    return {
        "ir_version": m.ir_version,
        "opset_imports": {(o.domain or "ai.onnx"): o.version for o in m.opset_import},
        "producer": f"{m.producer_name} {m.producer_version}".strip(),
        "ops": ops,
        "op_attributes": attrs,
        "graph_inputs": [vi(v) for v in g.input if v.name not in {t.name for t in g.initializer}],
        "graph_inputs_incl_initializers": len(g.input),
        "graph_outputs": [vi(v) for v in g.output],
        "initializers": inits,
        "initializer_dtypes": sorted({i["dtype"] for i in inits}),
        "initializer_storage": sorted({i["storage"] for i in inits}),
        "constant_nodes": consts,
        "batchnorm_nodes": bn,
        "external_data_files": ext_files,
    }


def run_ort(path, x):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    feed_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    out = sess.run(None, {inp.name: x.astype(feed_dtype)})[0]
    return out.astype(np.float32)


CURRENT_GROUP = [None]


def register(name, entry):
    entry = {"name": name, "group": CURRENT_GROUP[0], **entry}
    files = [f for f in entry["files"].values() if f]
    entry["sha256"] = {f: sha256(OUT / f) for f in files}
    MANIFEST[name] = entry
    if name not in ORDER:
        ORDER.append(name)


def onnx_fixture(name, model_path, x, fw_out, *, tol, entry, negative=False):
    desc = describe_onnx(model_path)
    files = {"model": model_path.name}
    for ext in desc["external_data_files"]:
        files["external_data"] = ext
    if not negative:
        files["input"] = save_npy(name, "input", x)
        files["framework"] = save_npy(name, "framework", fw_out)
        ort_out = run_ort(model_path, x)
        files["ort"] = save_npy(name, "ort", ort_out)
        diff = float(np.max(np.abs(ort_out - fw_out)))
        assert ort_out.shape == fw_out.shape, (name, ort_out.shape, fw_out.shape)
        assert np.all(np.isfinite(fw_out)), name
        assert diff < tol, f"{name}: max |framework - ort| = {diff} >= {tol}"
        entry.update(input_shape=list(x.shape), output_shape=list(fw_out.shape),
                     max_abs_framework_vs_ort=diff, tolerance=tol)
    onnx.checker.check_model(str(model_path))
    entry["files"] = files
    entry["negative"] = negative
    entry["opset"] = desc["opset_imports"].get("ai.onnx")
    entry.update(desc)
    register(name, entry)


# ---------------------------------------------------------------- torch

def torch_setup():
    import torch
    if not getattr(torch_setup, "done", False):
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        torch.use_deterministic_algorithms(True)
        torch_setup.done = True
    return torch


def torch_bn_info(model):
    import torch.nn as nn
    out = []
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm1d):
            out.append({"module": name, "eps": m.eps, "momentum": m.momentum, "affine": m.affine,
                        "num_features": m.num_features,
                        "max_abs_running_mean": float(m.running_mean.float().abs().max()),
                        "max_abs_running_var_minus_1": float((m.running_var.float() - 1).abs().max())})
    return out


def assert_torch_bn_moved(model, name):
    import torch
    import torch.nn as nn
    n = 0
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            n += 1
            rm, rv = m.running_mean.float(), m.running_var.float()
            assert torch.max(torch.abs(rm)) > 1e-2, f"{name}: running_mean did not move"
            assert torch.max(torch.abs(rv - 1)) > 1e-2, f"{name}: running_var did not move"
            assert int(m.num_batches_tracked) == TRAIN_STEPS, name
    assert n > 0, name


def train_torch(model, seed, n_in, n_out, classes=None, logits_of=None):
    torch = torch_setup()
    x, y = make_task(seed, n_in, n_out, classes=classes)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(TRAIN_STEPS):
        idx = torch.randint(0, x.shape[0], (BATCH,), generator=g)
        if classes is None:
            loss = torch.nn.functional.mse_loss(model(xt[idx]), yt[idx])
        else:
            loss = torch.nn.functional.cross_entropy(logits_of(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss)


def torch_eval(model, x, dtype=None):
    torch = torch_setup()
    with torch.no_grad():
        t = torch.from_numpy(x)
        if dtype is not None:
            t = t.to(dtype)
        return model(t).float().numpy()


def torch_legacy_export(model, x, path, opset, fold=True, dtype=None):
    torch = torch_setup()
    t = torch.from_numpy(x[:2])
    if dtype is not None:
        t = t.to(dtype)
    torch.onnx.export(model, (t,), str(path), dynamo=False, opset_version=opset, do_constant_folding=fold,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})


def torch_version():
    import torch
    return torch.__version__


def legacy_entry(opset, covers, arch_words, model, fold=True, extra=None):
    e = {"kind": "onnx", "framework": "torch", "framework_version": torch_version(),
         "exporter": f"torch.onnx.export dynamo=False opset {opset} do_constant_folding={fold}",
         "architecture": arch_words, "bn": torch_bn_info(model), "covers": covers}
    if extra:
        e.update(extra)
    return e


def fx_torch_input_bn():
    torch = torch_setup(); nn = torch.nn
    name, seed, n_in, n_out = "torch_input_bn", 1, 6, 3
    seed_all(seed)
    model = nn.Sequential(nn.BatchNorm1d(n_in), nn.Linear(n_in, 16), nn.BatchNorm1d(16), nn.ReLU(),
                          nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, n_out))
    train_torch(model, seed, n_in, n_out)
    assert_torch_bn_moved(model, name)
    x = make_inputs(seed, n_in)
    path = OUT / f"{name}.onnx"
    torch_legacy_export(model, x, path, 17)
    onnx_fixture(name, path, x, torch_eval(model, x), tol=TOL_F32, entry=legacy_entry(
        17, "BatchNormalization directly on the graph input; Gemm + BatchNormalization + Relu blocks",
        "BatchNorm1d(6) -> Linear(6,16) -> BatchNorm1d(16) -> ReLU -> Linear(16,12) -> BatchNorm1d(12) -> ReLU -> Linear(12,3)",
        model))


def fx_torch_nobias_leaky():
    torch = torch_setup(); nn = torch.nn
    name, seed, n_in, n_out = "torch_nobias_leaky", 2, 8, 4
    seed_all(seed)
    model = nn.Sequential(nn.Linear(n_in, 20, bias=False), nn.BatchNorm1d(20), nn.LeakyReLU(0.2),
                          nn.Linear(20, 10), nn.BatchNorm1d(10), nn.Tanh(), nn.Linear(10, n_out))
    train_torch(model, seed, n_in, n_out)
    assert_torch_bn_moved(model, name)
    x = make_inputs(seed, n_in)
    words = ("Linear(8,20,bias=False) -> BatchNorm1d(20) -> LeakyReLU(0.2) -> Linear(20,10) -> BatchNorm1d(10) -> "
             "Tanh -> Linear(10,4)")
    fw = torch_eval(model, x)
    path = OUT / f"{name}.onnx"
    torch_legacy_export(model, x, path, 13)
    onnx_fixture(name, path, x, fw, tol=TOL_F32, entry=legacy_entry(
        13, "opset 13; Linear(bias=False) as MatMul with a pre-transposed [in,out] initializer; LeakyRelu alpha=0.2; Tanh",
        words, model))
    # The same trained model with constant folding off: the weight stays [out,in] behind a Transpose node.
    name2 = name + "_nofold"
    path = OUT / f"{name2}.onnx"
    torch_legacy_export(model, x, path, 13, fold=False)
    onnx_fixture(name2, path, x, fw, tol=TOL_F32, entry=legacy_entry(
        13, "as torch_nobias_leaky (same weights) but do_constant_folding=False: Linear(bias=False) is "
            "Transpose([out,in] initializer) -> MatMul", words, model, fold=False))


def fx_torch_affine_false_gelu():
    torch = torch_setup(); nn = torch.nn
    name, seed, n_in, n_out = "torch_affine_false_gelu", 3, 5, 2
    seed_all(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(n_in, 16), nn.BatchNorm1d(16, affine=False), nn.GELU(),
                          nn.Dropout(0.1), nn.Linear(16, 12), nn.Identity(), nn.BatchNorm1d(12), nn.Sigmoid(),
                          nn.Dropout(0.2), nn.Linear(12, n_out))
    train_torch(model, seed, n_in, n_out)
    assert_torch_bn_moved(model, name)
    x = make_inputs(seed, n_in)
    path = OUT / f"{name}.onnx"
    torch_legacy_export(model, x, path, 17)
    onnx_fixture(name, path, x, torch_eval(model, x), tol=TOL_F32, entry=legacy_entry(
        17, "BatchNorm1d(affine=False) (scale/bias synthesized by the exporter); exact GELU (Div, Erf, Add, Mul, Mul); "
            "Sigmoid; Flatten/Dropout/Identity modules in the Sequential",
        "Flatten -> Linear(5,16) -> BatchNorm1d(16, affine=False) -> GELU -> Dropout(0.1) -> Linear(16,12) -> Identity -> "
        "BatchNorm1d(12) -> Sigmoid -> Dropout(0.2) -> Linear(12,2)",
        model))


def fx_torch_momentum_none():
    torch = torch_setup(); nn = torch.nn
    name, seed, n_in, n_out = "torch_momentum_none", 4, 10, 3
    seed_all(seed)
    model = nn.Sequential(nn.Linear(n_in, 24), nn.BatchNorm1d(24, eps=1e-3, momentum=None), nn.ReLU(),
                          nn.Linear(24, 8), nn.BatchNorm1d(8, eps=1e-3, momentum=None), nn.ReLU(),
                          nn.Linear(8, n_out))
    train_torch(model, seed, n_in, n_out)
    assert_torch_bn_moved(model, name)
    x = make_inputs(seed, n_in)
    path = OUT / f"{name}.onnx"
    words = ("Linear(10,24) -> BatchNorm1d(24, eps=1e-3, momentum=None) -> ReLU -> Linear(24,8) -> "
             "BatchNorm1d(8, eps=1e-3, momentum=None) -> ReLU -> Linear(8,3)")
    fw = torch_eval(model, x)
    torch_legacy_export(model, x, path, 17)
    onnx_fixture(name, path, x, fw, tol=TOL_F32, entry=legacy_entry(
        17, "BatchNorm1d(momentum=None) (cumulative moving average) with eps=1e-3", words, model))
    # Derived (not an exporter's output): the same graph with initializers in typed fields (float_data)
    # instead of raw_data, as onnx.helper.make_tensor(raw=False) and some hand-built graphs store them.
    name2 = "torch_typed_fields"
    m = onnx.load(str(path))
    typed = []
    for t in m.graph.initializer:
        a = numpy_helper.to_array(t)
        typed.append(onnx.helper.make_tensor(t.name, t.data_type, list(t.dims), a.flatten().tolist(), raw=False))
    del m.graph.initializer[:]
    m.graph.initializer.extend(typed)
    path2 = OUT / f"{name2}.onnx"
    onnx.save(m, str(path2))
    onnx_fixture(name2, path2, x, fw, tol=TOL_F32, entry=legacy_entry(
        17, "derived from torch_momentum_none (same weights and outputs): every initializer re-encoded with "
            "onnx.helper.make_tensor(raw=False), i.e. float_data typed fields instead of raw_data", words, model,
        extra={"exporter": "torch.onnx.export dynamo=False opset 17 do_constant_folding=True, then initializers "
                           "re-encoded as typed float_data by make_fixtures.py"}))


def fx_torch_softmax_classifier():
    torch = torch_setup(); nn = torch.nn
    name, seed, n_in, classes = "torch_softmax_classifier", 5, 7, 4
    seed_all(seed)
    model = nn.Sequential(nn.Linear(n_in, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16),
                          nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, classes), nn.Softmax(dim=-1))
    logits = model[:-1]
    train_torch(model, seed, n_in, classes, classes=classes, logits_of=logits)
    assert_torch_bn_moved(model, name)
    x = make_inputs(seed, n_in)
    fw = torch_eval(model, x)
    assert np.allclose(fw.sum(axis=1), 1.0, atol=1e-5)
    path = OUT / f"{name}.onnx"
    torch_legacy_export(model, x, path, 17)
    onnx_fixture(name, path, x, fw, tol=TOL_F32, entry=legacy_entry(
        17, "classifier (4 classes, trained with cross-entropy) ending in Softmax(dim=-1)",
        "Linear(7,16) -> BatchNorm1d(16) -> ReLU -> Linear(16,16) -> BatchNorm1d(16) -> ReLU -> Linear(16,4) -> Softmax(dim=-1)",
        model))


def _f16_net(nn, n_in, n_out):
    return nn.Sequential(nn.Linear(n_in, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 12),
                         nn.BatchNorm1d(12), nn.Tanh(), nn.Linear(12, n_out))


F16_WORDS = ("Linear(6,16) -> BatchNorm1d(16) -> ReLU -> Linear(16,12) -> BatchNorm1d(12) -> Tanh -> Linear(12,3)")


def fx_torch_f16():
    torch = torch_setup(); nn = torch.nn
    name, seed, n_in, n_out = "torch_f16", 6, 6, 3
    seed_all(seed)
    model = _f16_net(nn, n_in, n_out)
    train_torch(model, seed, n_in, n_out)        # trained in float32, then converted
    assert_torch_bn_moved(model, name)
    model.half()
    x = make_inputs(seed, n_in).astype(np.float16).astype(np.float32)  # exactly representable in f16
    fw = torch_eval(model, x, dtype=torch.float16)
    path = OUT / f"{name}.onnx"
    torch_legacy_export(model, x, path, 17, dtype=torch.float16)
    onnx_fixture(name, path, x, fw, tol=TOL_F16, entry=legacy_entry(
        17, "model.half(): float16 initializers, float16 graph input and output, computes in float16 "
            "(input.npy holds float32 values exactly representable in float16; cast to float16 before feeding)",
        F16_WORDS + " (all float16)", model,
        extra={"graph_io_dtype": "float16", "tolerance_note": "framework (torch CPU half) vs ORT float16 kernels"}))


def fx_torch_f16_cast():
    """Float32 model whose float32 initializers are replaced by float16 ones widened with Cast(to=FLOAT)."""
    torch = torch_setup(); nn = torch.nn
    name, seed, n_in, n_out = "torch_f16_cast", 6, 6, 3
    seed_all(seed)
    model = _f16_net(nn, n_in, n_out)
    train_torch(model, seed, n_in, n_out)
    assert_torch_bn_moved(model, name)
    # Round every float parameter/buffer through float16 so the framework computes with the same weights.
    with torch.no_grad():
        for t in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
            t.copy_(t.half().float())
    x = make_inputs(seed, n_in)
    fw = torch_eval(model, x)
    path = OUT / f"{name}.onnx"
    torch_legacy_export(model, x, path, 17)
    m = onnx.load(str(path))
    g = m.graph
    casts = []
    new_inits = []
    for t in g.initializer:
        if t.data_type == onnx.TensorProto.FLOAT:
            a = numpy_helper.to_array(t).astype(np.float16)
            h = numpy_helper.from_array(a, t.name + "_fp16")
            new_inits.append(h)
            casts.append(onnx.helper.make_node("Cast", [h.name], [t.name], name=t.name + "_cast",
                                               to=onnx.TensorProto.FLOAT))
        else:
            new_inits.append(t)
    del g.initializer[:]
    g.initializer.extend(new_inits)
    nodes = casts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    # Initializers may be listed among graph inputs by old exporters; drop those that are now Cast outputs.
    cast_outs = {c.output[0] for c in casts}
    keep = [i for i in g.input if i.name not in cast_outs]
    del g.input[:]
    g.input.extend(keep)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    onnx_fixture(name, path, x, fw, tol=TOL_F32, entry=legacy_entry(
        17, "float16 weight compression: every float initializer is float16 and widened by a Cast(to=FLOAT) node "
            "before use; graph input/output stay float32 (framework output is the float32 model with weights "
            "rounded through float16)",
        F16_WORDS + " (weights stored as float16)", model,
        extra={"exporter": "torch.onnx.export dynamo=False opset 17 do_constant_folding=True, then onnx graph "
                           "surgery in make_fixtures.py: float32 initializer W -> float16 initializer W_fp16 + "
                           "Cast(to=FLOAT) node producing W"}))


def fx_torch_gelu_tanh():
    torch = torch_setup(); nn = torch.nn
    name, seed, n_in, n_out = "torch_gelu_tanh", 7, 9, 5
    seed_all(seed)
    model = nn.Sequential(nn.Linear(n_in, 16), nn.BatchNorm1d(16), nn.GELU(approximate="tanh"),
                          nn.Linear(16, 16), nn.BatchNorm1d(16), nn.GELU(approximate="tanh"), nn.Linear(16, n_out))
    train_torch(model, seed, n_in, n_out)
    assert_torch_bn_moved(model, name)
    x = make_inputs(seed, n_in)
    path = OUT / f"{name}.onnx"
    torch_legacy_export(model, x, path, 17)
    onnx_fixture(name, path, x, torch_eval(model, x), tol=TOL_F32, entry=legacy_entry(
        17, "GELU(approximate='tanh') as exported by the legacy exporter at opset 17",
        "Linear(9,16) -> BatchNorm1d(16) -> GELU(tanh) -> Linear(16,16) -> BatchNorm1d(16) -> GELU(tanh) -> Linear(16,5)",
        model))


def fx_torch_dynamo():
    torch = torch_setup(); nn = torch.nn
    name, seed, n_in, n_out = "torch_dynamo", 8, 12, 2
    seed_all(seed)
    model = nn.Sequential(nn.Linear(n_in, 20), nn.BatchNorm1d(20), nn.GELU(), nn.Linear(20, 10),
                          nn.BatchNorm1d(10), nn.ReLU(), nn.Linear(10, n_out))
    train_torch(model, seed, n_in, n_out)
    assert_torch_bn_moved(model, name)
    x = make_inputs(seed, n_in)
    path = OUT / f"{name}.onnx"
    prog = torch.onnx.export(model, (torch.from_numpy(x[:4]),), dynamo=True, input_names=["input"],
                             output_names=["output"], dynamic_shapes=({0: torch.export.Dim("batch")},))
    tmp = OUT / f"{name}.tmp.onnx"
    prog.save(str(tmp))
    m = onnx.load(str(tmp))
    tmp.unlink()
    data = OUT / f"{name}.onnx.data"
    if data.exists():
        data.unlink()
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=0)
    desc = describe_onnx(path)
    entry = {"kind": "onnx", "framework": "torch", "framework_version": torch_version(),
             "exporter": "torch.onnx.export dynamo=True (default opset), ONNXProgram.save, then onnx.save_model("
                         "save_as_external_data=True, all_tensors_to_one_file=True, size_threshold=0)",
             "architecture": "Linear(12,20) -> BatchNorm1d(20) -> GELU -> Linear(20,10) -> BatchNorm1d(10) -> ReLU -> Linear(10,2)",
             "bn": torch_bn_info(model),
             "covers": "dynamo exporter graph shape; all initializers in external data NAME.onnx.data",
             "dynamo_bn_folded_into_gemm": "BatchNormalization" not in desc["ops"],
             "dynamo_gelu_single_op": "Gelu" in desc["ops"],
             "notes": "the dynamo exporter's optimizer folds each BatchNorm into the preceding Gemm: initializers keep "
                      "the Linear names (0.weight, 0.bias, ...) but hold the BN-folded values; compare "
                      "torch_dynamo_noopt (same trained model, BN kept)"}
    fw = torch_eval(model, x)
    onnx_fixture(name, path, x, fw, tol=TOL_F32, entry=entry)
    # Same trained model, dynamo exporter without its ONNX optimizer: BN stays a BatchNormalization node.
    name2 = name + "_noopt"
    path = OUT / f"{name2}.onnx"
    prog = torch.onnx.export(model, (torch.from_numpy(x[:4]),), dynamo=True, optimize=False, input_names=["input"],
                             output_names=["output"], dynamic_shapes=({0: torch.export.Dim("batch")},))
    prog.save(str(path))
    desc = describe_onnx(path)
    entry = dict(entry, exporter="torch.onnx.export dynamo=True optimize=False (default opset), ONNXProgram.save "
                                 "(initializers inline)",
                 covers="dynamo exporter graph before its optimizer runs (same weights as torch_dynamo)",
                 dynamo_bn_folded_into_gemm="BatchNormalization" not in desc["ops"],
                 dynamo_gelu_single_op="Gelu" in desc["ops"])
    onnx_fixture(name2, path, x, fw, tol=TOL_F32, entry=entry)


def fx_torch_state_dict():
    torch = torch_setup(); nn = torch.nn
    from safetensors.torch import save_file
    import safetensors
    specs = [
        ("torch_state_dict", 9, 8, 3,
         lambda: nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 12),
                               nn.BatchNorm1d(12, affine=False, eps=1e-3), nn.Tanh(), nn.Linear(12, 3, bias=False)),
         "linear,bn,relu,linear,bn:0.001,tanh,linear",
         "Linear(8,16) -> BatchNorm1d(16) -> ReLU -> Linear(16,12) -> BatchNorm1d(12, affine=False, eps=1e-3) -> Tanh "
         "-> Linear(12,3, bias=False)",
         "state_dict with num_batches_tracked int64 scalars, BN without weight/bias (affine=False), final Linear "
         "without bias, non-default eps via bn:EPS"),
        ("torch_state_dict_misc", 10, 5, 4,
         lambda: nn.Sequential(nn.BatchNorm1d(5, eps=1e-4), nn.Linear(5, 12), nn.BatchNorm1d(12),
                               nn.LeakyReLU(0.1), nn.Linear(12, 12), nn.BatchNorm1d(12), nn.GELU(),
                               nn.Linear(12, 8), nn.BatchNorm1d(8), nn.GELU(approximate="tanh"), nn.Linear(8, 4),
                               nn.Sigmoid()),
         "bn:0.0001,linear,bn,leaky_relu:0.1,linear,bn,gelu,linear,bn,gelu_tanh,linear,sigmoid",
         "BatchNorm1d(5, eps=1e-4) -> Linear(5,12) -> BatchNorm1d(12) -> LeakyReLU(0.1) -> Linear(12,12) -> "
         "BatchNorm1d(12) -> GELU -> Linear(12,8) -> BatchNorm1d(8) -> GELU(tanh) -> Linear(8,4) -> Sigmoid",
         "state_dict starting with a BN on the raw input (index 0), leaky_relu:ALPHA, gelu, gelu_tanh, sigmoid"),
        ("torch_state_dict_softmax", 11, 4, 3,
         lambda: nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3), nn.Softmax(dim=-1)),
         "linear,bn,relu,linear,softmax",
         "Linear(4,8) -> BatchNorm1d(8) -> ReLU -> Linear(8,3) -> Softmax(dim=-1)",
         "state_dict of a classifier ending in softmax (trained with cross-entropy on 3 classes)"),
    ]
    for name, seed, n_in, n_out, build, arch, words, covers in specs:
        seed_all(seed)
        model = build()
        if arch.endswith("softmax"):
            train_torch(model, seed, n_in, n_out, classes=n_out, logits_of=model[:-1])
        else:
            train_torch(model, seed, n_in, n_out)
        assert_torch_bn_moved(model, name)
        x = make_inputs(seed, n_in)
        fw = torch_eval(model, x)
        path = OUT / f"{name}.safetensors"
        sd = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(sd, str(path))
        files = {"model": path.name, "input": save_npy(name, "input", x), "framework": save_npy(name, "framework", fw)}
        register(name, {
            "kind": "safetensors", "framework": "torch", "framework_version": torch_version(),
            "exporter": f"safetensors.torch.save_file(model.state_dict()) safetensors {safetensors.__version__}",
            "opset": None, "arch": arch, "architecture": words, "bn": torch_bn_info(model), "covers": covers,
            "files": files, "negative": False, "input_shape": list(x.shape), "output_shape": list(fw.shape),
            "tensors": [{"name": k, "dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)}
                        for k, v in sd.items()],
            "max_abs_framework_vs_ort": None,
        })


def fx_refuse():
    torch = torch_setup(); nn = torch.nn
    seed_all(12)

    class Conv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(1, 2, 3)
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(torch.flatten(torch.relu(self.conv(x.unsqueeze(1))), 1))

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, a, b):
            return self.fc(a + b)

    for name, model, args, names, words in [
        ("refuse_conv", Conv().eval(), (torch.zeros(2, 6),), ["input"],
         "x[N,6] -> Unsqueeze -> Conv1d(1,2,3) -> Relu -> Flatten -> Linear(8,2)"),
        ("refuse_two_inputs", Two().eval(), (torch.zeros(2, 4), torch.zeros(2, 4)), ["a", "b"],
         "Linear(4,2)(a + b) with two graph inputs"),
    ]:
        path = OUT / f"{name}.onnx"
        torch.onnx.export(model, args, str(path), dynamo=False, opset_version=17, do_constant_folding=False,
                          input_names=names, output_names=["output"],
                          dynamic_axes={n: {0: "batch"} for n in names + ["output"]})
        onnx_fixture(name, path, None, None, tol=None, negative=True, entry={
            "kind": "onnx", "framework": "torch", "framework_version": torch_version(),
            "exporter": "torch.onnx.export dynamo=False opset 17 do_constant_folding=False",
            "architecture": words, "bn": [], "covers": "negative: the importer must refuse this graph"})


# ---------------------------------------------------------------- keras / tensorflow

def tf_setup():
    import tensorflow as tf
    if not getattr(tf_setup, "done", False):
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.experimental.enable_op_determinism()
        tf_setup.done = True
    import keras
    return tf, keras


def dense(keras, units, name, **kw):
    """Dense with a random (seeded) bias init like torch's Linear: with Keras' zero bias init, a Dense fed by
    zero-mean data gives a BN moving mean of ~0 (the bias gets no gradient through a following BN)."""
    seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
    return keras.layers.Dense(units, name=name, bias_initializer=keras.initializers.RandomUniform(-1.0, 1.0, seed=seed),
                              **kw)


def keras_bn_info(model):
    import keras
    return [{"layer": l.name, "eps": float(l.epsilon), "momentum": float(l.momentum), "center": l.center,
             "scale": l.scale, "num_features": int(np.asarray(l.moving_mean).shape[0]),
             "max_abs_running_mean": float(np.max(np.abs(np.asarray(l.moving_mean)))),
             "max_abs_running_var_minus_1": float(np.max(np.abs(np.asarray(l.moving_variance) - 1)))}
            for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]


def assert_keras_bn_moved(model, name):
    import keras
    n = 0
    for l in model.layers:
        if isinstance(l, keras.layers.BatchNormalization):
            n += 1
            mm = np.asarray(l.moving_mean)
            mv = np.asarray(l.moving_variance)
            print(f"    {l.name}: max|moving_mean| {np.max(np.abs(mm)):.4g}  max|moving_variance-1| {np.max(np.abs(mv - 1)):.4g}")
            assert np.max(np.abs(mm)) > 1e-2, f"{name}: moving_mean did not move"
            assert np.max(np.abs(mv - 1)) > 1e-2, f"{name}: moving_variance did not move"
    assert n > 0, name


def train_keras(model, seed, n_in, n_out, classes=None):
    tf, keras = tf_setup()
    x, y = make_task(seed, n_in, n_out, classes=classes)
    if classes is None:
        model.compile(optimizer=keras.optimizers.Adam(5e-3), loss="mse")
    else:
        model.compile(optimizer=keras.optimizers.Adam(5e-3), loss="sparse_categorical_crossentropy")
    steps_per_epoch = x.shape[0] // BATCH
    epochs = TRAIN_STEPS // steps_per_epoch + 1
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.shape[0], steps_per_epoch * epochs * BATCH)
    model.fit(x[idx], y[idx], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)


def keras_seed(seed):
    tf, keras = tf_setup()
    keras.utils.set_random_seed(seed)
    seed_all(seed)


def keras_eval(model, x):
    return np.asarray(model(x, training=False)).astype(np.float32)


def tf2onnx_convert(model, n_in, path, opset=17):
    """Prefer tf2onnx.convert.from_keras; fall back to from_function on a tf.function (Keras 3)."""
    import tf2onnx
    tf, keras = tf_setup()
    spec = (tf.TensorSpec((None, n_in), tf.float32, name="input"),)
    how = None
    try:
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
        how = f"tf2onnx {tf2onnx.__version__} convert.from_keras opset {opset}"
        err = None
    except Exception as e:  # noqa: BLE001 - record what happened
        err = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"

        @tf.function(input_signature=spec)
        def fn(input):
            return {"output": model(input, training=False)}

        proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=opset)
        how = (f"tf2onnx {tf2onnx.__version__} convert.from_function(tf.function(model(x, training=False))) "
               f"opset {opset} (from_keras failed: {err})")
    onnx.save(proto, str(path))
    return how


def keras_entry(how, words, model, covers):
    import keras
    import tensorflow as tf
    return {"kind": "onnx", "framework": "keras", "framework_version": f"keras {keras.__version__}, tensorflow {tf.__version__}",
            "exporter": how, "architecture": words, "bn": keras_bn_info(model), "covers": covers}


def fx_keras_tf2onnx():
    tf, keras = tf_setup(); L = keras.layers
    name, seed, n_in, n_out = "keras_tf2onnx", 20, 8, 3
    keras_seed(seed)
    model = keras.Sequential([
        keras.Input((n_in,), name="input"),
        dense(keras, 16, name="dense_1"), L.BatchNormalization(name="bn_1"), L.Activation("relu", name="relu_1"),
        dense(keras, 12, activation="relu", name="dense_2"), L.BatchNormalization(name="bn_2"),
        dense(keras, n_out, name="dense_out"),
    ], name=name)
    train_keras(model, seed, n_in, n_out)
    assert_keras_bn_moved(model, name)
    x = make_inputs(seed, n_in)
    path = OUT / f"{name}.onnx"
    how = tf2onnx_convert(model, n_in, path)
    onnx_fixture(name, path, x, keras_eval(model, x), tol=TOL_F32, entry=keras_entry(
        how, "Dense(8->16) -> BatchNormalization -> relu -> Dense(16->12, relu) -> BatchNormalization -> Dense(12->3)",
        model, "Keras BN before and after the activation, converted by tf2onnx (BN expected as per-feature Mul/Add)"))


def fx_keras_bn_noscale():
    tf, keras = tf_setup(); L = keras.layers
    name, seed, n_in, classes = "keras_bn_noscale", 21, 6, 3
    keras_seed(seed)
    model = keras.Sequential([
        keras.Input((n_in,), name="input"),
        L.BatchNormalization(name="bn_input"),
        dense(keras, 16, name="dense_1"), L.Activation("tanh", name="tanh"),
        L.BatchNormalization(scale=False, center=False, name="bn_noscale"),
        dense(keras, 12, name="dense_2"), L.BatchNormalization(epsilon=1e-5, name="bn_2"),
        L.Activation("sigmoid", name="sigmoid"),
        dense(keras, classes, activation="softmax", name="dense_out"),
    ], name=name)
    train_keras(model, seed, n_in, classes, classes=classes)
    assert_keras_bn_moved(model, name)
    x = make_inputs(seed, n_in)
    path = OUT / f"{name}.onnx"
    how = tf2onnx_convert(model, n_in, path)
    onnx_fixture(name, path, x, keras_eval(model, x), tol=TOL_F32, entry=keras_entry(
        how, "BatchNormalization(input) -> Dense(6->16) -> tanh -> BatchNormalization(scale=False, center=False) -> "
             "Dense(16->12) -> BatchNormalization(eps=1e-5) -> sigmoid -> Dense(12->3, softmax)",
        model, "BN on the raw input, BN without gamma/beta, tanh, sigmoid, softmax output (3-class classifier)"))


def fx_keras_export():
    tf, keras = tf_setup(); L = keras.layers
    name, seed, n_in, n_out = "keras_export", 22, 4, 2
    keras_seed(seed)
    model = keras.Sequential([
        keras.Input((n_in,), name="input"),
        dense(keras, 12, name="dense_1"), L.BatchNormalization(name="bn_1"), L.Activation("relu", name="relu_1"),
        dense(keras, 8, name="dense_2"), L.BatchNormalization(name="bn_2"), L.Activation("relu", name="relu_2"),
        dense(keras, n_out, name="dense_out"),
    ], name=name)
    train_keras(model, seed, n_in, n_out)
    assert_keras_bn_moved(model, name)
    x = make_inputs(seed, n_in)
    path = OUT / f"{name}.onnx"
    model.export(str(path), format="onnx", verbose=False)
    onnx_fixture(name, path, x, keras_eval(model, x), tol=TOL_F32, entry=keras_entry(
        f"keras {keras.__version__} model.export(path, format='onnx') (TensorFlow backend)",
        "Dense(4->12) -> BatchNormalization -> relu -> Dense(12->8) -> BatchNormalization -> relu -> Dense(8->2)",
        model, "the graph Keras 3's own ONNX export produces"))


# ---------------------------------------------------------------- main

FIXTURES = [
    ("torch_input_bn", fx_torch_input_bn),
    ("torch_nobias_leaky", fx_torch_nobias_leaky),
    ("torch_affine_false_gelu", fx_torch_affine_false_gelu),
    ("torch_momentum_none", fx_torch_momentum_none),
    ("torch_softmax_classifier", fx_torch_softmax_classifier),
    ("torch_f16", fx_torch_f16),
    ("torch_f16_cast", fx_torch_f16_cast),
    ("torch_gelu_tanh", fx_torch_gelu_tanh),
    ("torch_dynamo", fx_torch_dynamo),
    ("torch_state_dict", fx_torch_state_dict),   # also writes torch_state_dict_misc / _softmax
    ("refuse", fx_refuse),                        # refuse_conv, refuse_two_inputs
    ("keras_tf2onnx", fx_keras_tf2onnx),
    ("keras_bn_noscale", fx_keras_bn_noscale),
    ("keras_export", fx_keras_export),
]


def versions():
    import importlib.metadata as md
    out = {"python": sys.version.split()[0]}
    for p in ("torch", "onnx", "onnxruntime", "onnxscript", "tensorflow-cpu", "tensorflow", "keras", "tf2onnx",
              "safetensors", "numpy", "protobuf"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="regex of fixture groups to (re)build; other manifest entries are kept")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    mpath = OUT / "manifest.json"
    old = {}
    if args.only and mpath.exists():
        old = {e["name"]: e for e in json.loads(mpath.read_text())["fixtures"]}
    for group, fn in FIXTURES:
        if args.only and not re.fullmatch(args.only, group):
            continue
        print(f"== {group}", flush=True)
        CURRENT_GROUP[0] = group
        fn()
    # Rebuilt groups replace their old entries; order = FIXTURES order, then generation order within a group.
    rebuilt = {e["group"] for e in MANIFEST.values()}
    merged = {n: e for n, e in old.items() if e.get("group") not in rebuilt}
    merged.update(MANIFEST)
    gidx = {g: i for i, (g, _) in enumerate(FIXTURES)}
    seq = {n: i for i, n in enumerate(list(old) + ORDER)}
    order = sorted(merged, key=lambda n: (gidx.get(merged[n].get("group"), len(gidx)), seq[n]))
    manifest = {
        "generator": "import/tools/make_fixtures.py",
        "versions": versions(),
        "rows": ROWS, "train_steps": TRAIN_STEPS, "batch": BATCH,
        "tolerances": {"float32": TOL_F32, "float16_compute": TOL_F16},
        "notes": "input.npy/framework.npy/ort.npy are float32 C-order [rows, width]. max_abs_framework_vs_ort is "
                 "max |framework - ort| observed when generating. 'ops' lists node op types in graph order.",
        "fixtures": [merged[n] for n in order],
    }
    mpath.write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n")
    print()
    print(f"{'fixture':28s} {'kind':12s} {'opset':>5s} {'max|fw-ort|':>12s}  ops")
    for e in manifest["fixtures"]:
        d = e.get("max_abs_framework_vs_ort")
        ops = ",".join(dict.fromkeys(e.get("ops", []))) if e["kind"] == "onnx" else e.get("arch", "")
        print(f"{e['name']:28s} {e['kind']:12s} {str(e.get('opset') or '-'):>5s} "
              f"{('%.3g' % d) if d is not None else '-':>12s}  {ops}")
    total = sum(f.stat().st_size for f in OUT.iterdir() if f.is_file())
    print(f"\ntotal fixture bytes: {total}")
    assert total < 1_000_000
    return 0


if __name__ == "__main__":
    sys.exit(main())
