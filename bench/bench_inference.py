"""On-device inference benchmark: onnxruntime vs PyTorch eager at batch 1 on one thread, package sizes,
int8 F1 change, and installed size of the inference-only environment vs the full one.

    .venv/bin/python bench/bench_inference.py [--data-dir DIR] [--infer-venv DIR] [--iters N]

The model is the HAPT acce/gyro global model shape (LSTM 3→32→4 + head 4→12) with window 32,
briefly trained on HAPT (tests/export_support.py) when the data is present, so the F1 figures
mean something; latency does not depend on the weights. The inference-only venv is created
with ``pip install '.[infer]'`` (from a copy of the tree) unless --infer-venv names one.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the shared test helper that builds a briefly trained run

import numpy as np  # noqa: E402
import torch  # noqa: E402

from edge_client.inference import StreamingRecognizer  # noqa: E402
from export.build import build_package  # noqa: E402
from export.onnx_export import export_classifier  # noqa: E402
from export.package import generate_keypair, load_private_key, verify_package  # noqa: E402
from export.verify import session  # noqa: E402
from export_support import TRAIN_STEPS, WINDOW, make_dataset_run, weighted_f1  # noqa: E402


def per_call_ms(fn, iters: int, repeats: int = 5) -> float:
    """Median over ``repeats`` of the mean time per call (ms) of ``iters`` calls, after a warm-up."""
    for _ in range(max(10, iters // 20)):
        fn()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        runs.append((time.perf_counter() - t0) / iters * 1e3)
    return statistics.median(runs)


def dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            p = Path(root) / f
            if not p.is_symlink():
                total += p.stat().st_size
    return total


def infer_venv(path: Path | None) -> Path:
    """An inference-only venv (``pip install '.[infer]'``, no torch), created on first use."""
    venv = path or Path(tempfile.gettempdir()) / "fedmekt-bench-infer-venv"
    if (venv / "bin" / "fedmekt").exists():
        return venv
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(shutil.copytree(REPO, Path(tmp) / "src", ignore=shutil.ignore_patterns(
            ".venv", ".git", "__pycache__", "*.egg-info", "build", "dist", ".pytest_cache", "runs")))
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{src}[infer]"],
                             capture_output=True, text=True)
        if pip.returncode:
            raise SystemExit(f"pip install '.[infer]' failed:\n{pip.stderr[-2000:]}")
    return venv


def parity_figures(run, modality: str, channels: int, tmp: Path) -> str:
    """Embedding gap ORT-vs-PyTorch per chunk, PyTorch fp32's own gap to a float64 run, label agreement."""
    clf = run.model.classifier(modality)
    sess = session(export_classifier(clf, channels, tmp / f"{modality}.onnx"))
    rows = np.concatenate([run.normalised(r, modality) for r in run.test])
    n = max(1, len(rows) // 2000)
    chunks = np.tile(rows, (-(-n * 2000 // len(rows)), 1))[: n * 2000].reshape(n, 2000, channels)
    z, logits = sess.run(None, {"x": chunks})
    with torch.inference_mode():
        zt, lt = (t.numpy() for t in clf(torch.from_numpy(chunks)))
        z64 = copy.deepcopy(clf).double()(torch.from_numpy(chunks).double())[0].numpy()
    gap = np.abs(z - zt).max(axis=(1, 2))
    return (f"{n} chunks, max|Δ| median {np.median(gap):.1e} max {gap.max():.1e}, chunks > 1e-4: {int((gap > 1e-4).sum())}; "
            f"PyTorch fp32 vs fp64 max {np.abs(zt - z64).max():.1e}; "
            f"labels identical on {np.mean(logits.argmax(-1) == lt.argmax(-1)) * 100:.3f}% of steps")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("FEDMEKT_DATA_DIR", REPO.parent / "shared" / "data")))
    ap.add_argument("--infer-venv", type=Path, help="existing inference-only venv (default: create one in /tmp)")
    ap.add_argument("--iters", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = make_dataset_run("hapt", args.data_dir, tmp / "run", train_steps=TRAIN_STEPS["hapt"])
        generate_keypair(tmp / "k.key", tmp / "k.pub")
        key = load_private_key(tmp / "k.key")
        fp32 = build_package(run.model, tmp / "fp32", key)
        int8 = build_package(run.model, tmp / "int8", key, int8=True)

        print(f"== per-window latency, batch 1, 1 thread (torch {torch.__version__}, "
              f"onnxruntime {__import__('onnxruntime').__version__}, {os.cpu_count()} CPUs) ==")
        clf = run.model.classifier("acce")
        s32, s8 = session(fp32.path / "acce.onnx", threads=1), session(int8.path / "acce.int8.onnx", threads=1)
        print(f"{'T':>5} {'torch eager ms':>15} {'ORT fp32 ms':>12} {'ORT int8 ms':>12} {'fp32 speed-up':>14} {'int8 speed-up':>14}")
        for t in (WINDOW, 128):
            x = np.random.default_rng(0).standard_normal((1, t, 3)).astype(np.float32)
            xt = torch.from_numpy(x)
            with torch.inference_mode():
                pt = per_call_ms(lambda: clf(xt), args.iters)
            o32 = per_call_ms(lambda: s32.run(None, {"x": x}), args.iters)
            o8 = per_call_ms(lambda: s8.run(None, {"x": x}), args.iters)
            print(f"{t:>5} {pt:>15.4f} {o32:>12.4f} {o8:>12.4f} {pt / o32:>13.1f}x {pt / o8:>13.1f}x")
        rec = StreamingRecognizer(verify_package(fp32.path, None), "acce")
        rows = run.test[0].modalities["acce"]
        stride, pos = rec.stride, [0]
        rec.push(run.test[0].timestamps[:WINDOW - stride], rows[:WINDOW - stride])

        def one_window():  # `stride` new rows complete exactly one window: normalise + window + ORT + softmax
            a = (pos[0] % (len(rows) // stride - 4)) * stride + WINDOW
            pos[0] += 1
            rec.push(run.test[0].timestamps[a:a + stride], rows[a:a + stride])

        print(f"streaming recognizer (window {WINDOW}, stride {stride}, whole path): "
              f"{per_call_ms(one_window, args.iters):.4f} ms/window")

        print("\n== package sizes (ONNX files + manifest + signature) ==")
        print(f"fp32 {fp32.size_bytes:>8} bytes   int8 {int8.size_bytes:>8} bytes   ratio {fp32.size_bytes / int8.size_bytes:.2f}x")

        print("\n== int8 F1 change on held-out HAPT recordings (briefly trained model, weighted F1, last-step label;"
              " tests/test_export_quantize.py asserts |change| <= 0.05) ==")
        for m in ("acce", "gyro"):
            x, y = run.test_windows(m)
            f = {}
            for name, path in (("fp32", fp32.path / f"{m}.onnx"), ("int8", int8.path / f"{m}.int8.onnx")):
                f[name] = weighted_f1(y, session(path).run(["logits"], {"x": x})[0][:, -1].argmax(-1))
            print(f"{m}: fp32 F1 {f['fp32']:.4f}  int8 F1 {f['int8']:.4f}  change {f['int8'] - f['fp32']:+.4f} "
                  f"({len(y)} windows)")

    print("\n== parity on recorded data: held-out set as consecutive 2000-step chunks (spec §5), fp32 ORT vs PyTorch ==")
    for dataset in ("ur_fall", "hapt"):
        with tempfile.TemporaryDirectory() as tmp:
            r = make_dataset_run(dataset, args.data_dir, Path(tmp) / "run", train_steps=TRAIN_STEPS[dataset])
            for m, channels in r.model.info.channels.items():
                print(f"{dataset} {m}: " + parity_figures(r, m, channels, Path(tmp)))

    print("\n== installed size ==")
    full = REPO / ".venv"
    infer = infer_venv(args.infer_venv)
    fb, ib = dir_bytes(full), dir_bytes(infer)
    print(f"full environment ({full}): {fb / 2**20:.0f} MiB")
    print(f"inference-only ({infer}, pip install '.[infer]'): {ib / 2**20:.0f} MiB   ratio {fb / ib:.1f}x smaller")
    return 0


if __name__ == "__main__":
    sys.exit(main())
