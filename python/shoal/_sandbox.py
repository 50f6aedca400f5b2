"""A worker's interpreter just before the worker's sandbox closes (worker/sandbox.h).

Called by shoal-worker (worker/pyhost.cc) in each interpreter: in the zygote, before it
forks, for the folders this interpreter imports from, which workers keep reading
(worker/filesystem_view.h); in each worker, after the fork and before any model code
runs, to send temporary files to the worker's private folder, the only one it may write
under Landlock. Built-in modules only.
"""
import os
import site
import sys
import sysconfig
import tempfile

# Caches that default under $HOME, which a confined worker cannot write: the operator's
# setting wins, else a folder in the worker's private one.
_CACHES = (("XDG_CACHE_HOME", "cache"), ("TRITON_CACHE_DIR", "triton"), ("CUDA_CACHE_PATH", "nv"))


def enter(tmp_dir, confined, env=""):
    """In a worker: points TMPDIR and ``tempfile`` (which may have chosen a folder in the
    zygote already) at ``tmp_dir``, and, when the worker is ``confined`` (Landlock), the
    caches above. ``env`` ("KEY=VALUE" lines) goes into os.environ, a snapshot the zygote
    took before the worker set them: its GPU (CUDA_VISIBLE_DEVICES, which torch's Python
    side reads to count devices) and who it runs as (USER, LOGNAME, HOME: code that asks,
    such as getpass.getuser() in torch's compile caches, then needs no /etc/passwd, which
    Landlock stops a worker reading once it is replaced)."""
    for line in env.split("\n"):  # only "\n" ends a line: a value may hold other breaks
        key, sep, value = line.partition("=")
        if key and sep:
            os.environ[key] = value
    if tmp_dir:
        os.environ["TMPDIR"] = tmp_dir
        tempfile.tempdir = tmp_dir
        if confined:
            for var, sub in _CACHES:
                os.environ.setdefault(var, os.path.join(tmp_dir, sub))


def read_paths():
    """The folders this interpreter imports from, one a line: its prefixes, sys.path, and the
    folders of packages and modules imported so far (editable installs and path hooks put
    them outside sys.path). Absolute, existing, outermost only, with symlinks resolved too;
    never the root folder itself. Asked once, in the zygote (it touches every module)."""
    roots = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix, *sys.path}
    roots.update(sysconfig.get_paths().values())
    try:
        roots.update(site.getsitepackages())
        roots.add(site.getusersitepackages())
    except AttributeError:  # a virtualenv's old site.py
        pass
    paths = set()
    _add(paths, roots)
    # Modules imported from elsewhere; most sit under the folders above (checked on the
    # names alone, once a folder: a worker starts faster without a stat per module).
    checked = set()
    for module in list(sys.modules.values()):
        try:
            found = [p for p in (getattr(module, "__path__", None) or ()) if isinstance(p, str)]
            f = getattr(module, "__file__", None)
            if isinstance(f, str):
                found.append(os.path.dirname(f))
        except Exception:  # noqa: BLE001 (lazy modules may raise on any attribute)
            continue
        for p in found:
            if p not in checked:
                checked.add(p)
                if os.path.isabs(p) and not _beneath(os.path.normpath(p), paths):
                    _add(paths, [p])
    paths.discard("/")
    return "\n".join(sorted(p for p in paths if not _beneath(p, paths - {p})))


def _add(paths, found):
    for p in found:
        if isinstance(p, str) and os.path.isabs(p) and "\n" not in p and os.path.exists(p):
            paths.add(os.path.normpath(p))
            paths.add(os.path.realpath(p))


def _beneath(path, folders):
    """Whether `path` is one of `folders` (never "/") or beneath one."""
    return any(path == f or path.startswith(f + "/") for f in folders if f != "/")
