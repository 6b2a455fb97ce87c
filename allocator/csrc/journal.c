/* journal.c -- the barrier journal (FORMAT.md 4.8, 7.11, J1-J3).
 *
 * On a disk, a barrier that msyncs its ranges in place writes one OS page per scattered
 * range (a lane, a record, the words of the last commit), and the device pays for each.
 * A heap with a journal region makes a barrier append a copy of its ranges to that
 * region instead, and msync only the pages just appended: one sequential write. The
 * ranges' own pages stay dirty in the page cache until a checkpoint (the journal is
 * full, too many heap pages are dirty, or close) msyncs the whole heap and starts a
 * new epoch, which retires every record. Open replays the records of the current
 * epoch in order before the redo lanes are read, so the heap it hands to recovery
 * holds every barrier's bytes: exactly what in-place barriers would have left.
 *
 * Everything above this file keeps its meaning: a barrier still makes its ranges
 * durable when it returns (they are in the journal), which is all the redo protocol
 * (7.1) relies on. Used on the msync backend, and under the crash simulator's trace.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include "pmi.h"

/* Checkpoint once this many distinct heap pages were journaled since the last one: it
 * bounds the pages the checkpoint's msync writes (its stall) on a large heap. */
#define JNL_PAGE_LIMIT 4096u
#define JNL_SMALL 64            /* ranges sorted on the stack; more take a malloc */

struct pmi_journal {
    pthread_mutex_t lock;       /* appends and checkpoints, in order */
    uint64_t off, size;         /* the region: header page, then records */
    uint64_t epoch;             /* the current epoch (J1) */
    uint64_t tail;              /* offset of the next record */
    uint64_t seq;               /* seq of the next record in this epoch */
    uint8_t *buf;               /* a record under construction, size - PMD_JNL_HDR_SIZE bytes */
    uint64_t *pages;            /* bit per OS page of the reserved range: journaled since the checkpoint */
    uint64_t page_count;        /* bits set in pages */
    uint64_t records, bytes, checkpoints;   /* since open */
};

/* journaling: on the msync backend, and under a trace (the crash simulator's model of it) */
static int in_use(pm_heap *h) { return h->backend == PM_BACKEND_MSYNC || h->tracing; }

static uint32_t rec_crc(uint64_t epoch, const uint8_t *rec, uint64_t size) {
    uint32_t c = pm_crc32c(0, &epoch, 8);
    return pm_crc32c(c, rec + 4, size - 4);
}

static void sync_pages(pm_heap *h, uint64_t lo, uint64_t hi) {
    if (h->tracing) { pmi_trace_flush(h, lo, hi - lo); pmi_trace_fence(h); }
    if (h->backend != PM_BACKEND_MSYNC) return;
    lo &= ~(uint64_t)(PMD_OS_PAGE_SIZE - 1);
    hi = (hi + PMD_OS_PAGE_SIZE - 1) & ~(uint64_t)(PMD_OS_PAGE_SIZE - 1);
    if (msync(h->base + lo, hi - lo, MS_SYNC) && !atomic_load(&h->failed_errno))
        atomic_store(&h->failed_errno, errno ? errno : EIO);   /* sticky: durability is unknown */
}

/* checkpoint -- every page of the heap durable, then a new epoch. pre: j->lock held. */
static void checkpoint(pm_heap *h, struct pmi_journal *j) {
    sync_pages(h, 0, atomic_load(&h->map_size));
    /* durable: the whole heap, so every record of this epoch is redundant */
    j->epoch++;
    pmi_store8(h, j->off, j->epoch);
    sync_pages(h, j->off, j->off + 8);
    /* durable: the new epoch; the old records no longer pass their CRC (J1) */
    j->tail = j->off + PMD_JNL_HDR_SIZE;
    j->seq = 0;
    if (j->page_count) memset(j->pages, 0, ((h->reserve_size / PMD_OS_PAGE_SIZE + 63) / 64) * 8);
    j->page_count = 0;
    j->checkpoints++;
}

static int range_cmp(const void *a, const void *b) {
    const struct pmi_range *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

/* pmi_journal_persist -- the barrier, journaled: returns 0 if the caller must persist
 * in place instead (no journal in use). Ranges below the root word (the header copies,
 * which open reads before any replay) are persisted in place, in the same call. */
int pmi_journal_persist(pm_heap *h, const struct pmi_range *r, size_t n) {
    struct pmi_journal *j = h->jnl;
    if (!in_use(h)) return 0;
    struct pmi_range small[JNL_SMALL], *v = n <= JNL_SMALL ? small : malloc(n * sizeof *v);
    if (!v) {   /* out of DRAM: a checkpoint is this barrier (an in-place one is not: an older
                   record of these ranges would replay over it) */
        pm_journal_checkpoint(h);
        return 1;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (!r[i].size) continue;
        if (r[i].off < PMD_ROOT_OFF) { pmi_persist_direct(h, &r[i], 1); continue; }  /* durable: a header copy */
        uint64_t lo = r[i].off & ~7ull, hi = (r[i].off + r[i].size + 7) & ~7ull;
        v[k++] = (struct pmi_range){lo, hi - lo};
    }
    qsort(v, k, sizeof *v, range_cmp);
    size_t m = 0;           /* merge overlapping and touching ranges: each byte once (J2) */
    for (size_t i = 0; i < k; i++) {
        if (m && v[i].off <= v[m - 1].off + v[m - 1].size) {
            uint64_t end = v[i].off + v[i].size;
            if (end > v[m - 1].off + v[m - 1].size) v[m - 1].size = end - v[m - 1].off;
        } else v[m++] = v[i];
    }
    uint64_t size = PMD_JNL_REC_HDR_SIZE + 16 * (uint64_t)m;
    for (size_t i = 0; i < m; i++) size += v[i].size;
    pthread_mutex_lock(&j->lock);
    if (h->tracing) pmi_trace_hook_defer();
    if (m == 0) goto out;
    if (size > j->size - PMD_JNL_HDR_SIZE || j->tail + size > j->off + j->size || j->page_count >= JNL_PAGE_LIMIT) {
        checkpoint(h, j);   /* durable: the whole heap, these ranges with it */
        goto out;
    }
    uint8_t *p = j->buf;
    struct pmd_jnl_rec hdr = {0, (uint32_t)size, j->seq, (uint32_t)m, 0};
    memcpy(p, &hdr, sizeof hdr);
    uint8_t *d = p + PMD_JNL_REC_HDR_SIZE + 16 * m;
    for (size_t i = 0; i < m; i++) {
        memcpy(p + PMD_JNL_REC_HDR_SIZE + 16 * i, &v[i], 16);
        memcpy(d, h->base + v[i].off, v[i].size);   /* the bytes as they are now: later writes
                                                        come in a later record (appends are ordered) */
        d += v[i].size;
        for (uint64_t pg = v[i].off / PMD_OS_PAGE_SIZE; pg <= (v[i].off + v[i].size - 1) / PMD_OS_PAGE_SIZE; pg++)
            if (!(j->pages[pg / 64] & (1ull << (pg % 64)))) { j->pages[pg / 64] |= 1ull << (pg % 64); j->page_count++; }
    }
    uint32_t crc = rec_crc(j->epoch, p, size);
    memcpy(p, &crc, 4);
    pmi_write(h, j->tail, p, size);
#ifndef PMSTORE_MUTANT_JNLNOSYNC
    sync_pages(h, j->tail, j->tail + size);
#endif
    /* durable: the record, so every range of this barrier (replayed at open, J2) */
    j->tail += size;
    j->seq++;
    j->records++;
    j->bytes += size;
out:
    pthread_mutex_unlock(&j->lock);
    if (h->tracing) pmi_trace_hook_resume(h);
    if (v != small) free(v);
    return 1;
}

/* pm_journal_init -- the heap's journal region (size 0: none). Barriers use it on the
 * msync backend and under a trace (in_use); elsewhere open still replays and close
 * retires it. */
int pm_journal_init(pm_heap *h, uint64_t off, uint64_t size) {
    if (h->jnl || !size) return h->jnl ? PM_E_ARG : PM_OK;
    if (off % PMD_OS_PAGE_SIZE || size % PMD_OS_PAGE_SIZE || size < 2 * PMD_JNL_HDR_SIZE || off < PMD_REDO_OFF
        || !pmi_in_range(h, off, size))
        return PM_E_ARG;
    struct pmi_journal *j = calloc(1, sizeof *j);
    if (!j) return PM_E_NOMEM;
    j->buf = malloc(size - PMD_JNL_HDR_SIZE);
    j->pages = calloc((h->reserve_size / PMD_OS_PAGE_SIZE + 63) / 64, 8);
    if (!j->buf || !j->pages) { free(j->buf); free(j->pages); free(j); return PM_E_NOMEM; }
    pthread_mutex_init(&j->lock, NULL);
    j->off = off;
    j->size = size;
    j->epoch = pm_load8(h, off);
    j->tail = off + PMD_JNL_HDR_SIZE;
    h->jnl = j;
    return PM_OK;
}

/* valid_ranges -- J2 for one record whose CRC holds: its ranges are 8-aligned, sorted,
 * disjoint, at or past the root word, outside the journal, inside the mapping, and their
 * bytes fill the record exactly. */
static int valid_ranges(pm_heap *h, struct pmi_journal *j, const uint8_t *rec, const struct pmd_jnl_rec *hdr) {
    uint64_t map = atomic_load(&h->map_size), body = hdr->size - PMD_JNL_REC_HDR_SIZE, prev_end = PMD_ROOT_OFF;
    if (hdr->range_count == 0 || hdr->reserved || body / 16 < hdr->range_count) return 0;
    uint64_t data = body - 16ull * hdr->range_count;
    for (uint32_t i = 0; i < hdr->range_count; i++) {
        struct pmi_range g;
        memcpy(&g, rec + PMD_JNL_REC_HDR_SIZE + 16 * i, 16);
        if (g.off % 8 || g.size % 8 || !g.size || g.off < prev_end || g.size > map || g.off > map - g.size
            || (g.off < j->off + j->size && g.off + g.size > j->off) || g.size > data)
            return 0;
        data -= g.size;
        prev_end = g.off + g.size;
    }
    return data == 0;
}

/* pm_journal_recover -- replay every record of the current epoch, in order, up to the
 * first that fails its CRC or seq (torn or stale: the barrier never returned); then a
 * checkpoint. A record whose CRC holds over impossible ranges is corruption: nothing is
 * applied and PM_E_CORRUPT is returned (J2). */
int pm_journal_recover(pm_heap *h, struct pm_journal_report *out) {
    memset(out, 0, sizeof *out);
    struct pmi_journal *j = h->jnl;
    if (!j) return PM_OK;
    uint64_t pos = j->off + PMD_JNL_HDR_SIZE, end = j->off + j->size, seq = 0;
    const uint8_t *base = h->base;
    for (int apply = 0; apply < 2; apply++) {   /* validate every record, then apply them */
        pos = j->off + PMD_JNL_HDR_SIZE;
        for (seq = 0; pos + PMD_JNL_REC_HDR_SIZE <= end; seq++) {
            struct pmd_jnl_rec hdr;
            memcpy(&hdr, base + pos, sizeof hdr);
            if (hdr.size < PMD_JNL_REC_HDR_SIZE || hdr.size % 8 || hdr.size > end - pos || hdr.seq != seq
                || rec_crc(j->epoch, base + pos, hdr.size) != hdr.crc32c)
                break;      /* the end of the epoch's records */
            if (!apply && !valid_ranges(h, j, base + pos, &hdr)) {
                out->bad_off = pos;
                return PM_E_CORRUPT;
            }
#ifdef PMSTORE_MUTANT_NOREPLAY
            if (apply) break;
#endif
            if (apply) {
                const uint8_t *d = base + pos + PMD_JNL_REC_HDR_SIZE + 16ull * hdr.range_count;
                for (uint32_t i = 0; i < hdr.range_count; i++) {
                    struct pmi_range g;
                    memcpy(&g, base + pos + PMD_JNL_REC_HDR_SIZE + 16 * i, 16);
                    pmi_write(h, g.off, d, g.size);
                    d += g.size;
                }
                out->bytes += hdr.size;
            }
            pos += hdr.size;
        }
    }
    out->records = seq;
    int rc = pm_journal_checkpoint(h);  /* durable: the replayed bytes, and an epoch that retires them */
    j->checkpoints = 0;
    return rc;
}

/* pm_journal_checkpoint -- the whole heap durable and the journal empty: close, the end of
 * open's replay, and a barrier that finds no DRAM for its ranges. */
int pm_journal_checkpoint(pm_heap *h) {
    struct pmi_journal *j = h->jnl;
    if (!j) return PM_OK;
    pthread_mutex_lock(&j->lock);
    if (h->tracing) pmi_trace_hook_defer();
    checkpoint(h, j);
    pthread_mutex_unlock(&j->lock);
    if (h->tracing) pmi_trace_hook_resume(h);
    return pmi_failed(h);
}

void pm_journal_stats(pm_heap *h, struct pm_journal_stats *out) {
    memset(out, 0, sizeof *out);
    struct pmi_journal *j = h->jnl;
    if (!j) return;
    pthread_mutex_lock(&j->lock);
    out->in_use = (uint32_t)in_use(h);
    out->records = j->records;
    out->bytes = j->bytes;
    out->checkpoints = j->checkpoints;
    out->epoch = j->epoch;
    out->dirty_pages = j->page_count;
    pthread_mutex_unlock(&j->lock);
}

void pmi_journal_free(pm_heap *h) {
    struct pmi_journal *j = h->jnl;
    if (!j) return;
    pthread_mutex_destroy(&j->lock);
    free(j->buf); free(j->pages); free(j);
    h->jnl = NULL;
}
