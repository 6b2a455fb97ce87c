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
#define HDR_SIZE 16u            /* record header; next[height] follows (FORMAT.md 4.7) */
#define CRC_FROM 4u             /* the record CRC covers header bytes [4, 16) */
#define TAIL_INLINE 18u         /* {u16 value_size; etag[16]}, then u32 value_crc32c above SMALL_MAX */
#define SMALL_MAX 256u          /* an inline value up to this size has no stored value_crc32c */
#define TAIL_EXT 36u            /* {u64 value_size; u64 value_off; u32 value_crc32c; etag[16]} */
#define MAX_HEIGHT 16u
#define KEY_MAX 1024u
#define INLINE_MAX 4096u
#define HEIGHT_MASK 0x1Fu       /* height_flags bits 0-4 */
#define FLAG_MD5_DERIVED 0x20u  /* height_flags bit 5: INLINE, value <= SMALL_MAX, tail = {u16 value_size} */
#define TAIL_DERIVED 2u
#define FLAG_INLINE 0x80u       /* height_flags bit 7 */
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
 * block (P4) holding height 1..16 with no flag of bad_flags (bit 6; bit 5, MD5_DERIVED, in a
 * version-2 store; MD5_DERIVED only INLINE with a value of <= 256 bytes), a key of 1..1024 bytes, its tail
 * (and an inline value of <= 4096 bytes) inside the block, a crc32c that holds (I2), an
 * external value of > 4096 bytes in an allocated block of its own that holds it (P4, I2),
 * a key above the previous one (I1) and, with verify, a value that matches its stored
 * value_crc32c (I4; a small inline value, whose CRC is not stored, is always checked,
 * through the record CRC). Fills
 * out[], offs[] and value_blocks[] (at most cap each) and returns the count; *stop_off is
 * the record it stopped at (0: the end of the list). */
int64_t pmc_walk0(const struct pmc_layout *L, const uint8_t *base, uint64_t head_off, int verify,
                  uint32_t bad_flags, struct pmc_record *out, uint64_t cap, uint64_t *stop_off, uint64_t *offs, uint64_t *value_blocks,
                  uint64_t *value_bytes) {
    *value_bytes = 0;
    const uint8_t *prev_key = NULL;
    uint32_t prev_len = 0;
    uint64_t n = 0, r = ld64(base + head_off + HDR_SIZE);
    for (; r; n++) {
        uint64_t bsize = pmc_block_size(L, base, r);
        if (n >= cap || bsize < HDR_SIZE + 8) break;
        const uint8_t *o = base + r;
        uint32_t hf = o[4], h = hf & HEIGHT_MASK, cs = o[5], ks = ld16(o + 6);
        uint32_t derived = hf & FLAG_MD5_DERIVED;
        if ((hf & bad_flags) || h < 1 || h > MAX_HEIGHT || ks < 1 || ks > KEY_MAX) break;
        if (derived && !(hf & FLAG_INLINE)) break;
        uint64_t t = HDR_SIZE + 8ull * h;                       /* the tail, from r */
        if (t + (!(hf & FLAG_INLINE) ? TAIL_EXT : derived ? TAIL_DERIVED : TAIL_INLINE + 4) > bsize) break;
        uint32_t tail = !(hf & FLAG_INLINE) ? TAIL_EXT : derived ? TAIL_DERIVED
                      : TAIL_INLINE + (ld16(o + t) > SMALL_MAX ? 4 : 0);
        uint64_t end = t + tail + ks + cs;                      /* the end of the content type, from r */
        if (end > bsize) break;
        uint64_t vsize, voff, vblock;
        uint32_t vcrc;
        static const uint8_t no_etag[16];       /* derived: the checker does not compute it */
        const uint8_t *etag;
        if (hf & FLAG_INLINE) {
            vsize = ld16(o + t), etag = derived ? no_etag : o + t + 2;
            if (vsize > INLINE_MAX || vsize > bsize - end || (derived && vsize > SMALL_MAX)) break;
            voff = r + end, vblock = 0;
            vcrc = vsize > SMALL_MAX ? ld32(o + t + TAIL_INLINE) : pmc_crc32c(0, base + voff, vsize);
        } else {
            vsize = ld64(o + t), voff = vblock = ld64(o + t + 8), vcrc = ld32(o + t + 16), etag = o + t + 20;
            if (vsize <= INLINE_MAX) break;
            uint64_t vb = pmc_block_size(L, base, voff);
            if (!vb || vsize > vb) break;
        }
        uint8_t le[4] = {(uint8_t)vcrc, (uint8_t)(vcrc >> 8), (uint8_t)(vcrc >> 16), (uint8_t)(vcrc >> 24)};
        uint32_t crc = pmc_crc32c(pmc_crc32c(pmc_crc32c(0, le, 4), o + CRC_FROM, HDR_SIZE - CRC_FROM), o + t, end - t);
        if (crc != ld32(o)) break;
        uint64_t key_off = r + t + tail;
        if (prev_key && !key_less(prev_key, prev_len, base + key_off, ks)) break;
        if (verify && vsize > SMALL_MAX && pmc_crc32c(0, base + voff, vsize) != vcrc) break;
        struct pmc_record *rec = &out[n];
        *rec = (struct pmc_record){.off = r, .value_off = voff, .value_size = vsize, .value_block = vblock,
                                   .key_off = key_off, .key_size = ks, .height = h, .mtime_ns = ld64(o + 8),
                                   .crc32c = ld32(o), .value_crc32c = vcrc, .height_flags = (uint8_t)hf,
                                   .ctype_size = (uint8_t)cs};
        memcpy(rec->etag, etag, 16);
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
