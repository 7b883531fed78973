// See rgext.h.
#include "rgext.h"

#include <ATen/ATen.h>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <sys/mman.h>

struct rg_mapping {
  void *base;
  size_t len;
  std::atomic<long> refs;
};

static char *rg_dup(const char *s) { return strdup(s ? s : "unknown error"); }

extern "C" {

rg_mapping *rg_map(int fd, size_t len, void **base, char **err) {
  void *p = mmap(nullptr, len, PROT_READ, MAP_PRIVATE, fd, 0);
  if (p == MAP_FAILED) {
    *err = rg_dup(strerror(errno));
    return nullptr;
  }
  rg_mapping *m = new rg_mapping;
  m->base = p;
  m->len = len;
  m->refs.store(1);
  *base = p;
  return m;
}

void rg_unref(rg_mapping *m) {
  if (m->refs.fetch_sub(1) == 1) {
    munmap(m->base, m->len);
    delete m;
  }
}

long rg_refs(rg_mapping *m) { return m->refs.load(); }

void *rg_tensor_of_mapping(rg_mapping *m, size_t offset, const int64_t *dims, size_t ndims, int type, char **err) {
  // The reference is taken before the storage exists. Should from_blob
  // throw, the reference is leaked on purpose: the file then stays mapped
  // (harmless), whereas giving it back could unmap under a storage that
  // was made and already owns the deleter.
  m->refs.fetch_add(1);
  try {
    at::Tensor t = at::from_blob(
        static_cast<char *>(m->base) + offset, at::IntArrayRef(dims, ndims), [m](void *) { rg_unref(m); },
        at::TensorOptions().dtype(static_cast<at::ScalarType>(type)).device(at::kCPU).requires_grad(false));
    return new at::Tensor(std::move(t));
  } catch (const std::exception &e) {
    *err = rg_dup(e.what());
    return nullptr;
  }
}

void *rg_contiguous_format(void *t, int channels_last, char **err) {
  try {
    at::Tensor *x = static_cast<at::Tensor *>(t);
    return new at::Tensor(x->contiguous(channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
  } catch (const std::exception &e) {
    *err = rg_dup(e.what());
    return nullptr;
  }
}

int rg_is_channels_last(void *t) {
  at::Tensor *x = static_cast<at::Tensor *>(t);
  return x->dim() == 4 && x->is_contiguous(at::MemoryFormat::ChannelsLast) && !x->is_contiguous() ? 1 : 0;
}

void *rg_data_ptr(void *t) { return static_cast<at::Tensor *>(t)->data_ptr(); }
}
