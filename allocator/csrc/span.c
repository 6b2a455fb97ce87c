/* span.c -- free page spans: best fit from size bins, coalescing on insert.
 *
 * Derived state only (rebuilt by the scan at open from descriptors that are FREE).
 * A free span's head slot holds its length; its tail slot points back at the head, so
 * an insert can merge with both neighbours in O(1). Callers hold span_lock.
 */
#include "alloc.h"

static uint32_t bin_of(uint32_t pages) { uint32_t b = 31 - __builtin_clz(pages); return b < PMI_BINS ? b : PMI_BINS - 1; }

static void bin_push(struct pmi_alloc *a, uint32_t head) {
    uint32_t b = bin_of(a->slots[head].free_pages);
    a->slots[head].bin_prev = PMI_NO_PAGE;
    a->slots[head].bin_next = a->bins[b];
    if (a->bins[b] != PMI_NO_PAGE) a->slots[a->bins[b]].bin_prev = head;
    a->bins[b] = head;
}

static void bin_remove(struct pmi_alloc *a, uint32_t head) {
    struct pmi_slot *s = &a->slots[head];
    if (s->bin_prev != PMI_NO_PAGE) a->slots[s->bin_prev].bin_next = s->bin_next;
    else a->bins[bin_of(s->free_pages)] = s->bin_next;
    if (s->bin_next != PMI_NO_PAGE) a->slots[s->bin_next].bin_prev = s->bin_prev;
}

static void set_free(struct pmi_alloc *a, uint32_t head, uint32_t pages) {
    a->slots[head].free_pages = pages;
    a->slots[head + pages - 1].free_head = head;
    bin_push(a, head);
}

/* pmi_span_insert -- return [head, head+pages) to the free spans, merged with free neighbours. */
void pmi_span_insert(struct pmi_alloc *a, uint32_t head, uint32_t pages) {
    a->free_page_count += pages;
    for (uint32_t i = head; i < head + pages; i++) a->slots[i].run = NULL, a->slots[i].head = PMI_NO_PAGE;
    uint32_t end = head + pages;
    if (end < a->page_count && a->slots[end].free_pages) {            /* merge the right neighbour */
        uint32_t n = a->slots[end].free_pages;
        bin_remove(a, end);
        a->slots[end].free_pages = 0;
        pages += n;
    }
    if (head > 0) {                                                     /* merge the left neighbour */
        uint32_t t = a->slots[head - 1].free_head;
        if (t != PMI_NO_PAGE && t < head && a->slots[t].free_pages == head - t) {
            bin_remove(a, t);
            pages += a->slots[t].free_pages;
            a->slots[t].free_pages = 0;
            head = t;
        }
    }
    set_free(a, head, pages);
}

/* pmi_span_take -- carve `pages` pages from the best-fitting free span; PMI_NO_PAGE if none. */
uint32_t pmi_span_take(struct pmi_alloc *a, uint32_t pages) {
    uint32_t best = PMI_NO_PAGE, best_len = UINT32_MAX;
    for (uint32_t b = bin_of(pages); b < PMI_BINS && best == PMI_NO_PAGE; b++)
        for (uint32_t s = a->bins[b]; s != PMI_NO_PAGE; s = a->slots[s].bin_next) {
            uint32_t len = a->slots[s].free_pages;
            if (len >= pages && len < best_len) { best = s; best_len = len; if (len == pages) break; }
        }
    if (best == PMI_NO_PAGE) return PMI_NO_PAGE;
    bin_remove(a, best);
    a->slots[best].free_pages = 0;
    a->slots[best + best_len - 1].free_head = PMI_NO_PAGE;
    if (best_len > pages) set_free(a, best + pages, best_len - pages);
    a->free_page_count -= pages;
    return best;
}

uint32_t pmi_span_largest(struct pmi_alloc *a) {
    uint32_t m = 0;
    for (int b = PMI_BINS - 1; b >= 0 && !m; b--)
        for (uint32_t s = a->bins[b]; s != PMI_NO_PAGE; s = a->slots[s].bin_next)
            if (a->slots[s].free_pages > m) m = a->slots[s].free_pages;
    return m;
}
