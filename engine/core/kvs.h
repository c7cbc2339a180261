/* Common definitions shared by every module of kvscope: status codes and small helpers.
 * Depends on libc only; never prints, never exits. */
#ifndef KVS_H
#define KVS_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#define KVS_VERSION "0.1.0"

enum kvs_status {
    KVS_OK = 0,
    KVS_ERR_IO = -1,          /* open/read/mmap/write failed */
    KVS_ERR_FORMAT = -2,      /* malformed input bytes */
    KVS_ERR_UNSUPPORTED = -3, /* valid input we cannot handle (arch, tensor type, version) */
    KVS_ERR_NOMEM = -4,
    KVS_ERR_ARG = -5,         /* bad argument or option value */
    KVS_ERR_STATE = -6,       /* call not valid in the current state */
    KVS_ERR_BACKEND = -7,     /* backend (CUDA, BLAS) failure */
    KVS_ERR_LIMIT = -8,       /* a capacity limit was reached (context full, …) */
    KVS_ERR_CANCELLED = -9,   /* the caller asked to stop (progress callback returned false) */
};

/* Returns a static string naming the status; never NULL. */
const char *kvs_status_str(enum kvs_status s);

/* Overflow-safe size arithmetic: return false on overflow, leaving *out untouched. */
static inline bool kvs_mul_ok(uint64_t a, uint64_t b, uint64_t *out)
{
    if (a != 0 && b > UINT64_MAX / a) return false;
    *out = a * b;
    return true;
}
static inline bool kvs_add_ok(uint64_t a, uint64_t b, uint64_t *out)
{
    if (b > UINT64_MAX - a) return false;
    *out = a + b;
    return true;
}

/* Monotonic clock in nanoseconds. */
uint64_t kvs_now_ns(void);

/* printf-style formatting into a fixed error buffer (truncates, always NUL-terminates). The result
 * goes through kvs_escape, so bytes copied from a file cannot break the message's single line. */
void kvs_seterr(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Opens PATH for reading only if it is a regular file (or a link to one): a FIFO or device is
 * refused without blocking (opened O_NONBLOCK, then examined), a directory too. Returns a file
 * descriptor (O_CLOEXEC, blocking again), or -1 with "PATH: cannot open: ..." or "PATH is a FIFO,
 * not a regular file" in ERR (errno kept for the caller). */
int kvs_open_regular(const char *path, char *err, size_t errlen);
/* Copies LEN bytes of SRC into DST (CAP bytes, NUL-terminated when CAP > 0) with every byte that
 * could act on a terminal or break a line made visible: C0 controls and DEL as \n \r \t or \xHH,
 * C1 controls (UTF-8 c2 80..c2 9f) and bytes of invalid or overlong UTF-8 as \xHH per byte. Valid
 * printable UTF-8 and backslashes pass unchanged, so escaping twice changes nothing. Output is cut
 * only between whole characters or escapes. Returns the bytes written, not counting the NUL. */
size_t kvs_escape(char *dst, size_t cap, const char *src, size_t len);
/* Length of the valid UTF-8 character at S (1..4), or 0 when S[0..n) does not start with one or
 * starts with a control character (C0, DEL, C1). */
size_t kvs_utf8_printable_len(const unsigned char *s, size_t n);
/* True when S[0..n) needs no escaping (kvs_escape would copy it unchanged). */
bool kvs_text_is_clean(const char *s, size_t n);

#define KVS_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define KVS_MIN(a, b) ((a) < (b) ? (a) : (b))
#define KVS_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
