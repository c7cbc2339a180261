/* A stand-in for libcupti for tests/test_cupti_ladder.c: every entry point kvscope's profiler
 * dlsym's, succeeding without recording anything, except that FAKE_CUPTI_VERSION sets the API
 * version cuptiGetVersion reports (default 130001) and FAKE_CUPTI_BUSY=1 makes cuptiSubscribe answer
 * as CUPTI does when another profiler holds the subscription. Built against the toolkit's cupti.h
 * for the types and result codes. */
#include <cupti.h>
#include <stdlib.h>

CUptiResult cuptiGetVersion(uint32_t *version)
{
    const char *v = getenv("FAKE_CUPTI_VERSION");
    *version = v && *v ? (uint32_t)strtoul(v, NULL, 10) : 130001u;
    return CUPTI_SUCCESS;
}

CUptiResult cuptiGetResultString(CUptiResult result, const char **str)
{
    *str = result == CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED ? "multiple subscribers (fake)" : "fake CUPTI";
    return CUPTI_SUCCESS;
}

CUptiResult cuptiSubscribe(CUpti_SubscriberHandle *sub, CUpti_CallbackFunc cb, void *ud)
{
    (void)cb; (void)ud;
    const char *b = getenv("FAKE_CUPTI_BUSY");
    if (b && *b == '1') return CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED;
    *sub = (CUpti_SubscriberHandle)1;
    return CUPTI_SUCCESS;
}

CUptiResult cuptiUnsubscribe(CUpti_SubscriberHandle sub) { (void)sub; return CUPTI_SUCCESS; }
CUptiResult cuptiActivityRegisterCallbacks(CUpti_BuffersCallbackRequestFunc req, CUpti_BuffersCallbackCompleteFunc done)
{
    (void)req; (void)done;
    return CUPTI_SUCCESS;
}
CUptiResult cuptiActivityEnable(CUpti_ActivityKind kind) { (void)kind; return CUPTI_SUCCESS; }
CUptiResult cuptiActivityDisable(CUpti_ActivityKind kind) { (void)kind; return CUPTI_SUCCESS; }
CUptiResult cuptiActivityGetNextRecord(uint8_t *buf, size_t valid, CUpti_Activity **rec)
{
    (void)buf; (void)valid; (void)rec;
    return CUPTI_ERROR_MAX_LIMIT_REACHED;
}
CUptiResult cuptiActivityFlushAll(uint32_t flag) { (void)flag; return CUPTI_SUCCESS; }
CUptiResult cuptiActivityGetNumDroppedRecords(CUcontext ctx, uint32_t stream, size_t *dropped)
{
    (void)ctx; (void)stream;
    *dropped = 0;
    return CUPTI_SUCCESS;
}
CUptiResult cuptiGetTimestamp(uint64_t *ts)
{
    *ts = 1000;
    return CUPTI_SUCCESS;
}
