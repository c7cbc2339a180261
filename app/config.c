/* Config file reading and writing (see config.h). The file is untrusted text: lines are bounded,
 * numbers range-checked, and a bad line is reported with its number. Depends on libc and
 * engine/core/kvs.h (kvs_open_regular: a FIFO is refused, never waited on). */
#include "config.h"
#include "kvs.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void kvs_config_defaults(struct kvs_config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->method, sizeof c->method, "commonkv");
    c->cr = 0.5f;
    c->group = 4;
    c->rank_ratio = 0;
    c->sinks = 4;
    c->recent = 128;
    c->compare_full = true;
    c->theme = 0;
    c->mouse = true;
    c->sim_kind = 1;
}

bool kvs_config_path(char *buf, size_t n)
{
    const char *x = getenv("XDG_CONFIG_HOME");
    if (x && x[0] == '/') return snprintf(buf, n, "%s/kvscope/config", x) < (int)n;
    const char *h = getenv("HOME");
    if (h && *h) return snprintf(buf, n, "%s/.config/kvscope/config", h) < (int)n;
    return false;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t') s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r')) *--e = 0;
    return s;
}

static bool parse_f(const char *v, double lo, double hi, float *out)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (errno || end == v || *end || !isfinite(d) || d < lo || d > hi) return false;
    *out = (float)d;
    return true;
}

static bool parse_u(const char *v, unsigned long lo, unsigned long hi, uint32_t *out)
{
    char *end;
    errno = 0;
    if (*v == '-') return false;
    unsigned long u = strtoul(v, &end, 10);
    if (errno || end == v || *end || u < lo || u > hi) return false;
    *out = (uint32_t)u;
    return true;
}

static bool parse_b(const char *v, bool *out)
{
    if (!strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "on") || !strcmp(v, "1")) { *out = true; return true; }
    if (!strcmp(v, "false") || !strcmp(v, "no") || !strcmp(v, "off") || !strcmp(v, "0")) { *out = false; return true; }
    return false;
}

static const char *theme_names[] = {"default", "mono", "projector"};
static const char *sim_names[] = {"", "hidden", "keys", "latent"};

bool kvs_config_load(struct kvs_config *c, const char *path, char *err, size_t errlen)
{
    char oerr[600];
    int fd = kvs_open_regular(path, oerr, sizeof oerr); /* a FIFO would block the start */
    FILE *f = fd >= 0 ? fdopen(fd, "r") : NULL;
    if (!f) {
        if (fd < 0 && errno == ENOENT) return true;
        if (fd >= 0) {
            snprintf(oerr, sizeof oerr, "%s: %s", path, strerror(errno));
            close(fd);
        }
        snprintf(err, errlen, "%s", oerr);
        return false;
    }
    char line[512];
    int ln = 0;
    bool ok = true;
    while (fgets(line, sizeof line, f)) {
        ln++;
        if (!strchr(line, '\n') && !feof(f)) {
            snprintf(err, errlen, "%s:%d: line longer than %zu bytes", path, ln, sizeof line - 2);
            ok = false;
            break;
        }
        char *s = trim(line);
        if (!*s || *s == '#') continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            snprintf(err, errlen, "%s:%d: expected 'key = value'", path, ln);
            ok = false;
            break;
        }
        *eq = 0;
        char *k = trim(s), *v = trim(eq + 1);
        bool good = true;
        if (!strcmp(k, "method")) {
            good = *v && strlen(v) < sizeof c->method && strspn(v, "abcdefghijklmnopqrstuvwxyz+") == strlen(v);
            if (good) snprintf(c->method, sizeof c->method, "%s", v);
        } else if (!strcmp(k, "cr")) {
            if (!strcmp(v, "none")) c->cr = -1;
            else good = parse_f(v, 0, 0.999, &c->cr);
        } else if (!strcmp(k, "group")) good = parse_u(v, 1, 64, &c->group);
        else if (!strcmp(k, "rank_ratio")) good = parse_f(v, 0, 1, &c->rank_ratio);
        else if (!strcmp(k, "sinks")) good = parse_u(v, 0, 4096, &c->sinks);
        else if (!strcmp(k, "recent")) good = parse_u(v, 0, 1u << 20, &c->recent);
        else if (!strcmp(k, "compare_full")) good = parse_b(v, &c->compare_full);
        else if (!strcmp(k, "mouse")) good = parse_b(v, &c->mouse);
        else if (!strcmp(k, "theme")) {
            good = false;
            for (int i = 0; i < 3; i++) if (!strcmp(v, theme_names[i])) { c->theme = i; good = true; }
        } else if (!strcmp(k, "similarity")) {
            good = false;
            for (int i = 1; i < 4; i++) if (!strcmp(v, sim_names[i])) { c->sim_kind = i; good = true; }
        }
        /* unknown keys: ignored, so newer config files still load */
        if (!good) {
            snprintf(err, errlen, "%s:%d: bad value '%.40s' for %s", path, ln, v, k);
            ok = false;
            break;
        }
    }
    fclose(f);
    return ok;
}

static bool mkdirs(char *path)
{
    for (char *p = path + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        int r = mkdir(path, 0755);
        *p = '/';
        if (r != 0 && errno != EEXIST) return false;
    }
    return true;
}

bool kvs_config_save(const struct kvs_config *c, const char *path, char *err, size_t errlen)
{
    char dir[1024], tmp[1100];
    if (snprintf(dir, sizeof dir, "%s", path) >= (int)sizeof dir) { snprintf(err, errlen, "config path too long"); return false; }
    char *slash = strrchr(dir, '/');
    if (slash) {
        slash[1] = 0;
        if (!mkdirs(dir)) { snprintf(err, errlen, "%s: %s", dir, strerror(errno)); return false; }
    }
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) { snprintf(err, errlen, "%s: %s", tmp, strerror(errno)); return false; }
    fprintf(f, "# kvscope settings, saved from the UI; command-line options override them\n");
    fprintf(f, "method = %s\n", c->method);
    if (c->cr < 0) fprintf(f, "cr = none\n");
    else fprintf(f, "cr = %.3f\n", (double)c->cr);
    fprintf(f, "group = %u\nrank_ratio = %.3f\nsinks = %u\nrecent = %u\n", c->group, (double)c->rank_ratio, c->sinks, c->recent);
    fprintf(f, "compare_full = %s\nmouse = %s\n", c->compare_full ? "true" : "false", c->mouse ? "true" : "false");
    fprintf(f, "theme = %s\n", c->theme >= 0 && c->theme < 3 ? theme_names[c->theme] : "default");
    fprintf(f, "similarity = %s\n", c->sim_kind >= 1 && c->sim_kind <= 3 ? sim_names[c->sim_kind] : "hidden");
    bool ok = !ferror(f);
    if (fclose(f) != 0) ok = false;
    if (!ok || rename(tmp, path) != 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        remove(tmp);
        return false;
    }
    return true;
}
