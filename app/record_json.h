/* One step record as one JSON line (the --batch output of `run` and `replay`): every field, arrays
 * cut to the layers/groups in use, non-finite numbers as null. Depends on engine/record.h. */
#ifndef KVS_RECORD_JSON_H
#define KVS_RECORD_JSON_H

#include <stdio.h>

#include "record.h"

/* Writes R as one line of JSON (with the newline). Returns false on a write error. */
bool kvs_app_record_json(FILE *f, const struct kvs_record *r);

/* Writes at most MAX bytes of S as a JSON string (invalid UTF-8 bytes escaped). */
void kvs_app_json_str(FILE *f, const char *s, size_t max);

#endif
