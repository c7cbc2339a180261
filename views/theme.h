/* Colour themes: semantic roles (text, bad, heat levels, …) mapped to curses colour pairs and
 * attributes, with a monochrome fallback. Depends on curses (through view.h's include) only. */
#ifndef KVS_THEME_H
#define KVS_THEME_H

#ifndef NCURSES_WIDECHAR
#define NCURSES_WIDECHAR 1
#endif
#include <ncursesw/curses.h>
#include <stdbool.h>

enum kvs_theme_id { KVS_THEME_DEFAULT = 0, KVS_THEME_MONO = 1, KVS_THEME_PROJECTOR = 2, KVS_THEME_COUNT };

#define KVS_HEAT_LEVELS 8

enum kvs_role {
    KVS_C_TEXT = 0,
    KVS_C_DIM,
    KVS_C_TITLE,
    KVS_C_BORDER,
    KVS_C_FOCUS,      /* border and title of the focused panel */
    KVS_C_STATUS,     /* status line */
    KVS_C_KEY,        /* key names in the key bar and help */
    KVS_C_GOOD,
    KVS_C_WARN,
    KVS_C_BAD,        /* zero budgets, errors: red */
    KVS_C_NA,         /* "n/a" */
    KVS_C_BAR_FULL,
    KVS_C_BAR_HELD,
    KVS_C_BAR_ALLOC,
    KVS_C_BAR_REF,    /* uniform allocation, pinned run */
    KVS_C_GROUP_A,    /* alternating group markers */
    KVS_C_GROUP_B,
    KVS_C_HEAT0,      /* KVS_HEAT_LEVELS roles, cold to hot */
    KVS_C_COUNT = KVS_C_HEAT0 + KVS_HEAT_LEVELS
};

struct kvs_theme {
    int id;
    bool color;                 /* colour pairs in use */
    bool utf8;                  /* wide characters (blocks, box drawing) may be drawn */
    attr_t attr[KVS_C_COUNT];   /* full attribute incl. COLOR_PAIR */
    short pair[KVS_C_COUNT];    /* colour pair number (0 in monochrome) */
};

/* Parses "default", "mono", "projector"; -1 when unknown. */
int kvs_theme_parse(const char *name);
const char *kvs_theme_name(int id);
/* Sets T up for theme ID. Needs an active curses screen when HAS_COLOR (it calls init_pair);
 * N_COLORS is COLORS (8, 16, 256). Mono, or no colour support, uses attributes only. */
void kvs_theme_setup(struct kvs_theme *t, int id, bool has_color, int n_colors, bool utf8);

static inline attr_t kvs_attr(const struct kvs_theme *t, enum kvs_role r) { return t->attr[r]; }
/* The colours of ROLE in theme ID with N_COLORS colours (no curses calls): foreground and
 * background colour numbers (-1: the terminal's default) and attributes. Colour themes only. */
void kvs_theme_spec(int id, int n_colors, enum kvs_role role, short *fg, short *bg, attr_t *a);
/* Heat role for V in [lo, hi] (NaN: KVS_C_NA). */
enum kvs_role kvs_theme_heat(float v, float lo, float hi);

#endif
