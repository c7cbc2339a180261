/* Widgets for the panels (see widgets.h). UTF-8 is decoded here (not through the locale) so the
 * output is the same whatever LC_ALL says; wcwidth gives the column width of wide characters.
 * Depends on curses, views/theme.h and libc. */
#include "widgets.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <wchar.h>

/* Decodes one UTF-8 sequence at S (N bytes left); returns its length (>= 1) and sets *cp
 * (0xFFFD for invalid bytes). */
static int utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned c = s[0];
    int len;
    uint32_t v;
    if (c < 0x80) { *cp = c; return 1; }
    if (c >= 0xC2 && c <= 0xDF) { len = 2; v = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; v = c & 0x0F; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; v = c & 0x07; }
    else { *cp = 0xFFFD; return 1; }
    if ((size_t)len > n) { *cp = 0xFFFD; return 1; }
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) { *cp = 0xFFFD; return 1; }
        v = (v << 6) | (s[i] & 0x3F);
    }
    if ((len == 3 && v < 0x800) || (len == 4 && (v < 0x10000 || v > 0x10FFFF)) || (v >= 0xD800 && v <= 0xDFFF)) {
        *cp = 0xFFFD;
        return 1;
    }
    *cp = v;
    return len;
}

/* The glyph actually drawn for code point CP and its width (0: skip). */
static int visible(const struct kvs_theme *t, uint32_t cp, wchar_t *out)
{
    if (cp == '\n') { *out = t->utf8 ? 0x21B5 : '|'; return 1; }   /* ↵ */
    if (cp == '\t') { *out = t->utf8 ? 0x2192 : '>'; return 1; }   /* → */
    if (cp < 0x20 || cp == 0x7F) { *out = t->utf8 ? 0xB7 : '.'; return 1; }
    if (cp < 0x80) { *out = (wchar_t)cp; return 1; }
    if (!t->utf8) { *out = '?'; return 1; }
    if (cp >= 0x80 && cp < 0xA0) { *out = 0xB7; return 1; }
    int wd = wcwidth((wchar_t)cp);
    if (wd < 0) { *out = 0xFFFD; return 1; }
    *out = (wchar_t)cp;
    return wd;
}

static void put_wc(WINDOW *w, int y, int x, wchar_t wc, attr_t a)
{
    if (wc < 0x80) {
        mvwaddch(w, y, x, (chtype)wc | a);
        return;
    }
    wchar_t s[2] = {wc, 0};
    cchar_t cc;
    setcchar(&cc, s, a & ~A_COLOR, (short)PAIR_NUMBER(a), NULL);
    mvwadd_wch(w, y, x, &cc);
}

int kvs_w_text(WINDOW *w, const struct kvs_theme *t, int y, int x, int maxw, enum kvs_role role, const char *s)
{
    if (!s || maxw <= 0) return 0;
    attr_t a = kvs_attr(t, role);
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    int col = 0;
    while (n > 0) {
        uint32_t cp;
        int len = utf8_next(p, n, &cp);
        p += len;
        n -= (size_t)len;
        wchar_t wc;
        int wd = visible(t, cp, &wc);
        if (wd == 0) continue;
        if (col + wd > maxw) break;
        put_wc(w, y, x + col, wc, a);
        col += wd;
    }
    return col;
}

int kvs_w_width(const struct kvs_theme *t, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    int col = 0;
    while (n > 0) {
        uint32_t cp;
        int len = utf8_next(p, n, &cp);
        p += len;
        n -= (size_t)len;
        wchar_t wc;
        col += visible(t, cp, &wc);
    }
    return col;
}

int kvs_w_printf(WINDOW *w, const struct kvs_theme *t, int y, int x, int maxw, enum kvs_role role, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return kvs_w_text(w, t, y, x, maxw, role, buf);
}

void kvs_w_fill(WINDOW *w, const struct kvs_theme *t, struct kvs_rect r, enum kvs_role role)
{
    if (kvs_rect_empty(r)) return;
    attr_t a = kvs_attr(t, role);
    for (int y = r.y; y < r.y + r.h; y++) mvwhline(w, y, r.x, ' ' | a, r.w);
}

void kvs_w_glyph(WINDOW *w, const struct kvs_theme *t, int y, int x, enum kvs_role role, const char *glyph, char fallback)
{
    attr_t a = kvs_attr(t, role);
    if (t->utf8 && glyph) {
        uint32_t cp;
        utf8_next((const unsigned char *)glyph, strlen(glyph), &cp);
        put_wc(w, y, x, (wchar_t)cp, a);
    } else {
        mvwaddch(w, y, x, (chtype)(unsigned char)fallback | a);
    }
}

void kvs_w_bar(WINDOW *w, const struct kvs_theme *t, int y, int x, int width, double frac, enum kvs_role role)
{
    if (width <= 0) return;
    if (!(frac >= 0)) frac = 0; /* NaN too */
    if (frac > 1) frac = 1;
    int eighths = (int)lround(frac * width * 8);
    attr_t a = kvs_attr(t, role), track = kvs_attr(t, KVS_C_DIM);
    if (t->id == KVS_THEME_PROJECTOR) {
        /* thick glyphs that survive a projector: whole cells only, and a shaded track instead of
         * a hairline */
        int cells = (eighths + 4) / 8;
        for (int i = 0; i < width; i++) {
            if (t->utf8) put_wc(w, y, x + i, i < cells ? 0x2588 : 0x2591, i < cells ? a : track);
            else mvwaddch(w, y, x + i, (i < cells ? '#' : '.') | (i < cells ? a : track));
        }
        return;
    }
    static const wchar_t part[8] = {0, 0x258F, 0x258E, 0x258D, 0x258C, 0x258B, 0x258A, 0x2589};
    for (int i = 0; i < width; i++) {
        int e = eighths - i * 8;
        if (e >= 8) {
            if (t->utf8) put_wc(w, y, x + i, 0x2588, a);
            else mvwaddch(w, y, x + i, '#' | a);
        } else if (e > 0) {
            if (t->utf8) put_wc(w, y, x + i, part[e], a);
            else mvwaddch(w, y, x + i, (e >= 4 ? '=' : '-') | a);
        } else {
            if (t->utf8) put_wc(w, y, x + i, 0x2500, track); /* ─ */
            else mvwaddch(w, y, x + i, '.' | track);
        }
    }
}

void kvs_w_mark(WINDOW *w, const struct kvs_theme *t, int y, int x, int width, double frac, enum kvs_role role)
{
    if (width <= 0 || !(frac >= 0)) return;
    int i = (int)lround(frac * width);
    if (i >= width) i = width - 1;
    kvs_w_glyph(w, t, y, x + i, role, "┃", '|');
}

void kvs_w_spark(WINDOW *w, const struct kvs_theme *t, int y, int x, const float *v, int n, float lo, float hi,
                 enum kvs_role role)
{
    static const char ascii[] = "_.-~=*#@";
    attr_t a = kvs_attr(t, role);
    for (int i = 0; i < n; i++) {
        if (!isfinite(v[i])) {
            mvwaddch(w, y, x + i, ' ' | a);
            continue;
        }
        float f = hi > lo ? (v[i] - lo) / (hi - lo) : 0.5f;
        int l = (int)floorf(f * 8);
        if (l < 0) l = 0;
        if (l > 7) l = 7;
        if (t->utf8) put_wc(w, y, x + i, (wchar_t)(0x2581 + l), a);
        else mvwaddch(w, y, x + i, (chtype)ascii[l] | a);
    }
}

void kvs_w_heat(WINDOW *w, const struct kvs_theme *t, int y, int x, int cw, float v, float lo, float hi)
{
    enum kvs_role role = kvs_theme_heat(v, lo, hi);
    attr_t a = kvs_attr(t, role);
    if (role == KVS_C_NA) {
        for (int i = 0; i < cw; i++) {
            if (t->utf8) put_wc(w, y, x + i, i == cw - 1 ? 0xB7 : ' ', a);
            else mvwaddch(w, y, x + i, (i == cw - 1 ? '.' : ' ') | a);
        }
        return;
    }
    int l = role - KVS_C_HEAT0;
    wchar_t wc;
    char c;
    if (t->color) {
        wc = 0x2588;
        c = '#';
    } else {
        /* monochrome: the glyph carries the level */
        static const wchar_t shade[KVS_HEAT_LEVELS] = {' ', 0x2591, 0x2591, 0x2592, 0x2592, 0x2593, 0x2593, 0x2588};
        static const char ramp[KVS_HEAT_LEVELS + 1] = " .:-=+*#";
        wc = shade[l];
        c = ramp[l];
    }
    for (int i = 0; i < cw; i++) {
        if (t->utf8) put_wc(w, y, x + i, wc, a);
        else mvwaddch(w, y, x + i, (chtype)(unsigned char)c | a);
    }
}

void kvs_w_box(WINDOW *w, const struct kvs_theme *t, struct kvs_rect r, const char *title, bool focused)
{
    if (r.w < 2 || r.h < 2) return;
    attr_t a = kvs_attr(t, focused ? KVS_C_FOCUS : KVS_C_BORDER);
    int x1 = r.x + r.w - 1, y1 = r.y + r.h - 1;
    if (t->utf8) {
        wchar_t h = focused ? 0x2550 : 0x2500, v = focused ? 0x2551 : 0x2502;
        wchar_t c[4] = {0x250C, 0x2510, 0x2514, 0x2518};
        if (focused) { c[0] = 0x2554; c[1] = 0x2557; c[2] = 0x255A; c[3] = 0x255D; }
        for (int x = r.x + 1; x < x1; x++) { put_wc(w, r.y, x, h, a); put_wc(w, y1, x, h, a); }
        for (int y = r.y + 1; y < y1; y++) { put_wc(w, y, r.x, v, a); put_wc(w, y, x1, v, a); }
        put_wc(w, r.y, r.x, c[0], a);
        put_wc(w, r.y, x1, c[1], a);
        put_wc(w, y1, r.x, c[2], a);
        put_wc(w, y1, x1, c[3], a);
    } else {
        mvwhline(w, r.y, r.x + 1, ACS_HLINE | a, r.w - 2);
        mvwhline(w, y1, r.x + 1, ACS_HLINE | a, r.w - 2);
        mvwvline(w, r.y + 1, r.x, ACS_VLINE | a, r.h - 2);
        mvwvline(w, r.y + 1, x1, ACS_VLINE | a, r.h - 2);
        mvwaddch(w, r.y, r.x, ACS_ULCORNER | a);
        mvwaddch(w, r.y, x1, ACS_URCORNER | a);
        mvwaddch(w, y1, r.x, ACS_LLCORNER | a);
        /* the bottom-right cell of the screen cannot take a character on every terminal */
        if (!(y1 == getmaxy(w) - 1 && x1 == getmaxx(w) - 1)) mvwaddch(w, y1, x1, ACS_LRCORNER | a);
    }
    if (title && r.w > 4) {
        int n = kvs_w_text(w, t, r.y, r.x + 2, r.w - 4, focused ? KVS_C_FOCUS : KVS_C_TITLE, " ");
        n += kvs_w_text(w, t, r.y, r.x + 2 + n, r.w - 4 - n, focused ? KVS_C_FOCUS : KVS_C_TITLE, title);
        kvs_w_text(w, t, r.y, r.x + 2 + n, r.w - 4 - n, focused ? KVS_C_FOCUS : KVS_C_TITLE, " ");
    }
}

char *kvs_fmt_bytes(char *buf, size_t n, uint64_t bytes)
{
    static const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)bytes;
    int i = 0;
    while (v >= 1024 && i < 4) { v /= 1024; i++; }
    if (i == 0) snprintf(buf, n, "%llu B", (unsigned long long)bytes);
    else snprintf(buf, n, v >= 100 ? "%.0f %s" : v >= 10 ? "%.1f %s" : "%.2f %s", v, u[i]);
    return buf;
}

char *kvs_fmt_ns(char *buf, size_t n, uint64_t ns)
{
    double v = (double)ns;
    if (ns < 1000) snprintf(buf, n, "%llu ns", (unsigned long long)ns);
    else if (ns < 1000000) snprintf(buf, n, "%.1f us", v / 1e3);
    else if (ns < 1000000000ull) snprintf(buf, n, v >= 1e8 ? "%.0f ms" : "%.1f ms", v / 1e6);
    else snprintf(buf, n, "%.2f s", v / 1e9);
    return buf;
}

char *kvs_fmt_si(char *buf, size_t n, double v, const char *unit)
{
    static const char *p[] = {"", "k", "M", "G", "T", "P"};
    int i = 0;
    double a = fabs(v);
    while (a >= 1000 && i < 5) { a /= 1000; v /= 1000; i++; }
    snprintf(buf, n, a >= 100 || i == 0 ? "%.0f %s%s" : "%.1f %s%s", v, p[i], unit);
    return buf;
}

char *kvs_fmt_f(char *buf, size_t n, bool valid, const char *fmt, double v)
{
    if (!valid || !isfinite(v)) snprintf(buf, n, "n/a");
    else snprintf(buf, n, fmt, v);
    return buf;
}
