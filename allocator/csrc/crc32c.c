/* crc32c.c -- CRC32C (Castagnoli), SSE4.2 instruction where present, table otherwise.
 *
 * Seals redo lanes (FORMAT.md L3) and header copies (H3). Both paths give identical
 * results; tests/unit/test_pmem.py checks them against each other and a known vector.
 */
#include <stdint.h>
#include <string.h>
#include <cpuid.h>
#include <pthread.h>
#include "pm_api.h"

static uint32_t crc_table[8][256];
static int crc_hw = 0;
static void shift_init(void);
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
        crc_table[0][i] = c;
    }
    for (int t = 1; t < 8; t++)
        for (int i = 0; i < 256; i++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
    unsigned a, b, c, d;
    crc_hw = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_SSE4_2) ? 1 : 0;
    shift_init();
}

/* pm_crc32c_sw -- slicing-by-8 table CRC; crc is the running value (0 to start). */
uint32_t pm_crc32c_sw(uint32_t crc, const void *buf, size_t len) {
    pthread_once(&crc_once, crc_init);
    const uint8_t *p = buf;
    crc = ~crc;
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= crc;
        crc = crc_table[7][w & 0xff] ^ crc_table[6][(w >> 8) & 0xff] ^
              crc_table[5][(w >> 16) & 0xff] ^ crc_table[4][(w >> 24) & 0xff] ^
              crc_table[3][(w >> 32) & 0xff] ^ crc_table[2][(w >> 40) & 0xff] ^
              crc_table[1][(w >> 48) & 0xff] ^ crc_table[0][w >> 56];
        p += 8; len -= 8;
    }
    while (len--) crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xff];
    return ~crc;
}

/* Three streams at once: the crc32 instruction takes 3 cycles but starts one per cycle,
 * so a long buffer is cut into three SHORT-byte stripes whose CRCs run side by side and
 * are then joined: reg(A || B) = shift(reg(A), |B|) ^ reg0(B) (a CRC register is linear
 * over GF(2)). shift_short[][] applies SHORT zero bytes to a register (crc_init). */
#define CRC_SHORT 256
static uint32_t shift_short[4][256];

static uint32_t gf2_times(const uint32_t *mat, uint32_t vec) {
    uint32_t sum = 0;
    for (; vec; vec >>= 1, mat++) if (vec & 1) sum ^= *mat;
    return sum;
}

static void gf2_square(uint32_t *square, const uint32_t *mat) {
    for (int n = 0; n < 32; n++) square[n] = gf2_times(mat, mat[n]);
}

/* zeros_op -- the operator that feeds len zero bytes (len a power of two) through a register. */
static void zeros_op(uint32_t *even, size_t len) {
    uint32_t odd[32], row = 1;
    odd[0] = 0x82F63B78u;                   /* one zero bit */
    for (int n = 1; n < 32; n++, row <<= 1) odd[n] = row;
    gf2_square(even, odd);                  /* 2 bits */
    gf2_square(odd, even);                  /* 4 bits */
    for (;;) {
        gf2_square(even, odd);              /* 8 bits = 1 byte, then 4, 16, ... */
        if ((len >>= 1) == 0) return;
        gf2_square(odd, even);
        if ((len >>= 1) == 0) { memcpy(even, odd, sizeof odd); return; }
    }
}

static void shift_init(void) {
    uint32_t op[32];
    zeros_op(op, CRC_SHORT);
    for (uint32_t n = 0; n < 256; n++)
        for (int k = 0; k < 4; k++) shift_short[k][n] = gf2_times(op, n << (8 * k));
}

static uint32_t shift(uint32_t reg) {
    return shift_short[0][reg & 0xff] ^ shift_short[1][(reg >> 8) & 0xff] ^
           shift_short[2][(reg >> 16) & 0xff] ^ shift_short[3][reg >> 24];
}

__attribute__((target("sse4.2")))
static uint32_t crc_hw_run(uint32_t crc, const uint8_t *p, size_t len) {
    uint64_t c = ~crc;
    while (len >= 3 * CRC_SHORT) {
        uint64_t c1 = 0, c2 = 0;
        for (const uint8_t *end = p + CRC_SHORT; p < end; p += 8) {
            uint64_t w0, w1, w2;
            memcpy(&w0, p, 8); memcpy(&w1, p + CRC_SHORT, 8); memcpy(&w2, p + 2 * CRC_SHORT, 8);
            c = __builtin_ia32_crc32di(c, w0);
            c1 = __builtin_ia32_crc32di(c1, w1);
            c2 = __builtin_ia32_crc32di(c2, w2);
        }
        c = shift(shift((uint32_t)c) ^ (uint32_t)c1) ^ (uint32_t)c2;
        p += 2 * CRC_SHORT;
        len -= 3 * CRC_SHORT;
    }
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = __builtin_ia32_crc32di(c, w);
        p += 8; len -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (len--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}

/* pm_crc32c -- CRC32C of buf, continuing from crc (0 to start). */
uint32_t pm_crc32c(uint32_t crc, const void *buf, size_t len) {
    pthread_once(&crc_once, crc_init);
    if (crc_hw) return crc_hw_run(crc, buf, len);
    return pm_crc32c_sw(crc, buf, len);
}

int pm_crc32c_is_hw(void) {
    pthread_once(&crc_once, crc_init);
    return crc_hw;
}
