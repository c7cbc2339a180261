/* The settings screen (see settings.h): a bordered box, a label column and a value column, the
 * cursor row in the focus colour (read-only values dimmed), the typed value with a caret, the
 * cursor row's hint and the keys at the bottom. Rows scroll to keep the cursor visible. Depends
 * on curses, views/widgets.h and views/theme.h only. */
#include "settings.h"

#include "widgets.h"

#include <stdio.h>
#include <string.h>

void kvs_settings_draw(WINDOW *w, const struct kvs_theme *t, int sw, int sh, const struct kvs_settings_view *sv)
{
    if (sw < 1 || sh < 1) return;
    int bw = sw >= 72 ? 72 : sw;
    bool border = bw >= 12 && sh >= 5;
    int extra = 2; /* hint and footer lines */
    int bh = sv->n_rows + extra + (border ? 2 : 0);
    if (bh > sh) bh = sh;
    struct kvs_rect box = {(sw - bw) / 2, (sh - bh) / 2, bw, bh};
    kvs_w_fill(w, t, box, KVS_C_TEXT);
    if (border) kvs_w_box(w, t, box, sv->title, true);
    struct kvs_rect in = border ? kvs_rect_inset(box, 1) : box;
    if (kvs_rect_empty(in)) return;
    int body = in.h - extra;
    if (body < 1) body = in.h; /* tiny: rows only */
    int first = 0;
    if (sv->cursor >= body) first = sv->cursor - body + 1;
    int lw = in.w >= 40 ? 22 : in.w / 2;
    for (int i = 0; i < body && first + i < sv->n_rows; i++) {
        int k = first + i;
        const struct kvs_settings_row *r = &sv->rows[k];
        bool cur = k == sv->cursor;
        enum kvs_role role = cur ? KVS_C_FOCUS : r->editable ? KVS_C_TEXT : KVS_C_DIM;
        kvs_w_printf(w, t, in.y + i, in.x, lw, role, "%s%s", cur ? KVS_G(t, "▶ ", "> ") : "  ", r->label);
        if (cur && sv->edit) {
            kvs_w_printf(w, t, in.y + i, in.x + lw, in.w - lw, KVS_C_KEY, "%s_", sv->edit);
        } else {
            char b[96];
            if (cur && r->editable) snprintf(b, sizeof b, "%s %s %s", KVS_G(t, "◀", "<"), r->value, KVS_G(t, "▶", ">"));
            else snprintf(b, sizeof b, "%s", r->value);
            kvs_w_text(w, t, in.y + i, in.x + lw, in.w - lw, cur ? KVS_C_KEY : r->editable ? KVS_C_TEXT : KVS_C_DIM, b);
        }
    }
    if (in.h - body < extra) return;
    int hy = in.y + in.h - 2;
    if (sv->cursor >= 0 && sv->cursor < sv->n_rows && sv->rows[sv->cursor].hint)
        kvs_w_text(w, t, hy, in.x, in.w, KVS_C_DIM, sv->rows[sv->cursor].hint);
    if (sv->footer) kvs_w_text(w, t, hy + 1, in.x, in.w, KVS_C_KEY, sv->footer);
}
