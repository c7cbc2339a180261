/* `kvscope trace info|export|recover` and the record dump the replay path uses for --batch.
 * Depends on traces/trace.h. */
#ifndef KVS_CMD_TRACE_H
#define KVS_CMD_TRACE_H

#include <stdio.h>

/* argv[0] is "trace"; returns the process exit status (0 ok, 1 failure, 2 usage). */
int kvs_cmd_trace(int argc, char **argv);

/* Prints every record of the trace at PATH to OUT as JSON lines (kvs_record_to_json, the format of
 * live --batch output). A trace that lost its tail is printed up to the last good chunk, with the
 * recovery note on stderr. Returns the exit status; errors go to stderr as one line. */
int kvs_cmd_trace_dump(const char *path, FILE *out);

#endif
