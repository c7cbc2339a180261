/* A session runs one model with one method on its own thread and publishes step records to a
 * queue (DESIGN.md §1): a RUN record, MATRIX records (similarity, spectra), one STEP per prefill
 * chunk and decoded token, QUALITY when compared with full, and END. Restarting with a new method
 * configuration is stop + start; the loaded model is reused.
 * Depends on engine internals; the UI only sees records. */
#ifndef KVS_SESSION_H
#define KVS_SESSION_H

#include "press.h"
#include "queue.h"

struct kvs_session_params {
    struct kvs_method_config method;
    const char *prompt;         /* text; NULL: default document */
    bool chat;                  /* wrap the prompt in the model's chat template */
    int n_predict;              /* tokens to generate (default 64) */
    int n_ctx;                  /* context capacity (default 4096) */
    int n_batch;                /* prefill chunk (default 256) */
    int n_threads;              /* 0: all cores */
    uint64_t seed;
    float temp, top_p;          /* temp 0: greedy */
    bool compare_full;          /* also run `full` on the same tokens for quality (KL, top-1) */
    bool similarity;            /* emit layer x layer similarity matrices after prefill */
    uint32_t run_id;
    char backend[16];           /* "cpu" (default), "cuda", "auto" */
    bool precise;               /* decode on the accurate path (kvs_ctx_params.precise) */
    char weights[8];            /* CUDA weights' type: "auto" (default), "bf16", "fp16" */
    bool lossless;              /* wait when the queue is full (batch output); otherwise the engine
                                 * never waits for its consumer: a full queue drops the record and
                                 * END reports how many were dropped. RUN and END always wait. */
};

void kvs_session_params_default(struct kvs_session_params *p);

struct kvs_session;

/* Starts a session thread over MODEL (shared, not owned; must outlive the session) that pushes
 * records into Q (not owned). Returns an error (message in err) if the thread cannot start; the
 * engine's own failures arrive as a LOG record with level 2 followed by END. */
enum kvs_status kvs_session_start(struct kvs_session **out, const struct kvs_model *model,
                                  const struct kvs_session_params *p, struct kvs_queue *q,
                                  char *err, size_t errlen);
/* Asks the session to stop at the next step boundary, waits for its thread and frees it. */
void kvs_session_stop(struct kvs_session *s);
/* True once the session thread has finished (END pushed). */
bool kvs_session_done(const struct kvs_session *s);

#endif
