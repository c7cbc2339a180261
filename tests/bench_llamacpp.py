#!/usr/bin/env python3
"""llama.cpp baseline for `make bench`: prefill and decode tokens/s of the same GGUF at the same
context lengths and thread count, through llama-cpp-python. Prints one JSON line per context.

usage: bench_llamacpp.py MODEL CTX[,CTX...] THREADS DECODE_TOKENS TEXTFILE
"""
import json
import sys
import time

from llama_cpp import Llama


def main():
    model, ctxs, threads, n_dec, textfile = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    text = open(textfile, encoding="utf-8").read()
    for ctx in [int(c) for c in ctxs.split(",")]:
        llm = Llama(model_path=model, n_ctx=ctx + n_dec + 8, n_threads=threads, n_threads_batch=threads,
                    n_batch=256, n_ubatch=256, verbose=False, logits_all=False)
        toks = llm.tokenize(text.encode(), add_bos=False)
        toks = (toks * (ctx // max(len(toks), 1) + 1))[:ctx]
        t0 = time.perf_counter()
        llm.eval(toks)
        pf = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(n_dec):
            tok = llm.sample(temp=0.0)
            llm.eval([tok])
        dc = time.perf_counter() - t0
        print(json.dumps({"engine": "llama.cpp", "ctx": ctx, "prefill_tps": ctx / pf, "decode_tps": n_dec / dc,
                          "threads": threads}), flush=True)
        del llm


if __name__ == "__main__":
    main()
