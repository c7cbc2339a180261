/* `kvscope trace info FILE`, `trace export FILE --format perfetto|csv|jsonl [--from N] [--to N]
 * [-o OUT]`, `trace recover IN OUT`, and the JSON-lines dump of a trace for `replay --batch`.
 * Prints one-line errors and returns non-zero on failure; all trace work is in traces/. */
#include "cmd_trace.h"

#include <errno.h>
#include <limits.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include "trace.h"

static void usage(FILE *f)
{
    fputs("usage: kvscope trace info FILE\n"
          "       kvscope trace export FILE --format perfetto|csv|jsonl [--from STEP] [--to STEP] [-o OUT]\n"
          "       kvscope trace recover IN OUT [--force]\n"
          "See kvscope-trace(5).\n",
          f);
}

static void human_bytes(char *buf, size_t cap, double b)
{
    const char *u[] = { "bytes", "KiB", "MiB", "GiB", "TiB" };
    int i = 0;
    while (b >= 1024 && i < 4) { b /= 1024; i++; }
    if (i == 0) snprintf(buf, cap, "%.0f bytes", b);
    else snprintf(buf, cap, "%.1f %s", b, u[i]);
}

static int cmd_info(const char *path)
{
    struct kvs_trace *t;
    char err[600];
    if (kvs_trace_open(&t, path, KVS_TRACE_OPEN_VERIFY, err, sizeof err) != KVS_OK) {
        fprintf(stderr, "kvscope trace: %s\n", err);
        return 1;
    }
    const struct kvs_trace_info *in = kvs_trace_get_info(t);
    char a[32], b[32];
    human_bytes(a, sizeof a, (double)in->file_bytes);
    printf("file        %s (%s)\n", path, a);
    printf("format      kvt %u.%u, incompatible features 0x%llx, compatible 0x%llx\n", in->major, in->minor,
           (unsigned long long)in->incompat, (unsigned long long)in->compat);
    time_t secs = (time_t)(in->origin_unix_ns / 1000000000ull);
    struct tm tm;
    char when[64] = "?";
    if (gmtime_r(&secs, &tm)) strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", &tm);
    printf("recorded    %s (%s clock, %u ns per tick)\n", when, in->clock_id == 1 ? "monotonic" : "unknown",
           in->tick_ns);
    for (size_t i = 0; i < kvs_trace_meta_count(t); i++) {
        /* the metadata is the file's text: escape it so each pair stays one terminal-safe line */
        const char *mk = kvs_trace_meta_key(t, i), *mv = kvs_trace_meta_value(t, i);
        char ek[512], ev[2048];
        kvs_escape(ek, sizeof ek, mk, strlen(mk));
        kvs_escape(ev, sizeof ev, mv, strlen(mv));
        printf("%-12s%s=%s\n", i ? "" : "metadata", ek, ev);
    }
    printf("steps       %llu (%llu records", (unsigned long long)in->n_steps, (unsigned long long)in->n_records);
    if (in->tok_hi > in->tok_lo) printf("; tokens %u..%u", in->tok_lo, in->tok_hi - 1);
    printf(")\n");
    if (in->last_ts >= in->first_ts && in->n_steps)
        printf("duration    %.3f s\n", (double)(in->last_ts - in->first_ts) * in->tick_ns / 1e9);
    printf("chunks      %llu (%llu data, %llu keyframes every %u steps, %llu index, %llu unknown)\n",
           (unsigned long long)in->n_chunks, (unsigned long long)in->n_data_chunks,
           (unsigned long long)in->n_keyframes, in->keyframe_every, (unsigned long long)in->n_index_chunks,
           (unsigned long long)in->n_unknown_chunks);
    human_bytes(a, sizeof a, (double)in->raw_bytes);
    human_bytes(b, sizeof b, (double)in->comp_bytes);
    printf("records     %s raw, %s compressed", a, b);
    if (in->comp_bytes) printf(" (%.1fx)", (double)in->raw_bytes / (double)in->comp_bytes);
    if (in->n_steps) printf(", %.0f bytes per step", (double)in->comp_bytes / (double)in->n_steps);
    printf("\n");
    printf("dropped     %llu records (writer queue full)\n", (unsigned long long)in->dropped);
    if (in->footer) printf("status      clean (footer index)\n");
    else printf("status      %s\n            `kvscope trace recover` writes a clean copy\n", kvs_trace_note(t));
    kvs_trace_close(t);
    if (fflush(stdout) != 0) {
        fprintf(stderr, "kvscope trace: write failed: %s\n", strerror(errno));
        return 1;
    }
    return 0;
}

static bool parse_step(const char *s, uint64_t *out)
{
    if (!s || !*s || *s == '-') return false;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) return false;
    *out = v;
    return true;
}

static int cmd_export(int argc, char **argv)
{
    const char *path = NULL, *fmt_s = NULL, *out_path = NULL;
    uint64_t from = 0, to = UINT64_MAX;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--format") || !strcmp(a, "-f")) {
            if (!val) goto missing;
            fmt_s = val;
            i++;
        } else if (!strncmp(a, "--format=", 9)) {
            fmt_s = a + 9;
        } else if (!strcmp(a, "--from") || !strcmp(a, "--to")) {
            if (!val) goto missing;
            if (!parse_step(val, a[2] == 'f' ? &from : &to)) {
                fprintf(stderr, "kvscope trace export: %s needs a step number, not '%s'\n", a, val);
                return 2;
            }
            i++;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            if (!val) goto missing;
            out_path = val;
            i++;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "kvscope trace export: unknown option '%s'\n", a);
            return 2;
        } else if (!path) {
            path = a;
        } else {
            fprintf(stderr, "kvscope trace export: unexpected argument '%s'\n", a);
            return 2;
        }
        continue;
    missing:
        fprintf(stderr, "kvscope trace export: %s needs a value\n", a);
        return 2;
    }
    if (!path) {
        fprintf(stderr, "kvscope trace export: no trace file given\n");
        return 2;
    }
    enum kvs_trace_format fmt = fmt_s ? kvs_trace_format_parse(fmt_s) : 0;
    if (!fmt) {
        fprintf(stderr, "kvscope trace export: --format must be perfetto, csv or jsonl%s%s%s\n",
                fmt_s ? " (not '" : "", fmt_s ? fmt_s : "", fmt_s ? "')" : "");
        return 2;
    }
    if (from > to) {
        fprintf(stderr, "kvscope trace export: --from %llu is after --to %llu\n", (unsigned long long)from,
                (unsigned long long)to);
        return 2;
    }
    char err[600];
    /* -o OUT: written beside OUT under a temporary name and renamed over it only once complete, so
     * a failed export leaves what was there; a device, FIFO or directory is never replaced */
    bool to_file = out_path && strcmp(out_path, "-");
    if (to_file && kvs_trace_target_check(out_path, true, err, sizeof err) != KVS_OK) {
        fprintf(stderr, "kvscope trace export: %s\n", err);
        return 1;
    }
    struct kvs_trace *t;
    if (kvs_trace_open(&t, path, 0, err, sizeof err) != KVS_OK) {
        fprintf(stderr, "kvscope trace: %s\n", err);
        return 1;
    }
    FILE *out = stdout;
    char tmp[PATH_MAX + 16];
    if (to_file) {
        if (strlen(out_path) >= PATH_MAX) {
            fprintf(stderr, "kvscope trace export: %s: path too long\n", out_path);
            kvs_trace_close(t);
            return 1;
        }
        snprintf(tmp, sizeof tmp, "%s.XXXXXX.part", out_path);
        int fd = mkstemps(tmp, 5);
        if (fd >= 0) {
            mode_t um = umask(0);
            umask(um);
            fchmod(fd, 0666 & ~um); /* what fopen would have created */
        }
        out = fd >= 0 ? fdopen(fd, "w") : NULL;
        if (!out) {
            fprintf(stderr, "kvscope trace export: %s: cannot create a file beside it: %s\n", out_path, strerror(errno));
            if (fd >= 0) { close(fd); unlink(tmp); }
            kvs_trace_close(t);
            return 1;
        }
    }
    enum kvs_status st = kvs_trace_export(t, fmt, from, to, out, err, sizeof err);
    int rc = 0;
    /* one line either way: the recovery note only when the export worked, else just the error */
    if (st != KVS_OK) {
        fprintf(stderr, "kvscope trace export: %s%s%s\n", err, to_file ? "; not written: " : "", to_file ? out_path : "");
        rc = 1;
    } else if (kvs_trace_note(t)) {
        fprintf(stderr, "kvscope trace: %s: %s\n", path, kvs_trace_note(t));
    }
    if (to_file) {
        bool werr = ferror(out) != 0;
        if ((fclose(out) != 0 || werr) && rc == 0) {
            fprintf(stderr, "kvscope trace export: %s: not written: %s\n", out_path, strerror(errno));
            rc = 1;
        }
        /* checked again: something else may have been put there meanwhile */
        if (rc == 0 && kvs_trace_target_check(out_path, true, err, sizeof err) != KVS_OK) {
            fprintf(stderr, "kvscope trace export: %s\n", err);
            rc = 1;
        }
        if (rc == 0 && rename(tmp, out_path) != 0) {
            fprintf(stderr, "kvscope trace export: %s: not written: cannot rename %s over it: %s\n", out_path, tmp,
                    strerror(errno));
            rc = 1;
        }
        if (rc) unlink(tmp);
    } else if ((fflush(stdout) != 0 || ferror(stdout)) && rc == 0) {
        fprintf(stderr, "kvscope trace export: write failed: %s\n", strerror(errno));
        rc = 1;
    }
    kvs_trace_close(t);
    return rc;
}

static int cmd_recover(const char *in, const char *out, bool force)
{
    struct kvs_trace_recover_report rep;
    char err[600];
    enum kvs_status st = kvs_trace_recover(in, out, force, &rep, err, sizeof err);
    if (st != KVS_OK) {
        fprintf(stderr, "kvscope trace recover: %s%s\n", err, st == KVS_ERR_STATE ? " (--force replaces it)" : "");
        return 1;
    }
    printf("%s: %s\n", in, rep.note);
    printf("%s: %llu steps in %llu chunks, %llu of %llu bytes kept\n", out, (unsigned long long)rep.n_steps,
           (unsigned long long)rep.n_chunks, (unsigned long long)rep.bytes_kept, (unsigned long long)rep.bytes_in);
    return 0;
}

int kvs_cmd_trace_dump(const char *path, FILE *out)
{
    struct kvs_trace *t;
    char err[600];
    if (kvs_trace_open(&t, path, 0, err, sizeof err) != KVS_OK) {
        fprintf(stderr, "kvscope: %s\n", err);
        return 1;
    }
    enum kvs_status st = kvs_trace_export(t, KVS_TRACE_FMT_JSONL, 0, UINT64_MAX, out, err, sizeof err);
    if (st != KVS_OK) {
        fprintf(stderr, "kvscope: %s\n", err);
        kvs_trace_close(t);
        return 1;
    }
    if (kvs_trace_note(t)) fprintf(stderr, "kvscope: %s: %s\n", path, kvs_trace_note(t));
    kvs_trace_close(t);
    return 0;
}

int kvs_cmd_trace(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "info")) {
        if (argc != 3) { fprintf(stderr, "kvscope trace info: needs exactly one FILE\n"); return 2; }
        return cmd_info(argv[2]);
    }
    if (!strcmp(sub, "export")) return cmd_export(argc - 2, argv + 2);
    if (!strcmp(sub, "recover")) {
        const char *io[2] = {NULL, NULL};
        bool force = false;
        int n = 0;
        for (int i = 2; i < argc; i++) {
            if (!strcmp(argv[i], "--force")) force = true;
            else if (argv[i][0] == '-' && argv[i][1]) {
                fprintf(stderr, "kvscope trace recover: unknown option '%s'\n", argv[i]);
                return 2;
            } else if (n < 2) io[n++] = argv[i];
            else n = 3;
        }
        if (n != 2) { fprintf(stderr, "kvscope trace recover: needs IN and OUT\n"); return 2; }
        return cmd_recover(io[0], io[1], force);
    }
    if (!strcmp(sub, "dump")) {
        if (argc != 3) { fprintf(stderr, "kvscope trace dump: needs exactly one FILE\n"); return 2; }
        return kvs_cmd_trace_dump(argv[2], stdout);
    }
    fprintf(stderr, "kvscope trace: unknown subcommand '%s'\n", sub);
    return 2;
}
