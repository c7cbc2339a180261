/* Drawing widgets shared by the panels: clipped UTF-8 text, bars with eighth-cell resolution,
 * sparklines, heat-map cells, boxes, and number formatting with n/a for invalid values.
 * Every function clips to the width it is given. Depends on curses and views/theme.h. */
#ifndef KVS_WIDGETS_H
#define KVS_WIDGETS_H

#include <stdint.h>

#include "layout.h"
#include "theme.h"

/* Draws UTF-8 S at (Y, X) in at most MAXW cells; control characters become visible glyphs,
 * invalid bytes '?'. Returns the cells written. */
int kvs_w_text(WINDOW *w, const struct kvs_theme *t, int y, int x, int maxw, enum kvs_role role, const char *s);
int kvs_w_printf(WINDOW *w, const struct kvs_theme *t, int y, int x, int maxw, enum kvs_role role,
                 const char *fmt, ...) __attribute__((format(printf, 7, 8)));
/* Display width of UTF-8 S as kvs_w_text would draw it. */
int kvs_w_width(const struct kvs_theme *t, const char *s);
/* Fills R with blanks in ROLE. */
void kvs_w_fill(WINDOW *w, const struct kvs_theme *t, struct kvs_rect r, enum kvs_role role);
/* Horizontal bar FRAC (0..1, clamped) of WIDTH cells; the rest is a faint track. */
void kvs_w_bar(WINDOW *w, const struct kvs_theme *t, int y, int x, int width, double frac, enum kvs_role role);
/* A one-cell marker at FRAC of WIDTH (reference values such as a uniform allocation). */
void kvs_w_mark(WINDOW *w, const struct kvs_theme *t, int y, int x, int width, double frac, enum kvs_role role);
/* Sparkline of N values scaled to [LO, HI] in N cells (NaN: blank). */
void kvs_w_spark(WINDOW *w, const struct kvs_theme *t, int y, int x, const float *v, int n, float lo, float hi,
                 enum kvs_role role);
/* One heat-map cell of CW cells wide for V in [LO, HI] (NaN: a dim dot). */
void kvs_w_heat(WINDOW *w, const struct kvs_theme *t, int y, int x, int cw, float v, float lo, float hi);
/* A border around R with TITLE; FOCUSED uses the focus colour. */
void kvs_w_box(WINDOW *w, const struct kvs_theme *t, struct kvs_rect r, const char *title, bool focused);
/* Draws a single glyph (UTF-8 GLYPH when utf8, else ASCII FALLBACK) at (Y, X). */
void kvs_w_glyph(WINDOW *w, const struct kvs_theme *t, int y, int x, enum kvs_role role, const char *glyph,
                 char fallback);

/* A glyph string by terminal ability: UTF-8 U when available, else ASCII A. */
#define KVS_G(t, u, a) ((t)->utf8 ? (u) : (a))

/* Number formatting into BUF (always NUL-terminated). */
char *kvs_fmt_bytes(char *buf, size_t n, uint64_t bytes);     /* "12.3 MiB" */
char *kvs_fmt_ns(char *buf, size_t n, uint64_t ns);           /* "1.23 ms" */
char *kvs_fmt_si(char *buf, size_t n, double v, const char *unit); /* "4.5 G" + unit */
/* FMT of V when VALID and finite, else "n/a". */
char *kvs_fmt_f(char *buf, size_t n, bool valid, const char *fmt, double v);

#endif
