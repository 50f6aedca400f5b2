// shoal._native's archive reading: Python reads zips only through the C++ reader
// (package_format/archive_reader.h), the one shoald checks every load with.
//
//   read_archive(path or open fd, entry=None) -> {"kind": "torch.package" | "torchscript" | None, "prefix": str,
//                          "problem": why shoald would refuse it, or None,
//                          "records": [{"name", "stored_name", "offset", "size",
//                                       "uncompressed", "method", "crc32", "dos_time",
//                                       "dos_date", "storage", "encrypted"}],
//                          "broadcast_inputs": what its manifest says (package_format/manifest.h),
//                          "entry": the pickle it serves (`entry`, else the manifest's, else
//                                   model/model.pkl; None for other kinds)}
//   check_entry(str), check_methods([str]): None, or ValueError saying why shoald would
//     refuse that entry or those methods (package_format/served_object.h).
//   DEFAULT_ENTRY: "model/model.pkl".
//   ZipError (a ValueError): the file is not a readable zip; the message says why.
//   OSError: the file cannot be opened or mapped.
// Thread-safety: called with the GIL held; the file is read with the GIL released.
#include <exception>
#include <string>

#include "package_format/archive_reader.h"
#include "package_format/served_object.h"
#include "python/native/native.h"

namespace shoal_native {

namespace {

PyObject* g_zip_error = nullptr;  // shoal._native.ZipError

const char* KindName(shoal::ArchiveKind kind) {
  switch (kind) {
    case shoal::ArchiveKind::kPackage: return "torch.package";
    case shoal::ArchiveKind::kTorchScript: return "torchscript";
    case shoal::ArchiveKind::kUnknown: break;
  }
  return nullptr;
}

PyObject* Str(const std::string& s) { return PyUnicode_DecodeUTF8(s.data(), s.size(), "surrogateescape"); }

PyObject* Record(const shoal::ArchiveRecord& r) {
  PyObject* name = Str(r.name);
  PyObject* stored = Str(r.stored_name);
  PyObject* out = nullptr;
  if (name != nullptr && stored != nullptr) {
    out = Py_BuildValue("{sOsOsKsKsKsHsksHsHsOsO}", "name", name, "stored_name", stored, "offset",
                        static_cast<unsigned long long>(r.offset), "size", static_cast<unsigned long long>(r.size),
                        "uncompressed", static_cast<unsigned long long>(r.uncompressed), "method", r.method,
                        "crc32", static_cast<unsigned long>(r.crc32), "dos_time", r.dos_time, "dos_date",
                        r.dos_date, "storage", r.storage ? Py_True : Py_False, "encrypted",
                        r.encrypted ? Py_True : Py_False);
  }
  Py_XDECREF(name);
  Py_XDECREF(stored);
  return out;
}

PyObject* ReadArchive(PyObject*, PyObject* args) {
  PyObject* source;
  const char* entry_arg = nullptr;
  if (!PyArg_ParseTuple(args, "O|z", &source, &entry_arg)) return nullptr;
  const std::string entry = entry_arg != nullptr ? entry_arg : "";
  int fd = -1;
  std::string path;
  if (PyLong_Check(source)) {  // an open file: a worker reads the archive shoald passed it
    fd = PyObject_AsFileDescriptor(source);
    if (fd < 0) return nullptr;
    path = "<fd " + std::to_string(fd) + ">";
  } else {
    PyObject* path_obj = nullptr;
    if (!PyUnicode_FSConverter(source, &path_obj)) return nullptr;
    path.assign(PyBytes_AS_STRING(path_obj), PyBytes_GET_SIZE(path_obj));
    Py_DECREF(path_obj);
  }
  shoal::Result<shoal::ArchiveInfo> info = shoal::Status::Ok();
  Py_BEGIN_ALLOW_THREADS info = fd >= 0 ? shoal::ReadArchiveFd(fd, path, entry) : shoal::ReadArchiveFile(path, entry);
  Py_END_ALLOW_THREADS
  if (!info.ok()) {
    // Python adds the archive's name itself, like every other archive error it raises.
    std::string message = info.status().message();
    const std::string prefix = "archive " + path + ": ";
    if (message.rfind(prefix, 0) == 0) message = message.substr(prefix.size());
    PyObject* text = Str(message);  // names in the message may be any bytes
    if (text != nullptr) {
      PyErr_SetObject(info.status().code() == shoal::Code::kIoError ? PyExc_OSError : g_zip_error, text);
      Py_DECREF(text);
    }
    return nullptr;
  }
  PyObject* records = PyList_New(0);
  if (records == nullptr) return nullptr;
  for (const auto& r : info->records) {
    PyObject* rec = Record(r);
    if (rec == nullptr || PyList_Append(records, rec) < 0) {
      Py_XDECREF(rec);
      Py_DECREF(records);
      return nullptr;
    }
    Py_DECREF(rec);
  }
  const char* kind = KindName(info->kind);
  PyObject* problem = info->problem.empty() ? Py_NewRef(Py_None) : Str(info->problem);
  PyObject* prefix = Str(info->prefix);
  PyObject* served = info->entry.empty() ? Py_NewRef(Py_None) : Str(info->entry);
  PyObject* out = nullptr;
  if (problem != nullptr && prefix != nullptr && served != nullptr) {
    out = Py_BuildValue("{szsOsOsOsOsO}", "kind", kind, "prefix", prefix, "problem", problem, "records", records,
                        "broadcast_inputs", info->policy.broadcast_inputs ? Py_True : Py_False, "entry", served);
  }
  Py_XDECREF(problem);
  Py_XDECREF(prefix);
  Py_XDECREF(served);
  Py_DECREF(records);
  return out;
}

PyObject* PickleNamesCuda(PyObject*, PyObject* args) {
  Py_buffer buf;
  if (!PyArg_ParseTuple(args, "y*", &buf)) return nullptr;
  bool yes = false;
  try {
    yes = shoal::PickleNamesCuda(std::string_view(static_cast<const char*>(buf.buf), static_cast<size_t>(buf.len)));
  } catch (const std::exception& e) {  // bad_alloc: no exception may cross into Python
    PyBuffer_Release(&buf);
    PyErr_SetString(PyExc_MemoryError, e.what());
    return nullptr;
  }
  PyBuffer_Release(&buf);
  return PyBool_FromLong(yes);
}

// None, or ValueError carrying `st`'s message.
PyObject* Verdict(const shoal::Status& st) {
  if (st.ok()) Py_RETURN_NONE;
  PyErr_SetString(PyExc_ValueError, st.message().c_str());
  return nullptr;
}

PyObject* CheckEntry(PyObject*, PyObject* args) {
  const char* entry;
  Py_ssize_t size;
  if (!PyArg_ParseTuple(args, "s#", &entry, &size)) return nullptr;
  return Verdict(shoal::CheckEntryName(std::string_view(entry, static_cast<size_t>(size))));
}

PyObject* CheckMethods(PyObject*, PyObject* args) {
  PyObject* seq;
  if (!PyArg_ParseTuple(args, "O", &seq)) return nullptr;
  PyObject* items = PySequence_Fast(seq, "methods must be a list of method names");
  if (items == nullptr) return nullptr;
  std::vector<std::string> names;
  for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(items); ++i) {
    PyObject* item = PySequence_Fast_GET_ITEM(items, i);
    Py_ssize_t size;
    const char* text = PyUnicode_Check(item) ? PyUnicode_AsUTF8AndSize(item, &size) : nullptr;
    if (text == nullptr) {
      Py_DECREF(items);
      if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "methods must be a list of method names (str)");
      return nullptr;
    }
    names.emplace_back(text, static_cast<size_t>(size));
  }
  Py_DECREF(items);
  return Verdict(shoal::CheckMethodNames(names));
}

PyMethodDef kMethods[] = {
    {"check_entry", CheckEntry, METH_VARARGS,
     "check_entry(str) -> None: ValueError unless shoald accepts it as an entry pickle's name"},
    {"check_methods", CheckMethods, METH_VARARGS,
     "check_methods([str]) -> None: ValueError unless shoald accepts them as allowed methods"},
    {"pickle_names_cuda", PickleNamesCuda, METH_VARARGS,
     "pickle_names_cuda(bytes) -> bool: a tensor pickle names a CUDA storage location (package_format)"},
    {"read_archive", ReadArchive, METH_VARARGS,
     "read_archive(path or fd, entry=None) -> dict: the archive's records and why shoald would refuse it (C++ reader)"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

bool AddArchiveReader(PyObject* m) {
  g_zip_error = AddException(m, "ZipError", PyExc_ValueError);
  return g_zip_error != nullptr && PyModule_AddFunctions(m, kMethods) == 0 &&
         PyModule_AddStringConstant(m, "DEFAULT_ENTRY", std::string(shoal::kDefaultEntry).c_str()) == 0;
}

}  // namespace shoal_native
