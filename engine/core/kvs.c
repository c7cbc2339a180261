/* Status strings, clock, error formatting, the regular-file open, and the one escaping routine
 * for bytes that come from a file (GGUF strings, trace metadata, token text) and may reach a
 * terminal, a message or a text export. Shared by the engine, the trace library and the app;
 * depends on libc only. */
#include "kvs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

const char *kvs_status_str(enum kvs_status s)
{
    switch (s) {
    case KVS_OK: return "ok";
    case KVS_ERR_IO: return "I/O error";
    case KVS_ERR_FORMAT: return "malformed input";
    case KVS_ERR_UNSUPPORTED: return "unsupported";
    case KVS_ERR_NOMEM: return "out of memory";
    case KVS_ERR_ARG: return "bad argument";
    case KVS_ERR_STATE: return "invalid state";
    case KVS_ERR_BACKEND: return "backend failure";
    case KVS_ERR_LIMIT: return "limit reached";
    case KVS_ERR_CANCELLED: return "cancelled";
    }
    return "unknown status";
}

uint64_t kvs_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void kvs_seterr(char *buf, size_t cap, const char *fmt, ...)
{
    if (!buf || cap == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
    size_t n = strlen(buf);
    if (kvs_text_is_clean(buf, n)) return;
    char *raw = malloc(n + 1);
    if (!raw) {
        /* no memory for a copy: blank the unsafe bytes in place rather than print them */
        for (char *c = buf; *c; c++)
            if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f) *c = '?';
        return;
    }
    memcpy(raw, buf, n + 1);
    kvs_escape(buf, cap, raw, n);
    free(raw);
}

size_t kvs_utf8_printable_len(const unsigned char *s, size_t n)
{
    if (n == 0) return 0;
    unsigned c = s[0];
    if (c < 0x20 || c == 0x7f) return 0;
    if (c < 0x80) return 1;
    size_t len;
    unsigned lo = 0x80, hi = 0xbf; /* allowed range of the second byte (no overlongs, surrogates) */
    if (c >= 0xc2 && c <= 0xdf) len = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
    } else return 0;
    if (n < len || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xc0) != 0x80) return 0;
    if (c == 0xc2 && s[1] <= 0x9f) return 0; /* C1 controls, e.g. U+009B (CSI) */
    return len;
}

bool kvs_text_is_clean(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t k = kvs_utf8_printable_len(u + i, n - i);
        if (!k) return false;
        i += k;
    }
    return true;
}

size_t kvs_escape(char *dst, size_t cap, const char *src, size_t len)
{
    if (!dst || cap == 0) return 0;
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)src;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        char esc[4];
        const char *piece;
        size_t k = kvs_utf8_printable_len(u + i, len - i), plen;
        if (k) {
            piece = src + i;
            plen = k;
        } else {
            unsigned c = u[i];
            k = 1;
            esc[0] = '\\';
            plen = 2;
            if (c == '\n') esc[1] = 'n';
            else if (c == '\r') esc[1] = 'r';
            else if (c == '\t') esc[1] = 't';
            else {
                esc[1] = 'x';
                esc[2] = hex[c >> 4];
                esc[3] = hex[c & 15];
                plen = 4;
            }
            piece = esc;
        }
        if (plen >= cap - o) break;
        memcpy(dst + o, piece, plen);
        o += plen;
        i += k;
    }
    dst[o] = 0;
    return o;
}

int kvs_open_regular(const char *path, char *err, size_t errlen)
{
    /* O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        kvs_seterr(err, errlen, "%s: cannot open: %s", path, strerror(e));
        errno = e;
        return -1;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        kvs_seterr(err, errlen, "%s: cannot stat: %s", path, strerror(e));
        close(fd);
        errno = e;
        return -1;
    }
    if (!S_ISREG(sb.st_mode)) {
        const char *kind = S_ISDIR(sb.st_mode)    ? "a directory"
                           : S_ISFIFO(sb.st_mode) ? "a FIFO"
                           : S_ISCHR(sb.st_mode)  ? "a character device"
                           : S_ISBLK(sb.st_mode)  ? "a block device"
                           : S_ISSOCK(sb.st_mode) ? "a socket"
                                                  : "a special file";
        kvs_seterr(err, errlen, "%s is %s, not a regular file", path, kind);
        close(fd);
        errno = S_ISDIR(sb.st_mode) ? EISDIR : EINVAL;
        return -1;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl != -1) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    return fd;
}
