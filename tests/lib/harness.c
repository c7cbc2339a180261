/* Test harness implementation (see harness.h). */
#include "harness.h"

#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int kvs_test_passed, kvs_test_failed;

int kvs_test_allclose(const char *what, const float *got, const float *ref, long n, float atol, float rtol)
{
    long bad = 0, worst = -1;
    double worst_ex = 0, num = 0, den = 0;
    for (long i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)ref[i]);
        double tol = atol + rtol * fabs((double)ref[i]);
        num += d * d;
        den += (double)ref[i] * ref[i];
        if (!(d <= tol)) {
            bad++;
            double ex = d - tol;
            if (worst < 0 || ex > worst_ex || isnan(d)) { worst = i; worst_ex = ex; }
        }
    }
    double nerr = den > 0 ? sqrt(num / den) : sqrt(num);
    if (bad) {
        kvs_test_failed++;
        fprintf(stderr, "FAIL %s: %ld/%ld elements out of tolerance (atol %g rtol %g), normalised error %.3g; "
                "worst [%ld] got %.6g ref %.6g\n", what, bad, n, atol, rtol, nerr, worst,
                (double)got[worst], (double)ref[worst]);
        return 0;
    }
    kvs_test_passed++;
    fprintf(stderr, "   %s: %ld elements ok, normalised error %.3g\n", what, n, nerr);
    return 1;
}

int kvs_test_selected(const char *name)
{
    const char *only = getenv("KVS_TEST_ONLY");
    return !only || !*only || strstr(name, only) != NULL;
}

int kvs_test_summary(void)
{
    printf("%d passed, %d failed\n", kvs_test_passed, kvs_test_failed);
    return kvs_test_failed ? 1 : 0;
}

const char *kvs_test_tmpdir(void)
{
    static char buf[256];
    if (buf[0]) return buf;
    const char *e = getenv("KVS_TEST_TMP");
    if (e && *e) snprintf(buf, sizeof buf, "%s", e);
    else snprintf(buf, sizeof buf, "/tmp/kvscope-tests-%d", (int)getpid());
    mkdir(buf, 0700);
    return buf;
}
