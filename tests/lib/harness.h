/* Tiny test harness: CHECK records a failure with file:line and goes on; the test binary ends
 * with kvs_test_summary(), which prints "N passed, N failed" last and returns the exit status. */
#ifndef KVS_HARNESS_H
#define KVS_HARNESS_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

extern int kvs_test_passed, kvs_test_failed;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (cond) kvs_test_passed++;                                                  \
        else { kvs_test_failed++; fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); } \
    } while (0)

#define CHECKF(cond, ...)                                                             \
    do {                                                                              \
        if (cond) kvs_test_passed++;                                                  \
        else { kvs_test_failed++; fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
               fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); }                  \
    } while (0)

/* Compares n floats with |a-b| <= atol + rtol*|ref|; prints the worst elements and the normalised
 * error on failure. Returns 1 when all are within tolerance. */
int kvs_test_allclose(const char *what, const float *got, const float *ref, long n, float atol, float rtol);

/* Runs one named test function, printing its name; with $KVS_TEST_ONLY set, only the functions
 * whose name contains it (a quick rerun of one test while working on it; unset, every test runs). */
#define RUN(fn) do { if (kvs_test_selected(#fn)) { fprintf(stderr, "-- %s\n", #fn); fn(); } } while (0)
int kvs_test_selected(const char *name);

/* Prints "N passed, N failed" and returns 0 when nothing failed. */
int kvs_test_summary(void);

/* Directory for scratch files (created): $KVS_TEST_TMP or /tmp/kvscope-tests-<pid>. */
const char *kvs_test_tmpdir(void);

#endif
