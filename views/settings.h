/* The settings screen (F2), htop style: a centred box listing settings as label / value rows, one
 * row under a cursor, an optional line being typed, and a hint line. The caller (app/ui.c) owns
 * the values and what the keys do; this module only draws. Depends on curses and views/theme.h. */
#ifndef KVS_SETTINGS_H
#define KVS_SETTINGS_H

#include "view.h"

struct kvs_settings_row {
    const char *label;      /* "target CR" */
    char value[72];         /* "0.50", "none", "commonkv+quant" (a method name holds 63 bytes) */
    const char *hint;       /* what Left/Right or Enter do, or why the row cannot change */
    bool editable;
};

struct kvs_settings_view {
    const char *title;      /* "Settings (live run)" */
    const struct kvs_settings_row *rows;
    int n_rows;
    int cursor;             /* row under the cursor */
    const char *edit;       /* non-NULL: the value being typed for the cursor row */
    const char *footer;     /* keys line at the bottom */
};

/* Draws SV centred on a SW x SH screen in W; draws what fits (nothing below 1x1). */
void kvs_settings_draw(WINDOW *w, const struct kvs_theme *t, int sw, int sh, const struct kvs_settings_view *sv);

#endif
