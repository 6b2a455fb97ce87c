/* alloc.h -- the allocator's volatile (DRAM) state, derived from the descriptors and
 * bitmaps by the scan at open (FORMAT.md 4.4-4.5, P1-P5) and never written to the heap.
 *
 * A "run" is 1 or 8 pages serving one size class; its blocks sit on three free lists as
 * in mimalloc: `free` (allocation pops), `local_free` (the owner's frees, no atomics),
 * `thread_free` (other threads' frees, one CAS). Links are u16 block indices in DRAM.
 * Free page spans live in size bins with boundary tags for coalescing (span.c).
 */
#ifndef ALLOC_H
#define ALLOC_H
#include "pmi.h"

#define PMI_NIL 0xFFFFu         /* end of a block list */
#define PMI_NO_PAGE 0xFFFFFFFFu
#define PMI_BINS 40

struct pmi_theap;
struct pmi_run;

/* A reservation: a block taken off the free lists (or a span off the free spans) whose
 * allocation is not durable until the entries it returns are committed. */
struct reservation { uint64_t off; struct pmi_run *run; uint32_t idx; uint32_t span_pages; };

struct pmi_run {
    uint32_t head;              /* page index of the first page */
    uint16_t cls;               /* class index */
    uint16_t pages;             /* pages in the run */
    uint32_t capacity;          /* blocks */
    uint32_t block_size;        /* bytes */
    uint64_t run_off;           /* offset of the run (its bitmap) */
    uint64_t blocks_off;        /* offset of block 0 */
    uint16_t *next;             /* next[i]: link of block i in whichever list holds it */
    uint32_t free_head;         /* owner only */
    uint32_t local_head;        /* owner only */
    _Atomic uint32_t thread_head;   /* any thread: CAS push; owner: exchange-all */
    _Atomic uint32_t used;      /* blocks allocated or reserved */
    _Atomic uint32_t held;      /* freed blocks held back in a limbo (not reusable yet) */
    _Atomic(struct pmi_theap *) owner;  /* NULL: in the class pool */
    int desc_pending;           /* descriptor not durable yet: the next commit carries it */
    struct pmi_run *link;       /* owner's class list, or the pool */
};

/* Memory freed by a commit is held back until every commit that returned before the free
 * is gone (L7): a stale seal could otherwise replay a word into its next owner's data.
 * Freed blocks and spans queue here; a batch is sealed with a snapshot of the commits not
 * yet gone, and released once they are. */
struct pmi_limbo {
    pthread_mutex_t lock;       /* the owner's pushes vs another thread short of pages (steal) */
    struct reservation *e;      /* [0, sealed): the sealed batch; [sealed, n): open */
    uint32_t n, cap, sealed, nsnap;
    uint64_t *snap;             /* the sealed batch's snapshot (redo.c cids), lane_count */
};

struct pmi_theap {              /* one per thread per heap */
    pm_heap *h;
    struct pmi_limbo limbo;
    struct pmi_run *current[PMD_CLASS_COUNT];
    struct pmi_run *owned[PMD_CLASS_COUNT];
    struct pmi_theap *all_next; /* registry, for cleanup */
    int dead;                   /* its heap closed first: only free it (theap_life) */
};

struct pmi_slot {               /* one per page */
    uint32_t head;              /* first page of the run/span this page belongs to */
    uint32_t free_pages;        /* free span head: its length; 0 otherwise */
    uint32_t free_head;         /* free span tail: its head page */
    uint32_t bin_next, bin_prev;/* free span heads: bin list */
    struct pmi_run *run;        /* run heads: the run */
};

struct pmi_alloc {
    uint64_t meta_off;          /* descriptor table */
    uint64_t data_off;          /* page 0 */
    uint32_t page_count;        /* pages inside file_size */
    uint32_t page_max;          /* pages the descriptor table covers */
    struct pmi_slot *slots;     /* [page_max] */
    pthread_mutex_t span_lock;  /* free spans, slots of free pages, growth */
    uint32_t bins[PMI_BINS];    /* heads of free-span lists by floor(log2(pages)) */
    uint64_t free_page_count;
    pthread_mutex_t pool_lock;  /* class pools and the theap registry */
    struct pmi_run *pool[PMD_CLASS_COUNT];
    struct pmi_theap *theaps;
    pthread_key_t theap_key;
    _Atomic int retired;        /* pm_alloc_retire: the thread heaps are gone (close) */
    _Atomic uint64_t live_spans;    /* large objects */
    _Atomic uint64_t span_pages;    /* pages held by large objects */
};


/* alloc.c -- building blocks for callers that compose their own redo commits (store/csrc).
 * reserve/locate append at most 2 entries; after the commit call reserved_committed /
 * released for each, or unreserve if the commit did not happen. */
int pmi_reserve(pm_heap *h, uint64_t size, struct reservation *res, struct pmd_redo_entry *e, uint32_t *n);
void pmi_unreserve(pm_heap *h, const struct reservation *res);
void pmi_reserved_committed(pm_heap *h, const struct reservation *res);
int pmi_locate(pm_heap *h, uint64_t off, struct reservation *res, struct pmd_redo_entry *e, uint32_t *n);
void pmi_released(pm_heap *h, const struct reservation *res);

/* classes.c */
uint32_t pmi_class_size(uint32_t cls);
uint32_t pmi_class_of(uint64_t size);       /* PMD_CLASS_COUNT if size > PMD_CLASS_MAX_SIZE */
uint32_t pmi_class_pages(uint32_t cls);
uint32_t pmi_class_capacity(uint32_t cls);
/* span.c -- callers hold span_lock */
void pmi_span_insert(struct pmi_alloc *a, uint32_t head, uint32_t pages);     /* coalesces */
uint32_t pmi_span_take(struct pmi_alloc *a, uint32_t pages);                  /* best fit, PMI_NO_PAGE */
uint32_t pmi_span_largest(struct pmi_alloc *a);
#endif
