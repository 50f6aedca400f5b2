// shoal._native: the C++ that Python shares instead of re-implementing it. This file
// builds the module from the groups of native.h and owns the shared definitions:
//
//   DTYPES                 ((name, itemsize, scalar_type, storage_class), ...): the dtype
//                          table of protocol/dtypes.h, the only one
//   default_socket_path()  where shoald listens by default (protocol/paths.h)
//   layout(dtype, shape, strides)
//                          (bytes from the first element to the end of the last, whether the
//                          strides are the contiguous ones): protocol/descriptor.h's Extent()
//                          and ContiguousStrides(), what shoald checks descriptors with
//   spin_budget_us()       how long a receiver polls before it sleeps (protocol/spin.h);
//   set_spin_budget_us(us) sets it (benchmarks)
//
// Thread-safety: called with the GIL held; the data is constant (set_spin_budget_us: call it
// while no client reads).
#include <chrono>
#include <cstring>
#include <iterator>
#include <string>
#include <vector>

#include "protocol/descriptor.h"
#include "protocol/dtypes.h"
#include "protocol/paths.h"
#include "protocol/spin.h"
#include "python/native/native.h"

namespace shoal_native {

shoal::Status FetchPythonError() {
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  PyErr_NormalizeException(&type, &value, &tb);
  std::string what = "unknown error";
  if (type != nullptr) {
    PyObject* name = PyObject_GetAttrString(type, "__name__");
    PyObject* text = value != nullptr ? PyObject_Str(value) : nullptr;
    const char* n = name != nullptr ? PyUnicode_AsUTF8(name) : nullptr;
    const char* t = text != nullptr ? PyUnicode_AsUTF8(text) : nullptr;
    what = std::string(n != nullptr ? n : "Exception") + ": " + (t != nullptr ? t : "?");
    Py_XDECREF(name);
    Py_XDECREF(text);
  }
  PyErr_Clear();  // whatever describing it raised
  Py_XDECREF(type);
  Py_XDECREF(value);
  Py_XDECREF(tb);
  return shoal::Status(shoal::Code::kModelError, what);
}

bool AddType(PyObject* m, PyTypeObject* type, const TypeSpec& spec) {
  type->tp_name = spec.name;
  type->tp_basicsize = spec.size;
  type->tp_flags = Py_TPFLAGS_DEFAULT;
  type->tp_new = spec.make;
  type->tp_dealloc = spec.dealloc;
  type->tp_methods = spec.methods;
  type->tp_getset = spec.getset;
  type->tp_doc = spec.doc;
  if (PyType_Ready(type) < 0) return false;
  Py_INCREF(type);
  return PyModule_AddObject(m, std::strrchr(spec.name, '.') + 1, reinterpret_cast<PyObject*>(type)) == 0;
}

PyObject* AddException(PyObject* m, const char* name, PyObject* base) {
  std::string qualified = std::string("shoal._native.") + name;
  PyObject* type = PyErr_NewException(qualified.c_str(), base, nullptr);
  if (type == nullptr) return nullptr;
  Py_INCREF(type);  // one for the caller's global, one for the module
  if (PyModule_AddObject(m, name, type) < 0) {
    Py_DECREF(type);
    Py_DECREF(type);
    return nullptr;
  }
  return type;
}

namespace {

PyObject* DefaultSocketPath(PyObject*, PyObject*) {
  return PyUnicode_DecodeFSDefault(shoal::DefaultSocketPath().c_str());
}

PyObject* SpinBudgetUs(PyObject*, PyObject*) {
  return PyLong_FromLongLong(static_cast<long long>(shoal::SpinBudget().count()));
}

PyObject* SetSpinBudgetUs(PyObject*, PyObject* args) {
  long long us;
  if (!PyArg_ParseTuple(args, "L", &us)) return nullptr;
  if (us < 0 || us > shoal::kMaxSpinUs) {
    return PyErr_Format(PyExc_ValueError, "spin budget %lld us: must be 0..%lld", us,
                        static_cast<long long>(shoal::kMaxSpinUs));
  }
  shoal::SetSpinBudget(std::chrono::microseconds(us));
  Py_RETURN_NONE;
}

PyObject* CheckSocketFolder(PyObject*, PyObject* args) {
  const char* path = nullptr;
  if (!PyArg_ParseTuple(args, "s", &path)) return nullptr;
  auto st = shoal::CheckSocketFolder(path);
  if (st.ok()) Py_RETURN_NONE;
  return PyUnicode_FromString(st.message().c_str());
}

PyObject* CheckServerPeer(PyObject*, PyObject* args) {
  int fd = -1;
  const char* path = nullptr;
  if (!PyArg_ParseTuple(args, "is", &fd, &path)) return nullptr;
  auto st = shoal::CheckServerPeer(fd, path);
  if (st.ok()) Py_RETURN_NONE;
  return PyUnicode_FromString(st.message().c_str());
}

// A list or tuple of ints, at most kMaxDims of them, into `out`; false with a Python error set.
bool Int64s(PyObject* seq, const char* what, std::vector<int64_t>* out) {
  PyObject* fast = PySequence_Fast(seq, what);
  if (fast == nullptr) return false;
  Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
  if (n > static_cast<Py_ssize_t>(shoal::kMaxDims)) {
    Py_DECREF(fast);
    PyErr_Format(PyExc_ValueError, "%s has %zd dimensions, more than %zu", what, n, shoal::kMaxDims);
    return false;
  }
  out->resize(static_cast<size_t>(n));
  PyObject** items = PySequence_Fast_ITEMS(fast);
  for (Py_ssize_t i = 0; i < n; ++i) {
    long long v = PyLong_AsLongLong(items[i]);
    if (v == -1 && PyErr_Occurred()) {
      Py_DECREF(fast);
      return false;
    }
    (*out)[static_cast<size_t>(i)] = v;
  }
  Py_DECREF(fast);
  return true;
}

PyObject* Layout(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3 || !PyUnicode_Check(args[0])) {
    PyErr_SetString(PyExc_TypeError, "layout(dtype: str, shape, strides)");
    return nullptr;
  }
  shoal::Descriptor d;
  Py_ssize_t len = 0;
  const char* dtype = PyUnicode_AsUTF8AndSize(args[0], &len);
  if (dtype == nullptr) return nullptr;
  d.dtype.assign(dtype, static_cast<size_t>(len));
  if (!Int64s(args[1], "shape", &d.shape) || !Int64s(args[2], "strides", &d.strides)) return nullptr;
  if (d.shape.size() != d.strides.size()) {
    PyErr_SetString(PyExc_ValueError, "shape and strides differ in length");
    return nullptr;
  }
  auto extent = d.Extent();
  if (!extent.ok()) {
    PyErr_SetString(PyExc_ValueError, extent.status().message().c_str());
    return nullptr;
  }
  // ContiguousStrides(shape) == strides, without its product of sizes (which a broadcast's
  // zero strides leave unbounded); an empty tensor has no layout to speak of: true.
  bool contiguous = true;
  if (*extent > 0) {
    unsigned __int128 expected = 1;  // every size is >= 1 here
    for (size_t i = d.shape.size(); i-- > 0 && contiguous;) {
      contiguous = static_cast<unsigned __int128>(d.strides[i]) == expected;
      expected *= static_cast<unsigned __int128>(d.shape[i]);
    }
  }
  return Py_BuildValue("(KO)", static_cast<unsigned long long>(*extent), contiguous ? Py_True : Py_False);
}

PyMethodDef kMethods[] = {
    {"layout", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(Layout)), METH_FASTCALL,
     "layout(dtype, shape, strides) -> (extent in bytes, contiguous): bytes from the first element to the end "
     "of the last (0 for an empty tensor) and whether the strides are the contiguous ones (True when empty), "
     "as shoald checks descriptors (protocol/descriptor.h); ValueError for a negative size or stride, an "
     "unknown dtype, an overflow"},
    {"check_server_peer", CheckServerPeer, METH_VARARGS,
     "check_server_peer(fd, path) -> None, or why the process listening at path is not to be trusted"},
    {"check_socket_folder", CheckSocketFolder, METH_VARARGS,
     "check_socket_folder(path) -> None, or why the socket's folder cannot be trusted (protocol/paths.h)"},
    {"default_socket_path", DefaultSocketPath, METH_NOARGS,
     "default_socket_path() -> str: $SHOAL_SOCKET, else /run/shoal/shoal.sock for root, else "
     "$XDG_RUNTIME_DIR/shoal/shoal.sock, else /tmp/shoal-UID/shoal.sock"},
    {"spin_budget_us", SpinBudgetUs, METH_NOARGS,
     "spin_budget_us() -> int: microseconds a receiver polls before it sleeps ($SHOAL_SPIN_US, "
     "0..10000; anything else: 0)"},
    {"set_spin_budget_us", SetSpinBudgetUs, METH_VARARGS,
     "set_spin_budget_us(us): this process's budget (0..10000), and SHOAL_SPIN_US for the children it "
     "starts (a benchmark comparing budgets in one process)"},
    {nullptr, nullptr, 0, nullptr}};

PyObject* DTypeTable() {
  PyObject* table = PyTuple_New(std::size(shoal::kDTypes));
  if (table == nullptr) return nullptr;
  Py_ssize_t i = 0;
  for (const auto& d : shoal::kDTypes) {
    PyObject* row = Py_BuildValue("(s#ns#s#)", d.name.data(), static_cast<Py_ssize_t>(d.name.size()),
                                  static_cast<Py_ssize_t>(d.size), d.scalar_type.data(),
                                  static_cast<Py_ssize_t>(d.scalar_type.size()), d.storage.data(),
                                  static_cast<Py_ssize_t>(d.storage.size()));
    if (row == nullptr) {
      Py_DECREF(table);
      return nullptr;
    }
    PyTuple_SET_ITEM(table, i++, row);
  }
  return table;
}

}  // namespace

bool AddSharedDefs(PyObject* m) {
  PyObject* table = DTypeTable();
  if (table == nullptr || PyModule_AddObject(m, "DTYPES", table) < 0) return false;
  return PyModule_AddFunctions(m, kMethods) == 0;
}

}  // namespace shoal_native

namespace {
PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "shoal._native",
                          "shoal's C++ shared with Python: arenas, dtypes, socket path, archive reader, "
                          "output encoder, the client's writer and reader",
                          -1, nullptr, nullptr, nullptr, nullptr, nullptr};
}  // namespace

PyMODINIT_FUNC PyInit__native() {
  PyObject* m = PyModule_Create(&module_def);
  if (m == nullptr) return nullptr;
  if (!shoal_native::AddArenaTypes(m) || !shoal_native::AddSharedDefs(m) || !shoal_native::AddArchiveReader(m) ||
      !shoal_native::AddOutputEncoder(m) || !shoal_native::AddClientWriter(m) || !shoal_native::AddFrameReader(m) || !shoal_native::AddGpuMemoryType(m) || !shoal_native::AddDlpack(m)) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
