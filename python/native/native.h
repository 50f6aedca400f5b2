// What the files of shoal._native share: each file owns one group of the module's
// functions and registers it here; native.cc builds the module. Every function is called
// with the GIL held (the arena allocator's calls release it themselves).
#pragma once

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "shm/arena.h"
#include "shm/output_arenas.h"
#include "shoal/status.h"

namespace shoal_native {

// The shoal::Arena of a shoal._native.Arena object, or nullptr if `obj` is not one.
shoal::Arena* ArenaOf(PyObject* obj);
// The shoal::OutputArenas of a shoal._native.OutputArenas object, or nullptr.
shoal::OutputArenas* OutputArenasOf(PyObject* obj);

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

}  // namespace shoal_native
