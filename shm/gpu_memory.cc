#include "shm/gpu_memory.h"

#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>

#ifdef SHOAL_HAVE_CUDA_H
#include <cuda.h>
#include <dlfcn.h>

#include <map>
#include <mutex>
#endif

namespace shoal {

Status CheckGpuArenaFd(int fd, uint64_t size) {
  struct stat st;
  if (fstat(fd, &st) != 0) return Status::FromErrno("GPU arena fd", errno);
  // The NVIDIA driver's devices have major number 195 (an exported allocation is a
  // descriptor of /dev/nvidiactl): /dev/null, a tty or another device is refused here.
  constexpr unsigned kNvidiaMajor = 195;
  if (!S_ISCHR(st.st_mode) || major(st.st_rdev) != kNvidiaMajor) {
    return Status::BadRequest("a GPU arena must be an exported CUDA allocation (cuMemExportToShareableHandle), "
                              "not this kind of file");
  }
  if (size == 0 || size > (uint64_t{1} << 40)) {
    return Status::BadRequest("a GPU arena's size must be between 1 byte and 1 TiB, not " + std::to_string(size));
  }
  return Status::Ok();
}

#ifndef SHOAL_HAVE_CUDA_H

bool GpuSupportBuilt() { return false; }
Status GpuDriverReady() {
  return Status(Code::kUnavailable, "this shoal was built without GPU support (cuda.h was not found at build time)");
}
std::vector<std::string> ListGpus() { return {}; }
Result<int> GpuOrdinalOfBus(const std::string&) { return GpuDriverReady(); }
Result<std::string> GpuBusOfOrdinal(int) { return GpuDriverReady(); }
Result<size_t> GpuGranularity(int) { return GpuDriverReady(); }
Status SynchronizeGpu(int, bool* finished) {
  if (finished != nullptr) *finished = false;
  return GpuDriverReady();
}
Result<std::unique_ptr<GpuMemory>> GpuMemory::Create(int, size_t) { return GpuDriverReady(); }
Result<std::unique_ptr<GpuMemory>> GpuMemory::Import(int fd, size_t, int, bool) {
  close(fd);
  return GpuDriverReady();
}
GpuMemory::~GpuMemory() {
  if (fd_ >= 0) close(fd_);
}

#else

namespace {

// The driver entry points shoal uses, resolved from libcuda.so.1 by the names cuda.h
// maps them to (plain, or _v2 where cuda.h #defines one).
struct Driver {
  CUresult (*Init)(unsigned) = nullptr;
  CUresult (*DeviceGet)(CUdevice*, int) = nullptr;
  CUresult (*DeviceGetCount)(int*) = nullptr;
  CUresult (*DeviceGetPCIBusId)(char*, int, CUdevice) = nullptr;
  CUresult (*DeviceGetByPCIBusId)(CUdevice*, const char*) = nullptr;
  CUresult (*PrimaryCtxRetain)(CUcontext*, CUdevice) = nullptr;
  CUresult (*CtxSetCurrent)(CUcontext) = nullptr;
  CUresult (*CtxGetCurrent)(CUcontext*) = nullptr;
  CUresult (*CtxSynchronize)() = nullptr;
  CUresult (*CtxPush)(CUcontext) = nullptr;
  CUresult (*CtxPop)(CUcontext*) = nullptr;
  CUresult (*GetErrorString)(CUresult, const char**) = nullptr;
  CUresult (*Granularity)(size_t*, const CUmemAllocationProp*, CUmemAllocationGranularity_flags) = nullptr;
  CUresult (*Create)(CUmemGenericAllocationHandle*, size_t, const CUmemAllocationProp*, unsigned long long) = nullptr;
  CUresult (*Release)(CUmemGenericAllocationHandle) = nullptr;
  CUresult (*Export)(void*, CUmemGenericAllocationHandle, CUmemAllocationHandleType, unsigned long long) = nullptr;
  CUresult (*Import)(CUmemGenericAllocationHandle*, void*, CUmemAllocationHandleType) = nullptr;
  CUresult (*Reserve)(CUdeviceptr*, size_t, size_t, CUdeviceptr, unsigned long long) = nullptr;
  CUresult (*Free)(CUdeviceptr, size_t) = nullptr;
  CUresult (*Map)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long) = nullptr;
  CUresult (*Unmap)(CUdeviceptr, size_t) = nullptr;
  CUresult (*SetAccess)(CUdeviceptr, size_t, const CUmemAccessDesc*, size_t) = nullptr;
  Status ready = Status(Code::kUnavailable, "the CUDA driver was not loaded");
};

template <typename F>
bool Resolve(void* lib, const char* name, F* fn) {
  *fn = reinterpret_cast<F>(dlsym(lib, name));
  return *fn != nullptr;
}

const Driver& D() {
  static Driver d;
  static std::once_flag once;
  std::call_once(once, [] {
    void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      d.ready = Status(Code::kUnavailable, std::string("no usable GPU: the CUDA driver (libcuda.so.1) cannot be "
                                                       "loaded: ") + dlerror());
      return;
    }
    bool ok = Resolve(lib, "cuInit", &d.Init) && Resolve(lib, "cuDeviceGet", &d.DeviceGet) &&
              Resolve(lib, "cuDeviceGetCount", &d.DeviceGetCount) &&
              Resolve(lib, "cuDeviceGetPCIBusId", &d.DeviceGetPCIBusId) &&
              Resolve(lib, "cuDeviceGetByPCIBusId", &d.DeviceGetByPCIBusId) &&
              Resolve(lib, "cuDevicePrimaryCtxRetain", &d.PrimaryCtxRetain) &&
              Resolve(lib, "cuCtxSetCurrent", &d.CtxSetCurrent) && Resolve(lib, "cuCtxGetCurrent", &d.CtxGetCurrent) &&
              Resolve(lib, "cuCtxSynchronize", &d.CtxSynchronize) &&
              Resolve(lib, "cuCtxPushCurrent_v2", &d.CtxPush) && Resolve(lib, "cuCtxPopCurrent_v2", &d.CtxPop) &&
              Resolve(lib, "cuGetErrorString", &d.GetErrorString) &&
              Resolve(lib, "cuMemGetAllocationGranularity", &d.Granularity) &&
              Resolve(lib, "cuMemCreate", &d.Create) && Resolve(lib, "cuMemRelease", &d.Release) &&
              Resolve(lib, "cuMemExportToShareableHandle", &d.Export) &&
              Resolve(lib, "cuMemImportFromShareableHandle", &d.Import) &&
              Resolve(lib, "cuMemAddressReserve", &d.Reserve) && Resolve(lib, "cuMemAddressFree", &d.Free) &&
              Resolve(lib, "cuMemMap", &d.Map) && Resolve(lib, "cuMemUnmap", &d.Unmap) &&
              Resolve(lib, "cuMemSetAccess", &d.SetAccess);
    if (!ok) {
      d.ready = Status(Code::kUnavailable, "the CUDA driver lacks the virtual memory API (driver too old)");
      return;
    }
    CUresult r = d.Init(0);
    if (r != CUDA_SUCCESS) {
      const char* s = nullptr;
      d.GetErrorString(r, &s);
      d.ready = Status(Code::kUnavailable, std::string("no usable GPU: cuInit failed: ") + (s ? s : "unknown error"));
      return;
    }
    d.ready = Status::Ok();
  });
  return d;
}

Status Cu(CUresult r, const std::string& what) {
  if (r == CUDA_SUCCESS) return Status::Ok();
  const char* s = nullptr;
  D().GetErrorString(r, &s);
  return Status(Code::kUnavailable, what + ": " + (s ? s : "unknown CUDA error") + " (CUDA error " +
                                        std::to_string(static_cast<int>(r)) + ")");
}

// The VMM calls need a current context on the calling thread: the device's primary
// context, the one torch uses too (created here if torch has not yet).
Status UseDevice(int ordinal, CUdevice* dev) {
  if (auto st = D().ready; !st.ok()) return st;
  if (auto st = Cu(D().DeviceGet(dev, ordinal), "GPU " + std::to_string(ordinal)); !st.ok()) return st;
  CUcontext current = nullptr;
  D().CtxGetCurrent(&current);
  if (current != nullptr) return Status::Ok();
  CUcontext ctx = nullptr;
  if (auto st = Cu(D().PrimaryCtxRetain(&ctx, *dev), "a CUDA context on GPU " + std::to_string(ordinal)); !st.ok()) {
    return st;
  }
  return Cu(D().CtxSetCurrent(ctx), "making GPU " + std::to_string(ordinal) + "'s context current");
}

CUmemAllocationProp Prop(CUdevice dev) {
  CUmemAllocationProp p = {};
  p.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  p.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
  p.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  p.location.id = dev;
  return p;
}

// Reserves address space for `size` bytes, maps `handle` there and sets the access.
Result<CUdeviceptr> MapHere(CUmemGenericAllocationHandle handle, size_t size, CUdevice dev, bool read_only) {
  CUdeviceptr ptr = 0;
  if (auto st = Cu(D().Reserve(&ptr, size, 0, 0, 0), "reserving " + std::to_string(size) + " bytes of GPU addresses");
      !st.ok()) {
    return st;
  }
  if (auto st = Cu(D().Map(ptr, size, 0, handle, 0), "mapping " + std::to_string(size) + " bytes of GPU memory");
      !st.ok()) {
    D().Free(ptr, size);
    return st;
  }
  CUmemAccessDesc acc = {};
  acc.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  acc.location.id = dev;
  acc.flags = read_only ? CU_MEM_ACCESS_FLAGS_PROT_READ : CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  if (auto st = Cu(D().SetAccess(ptr, size, &acc, 1), "granting access to GPU memory"); !st.ok()) {
    D().Unmap(ptr, size);
    D().Free(ptr, size);
    return st;
  }
  return ptr;
}

}  // namespace

bool GpuSupportBuilt() { return true; }

Status GpuDriverReady() { return D().ready; }

std::vector<std::string> ListGpus() {
  std::vector<std::string> out;
  if (!D().ready.ok()) return out;
  int n = 0;
  if (D().DeviceGetCount(&n) != CUDA_SUCCESS) return out;
  for (int i = 0; i < n; ++i) {
    auto bus = GpuBusOfOrdinal(i);
    if (bus.ok()) out.push_back(*bus);
  }
  return out;
}

Result<int> GpuOrdinalOfBus(const std::string& bus) {
  if (auto st = D().ready; !st.ok()) return st;
  CUdevice dev = 0;
  if (D().DeviceGetByPCIBusId(&dev, bus.c_str()) != CUDA_SUCCESS) {
    return Status(Code::kUnavailable, "GPU " + bus + " is not visible to this process (CUDA_VISIBLE_DEVICES?)");
  }
  return static_cast<int>(dev);
}

Result<std::string> GpuBusOfOrdinal(int ordinal) {
  if (auto st = D().ready; !st.ok()) return st;
  CUdevice dev = 0;
  if (auto st = Cu(D().DeviceGet(&dev, ordinal), "GPU " + std::to_string(ordinal)); !st.ok()) return st;
  char bus[32] = {};
  if (auto st = Cu(D().DeviceGetPCIBusId(bus, sizeof(bus), dev), "PCI bus id of GPU " + std::to_string(ordinal));
      !st.ok()) {
    return st;
  }
  std::string s(bus);
  for (auto& c : s) c = static_cast<char>(tolower(static_cast<unsigned char>(c)));
  return s;
}

// Errors after which a context runs nothing more (the CUDA programming guide's "sticky"
// errors: the process must start a new context to use the GPU again).
namespace {
bool IsSticky(CUresult r) {
  switch (r) {
    case CUDA_ERROR_ILLEGAL_ADDRESS:
    case CUDA_ERROR_LAUNCH_FAILED:
    case CUDA_ERROR_ASSERT:
    case CUDA_ERROR_HARDWARE_STACK_ERROR:
    case CUDA_ERROR_ILLEGAL_INSTRUCTION:
    case CUDA_ERROR_MISALIGNED_ADDRESS:
    case CUDA_ERROR_INVALID_ADDRESS_SPACE:
    case CUDA_ERROR_INVALID_PC:
    case CUDA_ERROR_LAUNCH_TIMEOUT:
    case CUDA_ERROR_ECC_UNCORRECTABLE:
      return true;
    default:
      return false;
  }
}
}  // namespace

Status SynchronizeGpu(int ordinal, bool* finished) {
  bool done = false;
  if (finished == nullptr) finished = &done;
  *finished = false;
  if (auto st = D().ready; !st.ok()) return st;
  CUdevice dev = 0;
  if (auto st = Cu(D().DeviceGet(&dev, ordinal), "GPU " + std::to_string(ordinal)); !st.ok()) return st;
  // The primary context, retained once per GPU for the process's life (a client that
  // synchronises maps arenas there: it has that context already).
  static std::mutex mu;
  static std::map<int, CUcontext> retained;
  CUcontext ctx = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = retained.find(ordinal);
    if (it == retained.end()) {
      if (auto st = Cu(D().PrimaryCtxRetain(&ctx, dev), "a CUDA context on GPU " + std::to_string(ordinal)); !st.ok()) {
        return st;
      }
      it = retained.emplace(ordinal, ctx).first;
    }
    ctx = it->second;
  }
  // Pushed and popped: the calling thread's current context (torch's current device) is
  // left as it was.
  if (auto st = Cu(D().CtxPush(ctx), "making GPU " + std::to_string(ordinal) + "'s context current"); !st.ok()) {
    return st;
  }
  CUresult r = D().CtxSynchronize();
  CUcontext popped = nullptr;
  D().CtxPop(&popped);
  *finished = r == CUDA_SUCCESS || IsSticky(r);
  return Cu(r, "synchronising GPU " + std::to_string(ordinal));
}

Result<size_t> GpuGranularity(int ordinal) {
  if (auto st = D().ready; !st.ok()) return st;
  CUdevice dev = 0;
  if (auto st = Cu(D().DeviceGet(&dev, ordinal), "GPU " + std::to_string(ordinal)); !st.ok()) return st;
  CUmemAllocationProp p = Prop(dev);
  size_t g = 0;
  if (auto st = Cu(D().Granularity(&g, &p, CU_MEM_ALLOC_GRANULARITY_MINIMUM), "GPU allocation granularity"); !st.ok()) {
    return st;
  }
  return g;
}

Result<std::unique_ptr<GpuMemory>> GpuMemory::Create(int ordinal, size_t size) {
  CUdevice dev = 0;
  if (auto st = UseDevice(ordinal, &dev); !st.ok()) return st;
  auto gran = GpuGranularity(ordinal);
  if (!gran.ok()) return gran.status();
  size = (std::max<size_t>(size, 1) + *gran - 1) / *gran * *gran;
  CUmemAllocationProp p = Prop(dev);
  CUmemGenericAllocationHandle h = 0;
  if (auto st = Cu(D().Create(&h, size, &p, 0), "allocating " + std::to_string(size) + " bytes on GPU " +
                                                     std::to_string(ordinal));
      !st.ok()) {
    return st;
  }
  int fd = -1;
  if (auto st = Cu(D().Export(&fd, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0), "exporting GPU memory as an fd");
      !st.ok()) {
    D().Release(h);
    return st;
  }
  auto ptr = MapHere(h, size, dev, false);
  if (!ptr.ok()) {
    close(fd);
    D().Release(h);
    return ptr.status();
  }
  return std::unique_ptr<GpuMemory>(new GpuMemory(h, *ptr, size, ordinal, fd));
}

Result<std::unique_ptr<GpuMemory>> GpuMemory::Import(int fd, size_t size, int ordinal, bool read_only) {
  CUdevice dev = 0;
  if (auto st = UseDevice(ordinal, &dev); !st.ok()) {
    close(fd);
    return st;
  }
  CUmemGenericAllocationHandle h = 0;
  auto st = Cu(D().Import(&h, reinterpret_cast<void*>(static_cast<uintptr_t>(fd)), CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR),
               "importing GPU memory (is the fd an exported CUDA allocation?)");
  close(fd);  // the handle keeps the allocation
  if (!st.ok()) return st;
  // The driver refuses a mapping larger than the allocation: a claimed size is checked here.
  auto ptr = MapHere(h, size, dev, read_only);
  if (!ptr.ok()) {
    D().Release(h);
    return Status(Code::kBadRequest, "GPU memory of " + std::to_string(size) + " bytes cannot be mapped (" +
                                         ptr.status().message() + "); is the size it was announced with right?");
  }
  return std::unique_ptr<GpuMemory>(new GpuMemory(h, *ptr, size, ordinal, -1));
}

GpuMemory::~GpuMemory() {
  // The VMM calls need a current context on this thread (a router thread may drop arenas).
  CUdevice dev = 0;
  (void)UseDevice(ordinal_, &dev);
  D().Unmap(address_, size_);
  D().Free(address_, size_);
  D().Release(handle_);
  if (fd_ >= 0) close(fd_);
}

#endif  // SHOAL_HAVE_CUDA_H

}  // namespace shoal
