/* Status strings, clock and error formatting shared by the engine and the trace library. */
#include "kvs.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>

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
}
