/* alloc.c -- the allocator: runs of size-classed blocks, thread heaps, large spans,
 * crash-consistent publish, transactions, the recovery scan and statistics.
 *
 * FORMAT.md 4.4-4.5 and 7.5-7.7; invariants P1-P5. Authoritative state is the page
 * descriptors and the run bitmaps; everything in struct pmi_alloc is derived and
 * rebuilt by pm_alloc_init. An allocation reaches the heap only through a redo commit
 * that also writes the word publishing it (alloc_into), so a crash cannot leak it.
 * Fast path: pop from the thread's current run of the class; all else is _generic.
 * Must not: store to the mapping except through pmem.c (and redo.c's apply).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include "alloc.h"

#define MAX_SNAP 4096   /* lanes (redo.c MAX_LANES) */
#define WAIT_ROUNDS 10000   /* settle rounds a limbo waits, then gives up: the memory stays held (a DRAM leak) */

static uint64_t page_off(struct pmi_alloc *a, uint32_t p) { return a->data_off + (uint64_t)p * PMD_PAGE_SIZE; }
static uint64_t desc_off(struct pmi_alloc *a, uint32_t p) { return a->meta_off + (uint64_t)p * PMD_DESC_SIZE; }

static uint64_t desc_run(uint32_t cls, uint32_t pages) {
    return PMD_DESC_RUN | ((uint64_t)cls << PMD_DESC_CLASS_SHIFT) | ((uint64_t)pages << PMD_DESC_PAGES_SHIFT);
}
static uint64_t desc_span(uint32_t pages) { return PMD_DESC_SPAN | ((uint64_t)pages << PMD_DESC_PAGES_SHIFT); }
static uint32_t desc_pages(uint64_t d) { return (uint32_t)(d >> PMD_DESC_PAGES_SHIFT); }

static struct pmd_redo_entry ent(uint32_t op, uint64_t off, uint64_t value) {
    return (struct pmd_redo_entry){off | op, value};
}

/* ------------------------------------------------------------------ thread heaps */

/* A thread's exit (its theap's TLS destructor) can race the close of the heap that made
 * the theap: Python's Thread.join returns before the OS thread has run its destructors.
 * theap_life orders the two. Close marks every theap dead under it; a destructor that runs
 * after that only frees its theap, and the key's deletion keeps any later one from running. */
static pthread_mutex_t theap_life = PTHREAD_MUTEX_INITIALIZER;

static void limbo_drain(pm_heap *h, struct pmi_theap *t);
#define LIMBO_BATCH 64      /* frees per batch: one snapshot and one check each */
#define LIMBO_STUCK (4 * LIMBO_BATCH)  /* held frees past which a dry thread settles (run_find_generic) */
static int limbo_steal_all(pm_heap *h);

static void theap_free(struct pmi_theap *t) {
    pthread_mutex_destroy(&t->limbo.lock);
    free(t->limbo.e);
    free(t->limbo.snap);
    free(t);
}
static int limbo_poll(pm_heap *h, struct pmi_limbo *l);

/* The calling thread's theap of the heap it used last: the key's lookup costs more than
 * the rest of a fast-path pop. Keyed by the heap's id, which no other heap ever gets, so
 * an entry left by a closed heap (its theap freed) is never matched again; one
 * being abandoned (this thread exits) is forgotten first, as the key's value is. */
static __thread struct { uint64_t heap_id; struct pmi_theap *t; } theap_last;

static void theap_abandon(void *p) {
    struct pmi_theap *t = p;
    if (theap_last.t == t) theap_last.heap_id = 0, theap_last.t = NULL;
    pthread_mutex_lock(&theap_life);
    if (!t->dead) limbo_drain(t->h, t);     /* its held-back frees become reusable by others */
    if (!t->dead) {
        struct pmi_alloc *a = t->h->alloc;
        pthread_mutex_lock(&a->pool_lock);
        for (uint32_t c = 0; c < PMD_CLASS_COUNT; c++) {
            struct pmi_run *r = t->owned[c];
            while (r) {
                struct pmi_run *nx = r->link;
                atomic_store(&r->owner, NULL);
                r->link = a->pool[c];
                a->pool[c] = r;
                r = nx;
            }
        }
        for (struct pmi_theap **pp = &a->theaps; *pp; pp = &(*pp)->all_next)
            if (*pp == t) { *pp = t->all_next; break; }
        pthread_mutex_unlock(&a->pool_lock);
    }
    pthread_mutex_unlock(&theap_life);
    theap_free(t);
}

static struct pmi_theap *theap_get(pm_heap *h) {
    struct pmi_alloc *a = h->alloc;
    if (atomic_load_explicit(&a->retired, memory_order_relaxed)) return NULL;   /* closing (pm_alloc_retire) */
    if (theap_last.heap_id == h->id) return theap_last.t;
    struct pmi_theap *t = pthread_getspecific(a->theap_key);
    if (t) { theap_last.heap_id = h->id; theap_last.t = t; return t; }
    t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->h = h;
    pthread_mutex_init(&t->limbo.lock, NULL);
    pthread_mutex_lock(&a->pool_lock);
    t->all_next = a->theaps;
    a->theaps = t;
    pthread_mutex_unlock(&a->pool_lock);
    pthread_setspecific(a->theap_key, t);
    theap_last.heap_id = h->id; theap_last.t = t;
    return t;
}

/* ------------------------------------------------------------------ runs */

static struct pmi_run *run_new(struct pmi_alloc *a, uint32_t head, uint32_t cls) {
    struct pmi_run *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->cls = (uint16_t)cls;
    r->pages = (uint16_t)pmi_class_pages(cls);
    r->capacity = pmi_class_capacity(cls);
    r->block_size = pmi_class_size(cls);
    r->next = malloc(r->capacity * sizeof *r->next);
    if (!r->next) { free(r); return NULL; }
    r->head = head;
    r->run_off = page_off(a, head);
    r->blocks_off = r->run_off + PMD_RUN_BITMAP_SIZE;
    r->free_head = r->local_head = PMI_NIL;
    atomic_store(&r->thread_head, PMI_NIL);
    for (uint32_t i = 0; i < r->pages; i++) a->slots[head + i].head = head;
    a->slots[head].run = r;
    return r;
}

/* run_build_free -- put every block whose bitmap bit is clear on the free list. */
static uint32_t run_build_free(pm_heap *h, struct pmi_run *r) {
    const uint64_t *bm = (const uint64_t *)(h->base + r->run_off);
    uint32_t used = 0;
    r->free_head = PMI_NIL;
    for (uint32_t i = r->capacity; i-- > 0;) {
        if (bm[i / 64] >> (i % 64) & 1) { used++; continue; }
        r->next[i] = (uint16_t)r->free_head;
        r->free_head = i;
    }
    atomic_store(&r->used, used);
    return used;
}

/* run_collect -- refill `free` from `local_free`, else from `thread_free`. Owner only. */
static int run_collect(struct pmi_run *r) {
    if (r->free_head != PMI_NIL) return 1;
    if (r->local_head != PMI_NIL) { r->free_head = r->local_head; r->local_head = PMI_NIL; return 1; }
    if (atomic_load_explicit(&r->thread_head, memory_order_relaxed) != PMI_NIL) {
        r->free_head = atomic_exchange_explicit(&r->thread_head, PMI_NIL, memory_order_acquire);
        return 1;
    }
    return 0;
}

/* take_run_if_empty -- unlink *pp into got[] if its run has no allocated block. */
static int take_run_if_empty(struct pmi_run **pp, struct pmi_run **got, uint32_t *n) {
    struct pmi_run *r = *pp;
    if (atomic_load(&r->used) != 0 || atomic_load(&r->held) != 0) return 0;
    *pp = r->link;
    got[(*n)++] = r;
    return 1;
}

/* runs_reclaim -- slow path when no free pages are left: the pages of empty runs (in the
 * class pools and this thread's own) go back to the free spans, their descriptors cleared
 * by one redo commit. Other threads' runs are left alone (only an owner allocates).
 * Returns the pages reclaimed. */
static uint32_t runs_reclaim(pm_heap *h, struct pmi_theap *t) {
    struct pmi_alloc *a = h->alloc;
    struct pmi_run *got[64];
    uint32_t n = 0;
    pthread_mutex_lock(&a->pool_lock);
    for (uint32_t c = 0; c < PMD_CLASS_COUNT && n < 64; c++)
        for (struct pmi_run **pp = &a->pool[c]; *pp && n < 64;)
            if (!take_run_if_empty(pp, got, &n)) pp = &(*pp)->link;
    pthread_mutex_unlock(&a->pool_lock);
    for (uint32_t c = 0; t && c < PMD_CLASS_COUNT && n < 64; c++)
        for (struct pmi_run **pp = &t->owned[c]; *pp && n < 64;) {
            struct pmi_run *r = *pp;
            if (take_run_if_empty(pp, got, &n)) { if (t->current[c] == r) t->current[c] = NULL; }
            else pp = &r->link;
        }
    if (!n) return 0;
    struct pmd_redo_entry e[64];
    for (uint32_t k = 0; k < n; k++) e[k] = ent(PMD_REDO_OP_SET, desc_off(a, got[k]->head), 0);
    if (pmi_redo_commit(h, e, n, NULL, 0)) {     /* durable: these pages are free (P1) */
        pthread_mutex_lock(&a->pool_lock);       /* failed (EIO): keep the runs as they were */
        for (uint32_t k = 0; k < n; k++) {
            atomic_store(&got[k]->owner, NULL);
            got[k]->link = a->pool[got[k]->cls];
            a->pool[got[k]->cls] = got[k];
        }
        pthread_mutex_unlock(&a->pool_lock);
        return 0;
    }
    uint32_t pages = 0;
    pthread_mutex_lock(&a->span_lock);
    for (uint32_t k = 0; k < n; k++) {
        pages += got[k]->pages;
        pmi_span_insert(a, got[k]->head, got[k]->pages);
        free(got[k]->next);
        free(got[k]);
    }
    pthread_mutex_unlock(&a->span_lock);
    return pages;
}

/* span_back -- free pages back to the free spans (coalescing). */
static void span_back(struct pmi_alloc *a, uint32_t head, uint32_t pages) {
    pthread_mutex_lock(&a->span_lock);
    pmi_span_insert(a, head, pages);
    pthread_mutex_unlock(&a->span_lock);
}

static uint32_t pages_take(struct pmi_alloc *a, uint32_t pages) {
    pthread_mutex_lock(&a->span_lock);
    uint32_t head = pmi_span_take(a, pages);
    if (head != PMI_NO_PAGE)
        for (uint32_t i = 0; i < pages; i++) a->slots[head + i].head = head;
    pthread_mutex_unlock(&a->span_lock);
    return head;
}

/* take_pages -- pages from the free spans; if there are none, reclaim empty runs, then
 * release this thread's held-back frees (spans, and blocks that may empty a run). */
static uint32_t take_pages(pm_heap *h, uint32_t pages) {
    struct pmi_alloc *a = h->alloc;
    uint32_t head = pages_take(a, pages);
    if (head != PMI_NO_PAGE) return head;
    struct pmi_theap *t = pthread_getspecific(a->theap_key);
    if (runs_reclaim(h, t) && (head = pages_take(a, pages)) != PMI_NO_PAGE) return head;
    if (t && t->limbo.n) {
        limbo_drain(h, t);
        runs_reclaim(h, t);
        if ((head = pages_take(a, pages)) != PMI_NO_PAGE) return head;
    }
    if (!limbo_steal_all(h)) return PMI_NO_PAGE;   /* other threads' held-back frees */
    runs_reclaim(h, t);
    return pages_take(a, pages);
}

/* run_format -- a new run of class cls from free pages: its bitmap is zeroed durably while
 * no descriptor names it; the descriptor rides the run's first allocation commit. */
static int run_format(pm_heap *h, struct pmi_theap *t, uint32_t cls, struct pmi_run **out) {
    struct pmi_alloc *a = h->alloc;
    uint32_t pages = pmi_class_pages(cls);
    uint32_t head = take_pages(h, pages);
    if (head == PMI_NO_PAGE) return PM_E_NEED_GROW;
    struct pmi_run *r = run_new(a, head, cls);
    if (!r) {
        span_back(a, head, pages);
        return PM_E_NOMEM;
    }
    static const uint8_t zero[PMD_RUN_BITMAP_SIZE];
    pmi_write(h, r->run_off, zero, sizeof zero);
    struct pmi_range rg = {r->run_off, sizeof zero};
    pmi_persist_ranges(h, &rg, 1);  /* durable: the new run's empty bitmap, before any descriptor names it (P2) */
    run_build_free(h, r);
    r->desc_pending = 1;
    atomic_store(&r->owner, t);
    r->link = t->owned[cls];
    t->owned[cls] = r;
    *out = r;
    return PM_OK;
}

/* run_find_generic -- the slow path: a run of class cls with a free block for thread t. */
static int run_find_generic(pm_heap *h, struct pmi_theap *t, uint32_t cls, struct pmi_run **out) {
    struct pmi_alloc *a = h->alloc;
    struct pmi_run *r = t->current[cls];
    if (r && run_collect(r)) { *out = r; return PM_OK; }
    for (r = t->owned[cls]; r; r = r->link)
        if (run_collect(r)) { t->current[cls] = r; *out = r; return PM_OK; }
    for (;;) {     /* adopt a run from the class pool (recovered or abandoned) */
        pthread_mutex_lock(&a->pool_lock);
        r = a->pool[cls];
        if (r) a->pool[cls] = r->link;
        pthread_mutex_unlock(&a->pool_lock);
        if (!r) break;
        atomic_store(&r->owner, t);
        r->link = t->owned[cls];
        t->owned[cls] = r;
        if (run_collect(r)) { t->current[cls] = r; *out = r; return PM_OK; }
    }
    if (t->limbo.n) {   /* held-back frees first, if they are ready (L7); seal the rest */
        pthread_mutex_lock(&t->limbo.lock);
        int released = limbo_poll(h, &t->limbo);
        uint32_t held = t->limbo.n;
        pthread_mutex_unlock(&t->limbo.lock);
        /* A limbo this full is not draining by itself: the commits it waits for are on
         * threads that are not running (Python threads waiting for the GIL while this one
         * holds it). Settle them rather than format runs that only this thread can use. */
        if (!released && held >= LIMBO_STUCK) {
            PMI_COUNT(PMI_CNT_LIMBO_STUCK);
            limbo_drain(h, t);
            released = 1;
        }
        if (released)
            for (r = t->owned[cls]; r; r = r->link)
                if (run_collect(r)) { t->current[cls] = r; *out = r; return PM_OK; }
    }
    int rc = run_format(h, t, cls, &r);
    if (rc == PM_E_NEED_GROW)   /* take_pages drained this thread's held-back frees: one may fit */
        for (r = t->owned[cls]; r; r = r->link)
            if (run_collect(r)) { t->current[cls] = r; *out = r; return PM_OK; }
    if (rc) return rc;
    t->current[cls] = r;
    *out = r;
    return PM_OK;
}

/* block_release -- a block back on a list: local if we own its run. */
static void block_release(pm_heap *h, struct pmi_run *r, uint32_t idx) {
    struct pmi_theap *t = pthread_getspecific(h->alloc->theap_key);
    if (t && atomic_load_explicit(&r->owner, memory_order_relaxed) == t) {
        r->next[idx] = (uint16_t)r->local_head;
        r->local_head = idx;
    } else {
        uint32_t old = atomic_load_explicit(&r->thread_head, memory_order_relaxed);
        do r->next[idx] = (uint16_t)old;
        while (!atomic_compare_exchange_weak_explicit(&r->thread_head, &old, idx, memory_order_release,
                                                      memory_order_relaxed));
    }
}

/* ------------------------------------------------------------------ limbo (L7) */

/* release_now -- freed memory becomes reusable: a block on its run's list, a span back
 * to the free spans. */
static void release_now(pm_heap *h, const struct reservation *res) {
    struct pmi_alloc *a = h->alloc;
    if (res->run) {
        block_release(h, res->run, res->idx);
        atomic_fetch_sub_explicit(&res->run->held, 1, memory_order_release);
        return;
    }
    span_back(a, res->idx, res->span_pages);
}

/* limbo_release_sealed -- release the sealed batch if its snapshot's commits are gone. */
static int limbo_release_sealed(pm_heap *h, struct pmi_limbo *l) {
    if (!l->sealed || !pmi_redo_all_gone(h, l->snap, l->nsnap)) return 0;
    for (uint32_t k = 0; k < l->sealed; k++) release_now(h, &l->e[k]);
    memmove(l->e, l->e + l->sealed, (l->n - l->sealed) * sizeof *l->e);
    l->n -= l->sealed;
    l->sealed = 0;
    return 1;
}

/* limbo_seal -- the open entries become the sealed batch: snapshot the commits not gone
 * yet (every commit that returned before these frees is among them or gone). */
static void limbo_seal(pm_heap *h, struct pmi_limbo *l) {
    if (l->sealed || !l->n) return;
    if (!l->snap && !(l->snap = malloc(h->lane_count * sizeof *l->snap))) return;
    l->nsnap = pmi_redo_snapshot(h, l->snap);
    l->sealed = l->n;
}

/* limbo_poll -- release the sealed batch if it is ready, then seal the open entries.
 * 1 if it released any. */
static int limbo_poll(pm_heap *h, struct pmi_limbo *l) {
    int released = limbo_release_sealed(h, l);
    limbo_seal(h, l);
    return released;
}

/* limbo_drain -- release everything this thread holds, settling other lanes as needed
 * (slow path: memory is short, stats, or the thread is exiting). If the commits never go
 * the blocks stay held: a DRAM leak that the next open undoes. */
static void limbo_drain(pm_heap *h, struct pmi_theap *t) {
    struct pmi_limbo *l = &t->limbo;
    for (int k = 0; k < 3; k++) {
        pthread_mutex_lock(&l->lock);
        limbo_poll(h, l);
        int more = l->sealed != 0;
        pthread_mutex_unlock(&l->lock);
        if (!more || !pmi_redo_wait_gone(h, l->snap, l->nsnap, WAIT_ROUNDS)) return;
    }
}

/* limbo_steal_all -- a thread short of pages takes every thread's held-back frees, waits
 * until the commits before them are gone, and releases them. 1 if it released any. */
static int limbo_steal_all(pm_heap *h) {
    struct pmi_alloc *a = h->alloc;
    struct reservation *got = NULL;
    uint32_t n = 0, cap = 0;
    pthread_mutex_lock(&a->pool_lock);
    for (struct pmi_theap *t = a->theaps; t; t = t->all_next) {
        struct pmi_limbo *l = &t->limbo;
        pthread_mutex_lock(&l->lock);
        if (l->n && n + l->n > cap) {
            uint32_t c = 2 * (n + l->n);
            struct reservation *g = realloc(got, c * sizeof *g);
            if (g) got = g, cap = c;
        }
        if (l->n && n + l->n <= cap) {
            memcpy(got + n, l->e, l->n * sizeof *got);
            n += l->n;
            l->n = l->sealed = 0;
        }
        pthread_mutex_unlock(&l->lock);
    }
    pthread_mutex_unlock(&a->pool_lock);
    if (!n) { free(got); return 0; }
    PMI_COUNT(PMI_CNT_STEAL);
    uint64_t *snap = malloc(h->lane_count * sizeof *snap);
    if (snap && pmi_redo_wait_gone(h, snap, pmi_redo_snapshot(h, snap), WAIT_ROUNDS))
        for (uint32_t k = 0; k < n; k++) release_now(h, &got[k]);
    /* else they stay held (DRAM leak until the next open): never reused unsafely */
    free(snap);
    free(got);
    return 1;
}

/* limbo_push -- a block or span freed by a commit that returned: hold it back (L7). */
static void limbo_push(pm_heap *h, const struct reservation *res) {
    struct pmi_theap *t = theap_get(h);
    struct pmi_limbo *l = t ? &t->limbo : NULL;
    if (res->run) {     /* the block is free as far as stats go; `held` keeps its run alive */
        atomic_fetch_add_explicit(&res->run->held, 1, memory_order_relaxed);
        atomic_fetch_sub_explicit(&res->run->used, 1, memory_order_relaxed);
    }
    if (l) pthread_mutex_lock(&l->lock);
    if (l && l->n == l->cap) {
        uint32_t cap = l->cap ? 2 * l->cap : 2 * LIMBO_BATCH;
        struct reservation *e = realloc(l->e, cap * sizeof *e);
        if (e) l->e = e, l->cap = cap;
    }
    if (!l || l->n == l->cap) {     /* no DRAM to hold it: wait until it is safe, then release */
        if (l) pthread_mutex_unlock(&l->lock);
        uint64_t snap[MAX_SNAP];
        if (h->lane_count <= MAX_SNAP && pmi_redo_wait_gone(h, snap, pmi_redo_snapshot(h, snap), WAIT_ROUNDS)) release_now(h, res);
        return;
    }
    l->e[l->n++] = *res;
    if (l->n - l->sealed >= LIMBO_BATCH) limbo_poll(h, l);
    pthread_mutex_unlock(&l->lock);
}

/* ------------------------------------------------------------------ reserve / release */


int pmi_reserve(pm_heap *h, uint64_t size, struct reservation *res, struct pmd_redo_entry *e, uint32_t *n) {
    struct pmi_alloc *a = h->alloc;
    if (size == 0) return PM_E_ARG;
    uint32_t cls = pmi_class_of(size);
    if (__builtin_expect(cls < PMD_CLASS_COUNT, 1)) {
        struct pmi_theap *t = theap_get(h);
        if (!t) return PM_E_NOMEM;
        struct pmi_run *r = t->current[cls];
        if (__builtin_expect(!r || r->free_head == PMI_NIL, 0)) {
            int rc = run_find_generic(h, t, cls, &r);
            if (rc) return rc;
        }
        uint32_t idx = r->free_head;            /* fast path: pop */
        r->free_head = r->next[idx];
        atomic_fetch_add_explicit(&r->used, 1, memory_order_relaxed);
        *res = (struct reservation){r->blocks_off + (uint64_t)idx * r->block_size, r, idx, 0};
        e[(*n)++] = ent(PMD_REDO_OP_OR, r->run_off + idx / 64 * 8, 1ull << (idx % 64));
        if (r->desc_pending) e[(*n)++] = ent(PMD_REDO_OP_SET, desc_off(a, r->head), desc_run(r->cls, r->pages));
        return PM_OK;
    }
    uint64_t pages64 = (size + PMD_PAGE_SIZE - 1) / PMD_PAGE_SIZE;
    if (pages64 > a->page_max) return PM_E_NEED_GROW;
    uint32_t pages = (uint32_t)pages64;
    uint32_t head = take_pages(h, pages);
    if (head == PMI_NO_PAGE) return PM_E_NEED_GROW;
    *res = (struct reservation){page_off(a, head), NULL, head, pages};
    e[(*n)++] = ent(PMD_REDO_OP_SET, desc_off(a, head), desc_span(pages));
    return PM_OK;
}

/* unreserve -- give back a reservation whose commit did not happen. */
void pmi_unreserve(pm_heap *h, const struct reservation *res) {
    struct pmi_alloc *a = h->alloc;
    if (res->run) {     /* never committed: nothing wrote its words, reusable at once */
        block_release(h, res->run, res->idx);
        atomic_fetch_sub_explicit(&res->run->used, 1, memory_order_relaxed);
        return;
    }
    span_back(a, res->idx, res->span_pages);
}

void pmi_reserved_committed(pm_heap *h, const struct reservation *res) {
    if (res->run) res->run->desc_pending = 0;
    else atomic_fetch_add(&h->alloc->live_spans, 1), atomic_fetch_add(&h->alloc->span_pages, res->span_pages);
}

/* locate -- the allocated block that starts at off (P4); its free entries in e. */
int pmi_locate(pm_heap *h, uint64_t off, struct reservation *res, struct pmd_redo_entry *e, uint32_t *n) {
    struct pmi_alloc *a = h->alloc;
    if (off < a->data_off || off >= page_off(a, a->page_count)) return PM_E_NOT_ALLOCATED;
    uint32_t p = (uint32_t)((off - a->data_off) / PMD_PAGE_SIZE);
    uint32_t head = a->slots[p].head;
    if (head == PMI_NO_PAGE || head > p) return PM_E_NOT_ALLOCATED;
    uint64_t d = pm_load8(h, desc_off(a, head));
    uint32_t kind = d & PMD_DESC_KIND_MASK;
    if (kind == PMD_DESC_SPAN) {
        if (off != page_off(a, head) || a->slots[head].run) return PM_E_NOT_ALLOCATED;
        *res = (struct reservation){off, NULL, head, desc_pages(d)};
        e[(*n)++] = ent(PMD_REDO_OP_SET, desc_off(a, head), 0);
        return PM_OK;
    }
    struct pmi_run *r = a->slots[head].run;
    if (kind != PMD_DESC_RUN || !r || off < r->blocks_off) return PM_E_NOT_ALLOCATED;
    uint64_t rel = off - r->blocks_off;
    if (rel % r->block_size || rel / r->block_size >= r->capacity) return PM_E_NOT_ALLOCATED;
    uint32_t idx = (uint32_t)(rel / r->block_size);
    uint64_t word_off = r->run_off + idx / 64 * 8, bit = 1ull << (idx % 64);
    if (!(pm_load8(h, word_off) & bit)) return PM_E_NOT_ALLOCATED;   /* double free */
    *res = (struct reservation){off, r, idx, 0};
    e[(*n)++] = ent(PMD_REDO_OP_ANDNOT, word_off, bit);
    return PM_OK;
}

/* released -- after the commit that freed it, the block or span is free; it becomes
 * reusable once the commits before it are gone (limbo, L7). */
void pmi_released(pm_heap *h, const struct reservation *res) {
    struct pmi_alloc *a = h->alloc;
    if (!res->run) {
        atomic_fetch_sub(&a->live_spans, 1);
        atomic_fetch_sub(&a->span_pages, res->span_pages);
    }
#ifdef PMSTORE_MUTANT_NOLIMBO
    /* mutant: freed memory is reusable at once, while a stale seal may still replay into it (L7) */
    if (res->run) atomic_fetch_add(&res->run->held, 1), atomic_fetch_sub(&res->run->used, 1);
    release_now(h, res);
    return;
#endif
    limbo_push(h, res);
}

static int dest_is_valid(pm_heap *h, uint64_t dest) {
    struct pmi_alloc *a = h->alloc;
    return dest % 8 == 0 && (dest == PMD_ROOT_OFF || (dest >= a->data_off && pmi_in_range(h, dest, 8)));
}

/* ------------------------------------------------------------------ public API */

/* pm_alloc_into -- allocate size bytes and publish the block's offset in the word at dest
 * in one redo commit (1 barrier); returns the offset, or a negative PM_E_* code.
 * dest = 0: allocate unpublished (the caller must publish it, or it leaks at a crash). */
int64_t pm_alloc_into(pm_heap *h, uint64_t dest, uint64_t size) {
    if (!h->alloc) return PM_E_ARG;
    if (dest && !dest_is_valid(h, dest)) return PM_E_RANGE;
    struct pmd_redo_entry e[3];
    uint32_t n = 0;
    struct reservation res;
    int rc = pmi_reserve(h, size, &res, e, &n);
    if (rc) return rc;
    if (dest) e[n++] = ent(PMD_REDO_OP_SET, dest, res.off);
    rc = pmi_redo_commit(h, e, n, NULL, 0);
    if (rc) { pmi_unreserve(h, &res); return rc; }
    pmi_reserved_committed(h, &res);
    return (int64_t)res.off;
}

/* free_block -- one commit: free the block at off and, if dest, clear the word at dest. */
static int free_block(pm_heap *h, uint64_t off, uint64_t dest) {
    struct pmd_redo_entry e[2];
    uint32_t n = 0;
    struct reservation res;
    int rc = pmi_locate(h, off, &res, e, &n);
    if (rc) return rc;
    if (dest) e[n++] = ent(PMD_REDO_OP_SET, dest, 0);
    rc = pmi_redo_commit(h, e, n, NULL, 0);
    if (rc) return rc;
    pmi_released(h, &res);
    return PM_OK;
}

/* pm_free_from -- free the block whose offset the word at dest holds and clear the word,
 * in one redo commit. */
int pm_free_from(pm_heap *h, uint64_t dest) {
    if (!h->alloc) return PM_E_ARG;
    if (!dest_is_valid(h, dest)) return PM_E_RANGE;
    return free_block(h, pm_load8(h, dest), dest);
}

/* pm_free -- free the block at off (which nothing published, or whose publisher the
 * caller clears itself). */
int pm_free(pm_heap *h, uint64_t off) {
    if (!h->alloc) return PM_E_ARG;
    return free_block(h, off, 0);
}

/* pm_block_size -- usable bytes of the allocated block at off, or a negative PM_E_* code. */
int64_t pm_block_size(pm_heap *h, uint64_t off) {
    if (!h->alloc) return PM_E_ARG;
    struct pmd_redo_entry e[1];
    uint32_t n = 0;
    struct reservation res;
    int rc = pmi_locate(h, off, &res, e, &n);
    if (rc) return rc;
    return res.run ? (int64_t)res.run->block_size : (int64_t)res.span_pages * PMD_PAGE_SIZE;
}

/* Transactions: Python collects reservations and entries, then commits them at once.
 * A pm_tx_slot is opaque to Python (it only stores and passes them back). */
int pm_tx_reserve(pm_heap *h, uint64_t size, struct pm_tx_slot *slot, struct pmd_redo_entry *e, uint32_t *n) {
    if (!h->alloc) return PM_E_ARG;
    struct reservation res;
    *n = 0;
    int rc = pmi_reserve(h, size, &res, e, n);
    if (rc) return rc;
    *slot = (struct pm_tx_slot){res.off, res.run, res.idx, res.span_pages};
    return PM_OK;
}

int pm_tx_locate(pm_heap *h, uint64_t off, struct pm_tx_slot *slot, struct pmd_redo_entry *e, uint32_t *n) {
    if (!h->alloc) return PM_E_ARG;
    struct reservation res;
    *n = 0;
    int rc = pmi_locate(h, off, &res, e, n);
    if (rc) return rc;
    *slot = (struct pm_tx_slot){res.off, res.run, res.idx, res.span_pages};
    return PM_OK;
}

static struct reservation from_slot(const struct pm_tx_slot *s) {
    return (struct reservation){s->off, s->run, s->idx, s->span_pages};
}

void pm_tx_abort(pm_heap *h, const struct pm_tx_slot *reserved, uint32_t nres) {
    for (uint32_t k = 0; k < nres; k++) { struct reservation x = from_slot(&reserved[k]); pmi_unreserve(h, &x); }
}

/* pm_tx_commit -- the transaction's `data` ranges (new objects' bytes) made durable by a
 * barrier of their own, then one redo commit of its entries, with no CHECK over the data.
 * A CHECKed commit point (as the store's) costs one barrier less, but its data must then
 * never change while its seal may replay (L8), and a transaction's caller may change its
 * objects at once, from any thread, even through writes the log never sees (Heap.write):
 * a commit still DEFERRED would fail its CHECK and be dropped with its words. Then frees
 * become reusable. On failure every reservation is given back. */
int pm_tx_commit(pm_heap *h, const struct pmd_redo_entry *e, uint32_t n, const uint64_t *data, uint32_t ndata,
                 const struct pm_tx_slot *reserved, uint32_t nres, const struct pm_tx_slot *freed, uint32_t nfree) {
    for (uint32_t i = 0; i < n; i++) {     /* the root, descriptors (ours) or data words only */
        uint64_t off = e[i].off_op & ~(uint64_t)PMD_REDO_OP_MASK;
        if ((e[i].off_op & PMD_REDO_OP_MASK) > PMD_REDO_OP_ANDNOT || !pmi_in_range(h, off, 8) ||
            (off != PMD_ROOT_OFF && off < h->alloc->meta_off)) {
            pm_tx_abort(h, reserved, nres);
            return PM_E_RANGE;
        }
    }
    struct pmi_range local[16], *r = ndata <= 16 ? local : malloc(ndata * sizeof *r);
    int rc = r ? PM_OK : PM_E_NOMEM;
    for (uint32_t i = 0; r && i < ndata; i++) {
        r[i].off = data[2 * i]; r[i].size = data[2 * i + 1];
        if (!pmi_in_range(h, r[i].off, r[i].size)) rc = PM_E_RANGE;
    }
#ifdef PMSTORE_MUTANT_TXCHECK
    if (!rc) rc = pmi_redo_commit(h, e, n, r, ndata);  /* mutant: the data CHECKed in the commit point */
#else
    if (!rc && ndata) {
        pmi_persist_ranges(h, r, ndata);    /* durable: the new objects' bytes, in blocks no commit has
                                               allocated yet (a crash before the commit point frees them) */
        rc = pmi_failed(h);
    }
    if (!rc) rc = pmi_redo_commit(h, e, n, NULL, 0);
#endif
    if (r && r != local) free(r);
    for (uint32_t k = 0; k < nres; k++) {
        struct reservation x = from_slot(&reserved[k]);
        if (rc) pmi_unreserve(h, &x); else pmi_reserved_committed(h, &x);
    }
    if (rc) return rc;
    for (uint32_t k = 0; k < nfree; k++) { struct reservation x = from_slot(&freed[k]); pmi_released(h, &x); }
    return PM_OK;
}


/* ------------------------------------------------------------------ open, growth, stats */

/* alloc_retire -- no thread heap is used again: the caller's own is freed, and another
 * live thread's stays allocated (dead) for a destructor that may be running this instant:
 * a small leak, never a use after free. Waits for a destructor running now (theap_life);
 * a later thread exit runs none (the key is gone), so none drains its limbo through
 * barriers any more. Idempotent. */
static void alloc_retire(struct pmi_alloc *a) {
    pthread_mutex_lock(&theap_life);
    if (!atomic_load(&a->retired)) {
        atomic_store(&a->retired, 1);
        struct pmi_theap *mine = pthread_getspecific(a->theap_key);
        pthread_key_delete(a->theap_key);
        pthread_mutex_lock(&a->pool_lock);
        for (struct pmi_theap *t = a->theaps, *nx; t; t = nx) {
            nx = t->all_next;
            if (t == mine) theap_free(t);
            else t->dead = 1;
        }
        a->theaps = NULL;
        pthread_mutex_unlock(&a->pool_lock);
    }
    pthread_mutex_unlock(&theap_life);
}

/* pm_alloc_retire -- close's first step (HeapFile.mark_clean): after it, no thread's exit
 * writes to the heap. Else an exit between close's last checkpoint and the unmap could
 * drain a limbo through barriers, leaving a journal record of the current epoch in a
 * heap marked clean (J3; about 1 close in 10 right after three writer threads exited).
 * Allocation and free fail with PM_E_NOMEM from here on. */
void pm_alloc_retire(pm_heap *h) {
    if (h->alloc) alloc_retire(h->alloc);
}

static void alloc_destroy(struct pmi_alloc *a) {
    if (!a) return;
    alloc_retire(a);
    if (a->slots)
        for (uint32_t p = 0; p < a->page_max; p++)
            if (a->slots[p].run && a->slots[p].head == p) { free(a->slots[p].run->next); free(a->slots[p].run); }
    free(a->slots);
    pthread_mutex_destroy(&a->span_lock);
    pthread_mutex_destroy(&a->pool_lock);
    free(a);
}

void pmi_alloc_free(pm_heap *h) { alloc_destroy(h->alloc); h->alloc = NULL; }

/* pm_alloc_init -- the recovery scan: derive runs, spans and free spans from the
 * descriptors and bitmaps (after redo replay). Refuses a heap that breaks P1-P3 and
 * reports the offending page in out->bad_page. */
int pm_alloc_init(pm_heap *h, uint64_t meta_off, uint64_t data_off, uint64_t page_max, struct pm_scan_report *out) {
    memset(out, 0, sizeof *out);
    out->bad_page = PMI_NO_PAGE;
    uint64_t size = pm_heap_size(h);
    if (h->alloc || data_off % PMD_PAGE_SIZE || size < data_off || page_max > UINT32_MAX - 1 ||
        meta_off + page_max * PMD_DESC_SIZE > data_off)
        return PM_E_ARG;
    struct pmi_alloc *a = calloc(1, sizeof *a);
    if (!a) return PM_E_NOMEM;
    a->meta_off = meta_off;
    a->data_off = data_off;
    a->page_max = (uint32_t)page_max;
    a->page_count = (uint32_t)((size - data_off) / PMD_PAGE_SIZE);
    if (a->page_count > a->page_max) a->page_count = a->page_max;
    a->slots = malloc((size_t)a->page_max * sizeof *a->slots);
    pthread_mutex_init(&a->span_lock, NULL);
    pthread_mutex_init(&a->pool_lock, NULL);
    if (!a->slots || pthread_key_create(&a->theap_key, theap_abandon)) { free(a->slots); free(a); return PM_E_NOMEM; }
    for (uint32_t i = 0; i < a->page_max; i++)
        a->slots[i] = (struct pmi_slot){PMI_NO_PAGE, 0, PMI_NO_PAGE, PMI_NO_PAGE, PMI_NO_PAGE, NULL};
    for (int b = 0; b < PMI_BINS; b++) a->bins[b] = PMI_NO_PAGE;
    h->alloc = a;
    int rc = PM_OK;
    uint32_t free_start = PMI_NO_PAGE;
    for (uint32_t p = 0; p < a->page_count;) {
        uint64_t d = pm_load8(h, desc_off(a, p));
        uint32_t kind = d & PMD_DESC_KIND_MASK, pages = desc_pages(d);
        out->pages_scanned++;
        if (kind == PMD_DESC_FREE) {
            if (d) { rc = PM_E_CORRUPT; out->bad_page = p; out->bad_invariant = 1; break; }   /* P1 */
            if (free_start == PMI_NO_PAGE) free_start = p;
            p++;
            continue;
        }
        if (free_start != PMI_NO_PAGE) { pmi_span_insert(a, free_start, p - free_start); free_start = PMI_NO_PAGE; }
        uint32_t cls = (uint32_t)(d >> PMD_DESC_CLASS_SHIFT) & 255;
        int ok = (kind == PMD_DESC_RUN && cls < PMD_CLASS_COUNT && pages == pmi_class_pages(cls)) ||
                 (kind == PMD_DESC_SPAN && pages >= 1 && (d >> PMD_DESC_CLASS_SHIFT & 255) == 0);
        if (!ok || (d >> 48) || (uint64_t)p + pages > a->page_count) {
            rc = PM_E_CORRUPT; out->bad_page = p; out->bad_invariant = 1; break;                   /* P1 */
        }
        if (kind == PMD_DESC_SPAN) {
            for (uint32_t i = 0; i < pages; i++) a->slots[p + i].head = p;
            out->spans++;
            out->live_blocks++;
            atomic_fetch_add(&a->live_spans, 1);
            atomic_fetch_add(&a->span_pages, pages);
        } else {
            struct pmi_run *r = run_new(a, p, cls);
            if (!r) { rc = PM_E_NOMEM; break; }
            const uint64_t *bm = (const uint64_t *)(h->base + r->run_off);
            for (uint32_t w = r->capacity / 64; w < PMD_RUN_BITMAP_SIZE / 8; w++) {
                uint64_t beyond = w == r->capacity / 64 ? ~0ull << (r->capacity % 64) : ~0ull;
                if (bm[w] & beyond) { rc = PM_E_CORRUPT; out->bad_page = p; out->bad_invariant = 2; break; }  /* P2 */
            }
            if (rc) break;
            out->live_blocks += run_build_free(h, r);
            out->runs++;
            r->link = a->pool[cls];
            a->pool[cls] = r;
        }
        p += pages;
    }
    if (!rc && free_start != PMI_NO_PAGE) pmi_span_insert(a, free_start, a->page_count - free_start);
    if (rc) pmi_alloc_free(h);
    return rc;
}

/* pm_alloc_add_pages -- after the file grew to new_size (and the header says so), its new
 * pages become a free span. */
int pm_alloc_add_pages(pm_heap *h, uint64_t new_size) {
    struct pmi_alloc *a = h->alloc;
    if (!a || new_size > pm_heap_size(h)) return PM_E_ARG;
    uint64_t pages = (new_size - a->data_off) / PMD_PAGE_SIZE;
    if (pages > a->page_max) pages = a->page_max;
    pthread_mutex_lock(&a->span_lock);
    if (pages > a->page_count) {
        uint32_t old = a->page_count;
        a->page_count = (uint32_t)pages;
        pmi_span_insert(a, old, (uint32_t)pages - old);
    }
    pthread_mutex_unlock(&a->span_lock);
    return PM_OK;
}

/* pm_alloc_stats -- a snapshot (not atomic across threads; counts settle when idle). The
 * caller's held-back frees are released first, so its own frees show as free space. */
int pm_alloc_stats(pm_heap *h, struct pm_alloc_stats *out, struct pm_class_stats *cls) {
    struct pmi_alloc *a = h->alloc;
    if (!a) return PM_E_ARG;
    struct pmi_theap *t = pthread_getspecific(a->theap_key);
    if (t && t->limbo.n) limbo_drain(h, t);
    memset(out, 0, sizeof *out);
    memset(cls, 0, PMD_CLASS_COUNT * sizeof *cls);
    pthread_mutex_lock(&a->span_lock);
    out->page_count = a->page_count;
    out->free_pages = a->free_page_count;
    out->largest_free_span_pages = pmi_span_largest(a);
    for (uint32_t p = 0; p < a->page_count; p++) {
        struct pmi_run *r = a->slots[p].run;
        if (!r || a->slots[p].head != p) continue;
        uint32_t used = atomic_load(&r->used);
        cls[r->cls].runs++;
        cls[r->cls].pages += r->pages;
        cls[r->cls].blocks += r->capacity;
        cls[r->cls].live_blocks += used;
        out->run_pages += r->pages;
        out->live_blocks += used;
        out->live_block_bytes += (uint64_t)used * r->block_size;
    }
    pthread_mutex_unlock(&a->span_lock);
    out->spans = atomic_load(&a->live_spans);
    out->span_pages = atomic_load(&a->span_pages);
    out->live_blocks += out->spans;
    out->live_block_bytes += out->span_pages * PMD_PAGE_SIZE;
    return PM_OK;
}
