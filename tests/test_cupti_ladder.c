/* The CUPTI degradation ladder of DESIGN.md §7, step by step, without a GPU: no driver -> no GPU ->
 * CUPTI missing or too old -> subscriber busy (another profiler) -> ready and collecting. Each step is
 * a child process (the probes are answered once per process) that sees a fake driver
 * (build/tests/cupti_fake/libcuda.so.1 through LD_LIBRARY_PATH) and a fake libcupti (through
 * KVS_CUPTI_LIB) steered by environment variables. Built without CUPTI headers, every step must say
 * "CUPTI support not built". --probe is the child's side. Prints "N passed, N failed". */
#include <dlfcn.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "profiler.h"

#define FAKE_DIR KVS_BUILD_DIR "/tests/cupti_fake"

static int child_probe(void)
{
    enum kvs_prof_state st;
    const char *msg = kvs_profiler_probe(&st);
    printf("probe %d %s\n", (int)st, msg);
    if (st == KVS_PROF_READY) {
        struct kvs_profiler *p = NULL;
        if (kvs_profiler_new(&p, 64) != KVS_OK) return 1;
        enum kvs_status s = kvs_profiler_start(p, 0);
        printf("start %d %d %s\n", (int)s, (int)kvs_profiler_state(p), kvs_profiler_status(p));
        kvs_profiler_stop(p);
        printf("stopped %d\n", (int)kvs_profiler_state(p));
        kvs_profiler_delete(p);
    }
    return 0;
}

static char self[PATH_MAX];

/* Runs the child with ENV (shell assignments) and checks its output contains every WANT line. */
static void step(const char *what, const char *env, const char *want1, const char *want2)
{
    char cmd[PATH_MAX * 2 + 512], out[2048] = "";
    snprintf(cmd, sizeof cmd, "env %s '%s' --probe 2>&1", env, self);
    FILE *f = popen(cmd, "r");
    if (!f) { CHECKF(0, "%s: cannot run the child", what); return; }
    size_t n = fread(out, 1, sizeof out - 1, f);
    out[n] = 0;
    int rc = pclose(f);
    fprintf(stderr, "   %s: %s", what, out);
    CHECKF(rc == 0, "%s: child exit %d", what, rc);
    CHECKF(strstr(out, want1) != NULL, "%s: wanted \"%s\", got \"%s\"", what, want1, out);
    if (want2) CHECKF(strstr(out, want2) != NULL, "%s: wanted \"%s\", got \"%s\"", what, want2, out);
}

int main(int argc, char **argv)
{
    if (argc == 2 && !strcmp(argv[1], "--probe")) return child_probe();
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0) { fprintf(stderr, "cannot find my own path\n"); return 1; }
    self[len] = 0;
    if (access(FAKE_DIR "/libcuda.so.1", R_OK) != 0) {
        CHECKF(0, "%s/libcuda.so.1 is not built (make tests)", FAKE_DIR);
        return kvs_test_summary();
    }
    char env[PATH_MAX + 256];
    /* 1. no driver: only where the machine has none of its own */
    void *real = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (real) {
        dlclose(real);
        fprintf(stderr, "skipped: the no-driver step (this machine has libcuda.so.1)\n");
    } else {
        snprintf(env, sizeof env, "LD_LIBRARY_PATH=%s/none", FAKE_DIR);
#ifdef KVS_HAVE_CUPTI
        step("no driver", env, "probe 1 no NVIDIA driver", NULL);
#else
        step("no driver", env, "probe 0 CUPTI support not built", NULL);
#endif
    }
#ifdef KVS_HAVE_CUPTI
    const char *lib = FAKE_DIR "/libcupti.so";
    snprintf(env, sizeof env, "LD_LIBRARY_PATH=%s FAKE_CUDA_COUNT=0 KVS_CUPTI_LIB=%s", FAKE_DIR, lib);
    step("driver, no GPU", env, "probe 2 no GPU", NULL);
    snprintf(env, sizeof env, "LD_LIBRARY_PATH=%s FAKE_CUDA_COUNT=1 KVS_CUPTI_LIB=%s FAKE_CUPTI_VERSION=11", FAKE_DIR, lib);
    step("GPU, CUPTI too old", env, "probe 3 CUPTI too old", NULL);
    snprintf(env, sizeof env, "LD_LIBRARY_PATH=%s FAKE_CUDA_COUNT=1 KVS_CUPTI_LIB=%s FAKE_CUPTI_BUSY=1", FAKE_DIR, lib);
    step("GPU, CUPTI busy", env, "probe 6 CUPTI ready", "start -3 4 CUPTI busy (another profiler)");
    snprintf(env, sizeof env, "LD_LIBRARY_PATH=%s FAKE_CUDA_COUNT=2 KVS_CUPTI_LIB=%s FAKE_CUPTI_VERSION=18", FAKE_DIR, lib);
    step("GPU, CUPTI 12", env, "probe 6 CUPTI ready", "start 0 7 CUPTI active (API 18:");
    snprintf(env, sizeof env, "LD_LIBRARY_PATH=%s FAKE_CUDA_COUNT=1 KVS_CUPTI_LIB=%s", FAKE_DIR, lib);
    step("GPU, CUPTI 13", env, "start 0 7 CUPTI active (API 130001:", "stopped 6");
#else
    snprintf(env, sizeof env, "LD_LIBRARY_PATH=%s FAKE_CUDA_COUNT=1", FAKE_DIR);
    step("built without cupti.h", env, "probe 0 CUPTI support not built", NULL);
#endif
    return kvs_test_summary();
}
