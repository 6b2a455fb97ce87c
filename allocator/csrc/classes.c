/* classes.c -- the size-class table (FORMAT.md 5; table ID PMD_CLASS_TABLE_ID).
 *
 * 16..256 B in steps of 8 (a small object record wastes at most 7 bytes: FORMAT.md 4.7),
 * then 8 classes per doubling up to 64 KiB: above 256 B a block wastes less than 12.5% of
 * its size. Blocks are 8-byte aligned. Classes up to 8 KiB live in 1-page runs,
 * larger ones in 8-page runs; a run starts with its 512-byte bitmap.
 */
#include "alloc.h"

static uint32_t class_size[PMD_CLASS_COUNT];

/* filled at load, before any heap can exist: the lookups on every alloc check nothing */
__attribute__((constructor)) static void init(void) {
    uint32_t n = 0;
    for (uint32_t s = 16; s <= 256; s += 8) class_size[n++] = s;
    for (uint32_t p = 256; p < PMD_CLASS_MAX_SIZE; p *= 2)
        for (uint32_t k = 1; k <= 8; k++) class_size[n++] = p + k * (p / 8);
}

uint32_t pmi_class_size(uint32_t cls) { return class_size[cls]; }

uint32_t pmi_class_pages(uint32_t cls) { return pmi_class_size(cls) <= 8192 ? 1 : 8; }

uint32_t pmi_class_capacity(uint32_t cls) {
    return (pmi_class_pages(cls) * PMD_PAGE_SIZE - PMD_RUN_BITMAP_SIZE) / pmi_class_size(cls);
}

/* pmi_class_of -- smallest class that holds size bytes; O(1) for <= 256, else a short scan
 * from the power of two below. */
uint32_t pmi_class_of(uint64_t size) {
    if (size <= 256) return size <= 16 ? 0 : (uint32_t)((size + 7) / 8 - 2);
    if (size > PMD_CLASS_MAX_SIZE) return PMD_CLASS_COUNT;
    uint32_t log = 63 - __builtin_clzll(size - 1);      /* 2^log < size <= 2^(log+1) */
    uint32_t i = 31 + (log - 8) * 8;                    /* first class above 2^log */
    while (class_size[i] < size) i++;
    return i;
}

uint32_t pm_class_size(uint32_t cls) { return cls < PMD_CLASS_COUNT ? pmi_class_size(cls) : 0; }
uint32_t pm_class_pages(uint32_t cls) { return cls < PMD_CLASS_COUNT ? pmi_class_pages(cls) : 0; }
uint32_t pm_class_capacity(uint32_t cls) { return cls < PMD_CLASS_COUNT ? pmi_class_capacity(cls) : 0; }
