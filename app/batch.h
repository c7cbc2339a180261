/* --batch output shared by `run` and `replay`, so both print the same lines for the same records:
 * every record as one JSON line, then a summary line. Depends on engine/core/record.h. */
#ifndef KVS_BATCH_H
#define KVS_BATCH_H

#include <stdio.h>

#include "record.h"

/* Source of records: the next one (caller owns it), or NULL when there are no more. */
typedef struct kvs_record *(*kvs_batch_next_fn)(void *ctx);

/* Prints every record of NEXT to F and a final {"type":"summary",...} line. With STOP_AT_END the
 * first END record ends the output (live runs); otherwise all records are read (replays of traces
 * with several runs). Returns 0, or 1 when the engine reported an error or a write failed. */
int kvs_batch_print(FILE *f, kvs_batch_next_fn next, void *ctx, bool stop_at_end);

#endif
