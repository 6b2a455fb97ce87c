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

__attribute__((target("sse4.2")))
static uint32_t crc_hw_run(uint32_t crc, const uint8_t *p, size_t len) {
    uint64_t c = ~crc;
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
