#!/usr/bin/env python3
"""Independent reference for kvscope's byte-level BPE tokenizer: builds a HuggingFace `tokenizers`
tokenizer from a GGUF's vocabulary and merges (read with the `gguf` package) with the pre-tokenizer
its tokenizer.ggml.pre names (smollm: each digit isolated, then the GPT-2 split regex + ByteLevel;
gpt2, llama-bpe, qwen2: their split regex + ByteLevel), or, for a "llama" (SentencePiece-style)
vocabulary, BPE with byte fallback and merges ranked by score, and prints ids.

  tokenizer_ref.py MODEL.gguf TEXTFILE [--special]   ids, one per line
  tokenizer_ref.py --cases OUTDIR                       writes the test texts (NAME.txt; a name
                                                        ending .special.txt is encoded with specials)
  tokenizer_ref.py MODEL.gguf --batch DIR PRE,... CASEFILE...
                        for each pre-tokenizer family PRE: writes CASEFILE.PRE.ref (ids) and, for a
                        PRE other than MODEL's own, DIR/PRE.gguf: a tokenizer-only GGUF with MODEL's
                        vocabulary and merges under that tokenizer.ggml.pre
  tokenizer_ref.py MODEL.gguf --golden OUT CASEFILE...  writes golden cases (text + ids)
  tokenizer_ref.py MODEL.gguf --chat USER [SYSTEM]      renders the GGUF's chat template (jinja2)

--special registers the GGUF's control tokens as special tokens, so their text in the input
becomes single ids (kvscope's parse_special)."""
import os
import random
import sys
import unicodedata

import gguf
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers


def field_strings(reader, key):
    f = reader.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


GPT2_RE = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"""
LLAMA3_RE = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
             r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN2_RE = LLAMA3_RE.replace(r"\p{N}{1,3}", r"\p{N}")


def pre_tokenizer(pre):
    """The HuggingFace pre-tokenizer of each tokenizer.ggml.pre family, as the models' own
    tokenizer.json files spell them."""
    bytelevel = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    if pre in ("gpt2", "gpt-2", "default"):
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(GPT2_RE), behavior="isolated"), bytelevel])
    if pre in ("llama-bpe", "llama3"):
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated"), bytelevel])
    if pre == "qwen2":
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_RE), behavior="isolated"), bytelevel])
    sys.exit("tokenizer_ref.py: pre-tokenizer %r is not modelled" % pre)


def read_vocab(model_path):
    r = gguf.GGUFReader(model_path)
    tt = r.fields["tokenizer.ggml.token_type"]
    v = {
        "reader": r,
        "model": bytes(r.fields["tokenizer.ggml.model"].parts[-1]).decode(),
        "tokens": field_strings(r, "tokenizer.ggml.tokens"),
        "types": [int(tt.parts[i][0]) for i in tt.data],
    }
    if v["model"] == "llama":
        sc = r.fields["tokenizer.ggml.scores"]
        v["scores"] = [float(sc.parts[i][0]) for i in sc.data]
        v["pre"] = "spm"
    else:
        v["merges"] = field_strings(r, "tokenizer.ggml.merges")
        v["pre"] = bytes(r.fields["tokenizer.ggml.pre"].parts[-1]).decode()
    return v


def build_spm(v):
    """SentencePiece-style BPE as HuggingFace spells it for Llama 2: ' ' -> U+2581 with one
    prepended, BPE with byte fallback. The merges come from the scores: every split of a piece into
    two pieces, ranked by the merged piece's score (as HF's SentencePiece converter does)."""
    tokens, types, scores = v["tokens"], v["types"], v["scores"]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for i, t in enumerate(tokens):
        if types[i] != 1 or len(t) < 2:
            continue
        for k in range(1, len(t)):
            a, b = t[:k], t[k:]
            if a in vocab and b in vocab and types[vocab[a]] == 1 and types[vocab[b]] == 1:
                merges.append((-scores[i], vocab[a], a, b))
    merges.sort(key=lambda m: (m[0], m[1]))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for _, _, a, b in merges], byte_fallback=True,
                               unk_token=tokens[0]))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    return tok


def build(v, special):
    if v["model"] == "llama":
        tok = build_spm(v)
    else:
        vocab = {}
        for i, t in enumerate(v["tokens"]):
            vocab.setdefault(t, i)
        merges = [tuple(m.split(" ", 1)) for m in v["merges"]]
        # Llama 3's tokenizer.json sets ignore_merges: a word that is a token is taken whole
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=v["pre"] in ("llama-bpe", "llama3")))
        tok.pre_tokenizer = pre_tokenizer(v["pre"])
        tok.decoder = decoders.ByteLevel()
    if special:
        tok.add_special_tokens([AddedToken(v["tokens"][i], special=True, normalized=False)
                                for i in range(len(v["tokens"])) if v["types"][i] == 3])
    return tok


def retarget(v, out, pre):
    """Writes a tokenizer-only GGUF with V's vocabulary and merges but tokenizer.ggml.pre PRE,
    so that both sides can be compared on the other pre-tokenizer families."""
    w = gguf.GGUFWriter(out, "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(v["tokens"])
    w.add_token_types(v["types"])
    w.add_token_merges(v["merges"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()


VARIED = (
    "Hello, World! It's a test: we'll see they're fine & I'm \"quoted\" \u2014 don't 'panic'.\n"
    "Numbers: 1234567, 3.14159, -42, 1,000,000, 2024-05-09 and \u00bd \u00b2 \u00b3 \u0663 10\u2075.\n"
    "Unicode: caf\u00e9 na\u00efve \u00c5ngstr\u00f6m Stra\u00dfe \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac "
    "\u0440\u0443\u0441\u0441\u043a\u0438\u0439 \u05e2\u05d1\u05e8\u05d9\u05ea \u0627\u0644\u0639\u0631\u0628\u064a\u0629 "
    "\u0939\u093f\u0928\u094d\u0926\u0940 e\u0301 combining\n"
    "CJK: \u4e2d\u6587\u5b57\u7b26\u6d4b\u8bd5\uff0c\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3001"
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8\n"
    "Emoji: \U0001F600\U0001F44D\U0001F3FD \U0001F468\u200d\U0001F469\u200d\U0001F467 \U0001F1EB\U0001F1F7 \u2728!!\n"
    "Code:\n    def f(x):\n\treturn x**2 + 0x1F  # comment\n"
    "int main(void) { printf(\"%d\\n\", a[i]); return 0; }\n"
    "Whitespace:   three spaces,\ttab,\t\ttwo tabs,  \n\n\n  newlines \r\n CRLF \u00a0nbsp\u3000ideographic"
    " \u2028line sep\v\f\n"
    "'S 'T 'RE 'Ve 's's'd'll'm o'clock rock'n'roll '\u017f'\u212a\n"
    "trailing spaces   \n   \n\t \n"
    "URL https://example.org/a_b-c?d=1&e=%20#frag  email a.b@c.de $5.00 \u20ac12 50% ~/x.txt\n"
    "   ")

SPECIAL = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
           "<|im_start|>assistant\n<|endoftext|>text<repo_name>x<|im_end|><|im_end|> <|im_start|>")


def random_text(seed, n):
    """Mixed text: ASCII words, digits, punctuation, whitespace runs and random assigned code points
    (Unicode 14, so that both sides classify them alike)."""
    rnd = random.Random(seed)
    pieces = ["the", "The", "hello", " ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", "'s", "'ll", "'", "0", "42",
              "1234567", ".", ",", "!", "?", "...", "--", "()", "{}", "\u00e9", "\u00df", "\u4e2d\u6587", "\U0001F600",
              "\u00a0", "\u3000", "\u0663", "\u00b2", "_", "#", "@", "\\", "\"", "<|", "|>"]
    out = []
    while sum(map(len, out)) < n:
        if rnd.random() < 0.25:
            cp = rnd.randrange(0x20, 0x30000)
            ch = chr(cp)
            if 0xD800 <= cp <= 0xDFFF or unicodedata.category(ch) in ("Cn", "Cs", "Co"):
                continue
            out.append(ch)
        else:
            out.append(rnd.choice(pieces))
    return "".join(out)


def write_cases(outdir):
    os.makedirs(outdir, exist_ok=True)
    cases = {"varied.txt": VARIED, "special.special.txt": SPECIAL}
    for i in range(4):
        cases["random%d.txt" % i] = random_text(1000 + i, 1500)
    gpl = "/usr/share/common-licenses/GPL-3"
    if os.path.exists(gpl):
        with open(gpl, encoding="utf-8") as f:
            cases["gpl3_head.txt"] = f.read()[:3000]
    for name, text in cases.items():
        with open(os.path.join(outdir, name), "w", encoding="utf-8", newline="") as f:
            f.write(text)


def render_chat(model_path, user, system):
    import jinja2
    r = gguf.GGUFReader(model_path)
    tpl = bytes(r.fields["tokenizer.chat_template"].parts[-1]).decode()
    tokens = field_strings(r, "tokenizer.ggml.tokens")
    bos = int(r.fields["tokenizer.ggml.bos_token_id"].parts[-1][0])
    eos = int(r.fields["tokenizer.ggml.eos_token_id"].parts[-1][0])
    msgs = ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": user}]
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    out = env.from_string(tpl).render(messages=msgs, add_generation_prompt=True,
                                      bos_token=tokens[bos], eos_token=tokens[eos])
    sys.stdout.write(out)


def main():
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "--cases":
        write_cases(args[1])
        return
    if len(args) in (3, 4) and args[1] == "--chat":
        render_chat(args[0], args[2], args[3] if len(args) == 4 else None)
        return
    if len(args) >= 4 and args[1] == "--batch":
        # one read of the vocabulary for every pre-tokenizer family: slow part of this script
        v = read_vocab(args[0])
        outdir, pres, cases = args[2], args[3].split(","), args[4:]
        for pre in pres:
            if pre != v["pre"]:
                retarget(v, os.path.join(outdir, pre + ".gguf"), pre)
            w = dict(v, pre=pre)
            plain, spec = build(w, False), build(w, True)
            for path in cases:
                with open(path, "rb") as f:
                    text = f.read().decode("utf-8")
                ids = (spec if path.endswith(".special.txt") else plain).encode(text, add_special_tokens=False).ids
                with open("%s.%s.ref" % (path, pre), "w") as f:
                    f.write("".join("%d\n" % i for i in ids))
        return
    if len(args) >= 3 and args[1] == "--golden":
        model, out, cases = args[0], args[2], args[3:]
        v = read_vocab(model)
        plain, spec = build(v, False), build(v, True)
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
    tok = build(read_vocab(args[0]), len(args) == 3)
    with open(args[1], "rb") as f:
        text = f.read().decode("utf-8")
    ids = tok.encode(text, add_special_tokens=False).ids
    sys.stdout.write("".join("%d\n" % i for i in ids))


if __name__ == "__main__":
    main()
