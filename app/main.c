/* kvscope entry point: dispatches subcommands. Only app/ prints errors and exits. */
#include "commands.h"
#include "kvs.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fputs("usage: kvscope [run] [-m MODEL.gguf] [--method commonkv] [--cr 0.5] [-p PROMPT | -f FILE] [--record run.kvt]\n"
          "       kvscope generate -m MODEL -p PROMPT [-n N] [--chat] [--json]\n"
          "       kvscope replay FILE.kvt [--batch]\n"
          "       kvscope eval [-m MODEL] --methods full,commonkv,... --cr 0.3,0.5,0.7 [--json]\n"
          "       kvscope calibrate [-m MODEL]\n"
          "       kvscope bench [-m MODEL] [--ctx 512,2048]\n"
          "       kvscope trace info|export|recover FILE ...\n"
          "       kvscope lesson list | N [--live [-m MODEL]]\n"
          "       kvscope --version | --help\n"
          "See kvscope(1).\n",
          f);
}

int main(int argc, char **argv)
{
    if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help"))) {
        usage(stdout);
        return 0;
    }
    if (argc >= 2 && (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version"))) {
        printf("kvscope %s\n", KVS_VERSION);
        return 0;
    }
    static const struct { const char *name; int (*fn)(int, char **); } cmds[] = {
        {"run", kvs_cmd_run},         {"generate", kvs_cmd_generate}, {"replay", kvs_cmd_replay},
        {"eval", kvs_cmd_eval},       {"calibrate", kvs_cmd_calibrate}, {"bench", kvs_cmd_bench},
        {"trace", kvs_cmd_trace},     {"lesson", kvs_cmd_lesson},
    };
    int (*fn)(int, char **) = NULL;
    const char *name = "run";
    int shift = 0;
    if (argc >= 2 && argv[1][0] != '-') {
        for (size_t i = 0; i < KVS_ARRAY_LEN(cmds); i++)
            if (!strcmp(argv[1], cmds[i].name)) { fn = cmds[i].fn; name = cmds[i].name; shift = 1; }
        if (!shift) {
            fprintf(stderr, "kvscope: unknown command '%s'\n", argv[1]);
            return 2;
        }
    } else {
        fn = kvs_cmd_run; /* `kvscope [options]` is `kvscope run [options]` */
    }
    argv[shift] = (char *)name;
    return fn(argc - shift, argv + shift);
}
