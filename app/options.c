/* Option parsing helpers (see options.h). */
#include "options.h"
#include "kvs.h"

#include "press.h"
#include "config.h"
#include "theme.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void kvs_die_msg(const char *fmt, ...)
{
    /* messages quote paths, options and file contents: escape them so the line stays one line */
    char msg[2048], out[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    kvs_escape(out, sizeof out, msg, strlen(msg));
    fprintf(stderr, "kvscope: %s\n", out);
}

bool kvs_opt_int(const char *opt, const char *val, long lo, long hi, long *out)
{
    if (!val) { kvs_die_msg("option %s needs a value", opt); return false; }
    char *end;
    errno = 0;
    long v = strtol(val, &end, 10);
    if (errno || end == val || *end || v < lo || v > hi) {
        kvs_die_msg("option %s: '%s' is not an integer in [%ld, %ld]", opt, val, lo, hi);
        return false;
    }
    *out = v;
    return true;
}

bool kvs_opt_float(const char *opt, const char *val, double lo, double hi, double *out)
{
    if (!val) { kvs_die_msg("option %s needs a value", opt); return false; }
    char *end;
    errno = 0;
    double v = strtod(val, &end);
    if (errno || end == val || *end || !isfinite(v) || v < lo || v > hi) {
        kvs_die_msg("option %s: '%s' is not a number in [%g, %g]", opt, val, lo, hi);
        return false;
    }
    *out = v;
    return true;
}

bool kvs_opt_cr(const char *opt, const char *val, double *out)
{
    if (val && !strcmp(val, "none")) {
        *out = KVS_CR_NONE;
        return true;
    }
    if (!val) { kvs_die_msg("option %s needs a value", opt); return false; }
    char *end;
    errno = 0;
    double v = strtod(val, &end);
    if (errno || end == val || *end || !isfinite(v) || v < 0 || v > 0.999) {
        kvs_die_msg("option %s: '%s' is not a number in [0, 0.999] or none", opt, val);
        return false;
    }
    *out = v;
    return true;
}

bool kvs_opt_u64(const char *opt, const char *val, uint64_t *out)
{
    if (!val) { kvs_die_msg("option %s needs a value", opt); return false; }
    char *end;
    errno = 0;
    unsigned long long v = strtoull(val, &end, 10);
    if (errno || end == val || *end || val[0] == '-') {
        kvs_die_msg("option %s: '%s' is not a non-negative integer", opt, val);
        return false;
    }
    *out = v;
    return true;
}

bool kvs_opt_weights(const char *opt, const char *val, const char **out)
{
    if (!val) { kvs_die_msg("option %s needs a value", opt); return false; }
    if (strcmp(val, "auto") && strcmp(val, "bf16") && strcmp(val, "fp16")) {
        kvs_die_msg("option %s: '%s' is not auto, bf16 or fp16", opt, val);
        return false;
    }
    *out = val;
    return true;
}

bool kvs_opt_backend(const char *opt, const char *val, const char **out)
{
    if (!val) { kvs_die_msg("option %s needs a value", opt); return false; }
    if (strcmp(val, "cpu") && strcmp(val, "cuda") && strcmp(val, "auto")) {
        kvs_die_msg("option %s: '%s' is not cpu, cuda or auto", opt, val);
        return false;
    }
    *out = val;
    return true;
}

bool kvs_opt_ckv_keys(const char *opt, const char *val, uint32_t *out)
{
    if (!val) { kvs_die_msg("option %s needs a value", opt); return false; }
    if (!kvs_ckv_keys_parse(val, out)) {
        kvs_die_msg("option %s: '%s' is not auto, bf16, int8 or fp32", opt, val);
        return false;
    }
    return true;
}

char *kvs_read_text_file(const char *path, size_t max)
{
    char err[600];
    int fd = kvs_open_regular(path, err, sizeof err); /* a FIFO or device would block or never end */
    if (fd < 0) { kvs_die_msg("%s", err); return NULL; }
    FILE *f = fdopen(fd, "rb");
    if (!f) { kvs_die_msg("%s: %s", path, strerror(errno)); close(fd); return NULL; }
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (n > max) { kvs_die_msg("%s: larger than %zu bytes", path, max); free(buf); buf = NULL; break; }
        if (r == 0) break;
        if (n == cap) {
            char *nb = realloc(buf, cap * 2 + 1);
            if (!nb) { free(buf); buf = NULL; break; }
            buf = nb;
            cap *= 2;
        }
    }
    if (buf && ferror(f)) { kvs_die_msg("%s: read error", path); free(buf); buf = NULL; }
    fclose(f);
    if (buf) buf[n] = 0;
    return buf;
}

const char *kvs_default_model(void)
{
    static char path[PATH_MAX];
    const char *e = getenv("KVSCOPE_MODEL");
    if (e && *e) return e;
    const char *rel = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    if (access(rel, R_OK) == 0) return rel;
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = 0; /* .../build */
            slash = strrchr(exe, '/');
            if (slash) {
                *slash = 0;
                snprintf(path, sizeof path, "%.*s/%s", (int)(sizeof path - strlen(rel) - 2), exe, rel);
                if (access(path, R_OK) == 0) return path;
            }
        }
    }
    return rel;
}

bool kvs_opt_method(const char *opt, const char *val)
{
    if (!val) { kvs_die_msg("option %s needs a value", opt); return false; }
    struct kvs_method_config mc;
    char err[256];
    if (kvs_method_parse(&mc, val, err, sizeof err) != KVS_OK) {
        kvs_die_msg("option %s: %s", opt, err);
        return false;
    }
    return true;
}

bool kvs_opt_profile(const char *opt, const char *val, uint32_t *profile)
{
    if (!val) { kvs_die_msg("option %s needs a value", opt); return false; }
    if (!strcmp(val, "tuned")) *profile = KVS_PROFILE_TUNED;
    else if (!strcmp(val, "paper")) *profile = KVS_PROFILE_PAPER;
    else { kvs_die_msg("option %s: '%s' is not tuned or paper", opt, val); return false; }
    return true;
}

bool kvs_opt_method_list(const char *opt, const char *val)
{
    if (!val) { kvs_die_msg("option %s needs a value", opt); return false; }
    if (strlen(val) >= KVS_OPT_LIST_MAX) {
        kvs_die_msg("option %s: the list is %zu bytes long, the limit is %d", opt, strlen(val), KVS_OPT_LIST_MAX - 1);
        return false;
    }
    char one[KVS_OPT_LIST_MAX];
    for (const char *p = val;;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        if (n == 0) { kvs_die_msg("option %s: empty entry in '%s'", opt, val); return false; }
        memcpy(one, p, n);
        one[n] = 0;
        if (!kvs_opt_method(opt, one)) return false;
        if (!comma) return true;
        p = comma + 1;
    }
}

void kvs_opt_split_init(struct kvs_opt_split *o)
{
    o->rank = 0;
    o->merge_share = NAN;
    o->merge_floor = NAN;
}

int kvs_opt_split_parse(struct kvs_opt_split *o, const char *a, const char *v)
{
    if (!strcmp(a, "--rank")) return kvs_opt_int(a, v, 1, 1 << 16, &o->rank) ? 1 : -1;
    if (!strcmp(a, "--merge-share")) return kvs_opt_float(a, v, 0, 1, &o->merge_share) ? 1 : -1;
    if (!strcmp(a, "--merge-floor")) return kvs_opt_float(a, v, -1, 1, &o->merge_floor) ? 1 : -1;
    return 0;
}

void kvs_opt_split_apply(const struct kvs_opt_split *o, struct kvs_method_config *mc)
{
    if (o->rank > 0) mc->rank = (uint32_t)o->rank;
    if (!isnan(o->merge_share)) mc->merge_share = (float)o->merge_share;
    if (!isnan(o->merge_floor)) mc->merge_floor = (float)o->merge_floor;
}

bool kvs_opt_ui_config(struct kvs_config *cfg, bool tui, const char *theme_name, bool no_mouse, char *path,
                       size_t cap)
{
    kvs_config_defaults(cfg);
    if (!kvs_config_path(path, cap)) path[0] = 0;
    if (tui && path[0]) {
        char err[1024];
        if (!kvs_config_load(cfg, path, err, sizeof err)) {
            kvs_die_msg("config: %s", err);
            return false;
        }
    }
    if (theme_name) {
        int t = kvs_theme_parse(theme_name);
        if (t < 0) {
            kvs_die_msg("option --theme: '%s' is not default, mono or projector", theme_name);
            return false;
        }
        cfg->theme = t;
    }
    if (no_mouse) cfg->mouse = false;
    return true;
}
