/* A whole screen: status line, panels in their layout rectangles (boxed, focus marked), key bar or
 * message, replay scrubber and the help overlay. The caller (app/ui.c) supplies the texts; this
 * module only draws. Depends on curses, views/view.h, views/layout.h. */
#ifndef KVS_FRAME_H
#define KVS_FRAME_H

#include "view.h"

struct kvs_help_line {
    const char *key;    /* "+ / -" */
    const char *what;   /* "raise / lower the target CR" */
};

struct kvs_frame_info {
    const char *mode;            /* "LIVE", "PAUSED", "REPLAY" */
    const char *settings;        /* method and knobs, e.g. "commonkv CR 0.50 G4 r0.50 s4 w128" */
    bool pending;                /* settings changed but not applied yet */
    const char *message;         /* transient message (NULL: the key bar) */
    enum kvs_role message_role;
    const char *progress;        /* engine progress text (NULL: none) */
    unsigned spin;               /* animation tick while busy */
    bool busy;
    bool pinned;
    /* replay scrubber */
    uint64_t scrub_pos, scrub_len; /* step shown / steps in the trace */
    double speed;
    bool playing;
    const char *scrub_extra;     /* e.g. "token 17" */
    const uint64_t *scrub_runs;  /* global step where each run starts (marked on the track) */
    size_t n_scrub_runs;
    const uint64_t *scrub_t;     /* (n_scrub_t) each step's run-relative end time in ns: the time
                                  * axis (seconds labelled along the track), or NULL */
    size_t n_scrub_t;
    uint64_t loop_in, loop_out;  /* marked range in global steps, where has_in / has_out */
    bool has_in, has_out;
    bool loop;                   /* playback loops over the range */
    /* help overlay */
    bool help;
    int help_scroll;
    int *help_scroll_max;        /* out (may be NULL): the largest useful help_scroll at this size */
    const struct kvs_help_line *help_lines;
    int n_help;
    const char *keys_line;       /* key bar text */
    int focus, zoom;
    const char *stale;           /* non-NULL: the panels show a previous run; this labels them */
    const char *gpu_note;        /* non-NULL: why this live run cannot use the GPU (the CUDA probe's
                                  * status and detail), shown at the end of the status line */
};

/* Fills the layout request for a W x H terminal from each panel's size hints. */
void kvs_frame_layout_req(const struct kvs_view_ctx *v, int w, int h, bool scrubber, int focus, int zoom,
                          struct kvs_layout_req *rq);
/* Draws the frame into W (the whole screen) using LAY; does not refresh. */
void kvs_frame_draw(WINDOW *w, const struct kvs_layout *lay, const struct kvs_view_ctx *v,
                    struct kvs_panel_state st[KVS_PANEL_COUNT], const struct kvs_frame_info *fi);
/* Panel under screen cell (X, Y), or -1. */
int kvs_frame_hit_panel(const struct kvs_layout *lay, int x, int y);
/* Fraction 0..1 of the scrubber track under (X, Y), or -1 when outside it. */
double kvs_frame_hit_scrub(const struct kvs_layout *lay, int x, int y);

#endif
