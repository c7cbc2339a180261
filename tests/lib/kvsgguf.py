# Minimal GGUF (v2/v3, little-endian) layout reader for tests and fuzz generators: where every
# metadata key, value, tensor descriptor field and tensor's data lie in the file, so a test can
# patch bytes in place (same length) in a copy of a real model. Reads only what it is given; it
# trusts the file (use it on good models, then corrupt the copy). Python 3 standard library only.
import struct

SCALAR = {0: 'B', 1: 'b', 2: 'H', 3: 'h', 4: 'I', 5: 'i', 6: 'f', 7: 'B', 10: 'Q', 11: 'q', 12: 'd'}
# ggml type -> (elements per block, bytes per block) for the types kvscope reads
BLOCK = {0: (1, 4), 1: (1, 2), 30: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24),
         8: (32, 34), 12: (256, 144), 13: (256, 176), 14: (256, 210)}


class KV:
    def __init__(self, key, key_at, vtype, val_at, end, value):
        self.key, self.key_at, self.vtype, self.val_at, self.end, self.value = key, key_at, vtype, val_at, end, value
        self.items = []  # string arrays: (offset of the string bytes, length)


class Tensor:
    def __init__(self, name, at):
        self.name, self.at = name, at          # at: offset of the name's u64 length
        self.ndims_at = self.dims_at = self.type_at = self.off_at = 0
        self.dims, self.type, self.offset, self.nbytes, self.data_at = [], 0, 0, 0, 0


class Layout:
    def __init__(self, b):
        self.b = b
        self.version, self.n_tensors, self.n_kv = struct.unpack_from('<IQQ', b, 4)
        p = 24
        self.kv, self.tensors = {}, []
        for _ in range(self.n_kv):
            key_at = p
            n, = struct.unpack_from('<Q', b, p)
            key = bytes(b[p + 8:p + 8 + n]).decode('utf-8', 'replace')
            p += 8 + n
            vt, = struct.unpack_from('<I', b, p)
            val_at = p + 4
            p, value, items = self._value(vt, val_at)
            kv = KV(key, key_at, vt, val_at, p, value)
            kv.items = items
            self.kv[key] = kv
        align = self.kv.get('general.alignment')
        self.alignment = align.value if align else 32
        for _ in range(self.n_tensors):
            n, = struct.unpack_from('<Q', b, p)
            t = Tensor(bytes(b[p + 8:p + 8 + n]).decode('utf-8', 'replace'), p)
            p += 8 + n
            t.ndims_at = p
            nd, = struct.unpack_from('<I', b, p)
            p += 4
            t.dims_at = p
            t.dims = list(struct.unpack_from('<%dQ' % nd, b, p))
            p += 8 * nd
            t.type_at = p
            t.type, = struct.unpack_from('<I', b, p)
            p += 4
            t.off_at = p
            t.offset, = struct.unpack_from('<Q', b, p)
            p += 8
            be, bb = BLOCK.get(t.type, (1, 0))
            ne = 1
            for d in t.dims:
                ne *= d
            t.nbytes = ne // be * bb
            self.tensors.append(t)
        self.info_end = p
        self.data_offset = (p + self.alignment - 1) // self.alignment * self.alignment
        for t in self.tensors:
            t.data_at = self.data_offset + t.offset

    def _value(self, vt, p):
        b = self.b
        if vt == 8:
            n, = struct.unpack_from('<Q', b, p)
            return p + 8 + n, bytes(b[p + 8:p + 8 + n]), []
        if vt == 9:
            et, n = struct.unpack_from('<IQ', b, p)
            p += 12
            if et == 8:
                items = []
                for _ in range(n):
                    ln, = struct.unpack_from('<Q', b, p)
                    items.append((p + 8, ln))
                    p += 8 + ln
                return p, n, items
            return p + n * struct.calcsize('<' + SCALAR[et]), n, []
        f = '<' + SCALAR[vt]
        return p + struct.calcsize(f), struct.unpack_from(f, b, p)[0], []

    def tensor(self, name):
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)


def _patch(L, b, op, args):
    """(offset, new bytes) of one patch OP ARGS on layout L of B."""
    if op == 'poke':
        return int(args[0]), bytes.fromhex(args[1])
    if op == 'set-u32':
        return L.kv[args[0]].val_at, struct.pack('<I', int(args[1]))
    if op == 'value-type':
        return L.kv[args[0]].val_at - 4, struct.pack('<I', int(args[1]))
    if op == 'key-bytes':
        new = bytes.fromhex(args[1])
        assert len(new) == len(args[0].encode()), 'key-bytes: same length only'
        return L.kv[args[0]].key_at + 8, new
    if op == 'str-bytes':
        kv = L.kv[args[0]]
        new = bytes.fromhex(args[1])
        assert len(new) == len(kv.value), 'str-bytes: same length only'
        return kv.val_at + 8, new
    if op in ('merge-bytes', 'token-bytes'):
        kv = L.kv['tokenizer.ggml.merges' if op == 'merge-bytes' else 'tokenizer.ggml.tokens']
        at, ln = kv.items[int(args[0])]
        new = bytes.fromhex(args[1])
        assert len(new) == ln, '%s: same length only (%d bytes)' % (op, ln)
        return at, new
    if op == 'tensor-type':
        return L.tensor(args[0]).type_at, struct.pack('<I', int(args[1]))
    if op == 'tensor-offset':
        return L.tensor(args[0]).off_at, struct.pack('<Q', L.tensor(args[1]).offset)
    if op == 'tensor-poke':
        return L.tensor(args[0]).data_at + int(args[1]), bytes.fromhex(args[2])
    if op == 'tensor-f32':
        t = L.tensor(args[0])
        assert t.type == 0, 'tensor-f32: F32 tensors only'
        return t.data_at + 4 * int(args[1]), struct.pack('<f', float(args[2]))
    raise SystemExit('kvsgguf.py: unknown op ' + op)


def _main(argv):
    """kvsgguf.py FILE OP ARGS [+ OP ARGS ...]: patches FILE in place (same length; every patch is
    located on the unpatched file) and prints "poke OFFSET HEX ..." for the bytes it replaced, so
    `kvsgguf.py FILE $(that output)` puts them back. OPs:
      set-u32 KEY VALUE | value-type KEY TYPE | key-bytes KEY HEX | str-bytes KEY HEX
      merge-bytes INDEX HEX | token-bytes ID HEX | tensor-type NAME TYPE
      tensor-offset NAME OTHER (OTHER's data offset) | tensor-f32 NAME INDEX VALUE
      tensor-poke NAME BYTE HEX (inside the tensor's data) | poke OFFSET HEX"""
    import mmap
    path, rest = argv[0], argv[1:]
    ops, cur = [], []
    for a in rest:
        if a == '+':
            ops.append(cur)
            cur = []
        else:
            cur.append(a)
    ops.append(cur)
    with open(path, 'r+b') as f:
        b = mmap.mmap(f.fileno(), 0)
        L = None if all(o[0] == 'poke' for o in ops) else Layout(b)
        patches = [_patch(L, b, o[0], o[1:]) for o in ops]
        undo = []
        for at, new in patches:
            undo.append('poke %d %s' % (at, bytes(b[at:at + len(new)]).hex()))
            b[at:at + len(new)] = new
        print(' + '.join(reversed(undo)))
        b.flush()
        b.close()


if __name__ == '__main__':
    import sys
    _main(sys.argv[1:])
