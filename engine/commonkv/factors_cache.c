/* On-disk cache of CommonKV factors, so a second start skips the SVD. One file per (model, group
 * size, whitening, calibration): a fixed little-endian header (magic, version, shapes, keys,
 * payload length), the payload (per group: sigma, A, B as fp32) and a CRC32 of everything before
 * it. Files are written as NAME.part and renamed. The file is untrusted on load: every size is
 * checked against the expected shapes before use. Depends on libc and zlib. */
#include "commonkv.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define CACHE_MAGIC "KVSCKVF\x01"
#define CACHE_VERSION 1u
#define HDR_BYTES 80

struct hdr {
    char magic[8];
    uint32_t version, G, whiten, n_layer, D, d_kv, n_groups, reserved;
    uint64_t model_key, calib_key, payload_bytes;
};

static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static uint32_t get32(const uint8_t *p) { uint32_t v = 0; for (int i = 3; i >= 0; i--) v = v << 8 | p[i]; return v; }
static uint64_t get64(const uint8_t *p) { uint64_t v = 0; for (int i = 7; i >= 0; i--) v = v << 8 | p[i]; return v; }

static void hdr_write(uint8_t *b, const struct hdr *h)
{
    memset(b, 0, HDR_BYTES);
    memcpy(b, h->magic, 8);
    uint32_t v[8] = {h->version, h->G, h->whiten, h->n_layer, h->D, h->d_kv, h->n_groups, 0};
    for (int i = 0; i < 8; i++) put32(b + 8 + 4 * i, v[i]);
    put64(b + 40, h->model_key);
    put64(b + 48, h->calib_key);
    put64(b + 56, h->payload_bytes);
}

static void hdr_read(const uint8_t *b, struct hdr *h)
{
    memcpy(h->magic, b, 8);
    uint32_t *v[8] = {&h->version, &h->G, &h->whiten, &h->n_layer, &h->D, &h->d_kv, &h->n_groups, &h->reserved};
    for (int i = 0; i < 8; i++) *v[i] = get32(b + 8 + 4 * i);
    h->model_key = get64(b + 40);
    h->calib_key = get64(b + 48);
    h->payload_bytes = get64(b + 56);
}

void kvs_ckv_cache_path(char *buf, size_t cap, const char *dir, uint64_t model_key, uint32_t G, bool whiten,
                        uint64_t calib_key)
{
    snprintf(buf, cap, "%s/ckv-%016llx-g%u%s%.0llx.factors", dir, (unsigned long long)model_key, G,
             whiten ? "-w" : "", whiten ? (unsigned long long)calib_key : 0ull);
}

/* floats of group g's payload: sigma, A, B */
static bool group_floats(uint32_t nl, uint32_t D, uint32_t dkv, uint64_t *out)
{
    uint64_t rows = 2ull * nl * dkv, k = rows < D ? rows : D, a, b, s;
    if (!kvs_mul_ok(k, D, &a) || !kvs_mul_ok(rows, k, &b) || !kvs_add_ok(a, b, &s) || !kvs_add_ok(s, k, &s))
        return false;
    *out = s;
    return true;
}

static int mkdir_p(const char *dir)
{
    char tmp[512];
    snprintf(tmp, sizeof tmp, "%s", dir);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
    return 0;
}

enum kvs_status kvs_ckv_cache_save(const struct kvs_ckv_factors *f, const char *path, char *err, size_t errlen)
{
    char dir[512], part[600];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = 0;
        if (mkdir_p(dir) != 0) {
            kvs_seterr(err, errlen, "%s: cannot create folder (%s)", dir, strerror(errno));
            return KVS_ERR_IO;
        }
    }
    uint64_t payload = 0;
    for (uint32_t g = 0; g < f->n_groups; g++) {
        uint64_t n;
        if (!group_floats(f->g_nl[g], f->n_embd, f->d_kv, &n)) return KVS_ERR_ARG;
        payload += n * 4;
    }
    struct hdr h = {.version = CACHE_VERSION, .G = f->group_size, .whiten = f->whitened, .n_layer = f->n_layer,
                    .D = f->n_embd, .d_kv = f->d_kv, .n_groups = f->n_groups, .model_key = f->model_key,
                    .calib_key = f->calib_key, .payload_bytes = payload};
    memcpy(h.magic, CACHE_MAGIC, 8);
    uint8_t hb[HDR_BYTES];
    hdr_write(hb, &h);
    snprintf(part, sizeof part, "%s.part", path);
    FILE *fp = fopen(part, "wb");
    if (!fp) {
        kvs_seterr(err, errlen, "%s: cannot create (%s)", part, strerror(errno));
        return KVS_ERR_IO;
    }
    uLong crc = crc32(0L, Z_NULL, 0);
    bool ok = fwrite(hb, 1, HDR_BYTES, fp) == HDR_BYTES;
    crc = crc32(crc, hb, HDR_BYTES);
    for (uint32_t g = 0; g < f->n_groups && ok; g++) {
        uint64_t rows = 2ull * f->g_nl[g] * f->d_kv, k = f->r_max[g];
        const float *parts[3] = {f->sigma[g], f->A[g], f->B[g]};
        uint64_t lens[3] = {k, k * f->n_embd, rows * k};
        for (int i = 0; i < 3 && ok; i++) {
            ok = fwrite(parts[i], sizeof(float), lens[i], fp) == lens[i];
            crc = crc32(crc, (const Bytef *)parts[i], (uInt)(lens[i] * sizeof(float)));
        }
    }
    uint8_t cb[4];
    put32(cb, (uint32_t)crc);
    ok = ok && fwrite(cb, 1, 4, fp) == 4;
    if (fclose(fp) != 0) ok = false;
    if (!ok || rename(part, path) != 0) {
        unlink(part);
        kvs_seterr(err, errlen, "%s: write failed (%s)", path, strerror(errno));
        return KVS_ERR_IO;
    }
    return KVS_OK;
}

enum kvs_status kvs_ckv_cache_load(struct kvs_ckv_factors **out, const char *path, uint64_t model_key, uint32_t G,
                                   bool whiten, uint64_t calib_key, uint32_t n_layer, uint32_t D, uint32_t d_kv,
                                   char *err, size_t errlen)
{
    *out = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        kvs_seterr(err, errlen, "%s: not cached yet", path);
        return KVS_ERR_IO;
    }
    uint8_t hb[HDR_BYTES];
    struct hdr h;
    enum kvs_status st = KVS_OK;
    struct kvs_ckv_factors *f = NULL;
    uLong crc = crc32(0L, Z_NULL, 0);
    if (fread(hb, 1, HDR_BYTES, fp) != HDR_BYTES) {
        kvs_seterr(err, errlen, "%s: offset 0: truncated header", path);
        st = KVS_ERR_FORMAT;
        goto done;
    }
    hdr_read(hb, &h);
    if (memcmp(h.magic, CACHE_MAGIC, 8) != 0 || h.version != CACHE_VERSION) {
        kvs_seterr(err, errlen, "%s: offset 0: not a kvscope factor cache (version %u)", path, h.version);
        st = KVS_ERR_FORMAT;
        goto done;
    }
    if (h.model_key != model_key || h.G != G || h.whiten != (uint32_t)whiten ||
        (whiten && h.calib_key != calib_key) || h.n_layer != n_layer || h.D != D || h.d_kv != d_kv) {
        kvs_seterr(err, errlen, "%s: stale (built for another model file or settings)", path);
        st = KVS_ERR_STATE;
        goto done;
    }
    crc = crc32(crc, hb, HDR_BYTES);
    f = calloc(1, sizeof *f);
    if (!f) {
        st = KVS_ERR_NOMEM;
        kvs_seterr(err, errlen, "out of memory");
        goto done;
    }
    f->n_layer = n_layer;
    f->n_embd = D;
    f->d_kv = d_kv;
    f->whitened = whiten;
    f->model_key = model_key;
    f->calib_key = whiten ? calib_key : 0;
    if (G == 0 || G > KVS_CKV_MAX_G || (n_layer + G - 1) / G > KVS_MAX_GROUPS) {
        kvs_seterr(err, errlen, "%s: group size %u out of range", path, G);
        st = KVS_ERR_FORMAT;
        goto done;
    }
    f->group_size = G;
    f->n_groups = (n_layer + G - 1) / G;
    if (h.n_groups != f->n_groups) {
        kvs_seterr(err, errlen, "%s: offset 36: %u groups, expected %u", path, h.n_groups, f->n_groups);
        st = KVS_ERR_FORMAT;
        goto done;
    }
    uint64_t expect = 0, off = HDR_BYTES;
    for (uint32_t g = 0; g < f->n_groups; g++) {
        f->g_l0[g] = g * G;
        f->g_nl[g] = KVS_MIN(G, n_layer - g * G);
        f->r_max[g] = KVS_MIN(2 * f->g_nl[g] * d_kv, D);
        uint64_t n;
        if (!group_floats(f->g_nl[g], D, d_kv, &n) || !kvs_mul_ok(n, 4, &n) || !kvs_add_ok(expect, n, &expect)) {
            kvs_seterr(err, errlen, "%s: shapes overflow", path);
            st = KVS_ERR_FORMAT;
            goto done;
        }
    }
    if (h.payload_bytes != expect) {
        kvs_seterr(err, errlen, "%s: offset 56: payload of %llu bytes, expected %llu", path,
                   (unsigned long long)h.payload_bytes, (unsigned long long)expect);
        st = KVS_ERR_FORMAT;
        goto done;
    }
    for (uint32_t g = 0; g < f->n_groups; g++) {
        uint64_t rows = 2ull * f->g_nl[g] * d_kv, k = f->r_max[g];
        uint64_t lens[3] = {k, k * D, rows * k};
        float **dst[3] = {&f->sigma[g], &f->A[g], &f->B[g]};
        for (int i = 0; i < 3; i++) {
            *dst[i] = malloc(lens[i] * sizeof(float));
            if (!*dst[i]) {
                kvs_seterr(err, errlen, "out of memory");
                st = KVS_ERR_NOMEM;
                goto done;
            }
            if (fread(*dst[i], sizeof(float), lens[i], fp) != lens[i]) {
                kvs_seterr(err, errlen, "%s: offset %llu: truncated payload", path, (unsigned long long)off);
                st = KVS_ERR_FORMAT;
                goto done;
            }
            crc = crc32(crc, (const Bytef *)*dst[i], (uInt)(lens[i] * sizeof(float)));
            off += lens[i] * sizeof(float);
        }
    }
    uint8_t cb[4];
    if (fread(cb, 1, 4, fp) != 4) {
        kvs_seterr(err, errlen, "%s: offset %llu: missing CRC", path, (unsigned long long)off);
        st = KVS_ERR_FORMAT;
        goto done;
    }
    if (get32(cb) != (uint32_t)crc) {
        kvs_seterr(err, errlen, "%s: CRC mismatch (corrupt file)", path);
        st = KVS_ERR_FORMAT;
        goto done;
    }
    if (fgetc(fp) != EOF) {
        kvs_seterr(err, errlen, "%s: offset %llu: trailing bytes", path, (unsigned long long)off + 4);
        st = KVS_ERR_FORMAT;
        goto done;
    }
    f->from_cache = true;
done:
    fclose(fp);
    if (st != KVS_OK) {
        kvs_ckv_factors_delete(f);
        return st;
    }
    *out = f;
    return KVS_OK;
}

enum kvs_status kvs_ckv_factors_get(struct kvs_ckv_factors **out, const struct kvs_model *m, uint32_t G, bool whiten,
                                    const char *cache_dir, kvs_progress_fn progress, void *ud, char *warn,
                                    size_t warnlen, char *err, size_t errlen)
{
    *out = NULL;
    if (warn && warnlen) warn[0] = 0;
    const struct kvs_hparams *hp = &m->hp;
    char path[700] = "";
    uint64_t key = kvs_ckv_model_key(m), calib_key = 0;
    int32_t *ids = NULL;
    int n_ids = 0;
    if (whiten) {
        enum kvs_status st = kvs_ckv_calib_tokens(m, KVS_CKV_CALIB_TEXT, KVS_CKV_CALIB_TOKENS, &ids, &n_ids, err, errlen);
        if (st != KVS_OK) return st;
        calib_key = kvs_ckv_calib_key(ids, n_ids);
    }
    if (cache_dir && *cache_dir) {
        kvs_ckv_cache_path(path, sizeof path, cache_dir, key, G, whiten, calib_key);
        char lerr[600];
        enum kvs_status st = kvs_ckv_cache_load(out, path, key, G, whiten, calib_key, hp->n_layer, hp->n_embd,
                                                hp->n_head_kv * hp->head_dim, lerr, sizeof lerr);
        if (st == KVS_OK) {
            free(ids);
            return KVS_OK;
        }
        if (st != KVS_ERR_IO && warn) kvs_seterr(warn, warnlen, "factor cache rebuilt: %s", lerr);
    }
    double **xtx = NULL;
    uint32_t ng = (hp->n_layer + G - 1) / G;
    if (whiten) {
        enum kvs_status st = kvs_ckv_calib_xtx(m, G, ids, n_ids, &xtx, progress, ud, err, errlen);
        free(ids);
        if (st != KVS_OK) return st;
    }
    enum kvs_status st = kvs_ckv_factors_build(out, m, G, xtx, calib_key, progress, ud, err, errlen);
    kvs_ckv_calib_free(xtx, ng);
    if (st != KVS_OK || !path[0]) return st;
    char serr[600];
    if (kvs_ckv_cache_save(*out, path, serr, sizeof serr) != KVS_OK && warn && !warn[0])
        kvs_seterr(warn, warnlen, "factor cache not written: %s", serr);
    return KVS_OK;
}
