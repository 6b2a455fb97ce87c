/* pm_api.h -- the functions Python calls (the cffi cdef is read from this file).
 *
 * Concurrency contract (the GIL is released during every call):
 *  - A pm_heap may be used from many threads at once, except pm_heap_unmap, which the
 *    caller runs alone, and pm_heap_grow, which the caller serialises against itself.
 *  - Reads (pm_read, pm_load8) take no lock; pm_load8 / pm_store8 are single aligned
 *    8-byte accesses, so a reader sees the old or the new word, never a mix.
 *  - pm_redo_commit takes a free lane (one CAS) and locks the word slots of its words
 *    (in slot order, for nanoseconds); it claims another lane's DEFERRED commit (one CAS)
 *    only when it depends on it (a shared word or line), and never waits for a lane. Two
 *    commits that write the same word must be ordered by the caller (the second starts
 *    after the first returns). Replay order relies on it (FORMAT.md 7.1, L4).
 *  - Trace recording (crash simulator) serialises writers on one mutex; tests only.
 * Every function that can fail returns 0 or a negative PM_E* code; pm_errno() gives
 * the errno of the last failing system call in this thread.
 */
#ifndef PM_API_H
#define PM_API_H
#include <stddef.h>
#include <stdint.h>
#include "pmd.h"

#define PM_OK 0
#define PM_E_IO -1          /* a system call failed; see pm_errno() */
#define PM_E_NOMEM -2       /* out of DRAM */
#define PM_E_NOSPC -3       /* the file system is full */
#define PM_E_RANGE -4       /* offset or size outside the mapped heap, or misaligned */
#define PM_E_TOO_BIG -5     /* more redo entries than a lane holds */
#define PM_E_BAD_OP -6      /* unknown redo op */
#define PM_E_CORRUPT -7     /* a sealed redo lane holds an impossible entry */
#define PM_E_ARG -8         /* invalid argument */
#define PM_E_NEED_GROW -9   /* no free pages: the caller grows the heap and retries */
#define PM_E_NOT_ALLOCATED -10  /* not the start of an allocated block (or freed twice) */

#define PM_BACKEND_AUTO 0   /* flush on a DAX mapping (MAP_SYNC), else msync */
#define PM_BACKEND_MSYNC 1
#define PM_BACKEND_FLUSH 2
#define PM_BACKEND_NONE 3   /* tests only: barriers are counted, nothing is flushed */
#define PM_BACKEND_PRIVATE 4 /* copy-on-write mapping: writes never reach the file (crash simulator, inspection) */

#define PM_TRACE_WRITE 1
#define PM_TRACE_FLUSH 2
#define PM_TRACE_FENCE 3
#define PM_TRACE_MARK 4
#define PM_TRACE_GROW 5     /* the file grew to `off` bytes, zero-filled, size durable */

typedef struct pm_heap pm_heap;

struct pm_recover_report {
    uint32_t lanes_replayed;    /* sealed lanes applied */
    uint32_t lanes_discarded;   /* lanes with a torn or stale seal */
    uint64_t entries_applied;
    uint64_t max_seq;           /* highest sequence number seen in a sealed lane */
};

/* pmem.c */
int pm_heap_map(int fd, uint64_t map_size, uint64_t reserve_size, int backend, pm_heap **out);
void pm_heap_unmap(pm_heap *h);
int pm_heap_grow(pm_heap *h, uint64_t new_size);
uint64_t pm_heap_size(pm_heap *h);
int pm_heap_backend(pm_heap *h);
int pm_heap_is_dax(pm_heap *h);
uint8_t *pm_heap_base(pm_heap *h);
uint64_t pm_persist_count(pm_heap *h);
int pm_heap_failed(pm_heap *h);     /* errno of a failed barrier (sticky), 0 if none */
int pm_write(pm_heap *h, uint64_t off, const void *src, uint64_t size);
int pm_write_persist(pm_heap *h, uint64_t off, const void *src, uint64_t size);
int pm_persist(pm_heap *h, uint64_t off, uint64_t size);
int pm_store8(pm_heap *h, uint64_t off, uint64_t value);
uint64_t pm_load8(pm_heap *h, uint64_t off);
int pm_read(pm_heap *h, uint64_t off, void *dst, uint64_t size);
int pm_errno(void);
const char *pm_flush_kind(void);
uint32_t pm_crc32c(uint32_t crc, const void *buf, size_t len);
uint32_t pm_crc32c_sw(uint32_t crc, const void *buf, size_t len);
int pm_crc32c_is_hw(void);

/* trace.c -- crash simulator recording */
int pm_trace_start(pm_heap *h);
int pm_trace_mark(pm_heap *h, uint64_t id);
void pm_trace_set_fence_hook(pm_heap *h, void (*fn)(void *), void *arg);
void pm_thread_set_idx(uint32_t idx);
uint64_t pm_trace_len(pm_heap *h);
uint64_t pm_trace_take(pm_heap *h, void *dst, uint64_t cap);

struct pm_scan_report {
    uint64_t pages_scanned;     /* descriptors read */
    uint64_t runs;              /* class runs found */
    uint64_t spans;             /* large objects found */
    uint64_t live_blocks;       /* allocated blocks, spans included */
    uint32_t bad_page;          /* on PM_E_CORRUPT: the offending page index */
    uint32_t bad_invariant;     /* on PM_E_CORRUPT: 1 = P1, 2 = P2 */
};

struct pm_alloc_stats {
    uint64_t page_count;        /* pages inside file_size */
    uint64_t free_pages;        /* pages in free spans */
    uint64_t largest_free_span_pages;
    uint64_t run_pages;         /* pages held by class runs */
    uint64_t span_pages;        /* pages held by large objects */
    uint64_t spans;             /* large objects */
    uint64_t live_blocks;       /* allocated blocks, spans included */
    uint64_t live_block_bytes;  /* their usable bytes */
};

struct pm_class_stats {
    uint64_t runs;
    uint64_t pages;
    uint64_t blocks;            /* capacity */
    uint64_t live_blocks;
};

struct pm_tx_slot {
    uint64_t off;               /* the block */
    void *run;                  /* opaque */
    uint32_t idx;
    uint32_t span_pages;
};

/* classes.c */
uint32_t pm_class_size(uint32_t cls);
uint32_t pm_class_pages(uint32_t cls);
uint32_t pm_class_capacity(uint32_t cls);

/* alloc.c */
int pm_alloc_init(pm_heap *h, uint64_t meta_off, uint64_t data_off, uint64_t page_max, struct pm_scan_report *out);
int pm_alloc_add_pages(pm_heap *h, uint64_t new_size);
int64_t pm_alloc_into(pm_heap *h, uint64_t dest, uint64_t size);
int pm_free_from(pm_heap *h, uint64_t dest);
int pm_free(pm_heap *h, uint64_t off);
int64_t pm_block_size(pm_heap *h, uint64_t off);
int pm_tx_reserve(pm_heap *h, uint64_t size, struct pm_tx_slot *slot, struct pmd_redo_entry *e, uint32_t *n);
int pm_tx_locate(pm_heap *h, uint64_t off, struct pm_tx_slot *slot, struct pmd_redo_entry *e, uint32_t *n);
int pm_tx_commit(pm_heap *h, const struct pmd_redo_entry *e, uint32_t n, const uint64_t *data, uint32_t ndata,
                 const struct pm_tx_slot *reserved, uint32_t nres, const struct pm_tx_slot *freed, uint32_t nfree);
void pm_tx_abort(pm_heap *h, const struct pm_tx_slot *reserved, uint32_t nres);
int pm_alloc_stats(pm_heap *h, struct pm_alloc_stats *out, struct pm_class_stats *cls);
void pm_alloc_retire(pm_heap *h);

/* redo.c */
int pm_redo_init(pm_heap *h, uint64_t redo_off, uint32_t lane_count, uint32_t lane_size);
uint32_t pm_redo_capacity(pm_heap *h);
int pm_redo_commit(pm_heap *h, const struct pmd_redo_entry *entries, uint32_t count);
int pm_redo_recover(pm_heap *h, struct pm_recover_report *out);
int pm_redo_quiesce(pm_heap *h);   /* every commit's words durable, every lane empty (close) */

/* journal.c: the barrier journal (FORMAT.md 4.8, 7.11) */
struct pm_journal_report {
    uint64_t records;           /* records replayed at open */
    uint64_t bytes;             /* bytes of those records */
    uint64_t bad_off;           /* PM_E_CORRUPT: the record with impossible ranges (J2) */
};
struct pm_journal_stats {
    uint32_t in_use;            /* barriers append to the journal */
    uint32_t reserved;
    uint64_t records;           /* appended since open */
    uint64_t bytes;
    uint64_t checkpoints;       /* since open (the one at open not counted) */
    uint64_t epoch;
    uint64_t dirty_pages;       /* distinct heap pages journaled since the last checkpoint */
};
int pm_journal_init(pm_heap *h, uint64_t off, uint64_t size);
int pm_journal_recover(pm_heap *h, struct pm_journal_report *out);
int pm_journal_checkpoint(pm_heap *h);
void pm_journal_stats(pm_heap *h, struct pm_journal_stats *out);

#endif
