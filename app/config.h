/* The user's saved settings: $XDG_CONFIG_HOME/kvscope/config (else ~/.config/kvscope/config),
 * "key = value" lines, written from the UI; command-line options override what it says.
 * Depends on libc only. */
#ifndef KVS_CONFIG_H
#define KVS_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct kvs_config {
    char method[64];        /* method spec, e.g. "commonkv" */
    float cr;               /* target CR; < 0: unset */
    uint32_t group;         /* CommonKV group size G */
    float rank_ratio;       /* 0: derived from the target CR */
    uint32_t sinks, recent;
    bool compare_full;      /* quality against full in the UI */
    int theme;              /* enum kvs_theme_id */
    bool mouse;
    int sim_kind;           /* KVS_MAT_SIM_* shown first */
};

void kvs_config_defaults(struct kvs_config *c);
/* Writes the config file path into BUF; false when neither XDG_CONFIG_HOME nor HOME is set. */
bool kvs_config_path(char *buf, size_t n);
/* Reads PATH over C (keys it names replace the defaults). A missing file is not an error. Returns
 * false with "PATH:LINE: problem" in err for a malformed line; unknown keys are ignored. */
bool kvs_config_load(struct kvs_config *c, const char *path, char *err, size_t errlen);
/* Writes C to PATH (directories created, written to PATH.tmp then renamed). */
bool kvs_config_save(const struct kvs_config *c, const char *path, char *err, size_t errlen);

#endif
