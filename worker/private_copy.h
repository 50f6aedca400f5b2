// Private copies of shared libraries, so that one process can host several CPython
// interpreters (shoald --interpreters K > 1).
//
// dlopen returns the already-loaded object for a library it has seen, so interpreter i
// gets its own file: libpython, the worker's Python glue (libshoal_pyhost), libtorch_python
// and every extension module it imports are copied into the interpreter's folder and
// edited with patchelf (own soname, DT_NEEDED on that interpreter's libpython copy, run
// paths made absolute). libtorch_cpu, libc10 and CUDA are NOT copied: one libtorch per
// process, so tensors, weights and the CUDA context are shared by all interpreters.
//
// g++ emits function-local statics of inline functions as STB_GNU_UNIQUE symbols, which
// glibc merges across every loaded object, RTLD_LOCAL or not; the copies' symbol tables are
// rewritten from GNU_UNIQUE to GLOBAL so each copy keeps its own (torch aborts with "_C
// shared library re-initialized" otherwise).
//
// Copies are cached: a copy's file name carries a hash of its source (path, size, mtime)
// and of what it links to, so a changed library gets a new copy and an unchanged one is
// reused by replacement workers and by a restarted shoald. Concurrent writers (several
// workers importing the same extension) are safe: each writes a temporary file and
// renames it into place. Thread-safety: the functions are reentrant.
#pragma once

#include <set>
#include <string>
#include <vector>

#include "shoal/status.h"

namespace shoal {

struct CopyEdits {
  std::string soname;                                      // empty: keep
  std::vector<std::pair<std::string, std::string>> replace_needed;  // old -> new
  std::vector<std::string> add_needed;
  bool absolute_rpath = true;  // $ORIGIN in the run path -> the source's folder
};

// The patchelf to run: $SHOAL_PATCHELF, else the first `patchelf` on PATH; an error says
// how to get one.
Result<std::string> FindPatchelf();

// Copies `src` to `dst` with `edits` applied and GNU_UNIQUE symbols made GLOBAL, unless
// `dst` exists already. Atomic: `dst` appears complete or not at all.
Status MakePrivateCopy(const std::string& src, const std::string& dst, const CopyEdits& edits);

// Rewrites STB_GNU_UNIQUE symbol bindings to STB_GLOBAL in an ELF64 file in place;
// returns how many it changed. CountUniqueSymbols only counts them.
Result<int> RemoveUniqueSymbols(const std::string& path);
Result<int> CountUniqueSymbols(const std::string& path);

// patchelf --print-needed / --print-soname / --print-rpath.
Result<std::vector<std::string>> NeededLibraries(const std::string& path);
Result<std::string> Soname(const std::string& path);

// A short hex hash of `path`'s real path, size and mtime, and of `extra`: part of a copy's
// file name, so a changed source gets a new copy.
std::string SourceStamp(const std::string& path, const std::string& extra = "");

// The folder of interpreter `index` inside the cache, and its copies. All paths absolute.
class InterpreterCopies {
 public:
  InterpreterCopies(std::string cache_dir, int index) : cache_dir_(std::move(cache_dir)), index_(index) {}
  // Copies libpython (at `libpython`, the library libshoal_pyhost was linked with) and
  // `pyhost`, the latter re-pointed at the former; returns the pyhost copy to dlopen.
  Result<std::string> PrepareHost(const std::string& libpython, const std::string& pyhost);
  // The private copy of extension module `origin` (imported as `fullname`): DT_NEEDED on
  // this interpreter's libpython, its libtorch_python (if it links one) replaced by this
  // interpreter's copy of it.
  Result<std::string> PrepareExtension(const std::string& origin, const std::string& fullname);
  std::string dir() const;
  // Copies this object has not made or found yet go under `dir`/INDEX instead of the cache
  // (see Interpreter::MakeNewCopiesIn); those it made stay where they are, so an extension
  // that links libtorch_python still gets the copy that is loaded.
  void MakeNewCopiesIn(std::string dir) { new_dir_ = std::move(dir); }

 private:
  Result<std::string> PrepareTorchPython(const std::string& needed, const std::string& origin);
  // Where a copy named `name` goes: the known one in the cache, else under new_dir_ if set.
  std::string Destination(const std::string& name) const;
  std::string cache_dir_;
  int index_;
  std::string libpython_copy_;  // set by PrepareHost
  std::string new_dir_;
  std::set<std::string> known_;  // copies made or found by this object (inherited across fork)
};

}  // namespace shoal
