/* redo.c -- redo lanes: commit a list of 8-byte word updates atomically.
 *
 * FORMAT.md 4.3 and 7.1-7.2; invariants L1-L6. A commit costs one persist barrier, its
 * commit point: entries + seal (+ CHECKed data). Its applied words become durable in the
 * committing thread's next barrier (or in the barrier of a later commit that depends on
 * it), and only then is its seal cleared (L4); a seal is cleared only once every earlier
 * commit it depends on is gone, i.e. its own clear is durable (L6). Dependencies are
 * found per word: a DRAM table of word slots holds the last commit that wrote each
 * (hashed) word, so commits on disjoint words never touch each other's lanes.
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
#define SLOT_LOCK (1ull << 63)
#define SLOT_BITS_MIN 16                    /* line slots: 64 Ki x 8 B per heap at least, */
#define SLOT_BITS_MAX 21                    /* 2 Mi (16 MiB) at most, else one per 4 KiB of max size */

/* A commit's identity, packed as in the word slots: seq << 12 | lane. */
static uint64_t cid(uint32_t lane, uint64_t seq) { return seq << 12 | lane; }
static uint32_t cid_lane(uint64_t c) { return (uint32_t)(c & 0xfff); }
static uint64_t cid_seq(uint64_t c) { return (c & ~SLOT_LOCK) >> 12; }

static __thread uint32_t my_lane = UINT32_MAX;  /* this thread's home lane (mod lane_count); MAX = none yet */

/* Per thread, for one heap: the lanes this thread left DEFERRED (it settles them in its
 * next barrier) and the seals it cleared whose clear is not durable yet (its next barrier
 * flushes them). Forgetting either is safe: dependents and settle_round find them too. */
static __thread struct tl_redo {
    uint64_t heap_id;
    uint32_t cap, nmine, npend;
    uint64_t *mine;     /* cid of each DEFERRED commit this thread settles next */
    uint64_t *pend;     /* cid of each cleared seal */
    uint64_t *deps;     /* scratch: a commit's dependencies */
} tl;

static struct tl_redo *tl_for(pm_heap *h) {
    if (tl.heap_id == h->id && tl.cap >= h->lane_count) return &tl;
    uint64_t *m = malloc(h->lane_count * sizeof *m);
    uint64_t *p = malloc(h->lane_count * sizeof *p), *d = malloc(h->lane_count * sizeof *d);
    if (!m || !p || !d) { free(m); free(p); free(d); return NULL; }
    free(tl.mine); free(tl.pend); free(tl.deps);
    tl = (struct tl_redo){h->id, h->lane_count, 0, 0, m, p, d};
    return &tl;
}

static uint64_t lane_off(pm_heap *h, uint32_t i) { return h->redo_off + (uint64_t)i * h->lane_size; }

/* adopt -- list lane i's current commit among those this thread settles in its next
 * barrier (once per lane). */
static void adopt(pm_heap *h, struct tl_redo *t, uint32_t i) {
    uint64_t c = cid(i, atomic_load_explicit(&h->lanes[i].seq, memory_order_acquire));
    for (uint32_t k = 0; k < t->nmine; k++) if (cid_lane(t->mine[k]) == i) { t->mine[k] = c; return; }
    if (t->nmine < t->cap) t->mine[t->nmine++] = c;
}

/* pm_redo_init -- attach the volatile lane state; call once after mapping. */
int pm_redo_init(pm_heap *h, uint64_t redo_off, uint32_t lane_count, uint32_t lane_size) {
    if (lane_count == 0 || lane_count > MAX_LANES || lane_size < 4096 || lane_size % 4096 ||
        redo_off % 4096 || !pmi_in_range(h, redo_off, (uint64_t)lane_count * lane_size))
        return PM_E_ARG;
    /* few slots per live line keep unrelated commits apart (a shared slot is a dependency) */
    h->slot_bits = SLOT_BITS_MIN;
    while (h->slot_bits < SLOT_BITS_MAX && (h->reserve_size >> 12) > (1ull << h->slot_bits)) h->slot_bits++;
    h->lanes = aligned_alloc(64, lane_count * sizeof *h->lanes);
    h->lane_used = calloc((lane_count + 63) / 64, sizeof *h->lane_used);
    h->slots = calloc((size_t)1 << h->slot_bits, sizeof *h->slots);
    if (!h->lanes || !h->lane_used || !h->slots) { pmi_redo_free(h); return PM_E_NOMEM; }
    memset(h->lanes, 0, lane_count * sizeof *h->lanes);
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
    free((void *)h->slots); h->slots = NULL;
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

/* persist_entries -- one barrier over the words of n entries (recovery). */
static void persist_entries(pm_heap *h, const struct pmd_redo_entry *e, uint32_t n) {
    struct pmi_range local[48], *r = n <= 48 ? local : malloc(n * sizeof *r);
    if (!r) {   /* no DRAM for the range list: one barrier per word */
        for (uint32_t i = 0; i < n; i++) {
            struct pmi_range one = {e[i].off_op & ~(uint64_t)PMD_REDO_OP_MASK, 8};
            pmi_persist_ranges(h, &one, 1);  /* durable: this applied word */
        }
        return;
    }
    for (uint32_t i = 0; i < n; i++) r[i].off = e[i].off_op & ~(uint64_t)PMD_REDO_OP_MASK, r[i].size = 8;
    pmi_persist_ranges(h, r, n);    /* durable: every applied word */
    if (r != local) free(r);
}

/* ------------------------------------------------------------------ dependencies */

enum { DEP_GONE = -1, DEP_CLEARED = -2 };   /* else the lane state: BUSY, DEFERRED, SETTLING */

static void max_store(_Atomic uint64_t *p, uint64_t v) {
    uint64_t cur = atomic_load_explicit(p, memory_order_relaxed);
    while (cur < v && !atomic_compare_exchange_weak_explicit(p, &cur, v, memory_order_release, memory_order_relaxed)) {}
}

/* dep_state -- where the commit c stands: GONE (its seal is durably cleared or durably
 * overwritten, L6), CLEARED (its seal was stored 0 or its lane reused: one barrier over
 * the lane header makes it gone), or still sealed: its lane's state. The lane's seq is
 * read after its state, and a lane publishes a new seq only while BUSY, so a seq that
 * differs from c's means c was cleared before the lane was reused. */
static int dep_state(pm_heap *h, uint64_t c) {
    struct pmi_lane *l = &h->lanes[cid_lane(c)];
    uint64_t s = cid_seq(c);
    if (atomic_load_explicit(&l->gone_seq, memory_order_acquire) >= s) return DEP_GONE;
    int st = atomic_load_explicit(&l->state, memory_order_acquire);
    if (st == PMI_LANE_FREE || atomic_load_explicit(&l->seq, memory_order_acquire) != s) return DEP_CLEARED;
    return st;
}

/* slot_of -- a word's slot: one per 64-byte line (hashed). Coarser than a word, so two
 * commits on one word always meet in its slot; neighbouring words of one thread (a table
 * of published offsets) share a slot, which keeps the slots a thread touches few. */
static uint32_t slot_of(const pm_heap *h, uint64_t off) {
    return (uint32_t)(((off >> 6) * 0x9E3779B97F4A7C15ull) >> (64 - h->slot_bits));
}

/* word_chain -- step 2: lock the word slots of this commit's words (in index order, so
 * two commits cannot deadlock), take seq above every commit found there and above this
 * lane's last, publish it, and leave this commit in the slots. The commits found there
 * (other lanes) are its dependencies, deduplicated per lane (at most lane_count). */
static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static int word_chain(pm_heap *h, uint32_t lane, const struct pmd_redo_entry *e, uint32_t count,
                      uint64_t *deps, uint32_t *ndeps, uint64_t *seq_out) {
    uint32_t local[64], *idx = count <= 64 ? local : malloc(count * sizeof *idx), n = 0;
    if (!idx) return PM_E_NOMEM;
    uint64_t seq = atomic_load_explicit(&h->lanes[lane].seq, memory_order_relaxed);
    for (uint32_t i = 0; i < count; i++)
        if ((e[i].off_op & PMD_REDO_OP_MASK) != PMD_REDO_OP_CHECK)
            idx[n++] = slot_of(h, e[i].off_op & ~(uint64_t)PMD_REDO_OP_MASK);
    if (n <= 8) {   /* the usual 1-3 words: insertion sort */
        for (uint32_t i = 1; i < n; i++)
            for (uint32_t k = i; k > 0 && idx[k - 1] > idx[k]; k--) { uint32_t x = idx[k]; idx[k] = idx[k - 1]; idx[k - 1] = x; }
    } else qsort(idx, n, sizeof *idx, cmp_u32);
    uint32_t u = 0;     /* one lock per slot: two words may share one */
    for (uint32_t i = 0; i < n; i++) if (!u || idx[u - 1] != idx[i]) idx[u++] = idx[i];
    n = u;
    *ndeps = 0;
    for (uint32_t k = 0; k < n; k++) {
        _Atomic uint64_t *p = &h->slots[idx[k]];
        uint64_t v;
        for (uint32_t spins = 0;; spins++) {
            v = atomic_load_explicit(p, memory_order_relaxed);
            if (!(v & SLOT_LOCK) && atomic_compare_exchange_weak_explicit(p, &v, v | SLOT_LOCK,
                                                                          memory_order_acquire, memory_order_relaxed))
                break;
            if (spins < 64) __builtin_ia32_pause(); else sched_yield();
        }
        if (!v) continue;
        if (cid_seq(v) > seq) seq = cid_seq(v);
        if (cid_lane(v) == lane) continue;  /* an older commit on this lane: our commit point overwrites it */
        uint32_t d = 0;
        while (d < *ndeps && cid_lane(deps[d]) != cid_lane(v)) d++;
        if (d == *ndeps) deps[(*ndeps)++] = v;
        else if (cid_seq(v) > cid_seq(deps[d])) deps[d] = v;
    }
    seq++;
    atomic_store_explicit(&h->lanes[lane].seq, seq, memory_order_release);   /* before anyone can find it */
    for (uint32_t k = 0; k < n; k++) atomic_store_explicit(&h->slots[idx[k]], cid(lane, seq), memory_order_release);
    if (idx != local) free(idx);
    *seq_out = seq;
    return PM_OK;
}

/* ------------------------------------------------------------------ barriers */

/* A barrier being assembled: its ranges, the lanes it settles (claimed: SETTLING), and
 * the commits it makes gone (their seal words ride it). Thread-local, grown on demand, so
 * a commit does not call malloc. */
struct bar {
    uint32_t own;           /* the lane this barrier seals (its header rides it anyway), or MAX */
    struct pmi_range *r; size_t nr, cap;
    uint32_t *claimed; size_t nclaimed;
    uint64_t *gone; size_t ngone;
    uint32_t lanes_cap;
};
static __thread struct bar tl_bar;

/* bar_start -- an empty barrier with room for `extra` ranges beyond the lanes' worst case. */
static struct bar *bar_start(pm_heap *h, size_t extra) {
    struct bar *b = &tl_bar;
    size_t need = extra + (size_t)h->lane_count * (2 + PMI_DEFER_MAX);
    if (need > b->cap) {
        struct pmi_range *r = realloc(b->r, need * sizeof *r);
        if (!r) return NULL;
        b->r = r; b->cap = need;
    }
    if (h->lane_count > b->lanes_cap) {
        uint32_t *c = realloc(b->claimed, h->lane_count * sizeof *c);
        if (!c) return NULL;
        b->claimed = c;
        uint64_t *g = realloc(b->gone, 2 * h->lane_count * sizeof *g);
        if (!g) return NULL;
        b->gone = g; b->lanes_cap = h->lane_count;
    }
    b->nr = b->nclaimed = b->ngone = 0;
    b->own = UINT32_MAX;
    return b;
}

static void bar_add(struct bar *b, uint64_t off, uint64_t size) { b->r[b->nr].off = off; b->r[b->nr].size = size; b->nr++; }

/* bar_gone -- commit c's seal is cleared (or its lane reused): its lane's seal word joins
 * this barrier (unless it is the lane this barrier seals), after which c is gone. */
static void bar_gone(pm_heap *h, struct bar *b, uint64_t c) {
    if (b->ngone == 2 * (size_t)h->lane_count) return;     /* full: c stays CLEARED, found again later */
    for (size_t k = 0; k < b->ngone; k++)
        if (cid_lane(b->gone[k]) == cid_lane(c)) {
            if (cid_seq(c) > cid_seq(b->gone[k])) b->gone[k] = c;
            return;
        }
    b->gone[b->ngone++] = c;
#ifndef PMSTORE_MUTANT_NOINVAL
    if (cid_lane(c) != b->own) bar_add(b, lane_off(h, cid_lane(c)), 8);
#endif
}

static int claim(pm_heap *h, uint32_t i) {
    int st = PMI_LANE_DEFERRED;
    return atomic_compare_exchange_strong_explicit(&h->lanes[i].state, &st, PMI_LANE_SETTLING,
                                                   memory_order_acq_rel, memory_order_acquire);
}

/* bar_settle -- lane i is claimed: its applied words join this barrier; each dependency
 * that is CLEARED rides it too (its seal word), one that is DEFERRED is claimed and
 * settled with it (to depth 2); the rest stay listed for a later barrier. */
static void bar_settle(pm_heap *h, struct bar *b, uint32_t i, int depth) {
    struct pmi_lane *l = &h->lanes[i];
    b->claimed[b->nclaimed++] = i;
#ifndef PMSTORE_MUTANT_NOAPPLYFENCE
    for (uint32_t k = 0; k < l->word_count; k++) bar_add(b, l->word_off[k], 8);
#endif
#ifdef PMSTORE_MUTANT_EARLYCLEAR
    if (l->word_count) pmi_store8(h, lane_off(h, i), 0);   /* mutant: the seal is cleared before its words are durable */
#endif
    for (uint32_t k = 0; k < l->dep_count; k++) {
        int st = dep_state(h, l->deps[k]);
        if (st == DEP_CLEARED) bar_gone(h, b, l->deps[k]);
        else if (st == PMI_LANE_DEFERRED && depth < 2 && claim(h, cid_lane(l->deps[k])))
            bar_settle(h, b, cid_lane(l->deps[k]), depth + 1);
    }
}

/* clear_seal -- a lane whose words are durable and whose dependencies are gone: store 0
 * to its seal (made durable by the clearing thread's next barrier, or by any barrier
 * that needs it gone) and free it. */
static void clear_seal(pm_heap *h, struct tl_redo *t, uint32_t i) {
    struct pmi_lane *l = &h->lanes[i];
    pmi_store8(h, lane_off(h, i), 0);
    l->word_count = l->dep_count = 0;
    uint64_t c = cid(i, atomic_load_explicit(&l->seq, memory_order_relaxed));
    atomic_store_explicit(&l->state, PMI_LANE_FREE, memory_order_release);
    if (t && t->npend < t->cap) t->pend[t->npend++] = c;
}

/* deps_prune -- drop the dependencies that are gone; 1 if none is left. */
static int deps_prune(pm_heap *h, struct pmi_lane *l) {
    uint32_t n = 0;
    for (uint32_t k = 0; k < l->dep_count; k++)
#ifdef PMSTORE_MUTANT_CLEAREDGONE
        if (dep_state(h, l->deps[k]) >= 0) l->deps[n++] = l->deps[k];     /* mutant: CLEARED counts as gone */
#else
        if (dep_state(h, l->deps[k]) != DEP_GONE) l->deps[n++] = l->deps[k];
#endif
    l->dep_count = n;
    return n == 0;
}

/* bar_persist -- issue the barrier, then: every commit it made gone is marked so (L6);
 * every claimed lane has durable words, and is cleared if its dependencies are gone or
 * else goes back to DEFERRED with no words (L4). On failure nothing is known durable:
 * claimed lanes go back to DEFERRED untouched (the heap refuses writes now). */
static int bar_persist(pm_heap *h, struct bar *b, struct tl_redo *t) {
    pmi_persist_ranges(h, b->r, b->nr); /* durable: the ranges collected (see each caller) */
    int ok = !pmi_failed(h);
    if (ok)
        for (size_t k = 0; k < b->ngone; k++)
            max_store(&h->lanes[cid_lane(b->gone[k])].gone_seq, cid_seq(b->gone[k]));
    for (size_t k = b->nclaimed; k-- > 0; ) {   /* deepest dependencies first */
        struct pmi_lane *l = &h->lanes[b->claimed[k]];
        if (ok) {
            l->word_count = 0;
            if (deps_prune(h, l)) { clear_seal(h, t, b->claimed[k]); continue; }
            PMI_COUNT(PMI_CNT_BLOCKED);
        }
        atomic_store_explicit(&l->state, PMI_LANE_DEFERRED, memory_order_release);
    }
    return ok ? PM_OK : PM_E_IO;
}

/* bar_mine -- this thread's own part of any barrier: its DEFERRED lanes (claimed and
 * settled) and the seal words it cleared since its last barrier. */
static void bar_mine(pm_heap *h, struct bar *b, struct tl_redo *t) {
    if (!t) return;
    for (uint32_t k = 0; k < t->npend; k++) bar_gone(h, b, t->pend[k]);
    t->npend = 0;
    uint32_t keep = 0;
    for (uint32_t k = 0; k < t->nmine; k++) {
        uint32_t i = cid_lane(t->mine[k]);
        if (claim(h, i)) bar_settle(h, b, i, 0);    /* re-listed after the barrier if still DEFERRED */
        else if (dep_state(h, t->mine[k]) == PMI_LANE_SETTLING)
            t->mine[keep++] = t->mine[k];   /* another thread is settling it: it may come back */
    }
    t->nmine = keep;
}

/* settle_round -- a standalone barrier over every lane: claim and settle each DEFERRED
 * one, make every CLEARED seal gone. Returns PM_OK, or 1 if nothing was left to do. For
 * lane starvation, memory held back until commits are gone (alloc.c), and quiesce. */
static int settle_round(pm_heap *h) {
    PMI_COUNT(PMI_CNT_ROUND);
    struct tl_redo *t = tl_for(h);
    struct bar *b = bar_start(h, 0);
    if (!b) return PM_E_NOMEM;
    bar_mine(h, b, t);
    for (uint32_t wi = 0; wi < (h->lane_count + 63) / 64; wi++)
    for (uint64_t used = atomic_load_explicit(&h->lane_used[wi], memory_order_acquire); used; used &= used - 1) {
        uint32_t i = wi * 64 + (uint32_t)__builtin_ctzll(used);
        struct pmi_lane *l = &h->lanes[i];
        uint64_t s = atomic_load_explicit(&l->seq, memory_order_acquire);
        if (atomic_load_explicit(&l->gone_seq, memory_order_acquire) >= s) continue;
        if (claim(h, i)) bar_settle(h, b, i, 0);
        else if (atomic_load_explicit(&l->state, memory_order_acquire) == PMI_LANE_FREE) bar_gone(h, b, cid(i, s));
    }
    if (!b->nr && !b->nclaimed && !b->ngone) return 1;
    int rc = bar_persist(h, b, t);  /* durable: the claimed lanes' words, the cleared seals */
    for (size_t k = 0; t && k < b->nclaimed; k++)   /* still waiting on a dependency: retried */
        if (atomic_load_explicit(&h->lanes[b->claimed[k]].state, memory_order_relaxed) == PMI_LANE_DEFERRED)
            adopt(h, t, b->claimed[k]);
    return rc;
}

/* pmi_redo_settle -- rounds of settle_round until every commit that returned before the
 * call is gone, or `rounds` rounds (callers that only need progress pass 1-2). */
int pmi_redo_settle(pm_heap *h, int rounds) {
    for (int k = 0; k < rounds; k++) {
        int rc = settle_round(h);
        if (rc == 1) return PM_OK;
        if (rc) return rc;
    }
    return PM_OK;
}

/* pm_redo_quiesce -- make every commit's words durable and every lane empty (close).
 * Callers are quiet, so each round clears the lanes whose dependencies the last one made
 * gone; a chain of d dependent lanes takes d + 1 rounds. */
int pm_redo_quiesce(pm_heap *h) {
    if (!h->lanes) return PM_OK;
    for (uint32_t k = 0; k < 4 * h->lane_count + 8; k++) {
        int rc = settle_round(h);
        if (rc) return rc == 1 ? PM_OK : rc;
    }
    return PM_E_IO;     /* cannot happen while callers are quiet: a dependency never went */
}

/* pmi_redo_snapshot -- the commits not yet gone, one cid per lane (its latest): memory
 * freed before the call may be reused once pmi_redo_all_gone says they are (alloc.c). */
uint32_t pmi_redo_snapshot(pm_heap *h, uint64_t *out) {
    uint32_t n = 0;
    for (uint32_t wi = 0; wi < (h->lane_count + 63) / 64; wi++)
    for (uint64_t used = atomic_load_explicit(&h->lane_used[wi], memory_order_acquire); used; used &= used - 1) {
        uint32_t i = wi * 64 + (uint32_t)__builtin_ctzll(used);
        uint64_t g = atomic_load_explicit(&h->lanes[i].gone_seq, memory_order_acquire);
        uint64_t s = atomic_load_explicit(&h->lanes[i].seq, memory_order_acquire);
        if (s > g) out[n++] = cid(i, s);
    }
    return n;
}

int pmi_redo_all_gone(pm_heap *h, const uint64_t *snap, uint32_t n) {
    for (uint32_t k = 0; k < n; k++)
        if (atomic_load_explicit(&h->lanes[cid_lane(snap[k])].gone_seq, memory_order_acquire) < cid_seq(snap[k]))
            return 0;
    return 1;
}

/* pmi_redo_wait_gone -- settle rounds until the snapshot's commits are gone; 0 if a
 * barrier failed, or after max_rounds (0: no limit) if one of them is still in flight. */
int pmi_redo_wait_gone(pm_heap *h, const uint64_t *snap, uint32_t n, uint32_t max_rounds) {
    for (uint32_t round = 0; !max_rounds || round < max_rounds; round++) {
        if (pmi_redo_all_gone(h, snap, n)) return 1;
        PMI_COUNT(PMI_CNT_LIMBO_WAIT);
        if (pmi_redo_settle(h, 2)) return 0;    /* EIO: the heap refuses writes now */
        if (round > 1000) nanosleep(&(struct timespec){0, 50000}, NULL);    /* a thread preempted mid-commit */
        else if (round > 8) sched_yield();
    }
    return 0;
}

/* ------------------------------------------------------------------ writes outside the log (L9) */

/* range_gone -- every commit that wrote a word in [off, off + size) is gone when this
 * returns PM_OK (L9). The slot of each line holds the last commit on it, which is gone
 * only after every earlier one on that slot (L6), so one look per line finds them all;
 * a commit that shares a slot without sharing the line only costs a wait. */
static int range_gone(pm_heap *h, uint64_t off, uint64_t size) {
    if (!h->lanes || !size) return PM_OK;
    uint64_t local[64], *live = h->lane_count <= 64 ? local : malloc(h->lane_count * sizeof *live);
    if (!live) return PM_E_NOMEM;
    uint32_t n = 0;
    for (uint64_t line = off >> 6; line <= (off + size - 1) >> 6; line++) {
        uint64_t v = atomic_load_explicit(&h->slots[slot_of(h, line << 6)], memory_order_acquire) & ~SLOT_LOCK;
        if (!v || atomic_load_explicit(&h->lanes[cid_lane(v)].gone_seq, memory_order_acquire) >= cid_seq(v)) continue;
        uint32_t d = 0;     /* one per lane, its latest: the earlier ones go first (L6) */
        while (d < n && cid_lane(live[d]) != cid_lane(v)) d++;
        if (d == n) live[n++] = v;
        else if (cid_seq(v) > cid_seq(live[d])) live[d] = v;
    }
    int rc = PM_OK;
#ifndef PMSTORE_MUTANT_NORANGEGONE
    /* no limit: a commit in flight ends (its thread may be preempted, not stuck), and
     * giving up would fail a write that only had to wait */
    if (n && !pmi_redo_wait_gone(h, live, n, 0)) rc = pmi_failed(h) ? PM_E_IO : PM_E_NOMEM;  /* a settle round failed */
#endif
    if (live != local) free(live);
    return rc;
}

/* persist_outside_log -- copy src (if any) into the range and persist it in one barrier,
 * after every commit that wrote into the range is gone (L9): otherwise a sealed one,
 * replayed after a crash, would put its older words back over these acknowledged bytes. */
static int persist_outside_log(pm_heap *h, uint64_t off, const void *src, uint64_t size) {
    if (!pmi_in_range(h, off, size)) return PM_E_RANGE;
    int rc = range_gone(h, off, size);
    if (rc) return rc;
    if (src) pmi_write(h, off, src, size);
    struct pmi_range r = {off, size};
    pmi_persist_ranges(h, &r, 1);   /* durable: the range's bytes, and no seal can replay over them */
    return pmi_failed(h);
}

/* pm_write_persist -- copy and persist (L9). */
int pm_write_persist(pm_heap *h, uint64_t off, const void *src, uint64_t size) {
    return persist_outside_log(h, off, src, size);
}

/* pm_persist -- persist what the caller stored in the range (pm_write) (L9). */
int pm_persist(pm_heap *h, uint64_t off, uint64_t size) { return persist_outside_log(h, off, NULL, size); }

/* lane_acquire -- take a FREE lane: this thread's home lane, else the next one (the home
 * lane is DEFERRED after this thread's last commit, so a thread alternates between its
 * pair), else any; a DEFERRED lane of its pair is adopted (see adopt). If every lane
 * is taken, settle a round and retry. */
static int lane_acquire(pm_heap *h, struct tl_redo *t, uint32_t *out) {
    if (my_lane == UINT32_MAX) my_lane = pmi_thread_idx();
    /* thread i's pair: lanes 2i and 2i + 1 (mod n), disjoint for n / 2 consecutive threads;
     * kept per thread, so the usual commit divides by nothing */
    static __thread uint32_t home_n, home_lane;
    uint32_t n = h->lane_count;
    if (home_n != n) home_lane = (uint32_t)((2ull * my_lane) % n), home_n = n;
    uint32_t home = home_lane;
    for (uint32_t spins = 0;; spins++) {
        int deferred = 0;
        for (uint32_t k = 0; k < n; k++) {
            /* off the pair, start half the lanes away: other threads' pairs sit next to ours */
            uint32_t i = home + (k < 2 ? k : 2 + (n / 2 + k - 2) % (n - 2));
            if (i >= n) i -= n;     /* home < n and the step < n: (home + step) mod n */
            int z = PMI_LANE_FREE, st = atomic_load_explicit(&h->lanes[i].state, memory_order_relaxed);
            deferred |= st == PMI_LANE_DEFERRED;
            if (st == PMI_LANE_DEFERRED && k < 2 && t) {    /* left by an exited thread, or ours */
                uint32_t before = t->nmine;
                adopt(h, t, i);
                if (t->nmine != before) PMI_COUNT(PMI_CNT_ADOPT);
            }
            if (st == PMI_LANE_FREE &&
                atomic_compare_exchange_strong(&h->lanes[i].state, &z, PMI_LANE_BUSY)) {
                uint64_t bit = 1ull << (i % 64);
                if (!(atomic_load_explicit(&h->lane_used[i / 64], memory_order_relaxed) & bit))
                    atomic_fetch_or_explicit(&h->lane_used[i / 64], bit, memory_order_release);
                if (k >= 2) PMI_COUNT(PMI_CNT_OFFPAIR);
                *out = i;
                return PM_OK;
            }
        }
        if (deferred) {
            PMI_COUNT(PMI_CNT_STARVE);
            int rc = settle_round(h);
            if (rc < 0) return rc;
        }
        /* every lane still taken after a few tries: a lane holder (or a dependency) is not
         * running -- preempted, or a Python thread waiting for the GIL. Yield rather than
         * spin on barriers: each settle round is one (an msync on a file) */
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

/* words_of -- the offsets of the words a commit applies (CHECK entries apply nothing). */
static uint32_t words_of(const struct pmd_redo_entry *e, uint32_t count, uint64_t *out, uint32_t max) {
    uint32_t n = 0;
    for (uint32_t i = 0; i < count; i++)
        if ((e[i].off_op & PMD_REDO_OP_MASK) != PMD_REDO_OP_CHECK) {
            if (n < max) out[n] = e[i].off_op & ~(uint64_t)PMD_REDO_OP_MASK;
            n++;
        }
    return n;
}

static int redo_commit_log(pm_heap *h, const struct pmd_redo_entry *entries, uint32_t count,
                           const struct pmi_range *extra, uint32_t nextra) {
    if (count == 0) {
        if (nextra) pmi_persist_ranges(h, extra, nextra);  /* durable: the caller's data */
        return PM_OK;
    }
    if (count > h->lane_capacity) return PM_E_TOO_BIG;
    if (pmi_failed(h)) return PM_E_IO;
    PMI_COUNT(PMI_CNT_COMMIT);
    for (uint32_t i = 0; i < count && i < 8; i++)     /* the slots step 2 locks: start their misses now */
        __builtin_prefetch((const void *)&h->slots[slot_of(h, entries[i].off_op & ~(uint64_t)PMD_REDO_OP_MASK)], 1);
    struct tl_redo *t = tl_for(h);
    if (!t) return PM_E_NOMEM;
    uint32_t lane;
    int rc = lane_acquire(h, t, &lane);   /* step 1; may settle lanes with a barrier of its own (tl_bar) */
    if (rc) return rc;
    struct pmi_lane *l = &h->lanes[lane];
    struct bar *b = bar_start(h, 1 + (size_t)nextra);
    if (!b) { atomic_store_explicit(&l->state, PMI_LANE_FREE, memory_order_release); return PM_E_NOMEM; }
    uint64_t lo = lane_off(h, lane);
    uint64_t prev_seq = atomic_load_explicit(&l->seq, memory_order_relaxed);

    /* step 2: seq and dependencies from the word slots */
    uint64_t *deps = t->deps, seq;
    uint32_t ndeps;
    rc = word_chain(h, lane, entries, count, deps, &ndeps, &seq);
    if (rc) { atomic_store_explicit(&l->state, PMI_LANE_FREE, memory_order_release); return rc; }

    /* step 3: entries, seq and seal, all in this lane; the seal's CRC covers the rest (L3) */
    pmi_write(h, lo + PMD_LANE_HDR_SIZE, entries, (uint64_t)count * PMD_REDO_ENTRY_SIZE);
    pmi_store8(h, lo + 8, seq);
    pmi_store8(h, lo, ((uint64_t)seal_crc(lane, seq, count, entries) << 32) | count);
#ifdef PMSTORE_MUTANT_APPLYFIRST
    pmi_redo_apply(h, entries, count);   /* mutant: steps reordered, the words are applied before the commit point */
#endif

    /* step 4: one barrier over this lane, the caller's data, this thread's DEFERRED lanes'
     * words and the seal words it cleared, and for each dependency: its seal word if it
     * is CLEARED, or its words if it is DEFERRED (claimed). */
    bar_add(b, lo, PMD_LANE_HDR_SIZE + (uint64_t)count * PMD_REDO_ENTRY_SIZE);
    b->own = lane;  /* older commits on this lane go with this seal word: no second flush */
#ifdef PMSTORE_MUTANT_NODATA
    nextra = 0;     /* mutant: the published data is left out of the commit-point barrier */
#endif
    for (uint32_t i = 0; i < nextra; i++) bar_add(b, extra[i].off, extra[i].size);
    bar_mine(h, b, t);
    uint32_t nd = 0;
    for (uint32_t k = 0; k < ndeps; k++) {
        int st = dep_state(h, deps[k]);
        if (st == DEP_GONE) continue;
        if (st == DEP_CLEARED) bar_gone(h, b, deps[k]);
        else if (st == PMI_LANE_DEFERRED && claim(h, cid_lane(deps[k]))) {
            PMI_COUNT(PMI_CNT_DEP_CLAIM);
            bar_settle(h, b, cid_lane(deps[k]), 1);
        }
        deps[nd++] = deps[k];
    }
    rc = bar_persist(h, b, t);          /* durable: this commit's log (the commit point), its data,
                                           earlier commits' words, cleared seals */
    if (rc) {
        /* The commit point may or may not be durable: the next open decides (replays the
         * lane or discards it). Apply nothing here; the heap refuses all writes from now. */
        atomic_store_explicit(&l->state, PMI_LANE_FREE, memory_order_release);
        return rc;
    }
    max_store(&l->gone_seq, prev_seq);  /* this lane's older commits: overwritten, durably */
    for (size_t k = 0; k < b->nclaimed; k++)   /* lanes still waiting on a dependency: retried next time */
        if (atomic_load_explicit(&h->lanes[b->claimed[k]].state, memory_order_relaxed) == PMI_LANE_DEFERRED)
            adopt(h, t, b->claimed[k]);

    /* step 5: apply */
#ifndef PMSTORE_MUTANT_APPLYFIRST
    pmi_redo_apply(h, entries, count);
#endif

    /* step 6: leave the words to the next barrier (the usual case), or persist them now */
    l->dep_count = 0;
    for (uint32_t k = 0; k < nd; k++)
        if (dep_state(h, deps[k]) != DEP_GONE) l->deps[l->dep_count++] = deps[k];
    uint32_t nwords = words_of(entries, count, l->word_off, PMI_DEFER_MAX);
    if (nwords > PMI_DEFER_MAX || l->dep_count > PMI_DEFER_MAX) {
        /* too many to list: persist the words now; wait out the dependencies */
        l->word_count = 0;
        b = bar_start(h, count);
        if (!b) { atomic_store_explicit(&l->state, PMI_LANE_FREE, memory_order_release); return PM_E_NOMEM; }
        for (uint32_t i = 0; i < count; i++)
            if ((entries[i].off_op & PMD_REDO_OP_MASK) != PMD_REDO_OP_CHECK)
                bar_add(b, entries[i].off_op & ~(uint64_t)PMD_REDO_OP_MASK, 8);
        rc = bar_persist(h, b, t);      /* durable: every applied word */
        if (rc) { atomic_store_explicit(&l->state, PMI_LANE_FREE, memory_order_release); return rc; }
        while (l->dep_count > PMI_DEFER_MAX) {
            rc = settle_round(h);
            if (rc < 0) { atomic_store_explicit(&l->state, PMI_LANE_FREE, memory_order_release); return rc; }
            deps_prune(h, l);
            if (rc == 1) sched_yield();
        }
    } else l->word_count = nwords;
    atomic_store_explicit(&l->state, PMI_LANE_DEFERRED, memory_order_release);
    adopt(h, t, lane);
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
        persist_entries(h, e, s[k].count);     /* durable: the replayed words */
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
