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

struct spec { short fg, bg; attr_t a; };

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
    bool c256 = n_colors >= 256;
    bool proj = id == KVS_THEME_PROJECTOR;
    short bg = proj ? COLOR_BLACK : -1;
    struct spec s[KVS_C_COUNT];
    s[KVS_C_TEXT] = (struct spec){proj ? COLOR_WHITE : -1, bg, proj ? A_BOLD : A_NORMAL};
    s[KVS_C_DIM] = (struct spec){proj ? COLOR_WHITE : (c256 ? 245 : COLOR_WHITE), bg, proj ? A_NORMAL : A_DIM};
    s[KVS_C_TITLE] = (struct spec){proj ? COLOR_YELLOW : COLOR_CYAN, bg, A_BOLD};
    s[KVS_C_BORDER] = (struct spec){proj ? COLOR_WHITE : (c256 ? 240 : COLOR_BLUE), bg, A_NORMAL};
    s[KVS_C_FOCUS] = (struct spec){proj ? COLOR_YELLOW : COLOR_CYAN, bg, A_BOLD};
    s[KVS_C_STATUS] = (struct spec){COLOR_BLACK, proj ? COLOR_YELLOW : COLOR_CYAN, A_NORMAL};
    s[KVS_C_KEY] = (struct spec){proj ? COLOR_YELLOW : COLOR_CYAN, bg, A_BOLD};
    s[KVS_C_GOOD] = (struct spec){COLOR_GREEN, bg, proj ? A_BOLD : A_NORMAL};
    s[KVS_C_WARN] = (struct spec){COLOR_YELLOW, bg, A_BOLD};
    s[KVS_C_BAD] = (struct spec){COLOR_RED, bg, A_BOLD};
    s[KVS_C_NA] = (struct spec){proj ? COLOR_WHITE : (c256 ? 244 : COLOR_WHITE), bg, proj ? A_NORMAL : A_DIM};
    s[KVS_C_BAR_FULL] = (struct spec){proj ? COLOR_WHITE : (c256 ? 250 : COLOR_WHITE), bg, A_NORMAL};
    s[KVS_C_BAR_HELD] = (struct spec){COLOR_GREEN, bg, A_BOLD};
    s[KVS_C_BAR_ALLOC] = (struct spec){proj ? COLOR_CYAN : COLOR_BLUE, bg, A_BOLD};
    s[KVS_C_BAR_REF] = (struct spec){COLOR_MAGENTA, bg, A_BOLD};
    s[KVS_C_GROUP_A] = (struct spec){proj ? COLOR_YELLOW : COLOR_CYAN, bg, A_BOLD};
    s[KVS_C_GROUP_B] = (struct spec){COLOR_MAGENTA, bg, A_BOLD};
    /* heat: cold blue to hot red; 256 colours get a smoother ramp */
    static const short heat256[KVS_HEAT_LEVELS] = {17, 19, 27, 37, 71, 184, 208, 196};
    static const short heat8[KVS_HEAT_LEVELS] = {COLOR_BLUE, COLOR_BLUE, COLOR_CYAN, COLOR_CYAN,
                                                 COLOR_GREEN, COLOR_YELLOW, COLOR_YELLOW, COLOR_RED};
    for (int l = 0; l < KVS_HEAT_LEVELS; l++)
        s[KVS_C_HEAT0 + l] = (struct spec){c256 ? heat256[l] : heat8[l], bg, (!c256 && (l & 1)) ? A_BOLD : A_NORMAL};
    for (int r = 0; r < KVS_C_COUNT; r++) {
        short pair = (short)(r + 1);
        init_pair(pair, s[r].fg, s[r].bg);
        t->pair[r] = pair;
        t->attr[r] = COLOR_PAIR(pair) | s[r].a;
    }
}
