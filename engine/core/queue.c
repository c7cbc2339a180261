/* Bounded record queue (see queue.h): a ring of pointers under a mutex, a condition variable for
 * the consumer and a pipe that becomes readable on push so a UI can wait in poll()/getch(). */
#include "queue.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

struct kvs_queue {
    pthread_mutex_t mu;
    pthread_cond_t not_empty, not_full;
    struct kvs_record **ring;
    uint32_t cap, head, count;
    bool closed;
    uint64_t dropped;
    int pipe_r, pipe_w;
};

struct kvs_queue *kvs_queue_new(uint32_t cap)
{
    if (cap == 0) cap = 1;
    struct kvs_queue *q = calloc(1, sizeof *q);
    if (!q) return NULL;
    q->ring = calloc(cap, sizeof *q->ring);
    if (!q->ring) { free(q); return NULL; }
    q->cap = cap;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->not_empty, NULL);
    pthread_cond_init(&q->not_full, NULL);
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) == 0) {
        q->pipe_r = fds[0];
        q->pipe_w = fds[1];
    } else {
        q->pipe_r = q->pipe_w = -1;
    }
    return q;
}

void kvs_queue_delete(struct kvs_queue *q)
{
    if (!q) return;
    for (uint32_t i = 0; i < q->count; i++) kvs_record_unref(q->ring[(q->head + i) % q->cap]);
    free(q->ring);
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->not_empty);
    pthread_cond_destroy(&q->not_full);
    if (q->pipe_r >= 0) close(q->pipe_r);
    if (q->pipe_w >= 0) close(q->pipe_w);
    free(q);
}

static void notify(struct kvs_queue *q)
{
    if (q->pipe_w >= 0) {
        char c = 1;
        ssize_t w = write(q->pipe_w, &c, 1); /* a full pipe already signals readability */
        (void)w;
    }
}

static void drain_pipe(struct kvs_queue *q)
{
    if (q->pipe_r < 0) return;
    char buf[256];
    while (read(q->pipe_r, buf, sizeof buf) > 0) {}
}

static bool push(struct kvs_queue *q, struct kvs_record *r, bool wait)
{
    pthread_mutex_lock(&q->mu);
    while (wait && !q->closed && q->count == q->cap) pthread_cond_wait(&q->not_full, &q->mu);
    if (q->closed || q->count == q->cap) {
        q->dropped++;
        pthread_mutex_unlock(&q->mu);
        kvs_record_unref(r);
        return false;
    }
    q->ring[(q->head + q->count) % q->cap] = r;
    q->count++;
    pthread_cond_signal(&q->not_empty);
    pthread_mutex_unlock(&q->mu);
    notify(q);
    return true;
}

bool kvs_queue_push(struct kvs_queue *q, struct kvs_record *r) { return push(q, r, false); }
bool kvs_queue_push_wait(struct kvs_queue *q, struct kvs_record *r) { return push(q, r, true); }

struct kvs_record *kvs_queue_pop(struct kvs_queue *q, int timeout_ms)
{
    pthread_mutex_lock(&q->mu);
    if (q->count == 0 && !q->closed && timeout_ms != 0) {
        if (timeout_ms < 0) {
            while (q->count == 0 && !q->closed) pthread_cond_wait(&q->not_empty, &q->mu);
        } else {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += timeout_ms / 1000;
            ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
            if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
            while (q->count == 0 && !q->closed)
                if (pthread_cond_timedwait(&q->not_empty, &q->mu, &ts) == ETIMEDOUT) break;
        }
    }
    struct kvs_record *r = NULL;
    if (q->count > 0) {
        r = q->ring[q->head];
        q->head = (q->head + 1) % q->cap;
        q->count--;
        pthread_cond_signal(&q->not_full);
    }
    if (q->count == 0) drain_pipe(q);
    pthread_mutex_unlock(&q->mu);
    return r;
}

void kvs_queue_close(struct kvs_queue *q)
{
    pthread_mutex_lock(&q->mu);
    q->closed = true;
    pthread_cond_broadcast(&q->not_empty);
    pthread_cond_broadcast(&q->not_full);
    pthread_mutex_unlock(&q->mu);
    notify(q);
}

uint64_t kvs_queue_dropped(const struct kvs_queue *q)
{
    struct kvs_queue *mq = (struct kvs_queue *)q;
    pthread_mutex_lock(&mq->mu);
    uint64_t d = q->dropped;
    pthread_mutex_unlock(&mq->mu);
    return d;
}

int kvs_queue_fd(const struct kvs_queue *q) { return q->pipe_r; }
