/* walk.h -- the checker's hot loops (walk.c), read by the cffi cdef of recovery/_build.py.
 *
 * An independent implementation of FORMAT.md 4.4-4.7 for recovery/check.py: it shares no
 * code or header with the allocator or the store, so their bugs cannot hide here.
 */
#ifndef PMC_WALK_H
#define PMC_WALK_H
#include <stdint.h>

#define PMC_CLASS_COUNT 95

/* What the walker needs of the heap's geometry; the class table comes from recovery/format.py. */
struct pmc_layout {
    uint64_t file_size;
    uint64_t meta_off;
    uint64_t data_off;
    uint32_t class_size[95];    /* block bytes */
    uint32_t class_pages[95];   /* pages per run */
    uint32_t class_cap[95];     /* blocks per run */
};

/* One record that passed every level-0 check (I1, I2, I4, P4), decoded (FORMAT.md 4.7).
 * recovery/check_store.py reads an array of these through a struct.Struct (_PMC_RECORD):
 * change both together. */
struct pmc_record {
    uint64_t off;
    uint64_t value_off;         /* where the value bytes are */
    uint64_t value_size;        /* bytes */
    uint64_t value_block;       /* the value's own block, 0 when inline */
    uint64_t key_off;
    uint32_t key_size;          /* bytes */
    uint32_t height;            /* 1..16 */
    uint64_t mtime_ns;          /* ns since the Unix epoch */
    uint32_t crc32c;            /* the record's CRC32C, as found */
    uint32_t value_crc32c;      /* stored (external) or computed from the bytes (inline) */
    uint8_t  height_flags;      /* as found: height | INLINE */
    uint8_t  ctype_size;        /* bytes */
    uint8_t  etag[16];          /* MD5 of the value, as found; zero when MD5_DERIVED */
    uint8_t  pad[6];            /* 0: the struct is 88 bytes */
};

uint32_t pmc_crc32c(uint32_t crc, const uint8_t *p, uint64_t n);
int64_t pmc_run_blocks(const uint8_t *base, uint64_t page_off, uint32_t block_size, uint32_t capacity,
                       uint64_t *out, uint64_t cap);
uint64_t pmc_block_size(const struct pmc_layout *L, const uint8_t *base, uint64_t off);
int64_t pmc_walk0(const struct pmc_layout *L, const uint8_t *base, uint64_t head_off, int verify,
                  uint32_t bad_flags, struct pmc_record *out, uint64_t cap, uint64_t *stop_off, uint64_t *offs, uint64_t *value_blocks,
                  uint64_t *value_bytes);
int pmc_walk_upper(const uint8_t *base, uint64_t head_off, const struct pmc_record *recs, uint64_t n);

#endif
