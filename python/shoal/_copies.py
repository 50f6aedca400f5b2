"""Import hooks of an interpreter that runs on private library copies.

Loaded by libshoal_pyhost (worker/pyhost.cc) before anything else when a worker hosts
several interpreters (``shoald --interpreters K``, K > 1), from this file's path and
without importing the ``shoal`` package. Uses only built-in modules: nothing here may
import an extension module before the hook is in place.

- Extension modules do not link libpython (distributions build them that way), so each one
  is imported from a private copy that does (``_shoal_host.private_extension``, C++ in
  worker/private_copy.cc); ``torch._C``'s copy also gets this interpreter's own
  libtorch_python.
- ``ctypes.RTLD_GLOBAL`` becomes 0: torch loads its global deps with it, and a private copy
  must never put its symbols in the process-wide scope.
- The operator registry of libtorch is one per process. ``torch.library.Library`` of
  interpreters after the first treats a namespace or operator that another interpreter
  registered already as registered, and registers no Python kernels: the first
  interpreter's registrations are the ones used. (Such kernels, e.g. torch's meta
  registrations, are only reached with meta/fake tensors, not in inference; a model that
  registers its own Python kernels needs --interpreters 1.)
"""
import importlib.abc
import importlib.machinery
import importlib.util
import sys

import _shoal_host


class _PrivateExtensions(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            return spec
        copy = _shoal_host.private_extension(spec.origin, fullname)
        return importlib.util.spec_from_file_location(
            fullname, copy, loader=importlib.machinery.ExtensionFileLoader(fullname, copy),
            submodule_search_locations=spec.submodule_search_locations)


class _SharedOperatorRegistry(importlib.abc.MetaPathFinder):
    """Makes torch.library's registrations idempotent across interpreters."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "torch.library":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None:
            return None
        exec_module = spec.loader.exec_module

        def patched(module):
            exec_module(module)
            _make_idempotent(module.Library)

        spec.loader.exec_module = patched
        return spec


def _make_idempotent(library):
    init, define = library.__init__, library.define

    def __init__(self, ns, kind, dispatch_key=""):
        try:
            init(self, ns, kind, dispatch_key)
        except RuntimeError:  # registered by another interpreter of this process
            self.m = None
            self.ns, self.kind, self.dispatch_key = ns, kind, dispatch_key
            self._op_impls = set()

    def define_(self, schema, *args, **kwargs):
        if self.m is not None:
            try:
                return define(self, schema, *args, **kwargs)
            except RuntimeError:
                pass
        return schema.split("(")[0]

    def impl_(self, op_name, fn, *args, **kwargs):
        # A Python kernel registered here would replace the first interpreter's and then be
        # called by threads of other interpreters: the first one's stays.
        return None

    library.__init__, library.define, library.impl = __init__, define_, impl_


def install(first):
    sys.meta_path.insert(0, _PrivateExtensions())
    if not first:
        sys.meta_path.insert(0, _SharedOperatorRegistry())
    import ctypes
    ctypes.RTLD_GLOBAL = 0
