// refiners-go extensions to gotch (scripts/gotch-ext, installed by
// scripts/setup-gotch.sh as package github.com/sugarme/gotch/rgext).
#ifndef RGEXT_H
#define RGEXT_H
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// A read-only, private memory map of a file, reference-counted: the opener
// holds one reference and every tensor viewing it holds one through its
// storage's deleter; the last one to go unmaps.
typedef struct rg_mapping rg_mapping;

// rg_map maps len bytes of fd (PROT_READ, MAP_PRIVATE) with one reference.
// On failure it returns NULL and sets *err (free it).
rg_mapping *rg_map(int fd, size_t len, void **base, char **err);
// rg_unref drops one reference; the last unmaps the file.
void rg_unref(rg_mapping *m);
// rg_refs is the current number of references (for tests).
long rg_refs(rg_mapping *m);
// rg_tensor_of_mapping makes a CPU tensor (a torch::Tensor*, as gotch's
// handles are) viewing len(dims) dims of the given scalar type at offset
// bytes into the mapping, without copying; the tensor's storage holds a
// reference until libtorch frees it. Returns NULL and sets *err on failure.
void *rg_tensor_of_mapping(rg_mapping *m, size_t offset, const int64_t *dims, size_t ndims, int type, char **err);
// rg_contiguous_format returns t laid out row-major (channels_last 0) or
// channels-last (NHWC in memory, 1), t itself shallow-copied when it already is.
void *rg_contiguous_format(void *t, int channels_last, char **err);
// rg_is_channels_last reports whether t is laid out channels-last.
int rg_is_channels_last(void *t);
// rg_storage_ptr is the address of t's first element (for tests).
void *rg_data_ptr(void *t);

#ifdef __cplusplus
}
#endif
#endif
