#!/usr/bin/env python3
"""Independent reference forward pass: numpy over the `gguf` package's reader and dequantizers.

Implements the llama-family / qwen2 transformer from the GGUF metadata alone (no kvscope code):
RMSNorm, RoPE (llama pairs (2i, 2i+1), qwen2 pairs (i, i+d/2), llama3 frequency scaling, rope_freqs),
grouped-query causal attention, SwiGLU, tied or separate output head. fp32 activations,
float64 softmax.

usage: forward_ref.py MODEL.gguf OUT.bin ID [ID ...]
writes float32 logits (n_tokens, n_vocab) row-major to OUT.bin.
"""
import sys
import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def field(r, key, default=None):
    f = r.fields.get(key)
    if f is None:
        return default
    v = f.contents()
    return v


def load(path):
    r = GGUFReader(path)
    arch = field(r, "general.architecture")
    hp = dict(
        arch=arch,
        n_layer=int(field(r, f"{arch}.block_count")),
        D=int(field(r, f"{arch}.embedding_length")),
        n_head=int(field(r, f"{arch}.attention.head_count")),
        eps=float(field(r, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        theta=float(field(r, f"{arch}.rope.freq_base", 10000.0)),
        scaling=field(r, f"{arch}.rope.scaling.type", ""),
        factor=float(field(r, f"{arch}.rope.scaling.factor", 0.0) or 0.0),
        low=float(field(r, f"{arch}.rope.scaling.low_freq_factor", 1.0)),
        high=float(field(r, f"{arch}.rope.scaling.high_freq_factor", 4.0)),
        orig=int(field(r, f"{arch}.rope.scaling.original_context_length", 8192)),
    )
    hp["n_kv"] = int(field(r, f"{arch}.attention.head_count_kv", hp["n_head"]))
    W = {}
    for t in r.tensors:
        a = dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = [int(x) for x in t.shape][::-1]  # numpy order: (rows, cols)
        W[t.name] = a.reshape(shape) if len(shape) > 1 else a.reshape(-1)
    return hp, W


def rope_freqs(hp, d, W):
    inv = hp["theta"] ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    if hp["scaling"] == "llama3":
        factor = hp["factor"] or 8.0
        wavelen = 2 * np.pi / inv
        low_wl, high_wl = hp["orig"] / hp["low"], hp["orig"] / hp["high"]
        out = inv.copy()
        for i in range(len(inv)):
            if wavelen[i] < high_wl:
                pass
            elif wavelen[i] > low_wl:
                out[i] = inv[i] / factor
            else:
                s = (hp["orig"] / wavelen[i] - hp["low"]) / (hp["high"] - hp["low"])
                out[i] = (1 - s) * inv[i] / factor + s * inv[i]
        inv = out
    elif hp["scaling"] == "linear" and hp["factor"] > 0:
        inv = inv / hp["factor"]
    if "rope_freqs.weight" in W:
        inv = inv / W["rope_freqs.weight"].astype(np.float64)
    return inv


def rope(x, pos, inv, neox):
    # x: (T, H, d)
    d = x.shape[-1]
    ang = np.outer(pos, inv)  # (T, d/2)
    c = np.cos(ang)[:, None, :].astype(np.float32)
    s = np.sin(ang)[:, None, :].astype(np.float32)
    y = x.copy()
    if neox:
        a, b = x[..., : d // 2], x[..., d // 2:]
        y[..., : d // 2] = a * c - b * s
        y[..., d // 2:] = a * s + b * c
    else:
        a, b = x[..., 0::2], x[..., 1::2]
        y[..., 0::2] = a * c - b * s
        y[..., 1::2] = a * s + b * c
    return y


def rmsnorm(x, w, eps):
    return (x / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True) + eps)).astype(np.float32) * w


def forward(hp, W, ids):
    T = len(ids)
    D, nh, nkv = hp["D"], hp["n_head"], hp["n_kv"]
    d = D // nh
    neox = hp["arch"] == "qwen2"
    inv = rope_freqs(hp, d, W)
    pos = np.arange(T)
    x = W["token_embd.weight"][ids].astype(np.float32)
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(hp["n_layer"]):
        p = f"blk.{l}."
        xn = rmsnorm(x, W[p + "attn_norm.weight"], hp["eps"])
        q = xn @ W[p + "attn_q.weight"].T
        k = xn @ W[p + "attn_k.weight"].T
        v = xn @ W[p + "attn_v.weight"].T
        if p + "attn_q.bias" in W:
            q = q + W[p + "attn_q.bias"]
            k = k + W[p + "attn_k.bias"]
            v = v + W[p + "attn_v.bias"]
        q = rope(q.reshape(T, nh, d), pos, inv, neox)
        k = rope(k.reshape(T, nkv, d), pos, inv, neox)
        v = v.reshape(T, nkv, d)
        rep = nh // nkv
        out = np.zeros((T, nh, d), dtype=np.float32)
        for h in range(nh):
            g = h // rep
            s = (q[:, h, :].astype(np.float64) @ k[:, g, :].T.astype(np.float64)) / np.sqrt(d) + mask
            s = np.exp(s - s.max(axis=1, keepdims=True))
            s /= s.sum(axis=1, keepdims=True)
            out[:, h, :] = (s @ v[:, g, :].astype(np.float64)).astype(np.float32)
        x = x + out.reshape(T, D) @ W[p + "attn_output.weight"].T
        xn = rmsnorm(x, W[p + "ffn_norm.weight"], hp["eps"])
        g = xn @ W[p + "ffn_gate.weight"].T
        u = xn @ W[p + "ffn_up.weight"].T
        h_ = (g / (1 + np.exp(-g))) * u
        x = x + h_ @ W[p + "ffn_down.weight"].T
    x = rmsnorm(x, W["output_norm.weight"], hp["eps"])
    out_w = W.get("output.weight", W["token_embd.weight"])
    return (x @ out_w.T).astype(np.float32)


def main():
    if len(sys.argv) < 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    hp, W = load(sys.argv[1])
    ids = np.array([int(a) for a in sys.argv[3:]], dtype=np.int64)
    logits = forward(hp, W, ids)
    logits.astype("<f4").tofile(sys.argv[2])


if __name__ == "__main__":
    main()
