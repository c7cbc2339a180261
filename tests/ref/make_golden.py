#!/usr/bin/env python3
"""Makes tests/golden/smollm2_logits.txt: reference logits of SmolLM2-135M-Instruct (Q4_1 GGUF) for
fixed token-id prompts, computed by the independent numpy forward pass (forward_ref.py).

For each prompt: the ids, then per position the 16 highest logits (id:value) and the row's mean and
standard deviation. test_infer compares kvscope's logits with these without needing Python.
Token ids are the GGUF vocabulary's own entries: "The capital of France is" =
The(504) Ġcapital(3575) Ġof(282) ĠFrance(4649) Ġis(314); "Once upon a time, there was a little girl"
= Once(6403) Ġupon(1980) Ġa(253) Ġtime(655) ,(28) Ġthere(665) Ġwas(436) Ġa(253) Ġlittle(1838) Ġgirl(8180).

usage: make_golden.py MODEL.gguf OUT.txt
"""
import sys
import numpy as np
sys.path.insert(0, __file__.rsplit("/", 1)[0])
from forward_ref import load, forward

PROMPTS = [
    [504, 3575, 282, 4649, 314],
    [6403, 1980, 253, 655, 28, 665, 436, 253, 1838, 8180],
]


def main():
    hp, W = load(sys.argv[1])
    with open(sys.argv[2], "w") as f:
        f.write("# reference logits of SmolLM2-135M-Instruct.Q4_1.gguf by tests/ref/forward_ref.py (numpy %s)\n"
                % np.__version__)
        for ids in PROMPTS:
            lg = forward(hp, W, np.array(ids))
            f.write("prompt %s\n" % " ".join(map(str, ids)))
            for t in range(len(ids)):
                row = lg[t]
                top = np.argsort(-row)[:16]
                f.write("pos %d mean %.6f std %.6f top %s\n" % (
                    t, float(row.mean()), float(row.std()), " ".join("%d:%.5f" % (i, row[i]) for i in top)))


if __name__ == "__main__":
    main()
