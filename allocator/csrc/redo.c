/* redo.c -- redo lanes: commit a list of 8-byte word updates atomically.
 *
 * FORMAT.md 4.3 and 7.1-7.2; invariants L1-L5. A commit costs one persist barrier, its
 * commit point: entries + seal (+ CHECKed data). Its applied words become durable in the
 * next barrier any thread issues (the next commit point folds them in, 7.1 steps 2-4), and
 * only then is its seal cleared, so a log outlives the words it protects. Clearing is a
 * plain store that the barrier after it makes durable, in dependency order (L4).
 * pmi_redo_apply is the one apply function: commit and recovery both call it.
 * Must not: store to the mapping except through pmem.c.
 */
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include "pmi.h"

#define MAX_LANES 4096
#define CHECK_SIZE_MAX ((1ull << 29) - 1)   /* bytes one CHECK entry covers */

static __thread uint32_t my_lane = UINT32_MAX;  /* this thread's home lane (mod lane_count); MAX = none yet */

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
    h->lane_used = calloc((lane_count + 63) / 64, sizeof *h->lane_used);
    if (!h->lane_used) { free(h->lanes); h->lanes = NULL; return PM_E_NOMEM; }
    h->redo_off = redo_off;
    h->lane_count = lane_count;
    h->lane_size = lane_size;
    h->lane_capacity = (lane_size - PMD_LANE_HDR_SIZE) / PMD_REDO_ENTRY_SIZE;
    return PM_OK;
}

uint32_t pm_redo_capacity(pm_heap *h) { return h->lane_capacity; }

void pmi_redo_free(pm_heap *h) {
    free(h->lanes); h->lanes = NULL;
    free((void *)h->lane_used); h->lane_used = NULL;
}

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

/* pmi_redo_apply -- the one apply function: perform the entries with 8-byte stores.
 * Idempotent: entries are absolute sets and bit set/clear (L2). No barrier: recovery
 * persists right after; a commit leaves the words to the next barrier (7.1). */
static void pmi_redo_apply(pm_heap *h, const struct pmd_redo_entry *e, uint32_t n) {
    for (uint32_t i = 0; i < n; i++) {
        uint64_t op = e[i].off_op & PMD_REDO_OP_MASK, off = e[i].off_op & ~(uint64_t)PMD_REDO_OP_MASK;
        if (op == PMD_REDO_OP_SET) pmi_store8(h, off, e[i].value);
        else if (op != PMD_REDO_OP_CHECK) pmi_rmw8(h, off, e[i].value, op == PMD_REDO_OP_OR);
    }
}

/* persist_entries -- one barrier over the words of n entries (recovery, and commits too
 * large to defer). */
static void persist_entries(pm_heap *h, const struct pmd_redo_entry *e, uint32_t n,
                            const struct pmi_range *more, size_t nmore) {
#ifdef PMSTORE_MUTANT_NOAPPLYFENCE
    n = 0;      /* mutant: the applied words are never made durable here */
#endif
    size_t total = n + nmore;
    struct pmi_range local[48], *r = total <= 48 ? local : malloc(total * sizeof *r);
    if (!r) {   /* no DRAM for the range list: one barrier per word */
        for (uint32_t i = 0; i < n; i++) {
            struct pmi_range one = {e[i].off_op & ~(uint64_t)PMD_REDO_OP_MASK, 8};
            pmi_persist_ranges(h, &one, 1);  /* durable: this applied word */
        }
        if (nmore) pmi_persist_ranges(h, more, nmore);  /* durable: the seal words passed in */
        return;
    }
    for (uint32_t i = 0; i < n; i++) r[i].off = e[i].off_op & ~(uint64_t)PMD_REDO_OP_MASK, r[i].size = 8;
    if (nmore) memcpy(r + n, more, nmore * sizeof *r);
    pmi_persist_ranges(h, r, total);    /* durable: every applied word (and the seals passed in) */
    if (r != local) free(r);
}

/* A barrier being assembled: its ranges, the DEFERRED lanes it settles (claimed, state
 * SETTLING), lanes another thread is settling (to wait for), and a snapshot of the
 * foreign invalidations it makes durable (for the thread-local cache). Thread-local
 * storage, grown on demand, so a commit does not call malloc. */
struct bar {
    struct pmi_range *r; size_t nr, cap;
    uint32_t *claimed; size_t nclaimed;
    uint32_t *waits; size_t nwaits;
    uint64_t max_seq;       /* the largest last_seq of any lane, read by the pass */
    uint32_t lanes_cap;
    uint64_t snap[16]; uint32_t snap_lane[16]; size_t ns;
};
static __thread struct bar tl_bar;

/* bar_start -- an empty barrier with room for `extra` ranges beyond the lanes' worst case. */
static struct bar *bar_start(pm_heap *h, size_t extra) {
    struct bar *b = &tl_bar;
    size_t need = extra + (size_t)h->lane_count * (1 + PMI_DEFER_MAX);
    if (need > b->cap) {
        struct pmi_range *r = realloc(b->r, need * sizeof *r);
        if (!r) return NULL;
        b->r = r; b->cap = need;
    }
    if (h->lane_count > b->lanes_cap) {
        uint32_t *c = realloc(b->claimed, h->lane_count * sizeof *c);
        if (!c) return NULL;
        b->claimed = c;
        uint32_t *w = realloc(b->waits, h->lane_count * sizeof *w);
        if (!w) return NULL;
        b->waits = w; b->lanes_cap = h->lane_count;
    }
    b->nr = b->nclaimed = b->nwaits = b->ns = 0;
    b->max_seq = 0;
    return b;
}

static void bar_add(struct bar *b, uint64_t off, uint64_t size) { b->r[b->nr].off = off; b->r[b->nr].size = size; b->nr++; }

/* bar_collect -- one pass over the lanes (7.1 step 2): claim every DEFERRED lane, so its
 * applied words join this barrier; note lanes another thread is settling; add the seal
 * word of every lane whose invalidation this thread has not yet made durable (L4); and
 * find the largest seq any lane has used. `own` is the lane this barrier seals (its old
 * seal word is overwritten, not cleared).
 * Seq is a Lamport clock: a commit that began after another returned reads that one's
 * last_seq here, so its seq (max_seq + 1) is larger -- without a shared counter. */
static void bar_collect(pm_heap *h, uint32_t own, struct bar *b) {
    const uint64_t *seen = seen_for(h);
    /* only lanes ever taken can hold anything: a few, for a few threads */
    for (uint32_t wi = 0; wi < (h->lane_count + 63) / 64; wi++)
    for (uint64_t used = atomic_load_explicit(&h->lane_used[wi], memory_order_acquire); used; used &= used - 1) {
        uint32_t i = wi * 64 + (uint32_t)__builtin_ctzll(used);
        struct pmi_lane *l = &h->lanes[i];
        int st = atomic_load_explicit(&l->state, memory_order_acquire);
        uint64_t last = atomic_load_explicit(&l->last_seq, memory_order_relaxed);
        if (last > b->max_seq) b->max_seq = last;
        if (st == PMI_LANE_DEFERRED &&
            atomic_compare_exchange_strong_explicit(&l->state, &st, PMI_LANE_SETTLING,
                                                    memory_order_acq_rel, memory_order_acquire)) {
            b->claimed[b->nclaimed++] = i;
#ifndef PMSTORE_MUTANT_NOAPPLYFENCE
            for (uint32_t k = 0; k < l->word_count; k++) bar_add(b, l->word_off[k], 8);
#endif
#ifdef PMSTORE_MUTANT_EARLYCLEAR
            pmi_store8(h, lane_off(h, i), 0);   /* mutant: the seal is cleared before its words are durable */
#endif
            continue;   /* its seal is cleared after this barrier, not flushed by it */
        }
        if (st == PMI_LANE_SETTLING) b->waits[b->nwaits++] = i;
#ifndef PMSTORE_MUTANT_NOINVAL
        uint64_t s = atomic_load_explicit(&l->inval_seq, memory_order_acquire);
        if (!s || i == own || (seen && seen[i] == s)) continue;
        bar_add(b, lane_off(h, i), 8);
        if (b->ns < 16) b->snap[b->ns] = s, b->snap_lane[b->ns] = i, b->ns++;
#endif
    }
}

/* clear_seal -- invalidate a lane whose words are durable: a plain store, made durable by
 * the next barrier of whichever thread collects it (L4). */
static void clear_seal(pm_heap *h, uint32_t i, uint64_t seq) {
    pmi_store8(h, lane_off(h, i), 0);
    atomic_store_explicit(&h->lanes[i].inval_seq, seq, memory_order_release);
    atomic_store_explicit(&h->lanes[i].state, PMI_LANE_FREE, memory_order_release);
}

/* bar_finish -- after the barrier: the claimed lanes' words are durable, so clear their
 * seals and free them; remember the invalidations this thread made durable. On failure
 * nothing is known durable: the lanes go back to DEFERRED (the heap refuses writes now). */
static void bar_finish(pm_heap *h, struct bar *b, int ok) {
    for (size_t k = 0; k < b->nclaimed; k++) {
        struct pmi_lane *l = &h->lanes[b->claimed[k]];
        if (ok) clear_seal(h, b->claimed[k], l->seq);
        else atomic_store_explicit(&l->state, PMI_LANE_DEFERRED, memory_order_release);
    }
    uint64_t *seen = seen_for(h);
    for (size_t k = 0; ok && seen && k < b->ns; k++) seen[b->snap_lane[k]] = b->snap[k];
}

/* bar_wait -- wait until the lanes another thread was settling have their seals cleared:
 * those clears must be visible before this commit's own seal can be cleared (L4). The
 * settler holds no lane we could hold, so this cannot deadlock. */
static void bar_wait(pm_heap *h, struct bar *b) {
    for (size_t k = 0; k < b->nwaits; k++)
        for (uint32_t spins = 0;
             atomic_load_explicit(&h->lanes[b->waits[k]].state, memory_order_acquire) == PMI_LANE_SETTLING; spins++)
            if (spins < 256) __builtin_ia32_pause();    /* a settler needs one barrier: spin a little */
            else sched_yield();                         /* it was descheduled: let it run */
}

/* settle_all -- one standalone barrier over every DEFERRED lane's words and the pending
 * invalidations, then clear those lanes' seals. For lane starvation and quiesce. */
static int settle_all(pm_heap *h) {
    struct bar *b = bar_start(h, 0);
    if (!b) return PM_E_NOMEM;
    bar_collect(h, UINT32_MAX, b);
    bar_wait(h, b);
    if (b->nr) pmi_persist_ranges(h, b->r, b->nr);  /* durable: deferred words of the claimed lanes,
                                                       and the pending invalidations */
    int ok = !pmi_failed(h);
    bar_finish(h, b, ok);
    return ok ? PM_OK : PM_E_IO;
}

/* pm_redo_quiesce -- make every commit's words durable and every lane empty (close). */
int pm_redo_quiesce(pm_heap *h) {
    if (!h->lanes) return PM_OK;
    int rc = settle_all(h);             /* the deferred words durable, their seals cleared */
    if (rc) return rc;
    return settle_all(h);               /* nothing DEFERRED is left (callers are quiet): only
                                           the seal clears above are collected, made durable */
}

/* lane_acquire -- take a FREE lane: this thread's home lane, else the one half the lanes
 * away (the home lane is DEFERRED after this thread's last commit, so a thread alternates
 * between two lanes), else any. If every lane is taken and some are DEFERRED, settle them. */
static int lane_acquire(pm_heap *h, uint32_t *out) {
    if (my_lane == UINT32_MAX) my_lane = pmi_thread_idx();
    uint32_t n = h->lane_count, home = my_lane % n;
    for (uint32_t spins = 0;; spins++) {
        int deferred = 0;
        for (uint32_t k = 0; k < n; k++) {
            uint32_t i = k == 0 ? home : k == 1 ? (home + n / 2) % n : (home + k - 1) % n;
            int z = PMI_LANE_FREE, st = atomic_load_explicit(&h->lanes[i].state, memory_order_relaxed);
            deferred |= st == PMI_LANE_DEFERRED;
            if (st == PMI_LANE_FREE &&
                atomic_compare_exchange_strong(&h->lanes[i].state, &z, PMI_LANE_BUSY)) {
                uint64_t bit = 1ull << (i % 64);
                if (!(atomic_load_explicit(&h->lane_used[i / 64], memory_order_relaxed) & bit))
                    atomic_fetch_or_explicit(&h->lane_used[i / 64], bit, memory_order_release);
                *out = i;
                return PM_OK;
            }
        }
        if (deferred) {
            int rc = settle_all(h);
            if (rc) return rc;
        } else if (spins > 4) sched_yield();
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
    uint32_t lane;
    int rc = lane_acquire(h, &lane);   /* step 1; may settle lanes with a barrier of its own (tl_bar) */
    if (rc) return rc;
    struct pmi_lane *l = &h->lanes[lane];
    struct bar *b = bar_start(h, 1 + (size_t)nextra);
    if (!b) { atomic_store_explicit(&l->state, PMI_LANE_FREE, memory_order_release); return PM_E_NOMEM; }
    uint64_t lo = lane_off(h, lane);
    bar_collect(h, lane, b);        /* step 2: claim DEFERRED lanes, collect seal clears, largest seq */
    uint64_t seq = b->max_seq + 1;
    atomic_store_explicit(&l->last_seq, seq, memory_order_relaxed);
    /* step 3: entries, seq and seal, all in this lane; the seal's CRC covers the rest (L3) */
    pmi_write(h, lo + PMD_LANE_HDR_SIZE, entries, (uint64_t)count * PMD_REDO_ENTRY_SIZE);
    pmi_store8(h, lo + 8, seq);
    pmi_store8(h, lo, ((uint64_t)seal_crc(lane, seq, count, entries) << 32) | count);
#ifdef PMSTORE_MUTANT_APPLYFIRST
    pmi_redo_apply(h, entries, count);   /* mutant: steps reordered, the words are applied before the commit point */
#endif

    /* step 4: one barrier over this lane, the caller's data, the words of every DEFERRED
     * lane (earlier commits, this thread's included), and the seal words of lanes whose
     * clearing may not be durable yet (L4): all but the first two collected above. */
    bar_add(b, lo, PMD_LANE_HDR_SIZE + (uint64_t)count * PMD_REDO_ENTRY_SIZE);
#ifdef PMSTORE_MUTANT_NODATA
    nextra = 0;     /* mutant: the published data is left out of the commit-point barrier */
#endif
    for (uint32_t i = 0; i < nextra; i++) bar_add(b, extra[i].off, extra[i].size);
    pmi_persist_ranges(h, b->r, b->nr); /* durable: this commit's log (the commit point), its data,
                                           earlier commits' deferred words, pending seal clears */
    int ok = !pmi_failed(h);
    bar_finish(h, b, ok);               /* step 5: the claimed lanes' seals cleared */
    if (!ok) {
        /* The commit point may or may not be durable: the next open decides (replays the
         * lane or discards it). Apply nothing here; the heap refuses all writes from now. */
        atomic_store_explicit(&l->state, PMI_LANE_FREE, memory_order_release);
        return PM_E_IO;
    }

    /* step 6: apply */
#ifndef PMSTORE_MUTANT_APPLYFIRST
    pmi_redo_apply(h, entries, count);
#endif
    bar_wait(h, b);     /* seals another thread was clearing: visible before ours can go (L4) */

    /* step 7: leave the words to the next barrier (the usual case), or persist them now */
    uint32_t nwords = 0;
    for (uint32_t i = 0; i < count; i++) nwords += (entries[i].off_op & PMD_REDO_OP_MASK) != PMD_REDO_OP_CHECK;
    if (nwords <= PMI_DEFER_MAX) {
        l->word_count = 0;
        for (uint32_t i = 0; i < count; i++)
            if ((entries[i].off_op & PMD_REDO_OP_MASK) != PMD_REDO_OP_CHECK)
                l->word_off[l->word_count++] = entries[i].off_op & ~(uint64_t)PMD_REDO_OP_MASK;
        l->seq = seq;
        atomic_store_explicit(&l->state, PMI_LANE_DEFERRED, memory_order_release);
        return PM_OK;
    }
    b = bar_start(h, 0);    /* cannot fail: the first call reserved at least as much */
    bar_collect(h, lane, b);
    persist_entries(h, entries, count, b->r, b->nr);
    /* durable: every applied word, and the seal clears this commit must follow (L4) */
    ok = !pmi_failed(h);
    bar_finish(h, b, ok);
    if (!ok) { atomic_store_explicit(&l->state, PMI_LANE_FREE, memory_order_release); return PM_E_IO; }
    clear_seal(h, lane, seq);
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
        const struct pmd_redo_entry *e = (const void *)(h->base + lo + PMD_LANE_HDR_SIZE);
        pmi_redo_apply(h, e, s[k].count);
        persist_entries(h, e, s[k].count, NULL, 0);     /* durable: the replayed words */
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
