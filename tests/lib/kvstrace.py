# Minimal .kvt reader/writer for tests and fuzz generators (man/kvscope-trace.5): splits a trace
# into its header, metadata, chunks (payloads inflated) and records, and writes one back with every
# length, CRC32C and zlib stream recomputed, so a mutated trace reaches record parsing instead of
# failing at the first checksum. Trusts its input (use it on traces kvscope wrote). Python 3 stdlib.
import struct
import zlib

MAGIC = b'\x89KVT\r\n\x1a\n'
HDR_FIXED, CHUNK_HDR, SYNC = 64, 72, 0xB743564B
TRAILER_MAGIC = b'KVTEND\r\n'
CH_DATA, CH_KEYFRAME, CH_INDEX, CH_FOOTER = 1, 2, 3, 4
REC_RUN, REC_STEP, REC_MATRIX, REC_QUALITY, REC_KERNEL, REC_END, REC_LOG = 1, 2, 3, 4, 5, 6, 7


def _table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_T = _table()


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = _T[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


class Chunk:
    def __init__(self, hdr, raw, orig=None):
        self.hdr = bytearray(hdr)   # 72 bytes as read; lengths and CRCs are rewritten on build
        self.raw = bytearray(raw)   # inflated payload
        self.orig = orig            # file offset it was read from (None: made up)

    @property
    def type(self):
        return self.hdr[4]

    @property
    def codec(self):
        return self.hdr[5]


class Trace:
    def __init__(self, b):
        assert b[:8] == MAGIC, 'not a kvscope trace'
        hlen, = struct.unpack_from('<I', b, 12)
        mlen, = struct.unpack_from('<I', b, 60)
        self.fixed = bytearray(b[:HDR_FIXED])
        self.meta = bytearray(b[HDR_FIXED:HDR_FIXED + mlen])
        self.chunks = []
        off = hlen
        while off + CHUNK_HDR <= len(b):
            hdr = b[off:off + CHUNK_HDR]
            sync, = struct.unpack_from('<I', hdr, 0)
            if sync != SYNC:
                break
            comp, = struct.unpack_from('<I', hdr, 8)
            payload = b[off + CHUNK_HDR:off + CHUNK_HDR + comp]
            raw = zlib.decompress(payload) if hdr[5] == 1 else payload
            self.chunks.append(Chunk(hdr, raw, off))
            off += CHUNK_HDR + comp
        self.tail = b[off:]

    def build(self, keep_footer=True, level=6):
        """Bytes of the trace with every length, CRC and stream recomputed, and the chunk offsets in
        index and footer entries moved to where those chunks now are (entries naming no chunk are
        left as they are). Without keep_footer the footer chunk and trailer are left out (the
        reader then scans)."""
        remap = {}
        for _ in range(6):  # an index payload's size depends on the offsets it holds: iterate
            data, now = self._emit(keep_footer, level, remap)
            if now == remap:
                break
            remap = now
        return data

    @staticmethod
    def _moved(c, remap):
        if c.type not in (CH_INDEX, CH_FOOTER) or not remap:
            return bytes(c.raw)
        raw = bytearray(c.raw)
        fixed = 20 if c.type == CH_INDEX else 52
        if len(raw) < fixed:
            return bytes(raw)
        n, = struct.unpack_from('<I', raw, fixed - 4)
        for i in range(n):
            at = fixed + 40 * i
            if at + 8 > len(raw):
                break
            off, = struct.unpack_from('<Q', raw, at)
            if off in remap:
                struct.pack_into('<Q', raw, at, remap[off])
        return bytes(raw)

    def _emit(self, keep_footer, level, remap):
        fixed = bytearray(self.fixed)
        hlen = HDR_FIXED + len(self.meta) + 4
        struct.pack_into('<I', fixed, 12, hlen)
        struct.pack_into('<I', fixed, 60, len(self.meta))
        out = bytearray(fixed + self.meta)
        out += struct.pack('<I', crc32c(out))
        footer_at = None
        now = {}
        for c in self.chunks:
            if c.type == CH_FOOTER and not keep_footer:
                continue
            if c.orig is not None:
                now.setdefault(c.orig, len(out))
            raw = self._moved(c, remap)
            payload = zlib.compress(raw, level) if c.codec == 1 else raw
            h = bytearray(c.hdr)
            struct.pack_into('<I', h, 0, SYNC)
            struct.pack_into('<II', h, 8, len(payload), len(raw))
            struct.pack_into('<I', h, 64, crc32c(payload))
            struct.pack_into('<I', h, 68, crc32c(h[:68]))
            if c.type == CH_FOOTER:
                footer_at = len(out)
            out += h + payload
        if keep_footer and footer_at is not None:
            out += struct.pack('<Q', footer_at) + TRAILER_MAGIC
        return bytes(out), now


def records(raw):
    """(offset, type, flags, body offset, body length) of each record framed in RAW."""
    out, p = [], 0
    while p + 8 <= len(raw):
        t, fl, n = struct.unpack_from('<HHI', raw, p)
        out.append((p, t, fl, p + 8, n))
        if n > len(raw) - p - 8:
            break
        p += 8 + n
    return out


def set_text(raw, rec, text):
    """Replaces the length-prefixed text of a STEP (piece) or LOG record with TEXT (bytes), fixing
    the record's body length. Returns the new payload."""
    p, t, fl, body, n = rec
    at = body + (32 if t == REC_STEP else 12)  # u64 seq; then STEP: u64 step, 4 x u32; LOG: u32 level
    if at >= len(raw) or at + 1 + raw[at] > len(raw):
        return raw  # a record an earlier mutation cut short: leave it
    old = raw[at]
    text = text[:255]
    new = raw[:at] + bytes([len(text)]) + text + raw[at + 1 + old:]
    struct.pack_into('<I', new, p + 4, n - old + len(text))
    return bytearray(new)


POISON = b'\x1b]0;pwned\x07\n\xff\xc2\x9b"x,'


def _main(argv):
    """kvstrace.py poison IN OUT: writes OUT, IN with control bytes, invalid UTF-8, a C1 control
    and CSV/JSON syntax in a metadata value, every STEP piece and every LOG text (lengths and CRCs
    recomputed, footer kept).
    kvstrace.py nan-end IN OUT: OUT is IN with NaN rates in every END record."""
    if len(argv) != 3 or argv[0] not in ('poison', 'nan-end'):
        raise SystemExit(_main.__doc__)
    tr = Trace(open(argv[1], 'rb').read())
    if argv[0] == 'nan-end':
        for c in tr.chunks:
            for r in records(c.raw):
                if r[1] == REC_END and r[4] >= 32:  # u64 seq, u64 steps, 2 x u32, f32 prefill, f32 decode
                    struct.pack_into('<ff', c.raw, r[3] + 24, float('nan'), float('nan'))
        with open(argv[2], 'wb') as f:
            f.write(tr.build())
        return
    lines = tr.meta.split(b'\n')
    lines[0] += POISON.replace(b'\n', b'')
    tr.meta = bytearray(b'\n'.join(lines))
    for c in tr.chunks:
        if c.type not in (CH_DATA, CH_KEYFRAME):
            continue
        done = 0
        while True:
            recs = [r for r in records(c.raw) if r[1] in (REC_STEP, REC_LOG)]
            if done >= len(recs):
                break
            c.raw = set_text(c.raw, recs[done], POISON)
            done += 1
    with open(argv[2], 'wb') as f:
        f.write(tr.build())


if __name__ == '__main__':
    import sys
    _main(sys.argv[1:])
