/* StreamingLLM's rule (DESIGN.md §5 `streaming`): keep the first SINKS tokens (attention sinks)
 * and the last WINDOW tokens; everything in between is evicted. The K/V press (press_kv.c) applies
 * it. Depends on libc only. */
#include "commonkv_priv.h"

bool kvs_stream_keep(int32_t p, int n, int sinks, int window)
{
    return p < sinks || p >= n - window;
}
