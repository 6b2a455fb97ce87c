/* pmem.c -- the pmem layer: map the heap file, store into it, make ranges durable.
 *
 * Owns: the address-space reservation (the base never moves, so growth keeps every
 * offset and every reader's view valid), the three persist backends and the barrier
 * counter. Every store to the mapping in the whole C core goes through pmi_write or
 * pmi_store8 here, so the crash simulator (trace.c) records it.
 * Must not: interpret any persistent structure (that is redo.c and Python's business).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cpuid.h>
#include "pmi.h"

#ifndef MAP_SHARED_VALIDATE
#define MAP_SHARED_VALIDATE 0x03
#endif
#ifndef MAP_SYNC
#define MAP_SYNC 0x80000
#endif

__thread int pmi_errno;
static atomic_uint_fast64_t next_heap_id = 1;
static atomic_uint thread_rr;
#ifdef PMI_COUNTERS
#include <stdio.h>
_Atomic uint64_t pmi_count[PMI_CNT_N];
__attribute__((destructor)) static void counters_write(void) {
    static const char *name[PMI_CNT_N] = {"commits", "settle_rounds", "lane_starved", "lane_off_pair", "lanes_adopted",
                                          "dep_lanes_claimed", "lanes_blocked_on_deps", "limbo_waits", "limbo_steals",
                                          "limbo_stuck_drains"};
    const char *path = getenv("PMI_COUNTERS_FILE");
    FILE *f = path ? fopen(path, "a") : NULL;
    if (!f) return;
    for (int i = 0; i < PMI_CNT_N; i++) fprintf(f, "%s%s=%llu", i ? " " : "", name[i], (unsigned long long)pmi_count[i]);
    fprintf(f, "\n");
    fclose(f);
}
#endif

static __thread uint32_t thread_idx = UINT32_MAX;

uint32_t pmi_thread_idx(void) {
    if (thread_idx == UINT32_MAX) thread_idx = atomic_fetch_add(&thread_rr, 1);
    return thread_idx;
}

/* pm_thread_set_idx -- the calling thread's number, before its first commit (it picks the
 * thread's home lanes): the crash tools give their workload threads 0, 1, 2... so a
 * workload takes the same lanes in any process, and replays to the same crash states. */
void pm_thread_set_idx(uint32_t idx) { thread_idx = idx; }

enum { FLUSH_CLWB = 1, FLUSH_CLFLUSHOPT = 2, FLUSH_CLFLUSH = 3 };
static int flush_kind;
static pthread_once_t flush_once = PTHREAD_ONCE_INIT;

static void flush_detect(void) {
    unsigned a, b, c, d;
    flush_kind = FLUSH_CLFLUSH;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
        if (b & (1u << 24)) flush_kind = FLUSH_CLWB;
        else if (b & (1u << 23)) flush_kind = FLUSH_CLFLUSHOPT;
    }
}

const char *pm_flush_kind(void) {
    pthread_once(&flush_once, flush_detect);
    return flush_kind == FLUSH_CLWB ? "clwb" : flush_kind == FLUSH_CLFLUSHOPT ? "clflushopt" : "clflush";
}

int pm_errno(void) { return pmi_errno; }

static int fail_errno(void) {
    pmi_errno = errno;
    return errno == ENOSPC || errno == EDQUOT ? PM_E_NOSPC : errno == ENOMEM ? PM_E_NOMEM : PM_E_IO;
}

/* map_file -- map [off, off+size) of the file at base+off; tries MAP_SYNC first when
 * the flush backend may be used, so a DAX file gets CPU-cache persistence. */
static int map_file(pm_heap *h, uint64_t off, uint64_t size, int try_sync) {
    void *want = h->base + off, *p = MAP_FAILED;
    if (h->backend == PM_BACKEND_PRIVATE) {
        p = mmap(want, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, h->fd, (off_t)off);
        return p == MAP_FAILED ? fail_errno() : PM_OK;
    }
    if (try_sync) {
        p = mmap(want, size, PROT_READ | PROT_WRITE, MAP_SHARED_VALIDATE | MAP_SYNC | MAP_FIXED, h->fd, (off_t)off);
        if (p != MAP_FAILED) h->is_dax = 1;
    }
    if (p == MAP_FAILED) {
        if (h->is_dax && off > 0) return fail_errno();  /* a DAX heap must stay DAX */
        p = mmap(want, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, h->fd, (off_t)off);
    }
    if (p == MAP_FAILED) return fail_errno();
    return PM_OK;
}

/* pm_heap_map -- reserve reserve_size bytes of address space, map map_size bytes of fd.
 * pre: the file is at least map_size bytes; the caller holds the heap's lock. */
int pm_heap_map(int fd, uint64_t map_size, uint64_t reserve_size, int backend, pm_heap **out) {
    if (map_size == 0 || map_size % PMD_OS_PAGE_SIZE || reserve_size < map_size || backend < 0 || backend > 4)
        return PM_E_ARG;
    pm_heap *h = aligned_alloc(64, (sizeof *h + 63) & ~(size_t)63);
    if (!h) return PM_E_NOMEM;
    memset(h, 0, sizeof *h);
    h->id = atomic_fetch_add(&next_heap_id, 1);
    h->fd = fd;
    h->reserve_size = reserve_size;
    pthread_mutex_init(&h->trace_lock, NULL);
    pthread_mutex_init(&h->rmw_lock, NULL);
    void *r = mmap(NULL, reserve_size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED) { int e = fail_errno(); free(h); return e; }
    h->base = r;
    h->backend = backend;   /* map_file needs to know PRIVATE; AUTO is resolved below */
    int rc = map_file(h, 0, map_size, backend == PM_BACKEND_AUTO || backend == PM_BACKEND_FLUSH);
    if (rc) { munmap(r, reserve_size); free(h); return rc; }
    atomic_store(&h->map_size, map_size);
    h->backend = backend != PM_BACKEND_AUTO ? backend : h->is_dax ? PM_BACKEND_FLUSH : PM_BACKEND_MSYNC;
    pthread_once(&flush_once, flush_detect);
    *out = h;
    return PM_OK;
}

/* pm_heap_unmap -- drop the mapping (durable state is untouched) and free the handle. */
void pm_heap_unmap(pm_heap *h) {
    if (!h) return;
    /* the allocator first: a thread exiting this instant may be in its theap's destructor,
     * draining its limbo through barriers on this mapping; pmi_alloc_free waits for it
     * (theap_life) and marks the rest dead, so no destructor touches the heap once unmapped */
    pmi_alloc_free(h);
    munmap(h->base, h->reserve_size);
    pmi_trace_free(h);
    pmi_redo_free(h);
    pmi_journal_free(h);
    pthread_mutex_destroy(&h->trace_lock);
    pthread_mutex_destroy(&h->rmw_lock);
    free(h);
}

/* pm_heap_grow -- extend the file to new_size (blocks allocated, so a full disk fails
 * here with PM_E_NOSPC instead of a SIGBUS later) and map the new tail in place.
 * pre: caller serialises growth; post: offsets below the old size are unchanged. */
int pm_heap_grow(pm_heap *h, uint64_t new_size) {
    uint64_t old = atomic_load(&h->map_size);
    if (new_size <= old || new_size > h->reserve_size || new_size % PMD_OS_PAGE_SIZE) return PM_E_ARG;
    if (h->backend == PM_BACKEND_PRIVATE) return PM_E_ARG;   /* would have to extend the file it must not touch */
    int e = posix_fallocate(h->fd, (off_t)old, (off_t)(new_size - old));
    if (e) { errno = e; return fail_errno(); }
    if (h->backend != PM_BACKEND_NONE && fdatasync(h->fd)) return fail_errno();   /* durable: the new file size */
    if (h->tracing) pmi_trace_grow(h, new_size);
    int rc = map_file(h, old, new_size - old, h->is_dax);
    if (rc) return rc;
    atomic_store_explicit(&h->map_size, new_size, memory_order_release);
    return PM_OK;
}

uint64_t pm_heap_size(pm_heap *h) { return atomic_load(&h->map_size); }
int pm_heap_backend(pm_heap *h) { return h->backend; }
int pm_heap_is_dax(pm_heap *h) { return h->is_dax; }
uint8_t *pm_heap_base(pm_heap *h) { return h->base; }
uint64_t pm_persist_count(pm_heap *h) {
    uint64_t n = 0;
    for (int i = 0; i < PMI_STRIPES; i++) n += atomic_load_explicit(&h->persist_count[i].n, memory_order_relaxed);
    return n;
}
int pm_heap_failed(pm_heap *h) { return atomic_load(&h->failed_errno); }

/* pmi_write -- store size bytes at off (not yet durable). */
void pmi_write(pm_heap *h, uint64_t off, const void *src, uint64_t size) {
    if (h->tracing) pmi_trace_write(h, off, src, size);
    memcpy(h->base + off, src, size);
}

/* pmi_store8 -- one aligned 8-byte store: the power-fail atomic unit. */
void pmi_store8(pm_heap *h, uint64_t off, uint64_t value) {
    if (h->tracing) pmi_trace_write(h, off, &value, 8);
    atomic_store_explicit((_Atomic uint64_t *)(h->base + off), value, memory_order_release);
}

/* pmi_rmw8 -- atomic bit set (or=1) / bit clear (or=0) on one word: commits that touch
 * different bits of the same word (an allocation bitmap) may apply concurrently. */
void pmi_rmw8(pm_heap *h, uint64_t off, uint64_t mask, int or) {
    _Atomic uint64_t *w = (_Atomic uint64_t *)(h->base + off);
    uint64_t v;
    if (h->tracing) {   /* record the resulting word; the mutex keeps record and store in step */
        pthread_mutex_lock(&h->rmw_lock);
        v = or ? atomic_fetch_or(w, mask) | mask : atomic_fetch_and(w, ~mask) & ~mask;
        pmi_trace_write(h, off, &v, 8);
        pthread_mutex_unlock(&h->rmw_lock);
        return;
    }
    if (or) atomic_fetch_or_explicit(w, mask, memory_order_release);
    else atomic_fetch_and_explicit(w, ~mask, memory_order_release);
}

__attribute__((target("clwb"))) static void flush_lines_clwb(uint8_t *p, uint8_t *end) {
    for (; p < end; p += PMI_LINE) __builtin_ia32_clwb(p);
}
__attribute__((target("clflushopt"))) static void flush_lines_clflushopt(uint8_t *p, uint8_t *end) {
    for (; p < end; p += PMI_LINE) __builtin_ia32_clflushopt(p);
}
static void flush_lines_clflush(uint8_t *p, uint8_t *end) {
    for (; p < end; p += PMI_LINE) __builtin_ia32_clflush(p);
}

/* pmi_persist_ranges -- one persist barrier covering all n ranges: when it returns,
 * every byte stored in them before the call is durable (under the backend's model).
 * A heap with a journal on the msync backend appends a copy of the ranges to it
 * (journal.c, FORMAT.md 7.11); otherwise the ranges are written back in place. */
void pmi_persist_ranges(pm_heap *h, const struct pmi_range *r, size_t n) {
    atomic_fetch_add_explicit(&h->persist_count[pmi_thread_idx() % PMI_STRIPES].n, 1, memory_order_relaxed);
    if (h->jnl && pmi_journal_persist(h, r, n)) return;
    pmi_persist_direct(h, r, n);
}

/* written_back -- a range inside one line that an earlier range of this barrier already
 * covered (two words of one commit, or of two commits, often share a line). Writing a
 * line back twice costs twice: on some CPUs the second CLWB waits for the first. */
struct lines_seen { uint64_t line[16]; size_t n; };

static int written_back(struct lines_seen *s, uint64_t off, uint64_t size) {
    uint64_t line = off & ~(uint64_t)(PMI_LINE - 1);
    if (!size || off + size - line > PMI_LINE) return 0;    /* empty, or more than one line */
#ifdef PMSTORE_MUTANT_LINESKIP
    line = off & ~(uint64_t)4095;   /* mutant: a page counts as one line */
#endif
    for (size_t k = 0; k < s->n; k++) if (s->line[k] == line) return 1;
    if (s->n < 16) s->line[s->n++] = line;
    return 0;
}

/* pmi_persist_direct -- write the ranges back in place, one barrier (not counted).
 * msync: MS_SYNC over the OS pages touched, adjacent pages merged into one call.
 * flush: write back every cache line touched (once), then one SFENCE. The trace records
 * the same ranges the flush writes back, so the crash suites check what is skipped. */
void pmi_persist_direct(pm_heap *h, const struct pmi_range *r, size_t n) {
    if (h->tracing || h->backend == PM_BACKEND_FLUSH) {
        struct lines_seen seen;
        seen.n = 0;     /* not `= {0}`: clearing the array costs a rep stos per barrier */
        for (size_t i = 0; i < n; i++) {
            if (written_back(&seen, r[i].off, r[i].size)) continue;
            if (h->tracing) pmi_trace_flush(h, r[i].off, r[i].size);
            if (h->backend != PM_BACKEND_FLUSH) continue;
            uint8_t *p = h->base + (r[i].off & ~(uint64_t)(PMI_LINE - 1)), *end = h->base + r[i].off + r[i].size;
            if (flush_kind == FLUSH_CLWB) flush_lines_clwb(p, end);
            else if (flush_kind == FLUSH_CLFLUSHOPT) flush_lines_clflushopt(p, end);
            else flush_lines_clflush(p, end);
        }
        if (h->tracing) pmi_trace_fence(h);
    }
    if (h->backend == PM_BACKEND_FLUSH) {
        __builtin_ia32_sfence();    /* durable: every line written back above */
    } else if (h->backend == PM_BACKEND_MSYNC && n) {
        /* One msync over the smallest page range covering every range: MS_SYNC writes back
         * only the dirty pages in it, and one call waits for the device once (Linux runs
         * it as an fsync of that file range). Extra pages made durable are harmless. */
        uint64_t lo = UINT64_MAX, hi = 0;
        for (size_t i = 0; i < n; i++) {
            if (r[i].off < lo) lo = r[i].off;
            if (r[i].off + r[i].size > hi) hi = r[i].off + r[i].size;
        }
        lo &= ~(uint64_t)(PMD_OS_PAGE_SIZE - 1);
        hi = (hi + PMD_OS_PAGE_SIZE - 1) & ~(uint64_t)(PMD_OS_PAGE_SIZE - 1);
        if (hi > lo && msync(h->base + lo, hi - lo, MS_SYNC) && !atomic_load(&h->failed_errno))
            atomic_store(&h->failed_errno, errno ? errno : EIO);   /* sticky: durability is unknown */
    }
}

int pm_write(pm_heap *h, uint64_t off, const void *src, uint64_t size) {
    if (!pmi_in_range(h, off, size)) return PM_E_RANGE;
    pmi_write(h, off, src, size);
    return PM_OK;
}

int pm_store8(pm_heap *h, uint64_t off, uint64_t value) {
    if (off % 8 || !pmi_in_range(h, off, 8)) return PM_E_RANGE;
    pmi_store8(h, off, value);
    return PM_OK;
}

/* pm_load8 -- one aligned 8-byte load; returns 0 for an invalid offset (the Python
 * side checks offsets before calling). */
uint64_t pm_load8(pm_heap *h, uint64_t off) {
    if (off % 8 || !pmi_in_range(h, off, 8)) return 0;
    return atomic_load_explicit((_Atomic uint64_t *)(h->base + off), memory_order_acquire);
}

int pm_read(pm_heap *h, uint64_t off, void *dst, uint64_t size) {
    if (!pmi_in_range(h, off, size)) return PM_E_RANGE;
    memcpy(dst, h->base + off, size);
    return PM_OK;
}
