/* pmi_md5.h -- MD5 for ETags (md5.c), internal to the C core. */
#ifndef PMI_MD5_H
#define PMI_MD5_H
#include <stdint.h>

void pmi_md5(const uint8_t *data, uint64_t size, uint8_t out[16]);

#endif
