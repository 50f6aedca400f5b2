// What the files of shoal._native share: each file owns one group of the module's
// functions and registers it here; native.cc builds the module. Every function is called
// with the GIL held (the arena allocator's calls release it themselves).
#pragma once

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "protocol/client_writer.h"
#include "shm/arena.h"
#include "shm/output_arenas.h"
#include "shoal/status.h"

namespace shoal_native {

// The shoal::Arena of a shoal._native.Arena object, or nullptr if `obj` is not one.
shoal::Arena* ArenaOf(PyObject* obj);
// The shoal::OutputArenas of a shoal._native.OutputArenas object, or nullptr.
shoal::OutputArenas* OutputArenasOf(PyObject* obj);
// The shoal::ClientWriter of a shoal._native.ClientWriter object, or nullptr.
shoal::ClientWriter* ClientWriterOf(PyObject* obj);

// What differs between the module's classes; AddType fills in the rest.
struct TypeSpec {
  const char* name;  // "shoal._native.NAME": the module gets it as NAME
  Py_ssize_t size;
  newfunc make;      // tp_new; nullptr: made from C++ only
  destructor dealloc;
  PyMethodDef* methods;
  PyGetSetDef* getset;
  const char* doc;
};
// Fills in `type` from `spec` (fields set before, such as tp_as_buffer, stay), readies it
// and adds it to `module`; false on error.
bool AddType(PyObject* module, PyTypeObject* type, const TypeSpec& spec);

// Creates exception type shoal._native.NAME (subclass of `base`) and adds it to `module`;
// returns it (a reference the module and the caller share), or nullptr on error.
PyObject* AddException(PyObject* module, const char* name, PyObject* base);

// The pending Python exception as a Status ("TypeError: message"); clears it.
shoal::Status FetchPythonError();

// Each adds its functions, constants and exception types to `module`; false on error
// (with a Python exception set).
bool AddArenaTypes(PyObject* module);    // arena.cc: Arena, Block, OutputArenas, ArenaFullError
bool AddSharedDefs(PyObject* module);    // shared_defs.cc: DTYPES, default_socket_path
bool AddArchiveReader(PyObject* module); // archive.cc: read_archive, ZipError
bool AddOutputEncoder(PyObject* module); // output.cc: encode_reply, OutputError
bool AddClientWriter(PyObject* module);  // writer.cc: ClientWriter
bool AddFrameReader(PyObject* module);   // reader.cc: FrameReader
bool AddGpuMemoryType(PyObject* module); // gpu_memory.cc: GpuMemory
bool AddDlpack(PyObject* module);        // dlpack.cc: byte_capsule

}  // namespace shoal_native
