/* pmi.h -- internal state shared across the C files (never seen by Python).
 *
 * The pm_heap handle: the mapping, the persist backend, counters, the trace buffer
 * of the crash simulator and the volatile side of the redo lanes. All stores to the
 * mapping go through pmi_write / pmi_store8 in pmem.c so the simulator sees them.
 */
#ifndef PMI_H
#define PMI_H
#include <stdint.h>
#include <stddef.h>
#include <stdatomic.h>
#include <pthread.h>
#include "pmd.h"
#include "pm_api.h"

#define PMI_LINE 64u

#define PMI_STRIPES 16   /* striped counters: threads add to their own line */

/* Lane states (FORMAT.md 7.1). A commit holds its lane BUSY; a commit whose applied words
 * wait for a later barrier (or whose dependencies are not gone yet) leaves it DEFERRED; a
 * committer that folds those words into its own barrier holds it SETTLING until it has
 * cleared the seal or put it back. */
enum { PMI_LANE_FREE = 0, PMI_LANE_BUSY = 1, PMI_LANE_DEFERRED = 2, PMI_LANE_SETTLING = 3 };

#define PMI_DEFER_MAX 28    /* applied words a commit may leave to the next barrier */

struct pmi_lane {
    _Alignas(64) atomic_int state;      /* PMI_LANE_* */
    uint32_t word_count;                /* words in word_off, valid while DEFERRED / SETTLING */
    _Atomic uint64_t seq;               /* seq of this lane's latest commit, published while BUSY */
    _Atomic uint64_t gone_seq;          /* every commit on this lane with seq <= this is gone (L6) */
    uint32_t dep_count;                 /* commits in deps */
    uint64_t word_off[PMI_DEFER_MAX];   /* its applied words, not yet durable */
    uint64_t deps[PMI_DEFER_MAX];       /* seq << 12 | lane of earlier commits on its words that
                                           must be gone before its seal is cleared (L6) */
};

struct pmi_stripe { _Alignas(64) atomic_uint_fast64_t n; };

struct pm_heap {
    /* read-mostly: shared by every thread, written only at map time or growth */
    int fd;
    uint8_t *base;              /* start of the reserved address range; never moves */
    _Atomic uint64_t map_size;  /* bytes of the file currently mapped */
    uint64_t reserve_size;      /* bytes of address space reserved at map time */
    int backend;                /* PM_BACKEND_MSYNC / FLUSH / NONE */
    int is_dax;                 /* mapped with MAP_SYNC */
    uint64_t id;                /* unique per mapping, names the heap in thread-local caches */
    int tracing;
    uint64_t redo_off;
    uint32_t lane_count;
    uint32_t lane_size;         /* bytes */
    uint32_t lane_capacity;     /* entries per lane */
    struct pmi_lane *lanes;     /* cache-line aligned */
    _Atomic uint64_t *lane_used;    /* bit i: lane i has been taken at least once (read-mostly) */
    _Atomic uint64_t *slots;    /* word slots (redo.c): seq << 12 | lane of the last commit on each hashed line */
    uint32_t slot_bits;         /* log2 of the slot count */
    struct pmi_alloc *alloc;    /* allocator (alloc.c, span.c) */
    struct pmi_journal *jnl;    /* barrier journal (journal.c); NULL when the heap has none */
    /* written rarely; its own line so the hot reads above stay shared */
    _Alignas(64) atomic_int failed_errno;   /* a barrier failed (EIO...): sticky, every later write refuses */
    /* written on every barrier, striped by thread */
    struct pmi_stripe persist_count[PMI_STRIPES];   /* barriers issued */
    /* crash simulator trace (trace.c), tests only */
    _Alignas(64) pthread_mutex_t trace_lock;
    pthread_mutex_t rmw_lock;   /* traced bit ops only: keeps record order = store order */
    uint8_t *trace_buf;
    uint64_t trace_len;         /* bytes used */
    uint64_t trace_cap;         /* bytes allocated */
    void (*fence_hook)(void *); /* called after each traced fence, by its thread (tests) */
    void *fence_hook_arg;
};

/* Event counters for scaling diagnosis, compiled in only with -DPMI_COUNTERS (bench
 * drivers built by hand); the totals go to $PMI_COUNTERS_FILE at exit (pmem.c). */
enum { PMI_CNT_COMMIT, PMI_CNT_ROUND, PMI_CNT_STARVE, PMI_CNT_OFFPAIR, PMI_CNT_ADOPT, PMI_CNT_DEP_CLAIM,
       PMI_CNT_BLOCKED, PMI_CNT_LIMBO_WAIT, PMI_CNT_STEAL, PMI_CNT_LIMBO_STUCK, PMI_CNT_N };
#ifdef PMI_COUNTERS
extern _Atomic uint64_t pmi_count[PMI_CNT_N];
#define PMI_COUNT(i) atomic_fetch_add_explicit(&pmi_count[i], 1, memory_order_relaxed)
#else
#define PMI_COUNT(i) ((void)0)
#endif

/* pmi_thread_idx -- a small per-thread number (round robin at first use). */
uint32_t pmi_thread_idx(void);

/* errno of the last failed system call, per thread */
extern __thread int pmi_errno;

/* A range to make durable as part of one barrier. */
struct pmi_range { uint64_t off; uint64_t size; };

/* pmem.c */
void pmi_write(pm_heap *h, uint64_t off, const void *src, uint64_t size);
void pmi_store8(pm_heap *h, uint64_t off, uint64_t value);
void pmi_rmw8(pm_heap *h, uint64_t off, uint64_t mask, int or);
void pmi_persist_ranges(pm_heap *h, const struct pmi_range *r, size_t n);
void pmi_persist_direct(pm_heap *h, const struct pmi_range *r, size_t n);
static inline int pmi_in_range(pm_heap *h, uint64_t off, uint64_t size) {
    uint64_t m = atomic_load_explicit(&h->map_size, memory_order_acquire);
    return off <= m && size <= m - off;
}
/* pmi_failed -- PM_E_IO (errno set) once a barrier has failed on this heap. */
static inline int pmi_failed(pm_heap *h) {
    int e = atomic_load_explicit(&h->failed_errno, memory_order_relaxed);
    if (!e) return PM_OK;
    pmi_errno = e;
    return PM_E_IO;
}
/* trace.c */
void pmi_trace_write(pm_heap *h, uint64_t off, const void *src, uint64_t size);
void pmi_trace_flush(pm_heap *h, uint64_t off, uint64_t size);
void pmi_trace_fence(pm_heap *h);
void pmi_trace_hook_defer(void);           /* fence hooks wait ... */
void pmi_trace_hook_resume(pm_heap *h);    /* ... until this (the journal's lock is released) */
void pmi_trace_grow(pm_heap *h, uint64_t new_size);
void pmi_trace_free(pm_heap *h);
/* redo.c */
void pmi_redo_free(pm_heap *h);
int pmi_redo_commit(pm_heap *h, const struct pmd_redo_entry *entries, uint32_t count,
                    const struct pmi_range *extra, uint32_t nextra);
int pmi_redo_settle(pm_heap *h, int rounds);
uint32_t pmi_redo_snapshot(pm_heap *h, uint64_t *out);     /* out: lane_count entries */
int pmi_redo_all_gone(pm_heap *h, const uint64_t *snap, uint32_t n);
int pmi_redo_wait_gone(pm_heap *h, const uint64_t *snap, uint32_t n, uint32_t max_rounds);  /* 1: gone */
/* alloc.c */
void pmi_alloc_free(pm_heap *h);
/* journal.c */
int pmi_journal_persist(pm_heap *h, const struct pmi_range *r, size_t n);   /* 0: not journaled */
void pmi_journal_free(pm_heap *h);
#endif
