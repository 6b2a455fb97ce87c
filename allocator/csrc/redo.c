/* redo.c -- redo lanes: commit a list of 8-byte word updates atomically.
 *
 * FORMAT.md 4.3 and 7.1-7.2; invariants L1-L5. A commit costs two
 * persist barriers: (1) entries + seal (+ CHECKed data), the commit point; (2) the applied words. The
 * lane is invalidated by a plain store that the next commit point of any lane makes
 * durable, so a stale seal never outlives a later commit that depends on it.
 * pmi_redo_apply is the one apply function: commit and recovery both call it.
 * Must not: store to the mapping except through pmem.c.
 */
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "pmi.h"

#define MAX_LANES 4096
#define CHECK_SIZE_MAX ((1ull << 29) - 1)   /* bytes one CHECK entry covers */

static __thread uint32_t my_lane = UINT32_MAX;  /* lane this thread used last; MAX = none yet */

/* Per thread: for one heap, the inval_seq of each other lane that this thread's own
 * barriers already made durable, so it flushes each foreign invalidation once (L4)
 * without writing any other thread's cache line. */
static __thread struct { uint64_t heap_id; uint32_t n; uint64_t *seen; } tl_inval;

static uint64_t *seen_for(pm_heap *h) {
    if (tl_inval.heap_id == h->id && tl_inval.n == h->lane_count) return tl_inval.seen;
    uint64_t *s = calloc(h->lane_count, sizeof *s);
    if (!s) return NULL;    /* no cache: flush every pending invalidation, always safe */
    free(tl_inval.seen);
    tl_inval.seen = s; tl_inval.n = h->lane_count; tl_inval.heap_id = h->id;
    return s;
}

static uint64_t lane_off(pm_heap *h, uint32_t i) { return h->redo_off + (uint64_t)i * h->lane_size; }

/* pm_redo_init -- attach the volatile lane state; call once after mapping. */
int pm_redo_init(pm_heap *h, uint64_t redo_off, uint32_t lane_count, uint32_t lane_size) {
    if (lane_count == 0 || lane_count > MAX_LANES || lane_size < 4096 || lane_size % 4096 ||
        redo_off % 4096 || !pmi_in_range(h, redo_off, (uint64_t)lane_count * lane_size))
        return PM_E_ARG;
    h->lanes = aligned_alloc(64, lane_count * sizeof *h->lanes);
    if (!h->lanes) return PM_E_NOMEM;
    memset(h->lanes, 0, lane_count * sizeof *h->lanes);
    h->redo_off = redo_off;
    h->lane_count = lane_count;
    h->lane_size = lane_size;
    h->lane_capacity = (lane_size - PMD_LANE_HDR_SIZE) / PMD_REDO_ENTRY_SIZE;
    return PM_OK;
}

uint32_t pm_redo_capacity(pm_heap *h) { return h->lane_capacity; }

void pmi_redo_free(pm_heap *h) { free(h->lanes); h->lanes = NULL; }

/* seal_crc -- L3: CRC32C over (lane index, seq, entry count, entries). */
static uint32_t seal_crc(uint32_t lane, uint64_t seq, uint32_t count, const struct pmd_redo_entry *e) {
    uint64_t pre[2] = {((uint64_t)count << 32) | lane, seq};
    uint32_t c = pm_crc32c(0, pre, sizeof pre);
    return pm_crc32c(c, e, (size_t)count * sizeof *e);
}

static int entry_is_valid(pm_heap *h, const struct pmd_redo_entry *e) {
    uint64_t op = e->off_op & PMD_REDO_OP_MASK, off = e->off_op & ~(uint64_t)PMD_REDO_OP_MASK;
    uint64_t redo_end = h->redo_off + (uint64_t)h->lane_count * h->lane_size;
    uint64_t size = 8;
    if (op == PMD_REDO_OP_CHECK) off += e->value >> 61, size = (e->value >> 32) & CHECK_SIZE_MAX;
    return op <= PMD_REDO_OP_CHECK && off >= PMD_ROOT_OFF && (off < h->redo_off || off >= redo_end) &&
           pmi_in_range(h, off, size);
}

/* check_holds -- L5: a CHECK entry's range still has the CRC the commit recorded.
 * CHECK value: bits 0-31 CRC32C, 32-60 size, 61-63 start - the entry's 8-aligned offset. */
static int check_holds(pm_heap *h, const struct pmd_redo_entry *e) {
    uint64_t off = (e->off_op & ~(uint64_t)PMD_REDO_OP_MASK) + (e->value >> 61);
    return pm_crc32c(0, h->base + off, (e->value >> 32) & CHECK_SIZE_MAX) == (uint32_t)e->value;
}

/* pmi_redo_apply -- the one apply function: perform the entries with 8-byte stores, then
 * one barrier. Idempotent: entries are absolute sets and bit set/clear (L2). */
static void pmi_redo_apply(pm_heap *h, const struct pmd_redo_entry *e, uint32_t n) {
#ifdef PMSTORE_MUTANT_NOAPPLYFENCE
    for (uint32_t i = 0; i < n; i++) {   /* mutant: the applied words are never made durable here */
        uint64_t op = e[i].off_op & PMD_REDO_OP_MASK, off = e[i].off_op & ~(uint64_t)PMD_REDO_OP_MASK;
        if (op == PMD_REDO_OP_SET) pmi_store8(h, off, e[i].value);
        else if (op != PMD_REDO_OP_CHECK) pmi_rmw8(h, off, e[i].value, op == PMD_REDO_OP_OR);
    }
    return;
#endif
    struct pmi_range local[32], *r = n <= 32 ? local : malloc(n * sizeof *r);
    for (uint32_t i = 0; i < n; i++) {
        uint64_t op = e[i].off_op & PMD_REDO_OP_MASK, off = e[i].off_op & ~(uint64_t)PMD_REDO_OP_MASK;
        if (op == PMD_REDO_OP_SET) pmi_store8(h, off, e[i].value);
        else if (op != PMD_REDO_OP_CHECK) pmi_rmw8(h, off, e[i].value, op == PMD_REDO_OP_OR);
        if (r) r[i].off = off, r[i].size = 8;     /* a CHECK's first word: harmless to flush */
    }
    if (r) {
        pmi_persist_ranges(h, r, n);    /* durable: every word of the commit (step 4 ends) */
        if (r != local) free(r);
    } else {
        /* no DRAM for the range list: persist each word on its own */
        for (uint32_t i = 0; i < n; i++) {
            struct pmi_range one = {e[i].off_op & ~(uint64_t)PMD_REDO_OP_MASK, 8};
            pmi_persist_ranges(h, &one, 1);  /* durable: this applied word */
        }
    }
}

static uint32_t lane_acquire(pm_heap *h) {
    if (my_lane == UINT32_MAX) my_lane = pmi_thread_idx();
    uint32_t n = h->lane_count, i = my_lane % n;
    for (uint32_t spins = 0;; spins++) {
        for (uint32_t k = 0; k < n; k++, i = (i + 1) % n) {
            int z = 0;
            if (atomic_load_explicit(&h->lanes[i].busy, memory_order_relaxed) == 0 &&
                atomic_compare_exchange_strong(&h->lanes[i].busy, &z, 1)) {
                my_lane = i;
                return i;
            }
        }
        if (spins > 4) sched_yield();
    }
}

/* pm_redo_commit -- make all count updates durable atomically (FORMAT.md 7.1).
 * pre: entries target 8-aligned words inside the heap, past the headers;
 * post: on PM_OK every update is applied and durable. */
int pm_redo_commit(pm_heap *h, const struct pmd_redo_entry *entries, uint32_t count) {
    for (uint32_t i = 0; i < count; i++)
        if (!entry_is_valid(h, &entries[i]))
            return (entries[i].off_op & PMD_REDO_OP_MASK) > PMD_REDO_OP_CHECK ? PM_E_BAD_OP : PM_E_RANGE;
    return pmi_redo_commit(h, entries, count, NULL, 0);
}

/* pending_invalidations -- append the seal words of other lanes whose invalidation this
 * thread has not yet made durable (at most cap - *nr); remember them (up to 16) so the
 * thread-local cache can be updated once the barrier completes. */
static void pending_invalidations(pm_heap *h, uint32_t own, struct pmi_range *r, size_t *nr, size_t cap,
                                  uint64_t *snap, uint32_t *snap_lane, size_t *ns) {
#ifdef PMSTORE_MUTANT_NOINVAL
    return;     /* mutant: earlier lanes' invalidations are never made durable */
#endif
    const uint64_t *seen = seen_for(h);
    for (uint32_t i = 0; i < h->lane_count && *nr < cap; i++) {
        uint64_t s = atomic_load_explicit(&h->lanes[i].inval_seq, memory_order_acquire);
        if (!s || i == own || (seen && seen[i] == s)) continue;
        r[*nr].off = lane_off(h, i); r[*nr].size = 8; (*nr)++;
        if (*ns < 16) snap[*ns] = s, snap_lane[*ns] = i, (*ns)++;
    }
}

/* next_seq -- a commit sequence number: CLOCK_MONOTONIC in ns, and above the lane's last.
 * A commit that starts after another returned reads the clock after that one did (and
 * two barriers later), so its seq is larger (L4) -- without a shared counter. Recovery
 * empties every lane, so a clock that restarts at boot never meets an older seq. */
static int seq_clock_ok;                 /* the clock resolves 100 ns or better */
static atomic_uint_fast64_t seq_counter;  /* fallback: a shared counter */
static pthread_once_t seq_once = PTHREAD_ONCE_INIT;

static void seq_init(void) {
    struct timespec res;
    seq_clock_ok = clock_getres(CLOCK_MONOTONIC, &res) == 0 && res.tv_sec == 0 && res.tv_nsec <= 100;
    atomic_store(&seq_counter, 1);
}

static uint64_t next_seq(struct pmi_lane *l) {
    pthread_once(&seq_once, seq_init);
    if (!seq_clock_ok) return atomic_fetch_add(&seq_counter, 1);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    l->last_seq = now > l->last_seq ? now : l->last_seq + 1;
    return l->last_seq;
}

static int redo_commit_log(pm_heap *h, const struct pmd_redo_entry *entries, uint32_t count,
                           const struct pmi_range *extra, uint32_t nextra);

/* pmi_redo_commit -- the commit protocol. `extra` ranges (data the entries publish, e.g.
 * a new object's bytes) become durable in the same commit-point barrier; the log carries
 * a CHECK entry (size, CRC32C) for each, so recovery replays the commit only if its data
 * reached the media too (L5). pre: entries validated by the caller. */
int pmi_redo_commit(pm_heap *h, const struct pmd_redo_entry *entries, uint32_t count,
                    const struct pmi_range *extra, uint32_t nextra) {
    if (!nextra || !count) return redo_commit_log(h, entries, count, extra, nextra);
    uint32_t nchecks = 0;
    for (uint32_t i = 0; i < nextra; i++) nchecks += (uint32_t)((extra[i].size + CHECK_SIZE_MAX - 1) / CHECK_SIZE_MAX);
    if ((uint64_t)count + nchecks > h->lane_capacity) return PM_E_TOO_BIG;
    struct pmd_redo_entry local[64], *e = count + nchecks <= 64 ? local : malloc((count + nchecks) * sizeof *e);
    if (!e) return PM_E_NOMEM;
    memcpy(e, entries, count * sizeof *e);
    uint32_t n = count;
    for (uint32_t i = 0; i < nextra; i++)
        for (uint64_t off = extra[i].off, left = extra[i].size; left; ) {
            uint64_t part = left > CHECK_SIZE_MAX ? CHECK_SIZE_MAX : left;
            uint32_t crc = pm_crc32c(0, h->base + off, part);
            e[n++] = (struct pmd_redo_entry){(off & ~7ull) | PMD_REDO_OP_CHECK,
                                             ((off & 7) << 61) | (part << 32) | crc};
            off += part; left -= part;
        }
    int rc = redo_commit_log(h, e, n, extra, nextra);
    if (e != local) free(e);
    return rc;
}

static int redo_commit_log(pm_heap *h, const struct pmd_redo_entry *entries, uint32_t count,
                           const struct pmi_range *extra, uint32_t nextra) {
    if (count == 0) {
        if (nextra) pmi_persist_ranges(h, extra, nextra);  /* durable: the caller's data */
        return PM_OK;
    }
    if (count > h->lane_capacity) return PM_E_TOO_BIG;
    if (pmi_failed(h)) return PM_E_IO;
    uint32_t lane = lane_acquire(h);
    uint64_t lo = lane_off(h, lane);
    uint64_t seq = next_seq(&h->lanes[lane]);
    /* step 1: entries, seq and seal, all in this lane; the seal's CRC covers the rest (L3) */
    pmi_write(h, lo + PMD_LANE_HDR_SIZE, entries, (uint64_t)count * PMD_REDO_ENTRY_SIZE);
    pmi_store8(h, lo + 8, seq);
    pmi_store8(h, lo, ((uint64_t)seal_crc(lane, seq, count, entries) << 32) | count);
#ifdef PMSTORE_MUTANT_APPLYFIRST
    pmi_redo_apply(h, entries, count);   /* mutant: steps reordered, the words are applied before the commit point */
#endif

    /* step 2: one barrier over this lane, the caller's data, and the seal words of lanes
     * whose invalidation (step 5 of an earlier commit) may not be durable yet (L4). */
    struct pmi_range local[24], *r = local;
    size_t cap = 24, need = 1 + nextra + h->lane_count;
    if (need > cap && (r = malloc(need * sizeof *r)) != NULL) cap = need;
    if (!r) r = local;
    size_t nr = 1, ns = 0;
    uint64_t snap[16]; uint32_t snap_lane[16];
    r[0].off = lo; r[0].size = PMD_LANE_HDR_SIZE + (uint64_t)count * PMD_REDO_ENTRY_SIZE;
#ifdef PMSTORE_MUTANT_NODATA
    nextra = 0;     /* mutant: the published data is left out of the commit-point barrier */
#endif
    if (nextra && nr + nextra <= cap) { memcpy(r + 1, extra, nextra * sizeof *r); nr += nextra; }
    else if (nextra) pmi_persist_ranges(h, extra, nextra);  /* durable: the caller's data (no DRAM to merge) */
    pending_invalidations(h, lane, r, &nr, cap, snap, snap_lane, &ns);
    pmi_persist_ranges(h, r, nr);   /* durable: this commit's log (the commit point), its data,
                                       and earlier lanes' invalidations */
    if (r != local) free(r);
    if (pmi_failed(h)) {
        /* The commit point may or may not be durable: the next open decides (replays the
         * lane or discards it). Apply nothing here; the heap refuses all writes from now. */
        atomic_store_explicit(&h->lanes[lane].busy, 0, memory_order_release);
        return PM_E_IO;
    }
    uint64_t *seen = seen_for(h);
    for (size_t k = 0; seen && k < ns; k++) seen[snap_lane[k]] = snap[k];   /* durable now, for this thread */

    /* steps 3-4: apply and persist the words */
#ifndef PMSTORE_MUTANT_APPLYFIRST
    pmi_redo_apply(h, entries, count);
#endif
    if (pmi_failed(h)) { atomic_store_explicit(&h->lanes[lane].busy, 0, memory_order_release); return PM_E_IO; }

    /* step 5: invalidate; durable at the next commit point of any lane */
    pmi_store8(h, lo, 0);
    atomic_store_explicit(&h->lanes[lane].inval_seq, seq, memory_order_release);
    atomic_store_explicit(&h->lanes[lane].busy, 0, memory_order_release);
    return PM_OK;
}

struct sealed { uint64_t seq; uint32_t lane; uint32_t count; };

static int cmp_sealed(const void *a, const void *b) {
    const struct sealed *x = a, *y = b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* pm_redo_recover -- replay every sealed lane in seq order, emptying each after its
 * replay, then empty the torn lanes.
 * Runs at open before anything else touches the heap; crash-safe to re-run (L2).
 * Returns PM_E_CORRUPT (report->lanes_replayed = offending lane) if a lane whose seal
 * checks out holds an impossible entry; nothing is applied in that case. */
int pm_redo_recover(pm_heap *h, struct pm_recover_report *out) {
    memset(out, 0, sizeof *out);
    struct sealed *s = calloc(h->lane_count, sizeof *s);
    if (!s) return PM_E_NOMEM;
    uint32_t ns = 0;
    for (uint32_t i = 0; i < h->lane_count; i++) {
        uint64_t lo = lane_off(h, i), seal = pm_load8(h, lo);
        if (!seal) continue;
        uint32_t count = (uint32_t)seal;
        const struct pmd_redo_entry *e = (const void *)(h->base + lo + PMD_LANE_HDR_SIZE);
        uint64_t seq = pm_load8(h, lo + 8);
        if (count == 0 || count > h->lane_capacity || seal_crc(i, seq, count, e) != (uint32_t)(seal >> 32)) {
            out->lanes_discarded++;     /* torn or stale: the commit never reached its commit point */
            continue;
        }
        int data_ok = 1;
        for (uint32_t k = 0; k < count; k++) {
            if (!entry_is_valid(h, &e[k])) { free(s); out->lanes_replayed = i; return PM_E_CORRUPT; }
            if ((e[k].off_op & PMD_REDO_OP_MASK) == PMD_REDO_OP_CHECK && !check_holds(h, &e[k])) data_ok = 0;
        }
#ifdef PMSTORE_MUTANT_NOCHECK
        data_ok = 1;    /* mutant: L5 ignored, a commit whose data never all reached the media is replayed */
#endif
        if (!data_ok) {
            out->lanes_discarded++;     /* L5: its data never all reached the media (or a later commit reused it) */
            continue;
        }
        s[ns++] = (struct sealed){seq, i, count};
    }
    qsort(s, ns, sizeof *s, cmp_sealed);
    /* Replay in seq order, emptying each lane right after its replay: a crash here
     * leaves a seq-ordered suffix of lanes sealed, and replaying a suffix over words
     * that already hold the whole replay gives the same words (L2). */
    for (uint32_t k = 0; k < ns; k++) {
        uint64_t lo = lane_off(h, s[k].lane);
        pmi_redo_apply(h, (const void *)(h->base + lo + PMD_LANE_HDR_SIZE), s[k].count);
        pmi_store8(h, lo, 0);
        struct pmi_range one = {lo, 8};
        pmi_persist_ranges(h, &one, 1);     /* durable: this lane empty, after its replay */
        out->entries_applied += s[k].count;
        if (s[k].seq > out->max_seq) out->max_seq = s[k].seq;
    }
    out->lanes_replayed = ns;
    free(s);
    if (out->lanes_discarded) {
        struct pmi_range *r = malloc(h->lane_count * sizeof *r);
        size_t nr = 0;
        for (uint32_t i = 0; i < h->lane_count; i++) {
            uint64_t lo = lane_off(h, i);
            if (!pm_load8(h, lo)) continue;
            pmi_store8(h, lo, 0);
            if (r) r[nr].off = lo, r[nr].size = 8, nr++;
            else { struct pmi_range one = {lo, 8}; pmi_persist_ranges(h, &one, 1); /* durable: lane i empty */ }
        }
        if (r) { pmi_persist_ranges(h, r, nr); free(r); }   /* durable: the torn lanes empty */
    }
    return PM_OK;
}
