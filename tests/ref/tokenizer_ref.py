#!/usr/bin/env python3
"""Independent reference for kvscope's byte-level BPE tokenizer: builds a HuggingFace `tokenizers`
tokenizer from a GGUF's vocabulary and merges (read with the `gguf` package) with SmolLM2's
pre-tokenizer (each digit isolated, then the GPT-2 split regex + ByteLevel) and prints ids.

  tokenizer_ref.py MODEL.gguf TEXTFILE [--special]   ids, one per line
  tokenizer_ref.py MODEL.gguf --golden OUT CASEFILE...  writes golden cases (text + ids)

--special registers the GGUF's control tokens as special tokens, so their text in the input
becomes single ids (kvscope's parse_special)."""
import sys

import gguf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, AddedToken


def field_strings(reader, key):
    f = reader.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def build(model_path, special):
    r = gguf.GGUFReader(model_path)
    pre = bytes(r.fields["tokenizer.ggml.pre"].parts[-1]).decode()
    if pre != "smollm":
        sys.exit("tokenizer_ref.py: only the 'smollm' pre-tokenizer is modelled, not %r" % pre)
    tokens = field_strings(r, "tokenizer.ggml.tokens")
    tt = r.fields["tokenizer.ggml.token_type"]
    types = [int(tt.parts[i][0]) for i in tt.data]
    merges = [tuple(m.split(" ", 1)) for m in field_strings(r, "tokenizer.ggml.merges")]
    vocab = {}
    for i, tok in enumerate(tokens):
        vocab.setdefault(tok, i)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    if special:
        tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                for i in range(len(tokens)) if types[i] == 3])
    return tok


def main():
    args = sys.argv[1:]
    if len(args) >= 3 and args[1] == "--golden":
        model, out, cases = args[0], args[2], args[3:]
        plain, spec = build(model, False), build(model, True)
        with open(out, "w") as f:
            f.write("# Golden ids for tests/test_tokenizer.c, written by tests/ref/tokenizer_ref.py\n")
            f.write("# from %s with HuggingFace tokenizers (independent of kvscope).\n" % model.split("/")[-1])
            f.write("# case NAME SPECIAL(0|1) / text HEX-UTF8 / ids ID...\n")
            for path in cases:
                special = path.endswith(".special.txt")
                with open(path, "rb") as cf:
                    data = cf.read()
                text = data.decode("utf-8")
                ids = (spec if special else plain).encode(text, add_special_tokens=False).ids
                name = path.split("/")[-1]
                f.write("case %s %d\ntext %s\nids %s\n" % (name, int(special), data.hex(), " ".join(map(str, ids))))
        return
    if len(args) not in (2, 3) or (len(args) == 3 and args[2] != "--special"):
        sys.exit(__doc__)
    tok = build(args[0], len(args) == 3)
    with open(args[1], "rb") as f:
        text = f.read().decode("utf-8")
    ids = tok.encode(text, add_special_tokens=False).ids
    sys.stdout.write("".join("%d\n" % i for i in ids))


if __name__ == "__main__":
    main()
