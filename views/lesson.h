/* Workshop lessons: the six guided sequences, their steps (which panel each step talks about) and
 * the explanation overlay drawn beside the panels. Every number in an overlay is computed from the
 * records in the history (or the quality points collected across a lesson's runs); the lesson
 * text only holds the sentences around them. Depends on curses, views/ and engine/record.h. */
#ifndef KVS_LESSON_H
#define KVS_LESSON_H

#include "view.h"

#define KVS_LESSON_COUNT 6
#define KVS_LESSON_POINTS 32

/* Stated shapes of the 7-8B model that lesson 1 projects to (Llama-3-8B: 32 layers, 8 KV heads of
 * 128, fp16 cache, 8.03e9 parameters stored as fp16). */
#define KVS_LESSON_BIG_LAYERS 32u
#define KVS_LESSON_BIG_KV_HEADS 8u
#define KVS_LESSON_BIG_HEAD_DIM 128u
#define KVS_LESSON_BIG_PARAMS 8030000000.0

/* One finished run's quality (from its QUALITY record), for the quality/memory curve. */
struct kvs_lesson_point {
    char method[KVS_REC_NAME_MAX];
    float cr_target, cr_achieved, kl, top1;
};

struct kvs_lesson_state {
    int lesson;                 /* 1..KVS_LESSON_COUNT */
    int step;                   /* 0-based; == kvs_lesson_steps() is the closing screen */
    struct kvs_lesson_point pts[KVS_LESSON_POINTS];
    int n_pts;
    int n_runs;                 /* RUN records seen */
};

/* Title of lesson N (1-based), or NULL when there is no such lesson. */
const char *kvs_lesson_title(int n);
/* One-line summary of lesson N for `kvscope lesson list`. */
const char *kvs_lesson_summary(int n);
/* Explanation steps of lesson N (the closing screen comes after them). */
int kvs_lesson_steps(int n);
/* The panel step S of lesson N talks about (enum kvs_panel_id) and the similarity source it wants
 * (KVS_MAT_SIM_*, 0: leave as it is). */
int kvs_lesson_panel(int n, int s);
int kvs_lesson_sim_kind(int n, int s);

/* Starts lesson N at its first step with nothing observed. */
void kvs_lesson_init(struct kvs_lesson_state *ls, int n);
/* Notes what the lesson collects across runs (RUN and QUALITY records); R stays the caller's. */
void kvs_lesson_observe(struct kvs_lesson_state *ls, const struct kvs_record *r);
/* Next / previous step (clamped); return true when the step changed. */
bool kvs_lesson_next(struct kvs_lesson_state *ls);
bool kvs_lesson_prev(struct kvs_lesson_state *ls);

/* The current step's text, paragraphs separated by '\n', filled from the history of V and the
 * points in LS; written into BUF (always NUL-terminated). Pure: no curses calls. */
void kvs_lesson_text(const struct kvs_lesson_state *ls, const struct kvs_view_ctx *v, char *buf, size_t n);

/* KV bytes per token of a full fp16 cache: layers x kv heads x head dim x 2 (K and V) x 2 bytes. */
static inline uint64_t kvs_lesson_kv_bytes_per_token(uint32_t n_layer, uint32_t n_head_kv, uint32_t head_dim)
{
    return (uint64_t)n_layer * n_head_kv * head_dim * 2u * 2u;
}

/* Draws the overlay (title, step counter, wrapped text, and for the quality lesson a KL vs CR plot)
 * into R of W. */
void kvs_lesson_draw(WINDOW *w, struct kvs_rect r, const struct kvs_view_ctx *v, const struct kvs_lesson_state *ls);

#endif
