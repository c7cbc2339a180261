#!/usr/bin/env python3
"""Independent check of kvscope's dequantizers: every tensor of the tiny models (one per weight
type, plus random bit patterns) and a selection of the real model's tensors are dequantized by
gguf-py (gguf.quants.dequantize) and by kvscope (tests/test_dequant_dump), and must agree
exactly (bit-equal, or within 1e-6 relative). Prints one line per tensor and "N passed, N failed"."""
import argparse
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import gguf
    from gguf.quants import dequantize
except ImportError as e:  # the suite's set-up installs them; say so instead of passing silently
    print(f"FAIL: python reference tools missing ({e})")
    print("0 passed, 1 failed")
    sys.exit(1)

passed = failed = 0


def compare(label, got, ref):
    global passed, failed
    ref = np.asarray(ref, dtype=np.float32).reshape(-1)
    if got.shape != ref.shape:
        failed += 1
        print(f"FAIL {label}: {got.size} values, reference has {ref.size}")
        return
    exact = int(np.sum(got.view(np.uint32) == ref.view(np.uint32)))
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    tol = 1e-6 * np.abs(ref.astype(np.float64))
    bad = int(np.sum(~(diff <= tol)))
    if bad:
        failed += 1
        i = int(np.argmax(diff - tol))
        print(f"FAIL {label}: {bad}/{ref.size} values differ; worst [{i}] kvscope {got[i]!r} gguf-py {ref[i]!r}")
    else:
        passed += 1
        print(f"ok   {label}: {ref.size} values, {exact} bit-equal, max |diff| {diff.max() if diff.size else 0:.3g}")


def rows_of(t):
    """Raw tensor bytes as (rows, row_bytes) so row slices can be dequantized."""
    data = np.asarray(t.data)
    ne0 = int(t.shape[0])
    nrows = int(np.prod(t.shape[1:])) if len(t.shape) > 1 else 1
    return data.reshape(nrows, -1), ne0, nrows


def check_file(binary, path, tmp, selection=None):
    r = gguf.GGUFReader(path)
    name = os.path.basename(path)
    for t in r.tensors:
        if selection is not None and t.name not in selection:
            continue
        raw, ne0, nrows = rows_of(t)
        ranges = [(0, nrows)] if selection is None else selection[t.name](nrows)
        for r0, n in ranges:
            out = os.path.join(tmp, "dump.f32")
            p = subprocess.run([binary, path, t.name, out, str(r0), str(n)], capture_output=True, text=True)
            label = f"{name} {t.name} [{t.tensor_type.name}] rows {r0}..{r0 + n}"
            if p.returncode != 0:
                global failed
                failed += 1
                print(f"FAIL {label}: dumper exited {p.returncode}: {p.stderr.strip()}")
                continue
            got = np.fromfile(out, dtype=np.float32)
            ref = dequantize(raw[r0:r0 + n], t.tensor_type)
            compare(label, got, ref)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--real", default="")
    ap.add_argument("--tmp", default="")
    a = ap.parse_args()
    tmp = a.tmp or tempfile.mkdtemp(prefix="kvs-dequant-")
    os.makedirs(tmp, exist_ok=True)
    p = subprocess.run([a.bin, "--write-models", os.path.join(tmp, "models")], capture_output=True, text=True)
    if p.returncode != 0:
        print(f"FAIL writing tiny models: {p.stderr.strip()}")
        print("0 passed, 1 failed")
        return 1
    types_seen = set()
    for path in p.stdout.split():
        for t in gguf.GGUFReader(path).tensors:
            types_seen.add(t.tensor_type.name)
        check_file(a.bin, path, tmp)
    print(f"tiny-model types covered: {', '.join(sorted(types_seen))}")

    if not a.real or not os.path.exists(a.real):
        print(f"skipped: model missing ({a.real or 'no path given'}): real-model tensors not compared")
    else:
        first_last = lambda n: [(0, min(n, 512)), (max(0, n - 512), min(n, 512))]
        every = lambda n: [(0, n)]
        sel = {"token_embd.weight": first_last, "output.weight": first_last, "output_norm.weight": every}
        # first, middle and last block (0, 15, 29 on SmolLM2; 0, 12, 23 on Qwen2.5, whose Q4_K, Q6_K
        # and Q8_0 tensors all fall in these), with the K/V biases where the model has them
        n_layer = 1 + max(int(t.name.split(".")[1]) for t in gguf.GGUFReader(a.real).tensors
                          if t.name.startswith("blk."))
        for l in (0, n_layer // 2, n_layer - 1):
            for s in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                      "ffn_down"):
                sel[f"blk.{l}.{s}.weight"] = every
            for s in ("attn_q", "attn_k", "attn_v"):
                sel[f"blk.{l}.{s}.bias"] = every
        check_file(a.bin, a.real, tmp, sel)
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
