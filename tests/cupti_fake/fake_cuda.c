/* A stand-in for the NVIDIA driver (libcuda.so.1) for tests/test_cupti_ladder.c: just the three
 * entry points kvscope's driver probe dlsym's. FAKE_CUDA_COUNT devices (default 1); FAKE_CUDA_INIT
 * is cuInit's result (default 0, success). Plain C, no CUDA headers. */
#include <stdlib.h>

static int env_int(const char *name, int dflt)
{
    const char *v = getenv(name);
    return v && *v ? atoi(v) : dflt;
}

int cuInit(unsigned flags)
{
    (void)flags;
    return env_int("FAKE_CUDA_INIT", 0);
}

int cuDeviceGetCount(int *n)
{
    *n = env_int("FAKE_CUDA_COUNT", 1);
    return *n > 0 ? 0 : 100; /* CUDA_ERROR_NO_DEVICE */
}

int cuGetErrorString(int rc, const char **s)
{
    *s = rc == 100 ? "no CUDA-capable device is detected (fake driver)" : "fake driver error";
    return 0;
}
