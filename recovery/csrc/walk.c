/* walk.c -- the independent checker's hot loops: run bitmaps to block offsets (P2) and
 * the level-0 walk of a store's skip list (I1, I2, I4, P4; FORMAT.md 4.4-4.7).
 *
 * The fast path only: it stops at the first record that is not plainly valid, and
 * recovery/check_store.py's Python code says why (the same rules, with the messages).
 * Reads a mapping; never writes. Shares no code with the allocator or the store.
 */
#include <string.h>
#include "walk.h"

#define PAGE_SIZE 65536u
#define BITMAP_SIZE 512u
#define HDR_SIZE 64u
#define HDR_CRC_COVERS 56u
#define MAX_HEIGHT 16u
#define KEY_MAX 1024u
#define CTYPE_MAX 255u
#define FLAG_INLINE 1u
#define DESC_RUN 1u
#define DESC_SPAN 2u
#define RUN_MAX_PAGES 8u

static inline uint64_t ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint16_t ld16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }

/* ---------------------------------------------------------------- CRC32C (Castagnoli) */
static uint32_t table[256];
static int hw = -1;

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (c & 1 ? 0x82F63B78u : 0);
        table[i] = c;
    }
    __builtin_cpu_init();
    hw = __builtin_cpu_supports("sse4.2");
}

__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t c, const uint8_t *p, uint64_t n) {
    uint64_t c64 = c;
    for (; n >= 8; n -= 8, p += 8) c64 = __builtin_ia32_crc32di(c64, ld64(p));
    c = (uint32_t)c64;
    for (; n; n--, p++) c = __builtin_ia32_crc32qi(c, *p);
    return c;
}

/* pmc_crc32c -- CRC32C of p[0:n] continuing from crc (0 to start), as recovery/format.py. */
uint32_t pmc_crc32c(uint32_t crc, const uint8_t *p, uint64_t n) {
    if (hw < 0) crc_init();    /* callers hold the GIL: no race on first use */
    uint32_t c = ~crc;
    if (hw) c = crc_hw(c, p, n);
    else for (; n; n--, p++) c = table[(c ^ *p) & 0xFF] ^ (c >> 8);
    return ~c;
}

/* ---------------------------------------------------------------- allocation */
/* pmc_run_blocks -- offsets of the allocated blocks of the run at page_off, lowest first.
 * Returns their count, or -(index + 1) of the first bit set at or beyond capacity (P2). */
int64_t pmc_run_blocks(const uint8_t *base, uint64_t page_off, uint32_t block_size, uint32_t capacity,
                       uint64_t *out, uint64_t cap) {
    int64_t n = 0;
    for (uint32_t w = 0; w < BITMAP_SIZE / 8; w++) {
        uint64_t word = ld64(base + page_off + 8 * w);
        while (word) {
            uint32_t idx = w * 64 + (uint32_t)__builtin_ctzll(word);
            word &= word - 1;
            if (idx >= capacity) return -(int64_t)idx - 1;
            if ((uint64_t)n < cap) out[n] = page_off + BITMAP_SIZE + (uint64_t)idx * block_size;
            n++;
        }
    }
    return n;
}

/* pmc_block_size -- the size of the allocated block that starts at off, 0 if none does
 * (a free block, the middle of one, or outside the data area). */
uint64_t pmc_block_size(const struct pmc_layout *L, const uint8_t *base, uint64_t off) {
    if (off < L->data_off || off >= L->file_size) return 0;
    uint64_t page = (off - L->data_off) / PAGE_SIZE, first = page, d = 0;
    for (uint32_t k = 0; k < RUN_MAX_PAGES; k++) {       /* a run's later pages have FREE descriptors */
        d = ld64(base + L->meta_off + 8 * first);
        if (d || first == 0) break;
        first--;
    }
    uint32_t kind = d & 0xFF, cls = (d >> 8) & 0xFF;
    uint64_t pages = (d >> 16) & 0xFFFFFFFFu, start = L->data_off + first * PAGE_SIZE;
    if (!d || (d >> 48) || first + pages <= page) return 0;
    if (kind == DESC_SPAN) return cls == 0 && off == start ? pages * PAGE_SIZE : 0;
    if (kind != DESC_RUN || cls >= PMC_CLASS_COUNT || pages != L->class_pages[cls] || off < start + BITMAP_SIZE)
        return 0;
    uint64_t rel = off - start - BITMAP_SIZE, size = L->class_size[cls], idx = rel / size;
    if (rel % size || idx >= L->class_cap[cls]) return 0;
    return (ld64(base + start + 8 * (idx / 64)) >> (idx % 64)) & 1 ? size : 0;
}

/* ---------------------------------------------------------------- the skip list */
static int key_less(const uint8_t *a, uint32_t alen, const uint8_t *b, uint32_t blen) {
    int c = memcmp(a, b, alen < blen ? alen : blen);
    return c < 0 || (c == 0 && alen < blen);
}

/* pmc_walk0 -- follow level 0 from the head while every record is valid: an allocated
 * block (P4) holding magic POBJ, height 1..16, key 1..1024 bytes, content type <= 255
 * bytes, a header CRC that holds (I2), its value inside its block or in an allocated
 * block of its own (P4), a key above the previous one (I1) and, with verify, a value
 * that matches its CRC (I4). Fills out[], offs[] and value_blocks[] (at most cap each)
 * and returns the count; *stop_off is the record it stopped at (0: the end of the list). */
int64_t pmc_walk0(const struct pmc_layout *L, const uint8_t *base, uint64_t head_off, int verify,
                  struct pmc_record *out, uint64_t cap, uint64_t *stop_off, uint64_t *offs, uint64_t *value_blocks,
                  uint64_t *value_bytes) {
    *value_bytes = 0;
    const uint8_t *prev_key = NULL;
    uint32_t prev_len = 0;
    uint64_t n = 0, r = ld64(base + head_off + HDR_SIZE);
    for (; r; n++) {
        uint64_t bsize = pmc_block_size(L, base, r);
        if (n >= cap || bsize < HDR_SIZE + 8) break;
        const uint8_t *o = base + r;
        uint32_t h = o[4], flags = o[5], ks = ld16(o + 6), cs = ld16(o + 36);
        uint64_t vsize = ld64(o + 8), vfield = ld64(o + 16);
        if (memcmp(o, "POBJ", 4) || h < 1 || h > MAX_HEIGHT || ks < 1 || ks > KEY_MAX || cs > CTYPE_MAX) break;
        uint64_t meta = (HDR_SIZE + 8ull * h + ks + cs + 7) & ~7ull, key_off = r + HDR_SIZE + 8ull * h;
        if (meta > bsize) break;
        uint32_t crc = pmc_crc32c(pmc_crc32c(0, o, HDR_CRC_COVERS), base + key_off, (uint64_t)ks + cs);
        if (crc != ld32(o + 56)) break;
        uint64_t voff, vblock;
        if (flags & FLAG_INLINE) {
            voff = r + meta, vblock = 0;
            if (vsize > bsize - meta) break;
        } else {
            voff = vblock = vfield;
            uint64_t vb = pmc_block_size(L, base, voff);
            if (!vb || vsize > vb) break;
        }
        if (prev_key && !key_less(prev_key, prev_len, base + key_off, ks)) break;
        if (verify && pmc_crc32c(0, base + voff, vsize) != ld32(o + 32)) break;
        out[n] = (struct pmc_record){r, voff, vsize, vblock, key_off, ks, h, {0}};
        memcpy(out[n].hdr, o, HDR_SIZE);
        offs[n] = r, value_blocks[n] = vblock, *value_bytes += vsize;
        prev_key = base + key_off, prev_len = ks;
        r = ld64(o + HDR_SIZE);
    }
    *stop_off = r;
    return (int64_t)n;
}

/* pmc_walk_upper -- I1 for levels 1..15 over the n records level 0 holds: level l must
 * link exactly the records taller than l, in level-0 order. Returns 0, or the first level
 * that does not (recovery/check_store.py then says how). */
int pmc_walk_upper(const uint8_t *base, uint64_t head_off, const struct pmc_record *recs, uint64_t n) {
    for (uint32_t l = 1; l < MAX_HEIGHT; l++) {
        uint64_t r = ld64(base + head_off + HDR_SIZE + 8ull * l), i = 0;
        for (;; i++) {
            while (i < n && recs[i].height <= l) i++;
            if (i == n) { if (r) return (int)l; break; }
            if (r != recs[i].off) return (int)l;
            r = ld64(base + r + HDR_SIZE + 8ull * l);
        }
    }
    return 0;
}
