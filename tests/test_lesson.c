/* Unit tests of the lesson texts (views/lesson.c): the numbers come from the records pushed into a
 * history (never from the text), a step with missing data waits instead of printing a number,
 * stepping clamps, and the quality points are collected across runs. No terminal needed. */
#include "harness.h"
#include "lesson.h"

#include <string.h>

static struct kvs_record *run_rec(const char *method, uint32_t n_layer, uint32_t n_head_kv, uint32_t head_dim)
{
    struct kvs_record *r = kvs_record_new(KVS_REC_RUN, 0);
    struct kvs_rec_run *u = &r->u.run;
    snprintf(u->model, sizeof u->model, "testmodel");
    snprintf(u->method, sizeof u->method, "%s", method);
    u->n_layer = n_layer;
    u->n_head_kv = n_head_kv;
    u->head_dim = head_dim;
    u->n_head = 3 * n_head_kv;
    u->n_embd = 64;
    u->n_ctx_max = 1000;
    u->model_bytes = 5000000;
    u->group_size = 2;
    u->n_groups = (n_layer + 1) / 2;
    u->sinks = 4;
    u->recent = 10;
    u->target_cr = 0.5f;
    for (uint32_t g = 0; g < u->n_groups; g++) u->group_rank[g] = 16;
    return r;
}

static struct kvs_record *step_rec(uint32_t n_ctx, uint64_t bytes_full, uint32_t n_groups)
{
    struct kvs_record *r = kvs_record_new(KVS_REC_STEP, 0);
    struct kvs_rec_step *s = &r->u.step;
    s->kind = KVS_STEP_DECODE;
    s->n_ctx = n_ctx;
    s->bytes_full = bytes_full;
    s->bytes_held = bytes_full / 2;
    s->bytes_alloc = bytes_full;
    s->cr_achieved = 0.5f;
    s->valid = KVS_VALID_BYTES | KVS_VALID_BUDGET;
    s->n_groups = n_groups;
    for (uint32_t g = 0; g < n_groups; g++) {
        s->group_sim[g] = 0.2f * (float)g;
        s->group_merged[g] = 0.1f * (float)g;
        s->group_rank[g] = 16;
    }
    return r;
}

static void text(struct kvs_lesson_state *ls, struct kvs_history *h, char *buf, size_t n)
{
    struct kvs_view_ctx v;
    memset(&v, 0, sizeof v);
    v.h = h;
    v.live = true;
    kvs_lesson_text(ls, &v, buf, n);
}

static void test_bytes_per_token(void)
{
    CHECK(kvs_lesson_kv_bytes_per_token(30, 3, 64) == 23040);
    CHECK(kvs_lesson_kv_bytes_per_token(KVS_LESSON_BIG_LAYERS, KVS_LESSON_BIG_KV_HEADS, KVS_LESSON_BIG_HEAD_DIM) == 131072);
}

/* Lesson 1's numbers follow the RUN record's shapes and the step's bytes. */
static void test_lesson1_from_records(void)
{
    struct kvs_history h;
    CHECK(kvs_history_init(&h, 16) == KVS_OK);
    struct kvs_lesson_state ls;
    kvs_lesson_init(&ls, 1);
    char buf[4096];
    text(&ls, &h, buf, sizeof buf);
    CHECKF(strstr(buf, "Waiting") != NULL, "%s", buf);
    /* 4 layers x 2 KV heads x 8 dims x 2 x 2 = 256 bytes per token */
    kvs_history_push(&h, run_rec("full", 4, 2, 8));
    kvs_history_push(&h, step_rec(10, 2560, 0));
    text(&ls, &h, buf, sizeof buf);
    CHECKF(strstr(buf, "= 256 bytes per token") != NULL, "%s", buf);
    CHECKF(strstr(buf, "10 tokens holds 2.50 KiB = 256 bytes per token") != NULL, "%s", buf);
    /* other shapes, other numbers: nothing is fixed in the text */
    kvs_history_push(&h, run_rec("full", 6, 1, 16));
    kvs_history_push(&h, step_rec(3, 3 * 384, 0));
    text(&ls, &h, buf, sizeof buf);
    CHECKF(strstr(buf, "= 384 bytes per token") != NULL, "%s", buf);
    ls.step = 1;
    text(&ls, &h, buf, sizeof buf);
    /* 1000 tokens x 384 = 384000 bytes = 0.08x the 5 MB weights; outgrows them from 13021 tokens */
    CHECKF(strstr(buf, "0.08x the weights") != NULL && strstr(buf, "from 13021 tokens") != NULL, "%s", buf);
    ls.step = 2;
    text(&ls, &h, buf, sizeof buf);
    CHECKF(strstr(buf, "131072 bytes per token, 341.3x this model's 384") != NULL, "%s", buf);
    CHECKF(strstr(buf, "128K tokens x batch 8: 128 GiB KV = 8.56x the weights") != NULL, "%s", buf);
    kvs_history_free(&h);
}

static void test_lesson2_waits_and_reads_matrices(void)
{
    struct kvs_history h;
    CHECK(kvs_history_init(&h, 16) == KVS_OK);
    kvs_history_push(&h, run_rec("full", 3, 1, 4));
    struct kvs_lesson_state ls;
    kvs_lesson_init(&ls, 2);
    char buf[4096];
    text(&ls, &h, buf, sizeof buf);
    CHECKF(strstr(buf, "Waiting for the similarity") != NULL, "%s", buf);
    static const float hid[9] = {1, 0.9f, 0.5f, 0.9f, 1, 0.7f, 0.5f, 0.7f, 1};
    static const float key[9] = {1, 0.1f, 0, 0.1f, 1, 0.3f, 0, 0.3f, 1};
    const float *m[2] = {hid, key};
    for (int k = 0; k < 2; k++) {
        struct kvs_record *r = kvs_record_new(KVS_REC_MATRIX, 9);
        r->u.matrix.kind = k ? KVS_MAT_SIM_KEYS : KVS_MAT_SIM_HIDDEN;
        r->u.matrix.rows = r->u.matrix.cols = 3;
        memcpy(r->u.matrix.v, m[k], sizeof hid);
        kvs_history_push(&h, r);
    }
    text(&ls, &h, buf, sizeof buf);
    CHECKF(strstr(buf, "2 pairs: mean 0.800, from 0.700 to 0.900") != NULL, "%s", buf);
    ls.step = 1;
    text(&ls, &h, buf, sizeof buf);
    CHECKF(strstr(buf, "mean 0.200, from 0.100 to 0.300 (hidden states: 0.800)") != NULL, "%s", buf);
    ls.step = 2;
    text(&ls, &h, buf, sizeof buf);
    CHECKF(strstr(buf, "layers 0 and 1, hidden 0.900, keys 0.100") != NULL, "%s", buf);
    kvs_history_free(&h);
}

static void test_lesson4_correlation(void)
{
    struct kvs_history h;
    CHECK(kvs_history_init(&h, 16) == KVS_OK);
    kvs_history_push(&h, run_rec("commonkv", 6, 1, 4));
    kvs_history_push(&h, step_rec(40, 40 * 96, 3));
    struct kvs_lesson_state ls;
    kvs_lesson_init(&ls, 4);
    char buf[4096];
    text(&ls, &h, buf, sizeof buf);
    /* similarity 0, 0.2, 0.4 against merged 0, 0.1, 0.2: correlation 1 */
    CHECKF(strstr(buf, "over 3 groups: 1.00") != NULL, "%s", buf);
    ls.step = 1;
    text(&ls, &h, buf, sizeof buf);
    /* 40 tokens - 4 sinks - 10 recent = 26 eligible; group 2 merged 0.2 x 40 = 8 */
    CHECKF(strstr(buf, "Of 40 tokens, 26 are eligible") != NULL && strstr(buf, "group 2: 8 tokens merged") != NULL, "%s", buf);
    kvs_history_free(&h);
}

/* Lesson 6 step 1: a step with the press's CR split prints the measured parts (a negative rank
 * part with its sign); a step without it (an older trace) falls back to the stage model. */
static void test_lesson6_split(void)
{
    struct kvs_history h;
    CHECK(kvs_history_init(&h, 16) == KVS_OK);
    kvs_history_push(&h, run_rec("commonkv+quant+snapkv", 6, 1, 4));
    struct kvs_record *r = step_rec(40, 100000, 3);
    struct kvs_rec_step *s = &r->u.step;
    s->bytes_held = 8000;
    s->cr_achieved = 0.92f;
    s->saved_rank = -10000;
    s->saved_merge = 32000;
    s->saved_quant = 6000;
    s->saved_evict = 64000;
    s->valid |= KVS_VALID_SPLIT;
    kvs_history_push(&h, kvs_record_clone(r));
    struct kvs_lesson_state ls;
    kvs_lesson_init(&ls, 6);
    char buf[4096];
    text(&ls, &h, buf, sizeof buf);
    CHECKF(strstr(buf, "as the press counted them") != NULL, "%s", buf);
    CHECKF(strstr(buf, "rank           -10.0%") != NULL && strstr(buf, "eviction       +64.0%") != NULL, "%s", buf);
    CHECKF(strstr(buf, "Sum: CR 0.920") != NULL, "%s", buf);
    s->valid &= ~(uint32_t)KVS_VALID_SPLIT;
    kvs_history_push(&h, r);
    text(&ls, &h, buf, sizeof buf);
    CHECKF(strstr(buf, "stage by stage from the record fields") != NULL && strstr(buf, "as the press counted") == NULL,
           "%s", buf);
    kvs_history_free(&h);
}

static void test_lesson5_points_and_steps(void)
{
    struct kvs_lesson_state ls;
    kvs_lesson_init(&ls, 5);
    static const char *methods[] = {"commonkv", "commonkv", "lowrank"};
    static const float cr[] = {0.3f, 0.6f, 0.5f}, kl[] = {0.1f, 0.4f, 0.9f};
    for (int i = 0; i < 3; i++) {
        struct kvs_record *r = kvs_record_new(KVS_REC_RUN, 0);
        kvs_lesson_observe(&ls, r);
        kvs_record_unref(r);
        r = kvs_record_new(KVS_REC_QUALITY, 0);
        snprintf(r->u.quality.method, sizeof r->u.quality.method, "%s", methods[i]);
        r->u.quality.achieved_cr = cr[i];
        r->u.quality.target_cr = cr[i];
        r->u.quality.kl = kl[i];
        kvs_lesson_observe(&ls, r);
        kvs_record_unref(r);
    }
    CHECK(ls.n_pts == 3 && ls.n_runs == 3);
    struct kvs_history h;
    CHECK(kvs_history_init(&h, 4) == KVS_OK);
    kvs_history_push(&h, run_rec("lowrank", 2, 1, 4));
    char buf[4096];
    ls.step = 1;
    text(&ls, &h, buf, sizeof buf);
    CHECKF(strstr(buf, "commonkv     CR 0.600 at KL 0.400") != NULL, "%s", buf);
    CHECKF(strstr(buf, "Lowest KL at CR >= 0.5: commonkv (target 0.60): KL 0.400") != NULL, "%s", buf);
    /* stepping clamps at the closing screen and at the first step */
    CHECK(kvs_lesson_next(&ls) && ls.step == 2);
    CHECK(!kvs_lesson_next(&ls) && ls.step == 2);
    text(&ls, &h, buf, sizeof buf);
    CHECKF(strstr(buf, "End of lesson 5") != NULL, "%s", buf);
    CHECK(kvs_lesson_prev(&ls) && kvs_lesson_prev(&ls) && !kvs_lesson_prev(&ls) && ls.step == 0);
    kvs_history_free(&h);
}

static void test_table(void)
{
    for (int n = 1; n <= KVS_LESSON_COUNT; n++) {
        CHECK(kvs_lesson_title(n) && kvs_lesson_summary(n) && kvs_lesson_steps(n) >= 2);
        for (int s = 0; s < kvs_lesson_steps(n); s++)
            CHECK(kvs_lesson_panel(n, s) >= 0 && kvs_lesson_panel(n, s) < KVS_PANEL_COUNT);
    }
    CHECK(!kvs_lesson_title(0) && !kvs_lesson_title(KVS_LESSON_COUNT + 1) && kvs_lesson_panel(7, 0) == -1);
}

int main(void)
{
    RUN(test_bytes_per_token);
    RUN(test_lesson1_from_records);
    RUN(test_lesson2_waits_and_reads_matrices);
    RUN(test_lesson4_correlation);
    RUN(test_lesson5_points_and_steps);
    RUN(test_lesson6_split);
    RUN(test_table);
    return kvs_test_summary();
}
