#!/usr/bin/env python3
"""Command-line fuzzing of kvscope with corpora generated here (deterministic seeds):

  gguf   mutates a tmp copy of the REAL model in place (tensor-info records: types, dims, dim
         counts, offsets, names; the alignment; shape metadata; data bytes, f32 values and block
         scales; keys, strings, tokens and merges with control bytes), runs `kvscope generate` on
         it and puts the bytes back.
  trace  mutates traces (sample traces written by test_traces; with --real-trace also a run
         recorded from the model): metadata, record bodies, lengths, types, text with control bytes, chunk
         fields, chunk order, the footer; then recompresses every payload and recomputes every
         length and CRC (tests/lib/kvstrace.py) so record parsing is really reached; runs
         `trace info`, `trace export` (csv, jsonl, perfetto) and `replay --batch` on each.

Every run is checked: no crash (exit status < 128), no hang (timeout), an error is exactly one
line on stderr naming the file, no raw control byte or invalid UTF-8 on stderr or stdout, exports
that exit 0 parse (CSV rows one line each with the header's field count, JSON without NaN), and a
model that exits 0 produced text (a NaN model samples token 0, the end token: empty output).
Prints one summary line per corpus and "N passed, N failed"; exits 1 on any failure.
  tests/fuzz_cli.py KVSCOPE BUILD MODEL WORKDIR [--cases N] [--seconds S] [--seed N]
                    [--only gguf|trace] [--corpus DIR] [--real-trace]
The cases are a function of the seed and the base files (the real model; test_traces' sample
traces, fixed apart from timestamps), so a run repeats; --real-trace adds a live recording.
"""
import argparse
import csv
import io
import json
import mmap
import os
import random
import shutil
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'lib'))
import kvsgguf  # noqa: E402
import kvstrace  # noqa: E402

CTL = [b'\x1b[2J', b'\x07', b'\n', b'\xff', b'\x1b]0;pwned\x07', b'\r', b'\xc2\x9b', b'\x00', b'\x7f', b'"', b',']
TIMEOUT = 30


def hostile(rng, n):
    """N bytes mixing control sequences, invalid UTF-8 and CSV/JSON syntax."""
    out = b''
    while len(out) < n:
        out += rng.choice(CTL + [b'a', b'\xe2\x96\x81'])
    return out[:n]


def bad_bytes(data):
    """First raw control byte (other than newline) or invalid UTF-8 in DATA, or None."""
    try:
        text = data.decode('utf-8')
    except UnicodeDecodeError as e:
        return 'invalid UTF-8 at byte %d' % e.start
    for i, ch in enumerate(text):
        o = ord(ch)
        if (o < 0x20 and ch != '\n') or 0x7f <= o <= 0x9f:
            return 'raw control U+%04X at char %d' % (o, i)
    return None


def recorded_errors(out):
    """True when a replay's JSON lines hold a LOG record above warning level (a recorded failure)."""
    for line in out.split(b'\n'):
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict) and r.get('type') == 'log' and r.get('level') not in ('info', 'warn', 'warning',
                                                                                  'debug', 0, 1):
            return True
    return False


def no_nan(_):
    raise ValueError('NaN/Infinity in JSON')


class Runner:
    def __init__(self, kvscope, name):
        self.kvscope, self.name = kvscope, name
        self.runs = self.ok = self.refused = 0
        self.failures = []

    def fail(self, what, case, cmd, rc, err):
        self.failures.append('%s: case %s: %s: %s (exit %s) %r' % (self.name, case, ' '.join(cmd[1:3]), what, rc,
                                                                   err[:300]))

    def run(self, case, args, path, check_out=None):
        cmd = [self.kvscope] + args
        replay = args[0] == 'replay'
        self.runs += 1
        try:
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.fail('hang (no exit in %d s)' % TIMEOUT, case, cmd, None, b'')
            return None
        rc, out, err = p.returncode, p.stdout, p.stderr
        if rc < 0 or rc >= 128:
            self.fail('crash', case, cmd, rc, err)
            return None
        why = bad_bytes(err)
        if why:
            self.fail('stderr: ' + why, case, cmd, rc, err)
        if rc != 0:
            self.refused += 1
            lines = err.split(b'\n')
            if lines and lines[-1] == b'':
                lines.pop()
            if replay and recorded_errors(out):
                # replaying a recorded failure: its LOG errors come back on stderr as in the live
                # run (each one clean line, checked above); exit 1 is the recorded outcome
                return None
            if len(lines) != 1:
                self.fail('error is %d lines, not one' % len(lines), case, cmd, rc, err)
            elif os.path.basename(path).encode() not in lines[0]:
                self.fail('error does not name the file', case, cmd, rc, err)
            return None
        self.ok += 1
        why = bad_bytes(out)
        if why:
            self.fail('stdout: ' + why, case, cmd, rc, out)
        elif check_out:
            try:
                check_out(out)
            except Exception as e:  # noqa: BLE001 - any parse failure is the finding
                self.fail('output: %s' % e, case, cmd, rc, out)
        return out


# ---------------------------------------------------------------- GGUF

SHAPE_KEYS = ['llama.block_count', 'llama.embedding_length', 'llama.feed_forward_length',
              'llama.attention.head_count', 'llama.attention.head_count_kv', 'llama.context_length',
              'llama.rope.dimension_count', 'llama.vocab_size', 'general.file_type']
FLOAT_KEYS = ['llama.rope.freq_base', 'llama.attention.layer_norm_rms_epsilon']
STRING_KEYS = ['general.name', 'tokenizer.ggml.pre', 'tokenizer.ggml.model', 'general.architecture']
TYPES = [0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 30, 4, 10, 15, 39, 40, 99, 0xffffffff]


def gguf_mutations(L, size, rng):
    """A list of (offset, new bytes, label) for one case: 1 to 3 mutations."""
    out = []
    tensors = L.tensors
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        kind = rng.choice(['tensor_type', 'tensor_dim', 'tensor_ndims', 'tensor_offset', 'tensor_name',
                           'data_f32', 'data_scale', 'data_bytes', 'meta_u32', 'meta_f32', 'meta_type',
                           'alignment', 'key_ctl', 'str_ctl', 'token_ctl', 'merge_ctl', 'header'])
        t = rng.choice(tensors)
        if kind == 'tensor_type':
            out.append((t.type_at, struct.pack('<I', rng.choice(TYPES)), kind))
        elif kind == 'tensor_dim':
            i = rng.randrange(len(t.dims))
            d = t.dims[i]
            v = rng.choice([d * 2, d // 2, d + 1, d - 1, 1, 0, 32, 2 ** 32, 2 ** 63, 2 ** 64 - 1,
                            rng.randrange(2 ** 20)])
            out.append((t.dims_at + 8 * i, struct.pack('<Q', v % 2 ** 64), kind))
        elif kind == 'tensor_ndims':
            out.append((t.ndims_at, struct.pack('<I', rng.choice([0, 1, 2, 3, 4, 5, 0xffffffff])), kind))
        elif kind == 'tensor_offset':
            o = rng.choice(tensors).offset
            a = L.alignment
            v = rng.choice([o, t.offset + a, t.offset - a, t.offset + 1, 0, size, 2 ** 64 - a,
                            rng.randrange(size // a) * a])
            out.append((t.off_at, struct.pack('<Q', v % 2 ** 64), kind))
        elif kind == 'tensor_name':
            n = len(t.name)
            i = rng.randrange(n)
            out.append((t.at + 8 + i, rng.choice([b'0', b'1', b'9', b'\x1b', b'\n', b'\xff', b'.']), kind))
        elif kind == 'data_f32':
            f = [x for x in tensors if x.type == 0]
            t = rng.choice(f)
            i = rng.randrange(t.nbytes // 4)
            v = rng.choice([float('nan'), float('inf'), float('-inf'), 3e38, -3e38, 1e30, 0.0])
            out.append((t.data_at + 4 * i, struct.pack('<f', v), kind))
        elif kind == 'data_scale':
            q = [x for x in tensors if x.type in (3, 8)]
            t = rng.choice(q)
            bb = 20 if t.type == 3 else 34
            blk = rng.randrange(t.nbytes // bb)
            field = rng.choice([0, 2]) if t.type == 3 else 0
            v = rng.choice([0x7c00, 0xfc00, 0x7e00, 0x7bff, 0x0000, rng.randrange(65536)])
            out.append((t.data_at + blk * bb + field, struct.pack('<H', v), kind))
        elif kind == 'data_bytes':
            at = t.data_at + rng.randrange(t.nbytes)
            n = min(rng.choice([1, 2, 4, 16]), t.data_at + t.nbytes - at)
            out.append((at, bytes(rng.randrange(256) for _ in range(n)), kind))
        elif kind == 'meta_u32':
            kv = L.kv[rng.choice(SHAPE_KEYS)]
            v = kv.value
            nv = rng.choice([v + 1, max(v - 1, 0), v * 2, v // 2, 0, 1, 2 ** 31, 2 ** 32 - 1, rng.randrange(2 ** 16)])
            out.append((kv.val_at, struct.pack('<I', nv % 2 ** 32), kind))
        elif kind == 'meta_f32':
            kv = L.kv[rng.choice(FLOAT_KEYS)]
            v = rng.choice([float('nan'), float('inf'), 0.0, -1.0, 1e-30, 1e30])
            out.append((kv.val_at, struct.pack('<f', v), kind))
        elif kind == 'meta_type':
            kv = rng.choice(list(L.kv.values()))
            out.append((kv.val_at - 4, struct.pack('<I', rng.randrange(14)), kind))
        elif kind == 'alignment':
            # this model has no general.alignment: rename a 17-byte u32 key to it, with a value
            kv = L.kv['llama.block_count']
            v = rng.choice([1, 2, 8, 16, 30, 64, 4096, 2 ** 20, 2 ** 31, 0, 3])
            out.append((kv.key_at + 8, b'general.alignment', kind))
            out.append((kv.val_at, struct.pack('<I', v), kind))
        elif kind == 'key_ctl':
            kv = rng.choice(list(L.kv.values()))
            n = len(kv.key.encode())
            i = rng.randrange(n)
            h = hostile(rng, min(n - i, rng.randrange(1, 6)))
            out.append((kv.key_at + 8 + i, h, kind))
            if rng.random() < 0.5:  # make it an error that quotes the key
                out.append((kv.val_at - 4, struct.pack('<I', 77), kind))
        elif kind == 'str_ctl':
            kv = L.kv[rng.choice(STRING_KEYS)]
            n = len(kv.value)
            i = rng.randrange(n)
            out.append((kv.val_at + 8 + i, hostile(rng, min(n - i, rng.randrange(1, 8))), kind))
        elif kind == 'token_ctl':
            items = L.kv['tokenizer.ggml.tokens'].items
            at, n = items[rng.randrange(len(items))]
            out.append((at, hostile(rng, n), kind))
        elif kind == 'merge_ctl':
            items = L.kv['tokenizer.ggml.merges'].items
            at, n = items[rng.randrange(len(items))]
            out.append((at, hostile(rng, n), kind))
        elif kind == 'header':
            f = rng.choice([8, 16])
            v = (L.n_tensors if f == 8 else L.n_kv) + rng.choice([-1, 1, 2, -2, 1000])
            out.append((f, struct.pack('<Q', v % 2 ** 64), kind))
    return out


def fuzz_gguf(a, R, deadline):
    if not os.path.isfile(a.model):
        print('fuzz_cli gguf: skipped (no %s)' % a.model)
        return
    path = os.path.join(a.work, 'fuzz-model.gguf')
    shutil.copyfile(a.model, path)
    size = os.path.getsize(path)
    with open(path, 'r+b') as f:
        m = mmap.mmap(f.fileno(), 0)
        L = kvsgguf.Layout(m)
        kinds = {}
        done = 0
        for case in range(a.cases):
            if time.time() > deadline:
                break
            rng = random.Random(a.seed * 1000003 + case)
            muts = gguf_mutations(L, size, rng)
            saved = []
            for at, new, kind in muts:
                if at + len(new) > size:
                    continue
                saved.append((at, bytes(m[at:at + len(new)])))
                m[at:at + len(new)] = new
                kinds[kind] = kinds.get(kind, 0) + 1
            m.flush()
            if a.corpus:
                with open(os.path.join(a.corpus, 'gguf-%d-%05d.json' % (a.seed, case)), 'w') as c:
                    json.dump([[at, new.hex(), kind] for at, new, kind in muts], c)

            def check(out):
                d = json.loads(out, parse_constant=no_nan)
                if d['generated_tokens'] < 1:
                    raise ValueError('exit 0 with no text (a NaN model samples the end token)')

            R.run(case, ['generate', '-m', path, '-p', 'Hello', '-n', '2', '--ctx', '64', '-t', '1', '--json'],
                  path, check)
            for at, old in reversed(saved):
                m[at:at + len(old)] = old
            m.flush()
            done += 1
        m.close()
    with open(path, 'rb') as f1, open(a.model, 'rb') as f2:
        while True:
            x, y = f1.read(1 << 20), f2.read(1 << 20)
            if x != y:
                R.failures.append('gguf: the tmp copy was not restored (harness bug)')
                break
            if not x:
                break
    os.unlink(path)
    R.cases = done
    R.kinds = kinds


# ---------------------------------------------------------------- traces

def trace_mutate(tr, rng):
    """Mutates a kvstrace.Trace in place: 1 to 3 changes. Returns (labels, keep_footer, cut)."""
    labels = []
    data = [c for c in tr.chunks if c.type in (kvstrace.CH_DATA, kvstrace.CH_KEYFRAME)]
    for _ in range(rng.choice([1, 1, 2, 3])):
        kind = rng.choice(['meta_ctl', 'meta_line', 'piece_ctl', 'log_ctl', 'rec_byte', 'rec_u32', 'rec_len',
                           'rec_type', 'rec_dup', 'rec_drop', 'raw_cut', 'chunk_field', 'chunk_order',
                           'footer', 'header'])
        try:
            mutate_one(tr, rng, kind, data)
            labels.append(kind)
        except (IndexError, struct.error):
            labels.append('skipped')  # a mutation that no longer fits what earlier ones left
    keep = rng.random() < 0.6
    cut = rng.random() < 0.1
    return labels, keep, cut


def mutate_one(tr, rng, kind, data):
    """Applies one mutation KIND to trace TR in place (DATA: its data and keyframe chunks)."""
    c = rng.choice(data) if data else None
    recs = kvstrace.records(c.raw) if c else []
    # records() stops at a framing an earlier mutation broke; keep only whole bodies
    recs = [r for r in recs if r[3] + r[4] <= len(c.raw)] if c else []
    if kind == 'meta_ctl' and tr.meta:
        lines = tr.meta.split(b'\n')
        i = rng.randrange(max(len(lines) - 1, 1))
        lines[i] += hostile(rng, rng.randrange(1, 12)).replace(b'\n', b'') or b'\x1b'
        tr.meta = bytearray(b'\n'.join(lines))
    elif kind == 'meta_line':
        tr.meta += rng.choice([b'noequals\n', b'=v\n', b'k=' + b'x' * 300 + b'\n', b'\x1b[31m=red\x07\n',
                               b'k=v', b'\xff\xfe=\xc0\x80\n'])
    elif kind in ('piece_ctl', 'log_ctl') and c:
        want = kvstrace.REC_STEP if kind == 'piece_ctl' else kvstrace.REC_LOG
        cand = [r for r in recs if r[1] == want and r[4] >= 25]
        if cand:
            c.raw = kvstrace.set_text(c.raw, rng.choice(cand), hostile(rng, rng.randrange(1, 40)))
    elif kind == 'rec_byte' and recs:
        r = rng.choice(recs)
        if r[4]:
            at = r[3] + rng.randrange(min(r[4], len(c.raw) - r[3]) or 1)
            if at < len(c.raw):
                c.raw[at] = rng.choice([0, 0xff, 0x7f, 0x80, rng.randrange(256)])
    elif kind == 'rec_u32' and recs:
        r = rng.choice(recs)
        if r[4] >= 4:
            at = r[3] + 4 * rng.randrange(r[4] // 4)
            if at + 4 <= len(c.raw):
                struct.pack_into('<I', c.raw, at, rng.choice([0, 1, 0xffffffff, 0x7fffffff, 65536, 4097,
                                                              rng.randrange(2 ** 32)]))
    elif kind == 'rec_len' and recs:
        r = rng.choice(recs)
        struct.pack_into('<I', c.raw, r[0] + 4, rng.choice([0, max(r[4] - 1, 0), r[4] + 1, 0xffffffff,
                                                             rng.randrange(2 ** 16)]))
    elif kind == 'rec_type' and recs:
        r = rng.choice(recs)
        struct.pack_into('<H', c.raw, r[0], rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 99, 0xffff]))
    elif kind == 'rec_dup' and recs:
        r = rng.choice(recs)
        c.raw = c.raw[:r[0]] + c.raw[r[0]:r[3] + r[4]] + c.raw[r[0]:]
    elif kind == 'rec_drop' and recs:
        r = rng.choice(recs)
        c.raw = c.raw[:r[0]] + c.raw[r[3] + r[4]:]
    elif kind == 'raw_cut' and c and c.raw:
        c.raw = c.raw[:rng.randrange(len(c.raw))]
    elif kind == 'chunk_field' and tr.chunks:
        h = rng.choice(tr.chunks).hdr
        off, fmt = rng.choice([(4, '<B'), (5, '<B'), (6, '<H'), (16, '<Q'), (24, '<Q'), (32, '<Q'), (40, '<Q'),
                               (48, '<I'), (52, '<I'), (56, '<I'), (60, '<I')])
        bits = struct.calcsize(fmt) * 8
        struct.pack_into(fmt, h, off, rng.choice([0, 1, 2, 3, 4, 5, 2 ** bits - 1, rng.randrange(2 ** bits)]))
    elif kind == 'chunk_order' and len(tr.chunks) > 1:
        i, j = rng.randrange(len(tr.chunks)), rng.randrange(len(tr.chunks))
        op = rng.choice(['swap', 'dup', 'drop'])
        if op == 'swap':
            tr.chunks[i], tr.chunks[j] = tr.chunks[j], tr.chunks[i]
        elif op == 'dup':
            tr.chunks.insert(j, kvstrace.Chunk(tr.chunks[i].hdr, tr.chunks[i].raw))
        else:
            del tr.chunks[i]
    elif kind == 'footer':
        f = [x for x in tr.chunks if x.type in (kvstrace.CH_FOOTER, kvstrace.CH_INDEX)]
        if f:
            x = rng.choice(f)
            if len(x.raw) >= 8:
                at = 8 * rng.randrange(len(x.raw) // 8)
                struct.pack_into('<Q', x.raw, at, rng.choice([0, 1, 2 ** 63, 2 ** 64 - 1, rng.randrange(2 ** 20)]))
    elif kind == 'header':
        off, fmt = rng.choice([(8, '<B'), (9, '<B'), (16, '<Q'), (24, '<Q'), (32, '<I'), (36, '<I'), (56, '<I')])
        bits = struct.calcsize(fmt) * 8
        struct.pack_into(fmt, tr.fixed, off, rng.choice([0, 1, 2, 2 ** bits - 1, rng.randrange(2 ** bits)]))


def check_csv(out):
    text = out.decode('utf-8')
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise ValueError('empty CSV')
    n = len(rows[0])
    for i, r in enumerate(rows):
        if len(r) != n:
            raise ValueError('row %d has %d fields, header %d' % (i, len(r), n))
    if text.count('\n') != len(rows):
        raise ValueError('%d lines for %d rows: a field spans lines' % (text.count('\n'), len(rows)))


def check_jsonl(out):
    for i, line in enumerate(out.decode('utf-8').splitlines()):
        if line.strip():
            json.loads(line, parse_constant=no_nan)


def check_json(out):
    json.loads(out.decode('utf-8'), parse_constant=no_nan)


def base_traces(a):
    """Sample traces from test_traces (every record type; keyframes, index and footer) and, when
    the model is there, a real recording."""
    out = []
    tt = os.path.join(a.build, 'tests', 'test_traces')
    for steps in (6, 150):  # 150: two keyframes and an index chunk besides the footer
        p = os.path.join(a.work, 'base-sample-%d.kvt' % steps)
        if subprocess.run([tt, '--write-sample', p, str(steps)], capture_output=True).returncode == 0:
            out.append(p)
    if a.real_trace and os.path.isfile(a.model):  # its chunking depends on timing: not in the fixed run
        p = os.path.join(a.work, 'base-real.kvt')
        r = subprocess.run([a.kvscope, 'run', '--batch', '-m', a.model, '--method', 'commonkv', '-n', '3', '-p',
                            'Hello', '--ctx', '64', '-t', '1', '--record', p], capture_output=True)
        if r.returncode == 0 and os.path.isfile(p):
            out.append(p)
    return out


def fuzz_trace(a, R, deadline):
    bases = base_traces(a)
    if not bases:
        R.failures.append('trace: no base trace could be written')
        return
    parsed = [(b, open(b, 'rb').read()) for b in bases]
    path = os.path.join(a.work, 'fuzz.kvt')
    kinds = {}
    done = 0
    for case in range(a.cases):
        if time.time() > deadline:
            break
        rng = random.Random(a.seed * 1000003 + case)
        base, raw = parsed[case % len(parsed)]
        tr = kvstrace.Trace(raw)
        labels, keep, cut = trace_mutate(tr, rng)
        data = tr.build(keep_footer=keep)
        if cut:
            data = data[:rng.randrange(len(data))]
        for k in labels:
            kinds[k] = kinds.get(k, 0) + 1
        with open(path, 'wb') as f:
            f.write(data)
        if a.corpus:
            shutil.copyfile(path, os.path.join(a.corpus, 'trace-%d-%05d.kvt' % (a.seed, case)))
        R.run(case, ['trace', 'info', path], path)
        R.run(case, ['trace', 'export', path, '--format', 'csv'], path, check_csv)
        R.run(case, ['trace', 'export', path, '--format', 'jsonl'], path, check_jsonl)
        R.run(case, ['trace', 'export', path, '--format', 'perfetto'], path, check_json)
        R.run(case, ['replay', path, '--batch'], path, check_jsonl)
        done += 1
    R.cases = done
    R.kinds = kinds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('kvscope')
    ap.add_argument('build')
    ap.add_argument('model')
    ap.add_argument('work')
    ap.add_argument('--cases', type=int, default=40)
    ap.add_argument('--seconds', type=float, default=0, help='stop starting cases after this (0: no limit)')
    ap.add_argument('--seed', type=int, default=1)
    ap.add_argument('--only', choices=['gguf', 'trace'])
    ap.add_argument('--corpus', help='keep every generated case here')
    ap.add_argument('--real-trace', action='store_true', help='also mutate a trace recorded from the model')
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    if a.corpus:
        os.makedirs(a.corpus, exist_ok=True)
    passed = failed = 0
    for name, fn in (('gguf', fuzz_gguf), ('trace', fuzz_trace)):
        if a.only and a.only != name:
            continue
        R = Runner(a.kvscope, name)
        R.cases, R.kinds = 0, {}
        t0 = time.time()
        fn(a, R, t0 + a.seconds if a.seconds else float('inf'))
        dt = time.time() - t0
        for f in R.failures[:20]:
            print('   ' + f)
        mix = ' '.join('%s=%d' % kv for kv in sorted(R.kinds.items()))
        print('fuzz_cli %s: %d cases (seed %d) in %.1f s, %d runs: %d refused with one line, %d ran, %d failures'
              ' [%s]' % (name, R.cases, a.seed, dt, R.runs, R.refused, R.ok, len(R.failures), mix))
        if R.failures:
            failed += 1
        else:
            passed += 1
    print('%d passed, %d failed' % (passed, failed))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
