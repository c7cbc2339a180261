/* The panel interface: each panel is a struct of function pointers (layout, draw, key) over the
 * record history. Panels only draw; they never collect data and cannot tell live from replay.
 * Depends on curses, engine/core/record.h (plain structs) and views/history.h. */
#ifndef KVS_VIEW_H
#define KVS_VIEW_H

#include "history.h"
#include "layout.h"
#include "theme.h"
#include "widgets.h"

enum kvs_panel_id {
    KVS_PANEL_SIMILARITY = 0,
    KVS_PANEL_BUDGETS,
    KVS_PANEL_MEMORY,
    KVS_PANEL_TOKENS,
    KVS_PANEL_PROFILER,
    KVS_PANEL_QUALITY,
    KVS_PANEL_COUNT
};

/* What every panel may read. */
struct kvs_view_ctx {
    const struct kvs_history *h;
    const struct kvs_hist_pin *pin; /* A/B reference (NULL or !set: none) */
    uint64_t cursor;                /* step shown; the newest when live */
    bool live;                      /* following the newest step */
    const struct kvs_theme *t;
    int sim_kind;                   /* KVS_MAT_SIM_* shown by the similarity panel */
};

/* Per-panel UI state owned by the caller. */
struct kvs_panel_state {
    int scroll;                     /* rows scrolled (panels clamp it) */
    int mode;                       /* panel-specific toggle */
    int cur_r, cur_c;               /* cell cursor (similarity: layer row, layer column) */
    int sort;                       /* row order of sortable panels (F6 cycles; 0: the default) */
    bool focused;
};

struct kvs_panel {
    const char *name;               /* short id: "memory" */
    const char *title;
    /* Smallest useful grid cell for this panel, borders included. */
    void (*layout)(const struct kvs_view_ctx *v, int *min_w, int *min_h);
    /* Draws the panel's content into R (inside its border); never outside R. */
    void (*draw)(WINDOW *w, struct kvs_rect r, const struct kvs_view_ctx *v, struct kvs_panel_state *st);
    /* A key while the panel is focused; returns true when it used it (may be NULL). */
    bool (*key)(struct kvs_panel_state *st, int key);
    const char *help;               /* its own keys, "KEY\tdescription\n" lines (may be NULL) */
};

extern const struct kvs_panel kvs_panel_similarity, kvs_panel_budgets, kvs_panel_memory, kvs_panel_tokens,
    kvs_panel_profiler, kvs_panel_quality;
/* All panels in grid order (index = enum kvs_panel_id). */
extern const struct kvs_panel *const kvs_panels[KVS_PANEL_COUNT];

/* The step record at the cursor, or NULL when none is held. */
const struct kvs_rec_step *kvs_view_step(const struct kvs_view_ctx *v);
/* The current run record, or NULL. */
static inline const struct kvs_rec_run *kvs_view_run(const struct kvs_view_ctx *v)
{
    return v->h->run ? &v->h->run->u.run : NULL;
}
/* Standard one-line placeholder for a panel with nothing to show yet. */
void kvs_view_empty(WINDOW *w, struct kvs_rect r, const struct kvs_view_ctx *v, const char *why);
/* Scroll key handling shared by list panels (Up/Down/PgUp/PgDn on the focused panel). */
bool kvs_view_scroll_key(struct kvs_panel_state *st, int key);

#endif
