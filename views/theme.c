/* Theme set-up (see theme.h). The only place colour numbers appear; panels use roles.
 * Depends on curses only. */
#include "theme.h"

#include <math.h>
#include <string.h>

static const char *names[KVS_THEME_COUNT] = {"default", "mono", "projector"};

int kvs_theme_parse(const char *name)
{
    for (int i = 0; i < KVS_THEME_COUNT; i++)
        if (name && strcmp(name, names[i]) == 0) return i;
    return -1;
}

const char *kvs_theme_name(int id) { return id >= 0 && id < KVS_THEME_COUNT ? names[id] : "?"; }

enum kvs_role kvs_theme_heat(float v, float lo, float hi)
{
    if (!isfinite(v)) return KVS_C_NA;
    float f = hi > lo ? (v - lo) / (hi - lo) : 0.5f;
    int l = (int)floorf(f * KVS_HEAT_LEVELS);
    if (l < 0) l = 0;
    if (l >= KVS_HEAT_LEVELS) l = KVS_HEAT_LEVELS - 1;
    return (enum kvs_role)(KVS_C_HEAT0 + l);
}

void kvs_theme_spec(int id, int n_colors, enum kvs_role r, short *fg, short *bg, attr_t *a)
{
    bool c256 = n_colors >= 256;
    bool c16 = n_colors >= 16;
    bool proj = id == KVS_THEME_PROJECTOR;
    /* the projector theme draws on explicit black with bright colours only: with 16 colours or
     * more the bright half (8-15) is used so that every pair keeps 4.5:1 against black */
    short B = proj && c16 ? 8 : 0;
    short back = proj ? COLOR_BLACK : -1;
    short f = -1;
    attr_t at = A_NORMAL;
    switch (r) {
    case KVS_C_TEXT: f = proj ? (short)(COLOR_WHITE + B) : -1; at = proj ? A_BOLD : A_NORMAL; break;
    case KVS_C_DIM: f = proj ? COLOR_WHITE : (c256 ? 245 : COLOR_WHITE); at = proj ? A_NORMAL : A_DIM; break;
    case KVS_C_TITLE: f = proj ? (short)(COLOR_YELLOW + B) : COLOR_CYAN; at = A_BOLD; break;
    case KVS_C_BORDER: f = proj ? (short)(COLOR_WHITE + B) : (c256 ? 240 : COLOR_BLUE); break;
    case KVS_C_FOCUS: f = proj ? (short)(COLOR_YELLOW + B) : COLOR_CYAN; at = A_BOLD; break;
    case KVS_C_STATUS: f = COLOR_BLACK; back = proj ? (short)(COLOR_YELLOW + B) : COLOR_CYAN; break;
    case KVS_C_KEY: f = proj ? (short)(COLOR_YELLOW + B) : COLOR_CYAN; at = A_BOLD; break;
    case KVS_C_GOOD: f = (short)(COLOR_GREEN + B); at = proj ? A_BOLD : A_NORMAL; break;
    case KVS_C_WARN: f = (short)(COLOR_YELLOW + B); at = A_BOLD; break;
    case KVS_C_BAD: f = (short)(COLOR_RED + B); at = A_BOLD; break;
    case KVS_C_NA: f = proj ? COLOR_WHITE : (c256 ? 244 : COLOR_WHITE); at = proj ? A_NORMAL : A_DIM; break;
    case KVS_C_BAR_FULL: f = proj ? (short)(COLOR_WHITE + B) : (c256 ? 250 : COLOR_WHITE); break;
    case KVS_C_BAR_HELD: f = (short)(COLOR_GREEN + B); at = A_BOLD; break;
    case KVS_C_BAR_ALLOC: f = proj ? (short)(COLOR_CYAN + B) : COLOR_BLUE; at = A_BOLD; break;
    case KVS_C_BAR_REF: f = (short)(COLOR_MAGENTA + B); at = A_BOLD; break;
    case KVS_C_GROUP_A: f = proj ? (short)(COLOR_YELLOW + B) : COLOR_CYAN; at = A_BOLD; break;
    case KVS_C_GROUP_B: f = (short)(COLOR_MAGENTA + B); at = A_BOLD; break;
    default: {
        /* heat: a perceptual ramp (viridis-like: dark violet, blue, teal, green, yellow) whose
         * lightness rises monotonically, so it reads in grey, on projectors and for red-green
         * colour blindness; the projector ramp starts at teal (no dark colours on black) */
        static const short heat256[KVS_HEAT_LEVELS] = {53, 60, 30, 36, 71, 113, 149, 220};
        static const short heat256p[KVS_HEAT_LEVELS] = {30, 36, 71, 77, 113, 149, 185, 226};
        static const short heat8[KVS_HEAT_LEVELS] = {COLOR_MAGENTA, COLOR_BLUE, COLOR_BLUE, COLOR_CYAN,
                                                     COLOR_CYAN, COLOR_GREEN, COLOR_YELLOW, COLOR_YELLOW};
        static const short heat16p[KVS_HEAT_LEVELS] = {6, 14, 14, 10, 10, 11, 11, 15};
        static const short heat8p[KVS_HEAT_LEVELS] = {COLOR_CYAN, COLOR_CYAN, COLOR_GREEN, COLOR_GREEN,
                                                      COLOR_YELLOW, COLOR_YELLOW, COLOR_WHITE, COLOR_WHITE};
        int l = (int)r - KVS_C_HEAT0;
        if (l < 0) l = 0;
        if (l >= KVS_HEAT_LEVELS) l = KVS_HEAT_LEVELS - 1;
        if (c256) f = proj ? heat256p[l] : heat256[l];
        else if (proj && c16) f = heat16p[l];
        else f = proj ? heat8p[l] : heat8[l];
        at = (!c256 && (l & 1)) ? A_BOLD : A_NORMAL;
        break;
    }
    }
    *fg = f;
    *bg = back;
    *a = at;
}

void kvs_theme_setup(struct kvs_theme *t, int id, bool has_color, int n_colors, bool utf8)
{
    memset(t, 0, sizeof *t);
    if (id < 0 || id >= KVS_THEME_COUNT) id = KVS_THEME_DEFAULT;
    t->id = id;
    t->utf8 = utf8;
    t->color = has_color && id != KVS_THEME_MONO;
    if (!t->color) {
        /* monochrome: meaning carried by attributes (and by glyphs in the widgets) */
        static const attr_t mono[KVS_C_COUNT] = {
            [KVS_C_TEXT] = A_NORMAL, [KVS_C_DIM] = A_DIM, [KVS_C_TITLE] = A_BOLD,
            [KVS_C_BORDER] = A_NORMAL, [KVS_C_FOCUS] = A_BOLD, [KVS_C_STATUS] = A_REVERSE,
            [KVS_C_KEY] = A_BOLD, [KVS_C_GOOD] = A_NORMAL, [KVS_C_WARN] = A_BOLD,
            [KVS_C_BAD] = A_REVERSE | A_BOLD, [KVS_C_NA] = A_DIM, [KVS_C_BAR_FULL] = A_DIM,
            [KVS_C_BAR_HELD] = A_BOLD, [KVS_C_BAR_ALLOC] = A_NORMAL, [KVS_C_BAR_REF] = A_UNDERLINE,
            [KVS_C_GROUP_A] = A_BOLD, [KVS_C_GROUP_B] = A_DIM,
        };
        for (int r = 0; r < KVS_C_COUNT; r++) t->attr[r] = mono[r];
        for (int l = 0; l < KVS_HEAT_LEVELS; l++)
            t->attr[KVS_C_HEAT0 + l] = l < 3 ? A_DIM : l < 6 ? A_NORMAL : A_BOLD;
        return;
    }
    for (int r = 0; r < KVS_C_COUNT; r++) {
        short fg, bg;
        attr_t a;
        kvs_theme_spec(id, n_colors, (enum kvs_role)r, &fg, &bg, &a);
        short pair = (short)(r + 1);
        init_pair(pair, fg, bg);
        t->pair[r] = pair;
        t->attr[r] = COLOR_PAIR(pair) | a;
    }
}
