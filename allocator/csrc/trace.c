/* trace.c -- recording for the crash simulator (recovery/crashsim.py replays it).
 *
 * When tracing is on, every store to the mapping and every persist barrier appends a
 * record: WRITE(off, size, bytes), FLUSH(off, size), FENCE, MARK(id), GROW(new size).
 * From that log
 * the simulator materialises any file a power failure could leave behind.
 * Record layout (little-endian): u32 kind, u32 size, u64 off, then size bytes for
 * WRITE, padded to 8. Tests only: one mutex serialises recording.
 */
#include <stdlib.h>
#include <string.h>
#include "pmi.h"

static void append(pm_heap *h, uint32_t kind, uint64_t off, uint64_t size, const void *data) {
    uint64_t body = data ? (size + 7) & ~7ull : 0, need = 16 + body;
    pthread_mutex_lock(&h->trace_lock);
    if (h->trace_len + need > h->trace_cap) {
        uint64_t cap = h->trace_cap ? h->trace_cap : 1 << 20;
        while (cap < h->trace_len + need) cap *= 2;
        uint8_t *nb = realloc(h->trace_buf, cap);
        if (!nb) abort();   /* tests only; a partial trace would give false results */
        h->trace_buf = nb; h->trace_cap = cap;
    }
    uint8_t *p = h->trace_buf + h->trace_len;
    uint32_t k = kind, s = (uint32_t)size;
    memcpy(p, &k, 4); memcpy(p + 4, &s, 4); memcpy(p + 8, &off, 8);
    if (data) { memcpy(p + 16, data, size); memset(p + 16 + size, 0, body - size); }
    h->trace_len += need;
    pthread_mutex_unlock(&h->trace_lock);
}

void pmi_trace_write(pm_heap *h, uint64_t off, const void *src, uint64_t size) {
    /* one record holds at most 4 GiB - 1; split larger writes */
    const uint8_t *s = src;
    while (size) {
        uint64_t n = size > (1u << 30) ? (1u << 30) : size;
        append(h, PM_TRACE_WRITE, off, n, s);
        off += n; s += n; size -= n;
    }
}
void pmi_trace_flush(pm_heap *h, uint64_t off, uint64_t size) { append(h, PM_TRACE_FLUSH, off, size, NULL); }
/* Inside the journal's lock a fence's hook waits for the unlock (pmi_trace_hook_resume):
 * a thread held there would stall every other barrier. */
static __thread int hook_defer, hook_pending;

void pmi_trace_fence(pm_heap *h) {
    append(h, PM_TRACE_FENCE, 0, 0, NULL);
    if (!h->fence_hook) return;
    if (hook_defer) hook_pending = 1;
    else h->fence_hook(h->fence_hook_arg);      /* after the trace lock: it may block this thread */
}

void pmi_trace_hook_defer(void) { hook_defer++; }

void pmi_trace_hook_resume(pm_heap *h) {
    if (--hook_defer || !hook_pending) return;
    hook_pending = 0;
    if (h->fence_hook) h->fence_hook(h->fence_hook_arg);
}
void pmi_trace_grow(pm_heap *h, uint64_t new_size) { append(h, PM_TRACE_GROW, new_size, 0, NULL); }

int pm_trace_start(pm_heap *h) { h->tracing = 1; return PM_OK; }

/* pm_trace_set_fence_hook -- fn(arg) runs after each traced fence, on the thread that
 * issued it, outside the trace lock (and, for a journaled barrier, once the journal's
 * lock is released): a crash workload holds one thread inside its barrier while another
 * commits, to stage an interleaving that sequential steps never reach
 * (recovery/crashtest.py, L6). NULL removes it. Tracing only. */
void pm_trace_set_fence_hook(pm_heap *h, void (*fn)(void *), void *arg) {
    h->fence_hook_arg = arg;
    h->fence_hook = fn;
}
int pm_trace_mark(pm_heap *h, uint64_t id) { if (h->tracing) append(h, PM_TRACE_MARK, id, 0, NULL); return PM_OK; }
uint64_t pm_trace_len(pm_heap *h) { return h->trace_len; }

/* pm_trace_take -- copy out up to cap bytes of the log and empty it; returns bytes copied. */
uint64_t pm_trace_take(pm_heap *h, void *dst, uint64_t cap) {
    pthread_mutex_lock(&h->trace_lock);
    uint64_t n = h->trace_len < cap ? h->trace_len : cap;
    memcpy(dst, h->trace_buf, n);
    memmove(h->trace_buf, h->trace_buf + n, h->trace_len - n);
    h->trace_len -= n;
    pthread_mutex_unlock(&h->trace_lock);
    return n;
}

void pmi_trace_free(pm_heap *h) { free(h->trace_buf); h->trace_buf = NULL; h->trace_len = h->trace_cap = 0; }
