/* Option parsing helpers shared by the subcommands: strict number parsing with ranges and
 * one-line errors ("kvscope: option -n: 'x' is not an integer in [1, 100000]"). */
#ifndef KVS_OPTIONS_H
#define KVS_OPTIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Each returns false after printing a one-line error to stderr. */
bool kvs_opt_int(const char *opt, const char *val, long lo, long hi, long *out);
bool kvs_opt_float(const char *opt, const char *val, double lo, double hi, double *out);
/* A target compression ratio in [0, 0.999], or "none" (KVS_CR_NONE: no target). */
bool kvs_opt_cr(const char *opt, const char *val, double *out);
bool kvs_opt_u64(const char *opt, const char *val, uint64_t *out);
/* cpu, cuda or auto (kvs_backend_new's names). */
bool kvs_opt_backend(const char *opt, const char *val, const char **out);
/* A CommonKV key kernel (enum kvs_ckv_keys): auto, bf16, int8 or fp32. */
bool kvs_opt_ckv_keys(const char *opt, const char *val, uint32_t *out);
/* --weights auto|bf16|fp16: the type of the CUDA backend's weight copies. */
bool kvs_opt_weights(const char *opt, const char *val, const char **out);
/* A method spec kvs_method_parse accepts ("commonkv+quant"); checked before any model is loaded. */
bool kvs_opt_method(const char *opt, const char *val);
/* A comma-separated list of method specs, each accepted by kvs_method_parse, no empty entries,
 * shorter than KVS_OPT_LIST_MAX bytes (the buffers the commands split it in). */
#define KVS_OPT_LIST_MAX 256
bool kvs_opt_method_list(const char *opt, const char *val);
/* --profile tuned|paper into *PROFILE (enum kvs_ckv_profile); false with a message otherwise. */
bool kvs_opt_profile(const char *opt, const char *val, uint32_t *profile);
/* CommonKV's split, the same independent controls on every command that takes a method: --rank R
 * (per group), --merge-share X (share of the mergeable slots merged at most) and --merge-floor X
 * (similarity below which a slot never merges), beside --cr (the target, or none). Unset: 0 / NaN. */
struct kvs_opt_split {
    long rank;
    double merge_share, merge_floor;
};
void kvs_opt_split_init(struct kvs_opt_split *o);
/* Parses A (with its value V) when it is one of the options above: returns 1 (the caller skips V),
 * 0 when A is another option, -1 after printing a one-line error (exit status 2). */
int kvs_opt_split_parse(struct kvs_opt_split *o, const char *a, const char *v);
/* Copies what was given into a method configuration (the rest keeps its defaults). */
struct kvs_method_config;
void kvs_opt_split_apply(const struct kvs_opt_split *o, struct kvs_method_config *mc);
/* The UI's settings for a command: defaults, then the user's config file when TUI (its path, if
 * any, into PATH of CAP bytes, else ""), then --theme THEME_NAME (may be NULL) and --no-mouse.
 * Returns false after printing one line (exit status 2). */
struct kvs_config;
bool kvs_opt_ui_config(struct kvs_config *cfg, bool tui, const char *theme_name, bool no_mouse, char *path,
                       size_t cap);
/* Reads a whole text file into a malloc'd NUL-terminated string (at most MAX bytes); prints the
 * error and returns NULL on failure. */
char *kvs_read_text_file(const char *path, size_t max);
/* The default model path: $KVSCOPE_MODEL, else models/SmolLM2-135M-Instruct.Q4_1.gguf in the
 * current directory or next to the executable's build tree. Never NULL. */
const char *kvs_default_model(void);
/* The default document (DESIGN.md §6). */
#define KVS_DEFAULT_TEXT "/usr/share/common-licenses/GPL-3"
/* Prints "kvscope: " + message to stderr. */
void kvs_die_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
