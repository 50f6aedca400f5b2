// shoal._native's arenas for Python (clients and the worker's runner).
//
//   Arena.create(size, name)  -> Arena this process owns (allocates and frees its blocks,
//                                with bookkeeping in private memory: shm/arena.h)
//   Arena.open(fd)            -> a peer's Arena: bytes only, alloc() is refused
//   Arena.create_gpu(size, ordinal) / Arena.open_gpu(fd, size, ordinal)
//                             -> the same in GPU memory passed as an fd (shm/gpu_memory.h):
//                                no buffer protocol; .address is a device address, .device
//                                the GPU's ordinal here (-1 for host arenas)
//   gpus() -> [PCI bus id] in CUDA order (empty without driver or GPU)
//   gpu_ordinal(bus) -> int    gpu_bus(ordinal) -> str    gpu_ready() -> None or why not
//   arena.alloc(nbytes) -> offset   arena.free(offset) -> bool (False: not a block of ours)
//   arena.fd / .size / .address / .owned   arena.free_bytes() / used_bytes()
//   Block(arena, offset, nbytes, owned=True, writer=None, arena_id=0)
//        -> buffer over [offset, offset+nbytes). When the last reference goes: with a
//           `writer` (a ClientWriter), releases block `offset` of output arena `arena_id`
//           through it to its owner, a worker (no Python runs); else frees the block in
//           `arena` if `owned`.
//   ClientArenas()            -> the client arenas a worker runner was sent (shm/client_arena_maps.h):
//        .add(arena, fd, size=0, gpu='')  .drop(arena)  .map(arena, keep) -> Arena (idle mappings dropped
//        when mapping fails)  .mapped
//   OutputArenas(owner_tag)   -> a worker runner's output arenas (shm/output_arenas.h):
//        .release_api() -> capsule of the C entry shoal-worker frees blocks through
//        (shm/output_release_api.h)   .drop_client(client) -> usage notice
// torch.frombuffer keeps a reference to the object it reads, so a tensor built over a
// Block keeps the block alive, and dropping the tensor frees (or releases) it.
// Thread-safety: the GIL protects the Python objects; Arena and OutputArenas are
// thread-safe themselves.
#include <cstddef>
#include <cstring>
#include <memory>
#include <set>

#include "protocol/output_tree.h"
#include "python/native/native.h"
#include "shm/client_arena_maps.h"
#include "shm/output_release_api.h"

namespace {

PyObject* g_arena_full = nullptr;  // shoal._native.ArenaFullError

struct ArenaObject {
  PyObject_HEAD
  shoal::Arena* arena;
  std::shared_ptr<shoal::Arena>* holder;  // this object's share of the arena (a mapping may have several)
};

struct BlockObject {
  PyObject_HEAD
  PyObject* arena;  // ArenaObject*
  uint64_t offset;
  uint64_t nbytes;
  int owned;
  PyObject* writer;    // the ClientWriter that releases the block when it dies, or nullptr
  uint64_t arena_id;   // the output arena's id, for the writer
  PyObject* weakrefs;  // the client tracks blocks of empty() by weak reference
};

struct OutputArenasObject {
  PyObject_HEAD
  shoal::OutputArenas* impl;
};

// The Python types below each own one C++ object (`impl`), made by tp_new and deleted
// with the Python object.
template <typename Object, typename Impl, typename... Args>
PyObject* NewOwner(PyTypeObject* type, Args... args) {
  auto* self = reinterpret_cast<Object*>(type->tp_alloc(type, 0));
  if (self == nullptr) return nullptr;
  self->impl = new Impl(args...);
  return reinterpret_cast<PyObject*>(self);
}
template <typename Object>
void DeallocOwner(Object* self) {
  delete self->impl;
  Py_TYPE(self)->tp_free(reinterpret_cast<PyObject*>(self));
}

PyObject* RaiseStatus(const shoal::Status& st) {
  PyErr_SetString(st.code() == shoal::Code::kArenaFull ? g_arena_full : PyExc_OSError, st.message().c_str());
  return nullptr;
}

extern PyTypeObject ArenaType;
extern PyTypeObject BlockType;

PyObject* WrapArena(std::shared_ptr<shoal::Arena> a) {
  ArenaObject* self = PyObject_New(ArenaObject, &ArenaType);
  if (self == nullptr) return nullptr;
  self->arena = a.get();
  self->holder = new std::shared_ptr<shoal::Arena>(std::move(a));
  return reinterpret_cast<PyObject*>(self);
}

PyObject* Arena_create(PyObject*, PyObject* args) {
  unsigned long long size;
  const char* name = "shoal-arena";
  if (!PyArg_ParseTuple(args, "K|s", &size, &name)) return nullptr;
  auto a = shoal::Arena::Create(name, size);
  if (!a.ok()) return RaiseStatus(a.status());
  return WrapArena(std::move(a.value()));
}

PyObject* Arena_create_gpu(PyObject*, PyObject* args) {
  unsigned long long size;
  int ordinal;
  if (!PyArg_ParseTuple(args, "Ki", &size, &ordinal)) return nullptr;
  shoal::Result<std::unique_ptr<shoal::Arena>> a = shoal::Status::Ok();
  Py_BEGIN_ALLOW_THREADS a = shoal::Arena::CreateGpu(ordinal, size);
  Py_END_ALLOW_THREADS if (!a.ok()) return RaiseStatus(a.status());
  return WrapArena(std::move(a.value()));
}

PyObject* Arena_open_gpu(PyObject*, PyObject* args) {
  int fd, ordinal;
  unsigned long long size;
  if (!PyArg_ParseTuple(args, "iKi", &fd, &size, &ordinal)) return nullptr;
  shoal::Result<std::unique_ptr<shoal::Arena>> a = shoal::Status::Ok();
  Py_BEGIN_ALLOW_THREADS a = shoal::Arena::OpenGpu(fd, size, ordinal);
  Py_END_ALLOW_THREADS if (!a.ok()) return RaiseStatus(a.status());
  return WrapArena(std::move(a.value()));
}

PyObject* Arena_open(PyObject*, PyObject* args) {
  int fd;
  if (!PyArg_ParseTuple(args, "i", &fd)) return nullptr;
  auto a = shoal::Arena::Open(fd);
  if (!a.ok()) return RaiseStatus(a.status());
  return WrapArena(std::move(a.value()));
}

void Arena_dealloc(ArenaObject* self) {
  delete self->holder;
  PyObject_Del(self);
}

PyObject* Arena_alloc(ArenaObject* self, PyObject* args) {
  unsigned long long n;
  if (!PyArg_ParseTuple(args, "K", &n)) return nullptr;
  shoal::Result<uint64_t> off = shoal::Status::Ok();
  Py_BEGIN_ALLOW_THREADS off = self->arena->Allocate(n);
  Py_END_ALLOW_THREADS if (!off.ok()) return RaiseStatus(off.status());
  return PyLong_FromUnsignedLongLong(*off);
}

PyObject* Arena_free(ArenaObject* self, PyObject* args) {
  unsigned long long off;
  if (!PyArg_ParseTuple(args, "K", &off)) return nullptr;
  return PyBool_FromLong(self->arena->Free(off));
}

PyObject* Arena_free_bytes(ArenaObject* self, PyObject*) { return PyLong_FromSize_t(self->arena->FreeBytes()); }
PyObject* Arena_used_bytes(ArenaObject* self, PyObject*) { return PyLong_FromSize_t(self->arena->UsedBytes()); }
PyObject* Arena_get_owned(ArenaObject* self, void*) { return PyBool_FromLong(self->arena->owned()); }
PyObject* Arena_get_fd(ArenaObject* self, void*) { return PyLong_FromLong(self->arena->fd()); }
PyObject* Arena_get_size(ArenaObject* self, void*) { return PyLong_FromSize_t(self->arena->size()); }
PyObject* Arena_get_device(ArenaObject* self, void*) { return PyLong_FromLong(self->arena->device()); }
PyObject* Arena_get_address(ArenaObject* self, void*) {
  return PyLong_FromUnsignedLongLong(reinterpret_cast<uintptr_t>(self->arena->base()));
}

int NoGpuBuffer(Py_buffer* view) {
  view->obj = nullptr;
  PyErr_SetString(PyExc_BufferError, "a GPU arena's memory is not host memory (use its address)");
  return -1;
}

int Arena_getbuffer(ArenaObject* self, Py_buffer* view, int flags) {
  if (self->arena->device() >= 0) return NoGpuBuffer(view);
  return PyBuffer_FillInfo(view, reinterpret_cast<PyObject*>(self), self->arena->base(),
                           static_cast<Py_ssize_t>(self->arena->size()), 0, flags);
}

PyMethodDef Arena_methods[] = {
    {"create", Arena_create, METH_VARARGS | METH_STATIC, "create(size, name='shoal-arena') -> Arena"},
    {"open", Arena_open, METH_VARARGS | METH_STATIC, "open(fd) -> Arena (takes ownership of fd)"},
    {"create_gpu", Arena_create_gpu, METH_VARARGS | METH_STATIC, "create_gpu(size, ordinal) -> Arena in GPU memory"},
    {"open_gpu", Arena_open_gpu, METH_VARARGS | METH_STATIC,
     "open_gpu(fd, size, ordinal) -> a peer's GPU Arena (takes ownership of fd)"},
    {"alloc", reinterpret_cast<PyCFunction>(Arena_alloc), METH_VARARGS, "alloc(nbytes) -> offset (64-aligned)"},
    {"free", reinterpret_cast<PyCFunction>(Arena_free), METH_VARARGS,
     "free(offset) -> bool: False when offset is not a block this arena handed out"},
    {"free_bytes", reinterpret_cast<PyCFunction>(Arena_free_bytes), METH_NOARGS, "bytes not handed out"},
    {"used_bytes", reinterpret_cast<PyCFunction>(Arena_used_bytes), METH_NOARGS, "bytes in blocks"},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef Arena_getset[] = {
    {"fd", reinterpret_cast<getter>(Arena_get_fd), nullptr, "memfd", nullptr},
    {"size", reinterpret_cast<getter>(Arena_get_size), nullptr, "bytes", nullptr},
    {"address", reinterpret_cast<getter>(Arena_get_address), nullptr, "base address here", nullptr},
    {"device", reinterpret_cast<getter>(Arena_get_device), nullptr, "GPU ordinal here, -1: host memory", nullptr},
    {"owned", reinterpret_cast<getter>(Arena_get_owned), nullptr, "True when this process owns its blocks", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyBufferProcs Arena_as_buffer = {reinterpret_cast<getbufferproc>(Arena_getbuffer), nullptr};

PyTypeObject ArenaType = {PyVarObject_HEAD_INIT(nullptr, 0)};

// ---- Block -----------------------------------------------------------------

PyObject* Block_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
  static const char* kwlist[] = {"arena", "offset", "nbytes", "owned", "writer", "arena_id", nullptr};
  PyObject* arena;
  unsigned long long offset, nbytes;
  int owned = 1;
  PyObject* writer = Py_None;
  unsigned long long arena_id = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!KK|pOK", const_cast<char**>(kwlist), &ArenaType, &arena, &offset,
                                   &nbytes, &owned, &writer, &arena_id)) {
    return nullptr;
  }
  if (writer != Py_None && shoal_native::ClientWriterOf(writer) == nullptr) {
    PyErr_SetString(PyExc_TypeError, "Block: writer must be a ClientWriter or None");
    return nullptr;
  }
  auto* a = reinterpret_cast<ArenaObject*>(arena)->arena;
  if (!a->Contains(offset, nbytes)) {
    PyErr_SetString(PyExc_ValueError, "block lies outside its arena");
    return nullptr;
  }
  auto* self = reinterpret_cast<BlockObject*>(type->tp_alloc(type, 0));
  if (self == nullptr) return nullptr;
  Py_INCREF(arena);
  self->arena = arena;
  self->offset = offset;
  self->nbytes = nbytes;
  self->owned = owned;
  self->writer = writer == Py_None ? nullptr : Py_NewRef(writer);
  self->arena_id = arena_id;
  self->weakrefs = nullptr;
  return reinterpret_cast<PyObject*>(self);
}

void Block_dealloc(BlockObject* self) {
  if (self->weakrefs != nullptr) PyObject_ClearWeakRefs(reinterpret_cast<PyObject*>(self));
  if (self->writer != nullptr) {
    // Queued for its owner; the writer's thread sends it (no Python runs here).
    if (self->owned) {
      // A GPU block: the writer first waits for this process's kernels that may read it.
      int gpu = reinterpret_cast<ArenaObject*>(self->arena)->arena->device();
      shoal_native::ClientWriterOf(self->writer)->Release(self->arena_id, self->offset, gpu);
    }
    Py_DECREF(self->writer);
  } else if (self->owned) {
    reinterpret_cast<ArenaObject*>(self->arena)->arena->Free(self->offset);
  }
  Py_DECREF(self->arena);
  Py_TYPE(self)->tp_free(reinterpret_cast<PyObject*>(self));
}

int Block_getbuffer(BlockObject* self, Py_buffer* view, int flags) {
  auto* a = reinterpret_cast<ArenaObject*>(self->arena)->arena;
  if (a->device() >= 0) return NoGpuBuffer(view);
  return PyBuffer_FillInfo(view, reinterpret_cast<PyObject*>(self), a->base() + self->offset,
                           static_cast<Py_ssize_t>(self->nbytes), 0, flags);
}

PyObject* Block_get_offset(BlockObject* self, void*) { return PyLong_FromUnsignedLongLong(self->offset); }
PyObject* Block_get_address(BlockObject* self, void*) {
  auto* a = reinterpret_cast<ArenaObject*>(self->arena)->arena;
  return PyLong_FromUnsignedLongLong(reinterpret_cast<uintptr_t>(a->base()) + self->offset);
}
PyObject* Block_get_nbytes(BlockObject* self, void*) { return PyLong_FromUnsignedLongLong(self->nbytes); }
PyObject* Block_get_arena(BlockObject* self, void*) {
  Py_INCREF(self->arena);
  return self->arena;
}
PyObject* Block_release(BlockObject* self, PyObject*) {
  // Hands ownership away (the block now belongs to whoever we told about it).
  self->owned = 0;
  Py_RETURN_NONE;
}

PyGetSetDef Block_getset[] = {
    {"offset", reinterpret_cast<getter>(Block_get_offset), nullptr, "block offset", nullptr},
    {"address", reinterpret_cast<getter>(Block_get_address), nullptr, "address of its first byte here", nullptr},
    {"nbytes", reinterpret_cast<getter>(Block_get_nbytes), nullptr, "bytes", nullptr},
    {"arena", reinterpret_cast<getter>(Block_get_arena), nullptr, "the Arena", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};
PyMethodDef Block_methods[] = {
    {"release", reinterpret_cast<PyCFunction>(Block_release), METH_NOARGS, "stop owning the block"},
    {nullptr, nullptr, 0, nullptr}};
PyBufferProcs Block_as_buffer = {reinterpret_cast<getbufferproc>(Block_getbuffer), nullptr};
PyTypeObject BlockType = {PyVarObject_HEAD_INIT(nullptr, 0)};

// ---- ClientArenas -----------------------------------------------------------

struct ClientArenasObject {
  PyObject_HEAD
  shoal::ClientArenaMaps* impl;
};

PyObject* ClientArenas_new(PyTypeObject* type, PyObject* args, PyObject*) {
  if (!PyArg_ParseTuple(args, "")) return nullptr;
  return NewOwner<ClientArenasObject, shoal::ClientArenaMaps>(type);
}

PyObject* ClientArenas_add(ClientArenasObject* self, PyObject* args) {
  unsigned long long id;
  int fd;
  unsigned long long size = 0;
  const char* gpu = "";
  if (!PyArg_ParseTuple(args, "Ki|Ks", &id, &fd, &size, &gpu)) return nullptr;
  self->impl->Add(id, fd, size, gpu);
  Py_RETURN_NONE;
}

PyObject* ClientArenas_drop(ClientArenasObject* self, PyObject* args) {
  unsigned long long id;
  if (!PyArg_ParseTuple(args, "K", &id)) return nullptr;
  self->impl->Drop(id);
  Py_RETURN_NONE;
}

PyObject* ClientArenas_map(ClientArenasObject* self, PyObject* args) {
  unsigned long long id;
  PyObject* keep_seq;
  if (!PyArg_ParseTuple(args, "KO", &id, &keep_seq)) return nullptr;
  PyObject* fast = PySequence_Fast(keep_seq, "map: keep must be a collection of arena ids");
  if (fast == nullptr) return nullptr;
  std::set<uint64_t> keep;
  for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast); ++i) {
    keep.insert(PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(fast, i)));
  }
  Py_DECREF(fast);
  if (PyErr_Occurred()) return nullptr;
  shoal::Result<std::shared_ptr<shoal::Arena>> a = std::shared_ptr<shoal::Arena>();
  Py_BEGIN_ALLOW_THREADS a = self->impl->Map(id, keep);
  Py_END_ALLOW_THREADS if (!a.ok()) return RaiseStatus(a.status());
  return WrapArena(std::move(*a));
}

PyObject* ClientArenas_get_mapped(ClientArenasObject* self, void*) { return PyLong_FromSize_t(self->impl->mapped()); }

PyMethodDef ClientArenas_methods[] = {
    {"add", reinterpret_cast<PyCFunction>(ClientArenas_add), METH_VARARGS,
     "add(arena, fd, size=0, gpu=''): takes the fd of a client arena shoald sent (a GPU arena: its size and "
     "its GPU's PCI bus id)"},
    {"drop", reinterpret_cast<PyCFunction>(ClientArenas_drop), METH_VARARGS, "drop(arena): closes and forgets it"},
    {"map", reinterpret_cast<PyCFunction>(ClientArenas_map), METH_VARARGS,
     "map(arena, keep) -> Arena: mapped now if it is not; when mapping fails, mappings of arenas not in keep are "
     "dropped and it is tried once more (OSError if it still fails)"},
    {nullptr, nullptr, 0, nullptr}};
PyGetSetDef ClientArenas_getset[] = {
    {"mapped", reinterpret_cast<getter>(ClientArenas_get_mapped), nullptr, "arenas mapped now", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};
PyTypeObject ClientArenasType = {PyVarObject_HEAD_INIT(nullptr, 0)};

// ---- OutputArenas ----------------------------------------------------------

PyObject* Bytes(const std::string& s) { return PyBytes_FromStringAndSize(s.data(), static_cast<Py_ssize_t>(s.size())); }

PyObject* OutputArenas_new(PyTypeObject* type, PyObject* args, PyObject*) {
  unsigned int owner;
  if (!PyArg_ParseTuple(args, "I", &owner)) return nullptr;
  return NewOwner<OutputArenasObject, shoal::OutputArenas>(type, static_cast<uint32_t>(owner));
}

// The C entry of shm/output_release_api.h: the worker's loop frees blocks through it.
int ReleaseBlocks(void* arenas, uint64_t arena, const uint64_t* blocks, size_t n, char* notice, size_t cap,
                  size_t* len) {
  auto* impl = static_cast<shoal::OutputArenas*>(arenas);
  for (size_t i = 0; i < n; ++i) impl->Free(arena, blocks[i]);  // refuses anything it did not hand out
  if (notice == nullptr) return 0;  // freed only: the caller sends the usage later
  std::string usage = shoal::UsageNotice(impl->Usage());
  if (usage.size() > cap) return -1;
  std::memcpy(notice, usage.data(), usage.size());
  *len = usage.size();
  return 0;
}

void ReleaseApiDestroy(PyObject* capsule) {
  delete static_cast<ShoalOutputReleaseApi*>(PyCapsule_GetPointer(capsule, kShoalOutputReleaseCapsule));
  Py_XDECREF(static_cast<PyObject*>(PyCapsule_GetContext(capsule)));
}

PyObject* OutputArenas_release_api(OutputArenasObject* self, PyObject*) {
  auto* api = new ShoalOutputReleaseApi{kShoalOutputReleaseApiVersion, self->impl, ReleaseBlocks};
  PyObject* capsule = PyCapsule_New(api, kShoalOutputReleaseCapsule, ReleaseApiDestroy);
  if (capsule == nullptr) {
    delete api;
    return nullptr;
  }
  // The capsule keeps the arenas alive.
  PyCapsule_SetContext(capsule, Py_NewRef(reinterpret_cast<PyObject*>(self)));
  return capsule;
}

PyObject* OutputArenas_drop_client(OutputArenasObject* self, PyObject* args) {
  unsigned long long client;
  if (!PyArg_ParseTuple(args, "K", &client)) return nullptr;
  self->impl->DropClient(client);
  return Bytes(shoal::UsageNotice(self->impl->Usage()));
}

PyMethodDef OutputArenas_methods[] = {
    {"release_api", reinterpret_cast<PyCFunction>(OutputArenas_release_api), METH_NOARGS,
     "release_api() -> capsule of the C entry that frees blocks without Python (shm/output_release_api.h)"},
    {"drop_client", reinterpret_cast<PyCFunction>(OutputArenas_drop_client), METH_VARARGS,
     "drop_client(client) -> usage notice: unmaps and closes that connection's output arenas"},
    {nullptr, nullptr, 0, nullptr}};
PyTypeObject OutputArenasType = {PyVarObject_HEAD_INIT(nullptr, 0)};

PyObject* Gpus(PyObject*, PyObject*) {
  std::vector<std::string> buses;
  Py_BEGIN_ALLOW_THREADS buses = shoal::ListGpus();
  Py_END_ALLOW_THREADS PyObject* out = PyList_New(0);
  for (const auto& b : buses) {
    PyObject* s = PyUnicode_FromString(b.c_str());
    PyList_Append(out, s);
    Py_DECREF(s);
  }
  return out;
}

PyObject* GpuOrdinal(PyObject*, PyObject* args) {
  const char* bus;
  if (!PyArg_ParseTuple(args, "s", &bus)) return nullptr;
  auto o = shoal::GpuOrdinalOfBus(bus);
  if (!o.ok()) return RaiseStatus(o.status());
  return PyLong_FromLong(*o);
}

PyObject* GpuBus(PyObject*, PyObject* args) {
  int ordinal;
  if (!PyArg_ParseTuple(args, "i", &ordinal)) return nullptr;
  auto b = shoal::GpuBusOfOrdinal(ordinal);
  if (!b.ok()) return RaiseStatus(b.status());
  return PyUnicode_FromString(b->c_str());
}

PyObject* GpuReady(PyObject*, PyObject*) {
  auto st = shoal::GpuDriverReady();
  if (st.ok()) Py_RETURN_NONE;
  return PyUnicode_FromString(st.message().c_str());
}

PyMethodDef kGpuFunctions[] = {
    {"gpus", Gpus, METH_NOARGS, "gpus() -> [PCI bus id] of the GPUs this process sees, in CUDA's order"},
    {"gpu_ordinal", GpuOrdinal, METH_VARARGS, "gpu_ordinal(bus) -> this process's ordinal of that GPU"},
    {"gpu_bus", GpuBus, METH_VARARGS, "gpu_bus(ordinal) -> its PCI bus id"},
    {"gpu_ready", GpuReady, METH_NOARGS, "gpu_ready() -> None when GPU arenas work here, else why not"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

namespace shoal_native {

shoal::Arena* ArenaOf(PyObject* obj) {
  if (!PyObject_TypeCheck(obj, &ArenaType)) return nullptr;
  return reinterpret_cast<ArenaObject*>(obj)->arena;
}

shoal::OutputArenas* OutputArenasOf(PyObject* obj) {
  if (!PyObject_TypeCheck(obj, &OutputArenasType)) return nullptr;
  return reinterpret_cast<OutputArenasObject*>(obj)->impl;
}

bool AddArenaTypes(PyObject* m) {
  ArenaType.tp_as_buffer = &Arena_as_buffer;
  BlockType.tp_weaklistoffset = offsetof(BlockObject, weakrefs);
  BlockType.tp_as_buffer = &Block_as_buffer;
  if (!AddType(m, &ArenaType, TypeSpec{"shoal._native.Arena", sizeof(ArenaObject), nullptr,
                                       reinterpret_cast<destructor>(Arena_dealloc), Arena_methods, Arena_getset,
                                       "a shared-memory arena with its allocator"}) ||
      !AddType(m, &BlockType, TypeSpec{"shoal._native.Block", sizeof(BlockObject), Block_new,
                                       reinterpret_cast<destructor>(Block_dealloc), Block_methods, Block_getset,
                                       "Block(arena, offset, nbytes, owned=True, writer=None, arena_id=0): bytes "
                                       "of an arena"}) ||
      !AddType(m, &OutputArenasType,
               TypeSpec{"shoal._native.OutputArenas", sizeof(OutputArenasObject), OutputArenas_new,
                        reinterpret_cast<destructor>(DeallocOwner<OutputArenasObject>), OutputArenas_methods, nullptr,
                        "OutputArenas(owner_tag): a worker runner's output arenas, per client connection"}) ||
      !AddType(m, &ClientArenasType,
               TypeSpec{"shoal._native.ClientArenas", sizeof(ClientArenasObject), ClientArenas_new,
                        reinterpret_cast<destructor>(DeallocOwner<ClientArenasObject>), ClientArenas_methods,
                        ClientArenas_getset,
                        "ClientArenas(): client arenas a worker runner was sent, mapped on demand "
                        "(shm/client_arena_maps.h)"})) {
    return false;
  }
  if (PyModule_AddFunctions(m, kGpuFunctions) < 0) return false;
  g_arena_full = AddException(m, "ArenaFullError", PyExc_MemoryError);
  return g_arena_full != nullptr;
}

}  // namespace shoal_native
