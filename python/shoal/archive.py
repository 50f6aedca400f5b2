"""Model archives: torch.package zips whose served object is the pickle ``model/model.pkl``
(the torch::deploy / MultiPy convention) or another one that the load or the manifest names
(its ``entry``, "package/resource.pkl"), optionally with a manifest
(``_shoal/manifest.json``) and an example input and reference output (``_shoal/example.pkl``)
that the model is checked against when it loads (archives exported before 2026-12-07 keep
them in ``shoal/``, which is read too: a folder named like the extern module ``shoal``
made torch.package's own importer refuse the archive when the model's code imports
shoal). TorchScript zips (``torch.jit.save``)
are archives too.

``export`` writes one; ``load`` reads one the way a worker does: the file is mapped
read-only once and every storage becomes a tensor *over the mapping*, so weights are never
copied, and all processes that load the same archive share the same page-cache pages.
"""
import json
import mmap
import os
import sys
import warnings
import zlib

import torch
from torch.package import PackageExporter, PackageImporter

from . import _native, _tensors

ENTRY_PACKAGE, ENTRY_RESOURCE = _native.DEFAULT_ENTRY.rsplit("/", 1)  # the C++ reader's default
SHOAL_PACKAGE = "_shoal"  # the folder of shoal's records in a torch.package archive
MANIFEST = SHOAL_PACKAGE + "/manifest.json"
EXAMPLE = SHOAL_PACKAGE + "/example.pkl"
OLD_MANIFEST, OLD_EXAMPLE = "shoal/manifest.json", "shoal/example.pkl"  # where exports before 2026-12-07 put them
# A TorchScript archive's manifest: the extra file extra/shoal/manifest.json (torch.jit.save's _extra_files).
TORCHSCRIPT_MANIFEST = "shoal/manifest.json"
MANIFEST_FORMAT = 1
ALIGNMENT = 64
DEFAULT_EXTERN = ["torch", "torch.**", "numpy", "numpy.**", "torchvision", "torchvision.**",
                  "shoal", "shoal.**"]


def _standard_library():
    """Patterns for Python's standard library: the serving interpreter has its own, and
    built-in modules (sys, math) have no source to copy into an archive."""
    names = set(getattr(sys, "stdlib_module_names", ())) | set(sys.builtin_module_names)
    names.discard("__main__")
    return sorted(p for n in names for p in (n, f"{n}.**"))


class ArchiveError(Exception):
    """An archive shoal cannot serve; the message names the archive and what is wrong."""


class SelfCheckError(ArchiveError):
    """The model's output on its example input differs from the reference output."""


def _spec(t, dynamic_batch=True):
    shape = list(t.shape)
    if dynamic_batch and shape:
        shape[0] = None  # dynamic
    return {"dtype": str(t.dtype).replace("torch.", ""), "shape": shape}


def _output_specs(out):
    if isinstance(out, torch.Tensor):
        return [_spec(out)]
    if isinstance(out, (tuple, list)):
        return [_spec(x) for x in out if isinstance(x, torch.Tensor)]
    if isinstance(out, dict):
        return [dict(_spec(v), name=str(k)) for k, v in out.items() if isinstance(v, torch.Tensor)]
    return []


class _Progress:
    """Counts the bytes of tensor storages as PackageExporter writes them; draws a bar."""

    def __init__(self, inner, total, stream):
        self._inner, self._total, self._stream, self._done = inner, max(total, 1), stream, 0

    def write_record(self, name, data, size):
        self._inner.write_record(name, data, size)
        if name.endswith(".storage") and self._total >= 64 << 20:  # a bar only where it helps
            self._done += size
            frac = min(1.0, self._done / self._total)
            bar = "#" * int(frac * 30)
            self._stream.write(f"\r  writing weights [{bar:<30}] {self._done / 2**20:8.1f} / "
                               f"{self._total / 2**20:.1f} MiB")
            self._stream.flush()

    def __getattr__(self, attr):
        return getattr(self._inner, attr)


def _holds_quantized_modules(model):
    """Whether ``model`` holds quantized modules: their packed weights are made for the
    quantized engine current when they are unpickled, and compute differently per engine."""
    if not isinstance(model, torch.nn.Module):
        return False
    prefixes = ("torch.ao.nn.quantized", "torch.nn.quantized", "torch.ao.nn.intrinsic.quantized",
                "torch.nn.intrinsic.quantized")
    return any(type(m).__module__.startswith(prefixes) for m in model.modules())


def use_quantized_engine(engine, path):
    """Makes ``engine`` (a manifest's ``quantized_engine``; None: leave it) this process's
    quantized engine; ArchiveError when this torch has no such engine."""
    if engine is None:
        return
    supported = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    if engine not in supported:
        raise ArchiveError(f"archive {path}: the model needs quantized engine {engine!r}, which this worker's torch "
                           f"does not have (it has {', '.join(supported) or 'none'}); export it with one of those "
                           "(shoal.export(..., quantized_engine=...))")
    if torch.backends.quantized.engine != engine:
        torch.backends.quantized.engine = engine


def _checked_methods(methods):
    """``methods`` as a manifest lists them; ValueError with shoald's reason when it would
    refuse them (package_format/served_object.h)."""
    if isinstance(methods, str):
        raise TypeError(f"methods must be a list of method names, not the string {methods!r}")
    methods = list(methods)
    _native.check_methods(methods)
    return methods


def export(model, path, extern=(), intern=(), mock=(), name=None, version=None, example_inputs=None,
           progress=None, broadcast_inputs=False, quantized_engine=None, batching=None, methods=None):
    """Packages ``model`` (any picklable object; usually an ``nn.Module``) into ``path``.

    torch, numpy, torchvision, shoal and Python's standard library are extern (taken from the
    serving environment); every other module the model needs, the user's own code included,
    is interned (copied into the archive as source). ``extern``/``intern``/``mock`` add torch.package patterns.
    A manifest records ``name``, ``version``, the entry object and, given
    ``example_inputs`` (a tuple of tensors), input/output specs (first dimension dynamic)
    and a reference output that the model must reproduce when it is loaded.
    ``broadcast_inputs=True`` lets clients send this model inputs whose strides overlap
    (``x.expand(...)``: a stride of 0 stands for many elements); shoald refuses them
    otherwise. The worker's memory limit still bounds what the model does with them.
    ``progress``: a stream to draw a progress bar of the weights on (e.g. sys.stderr).
    ``quantized_engine`` ("qnnpack", "onednn", "fbgemm", "x86"): the engine workers load and
    run the model with; by default, for a model that holds quantized modules, the engine of
    this process (packed weights compute differently per engine).
    ``batching`` ({"max_batch": 8, "max_delay_us": 2000, "preferred_batch_sizes": [4, 8]}):
    shoald's dynamic batching for this model unless its load says otherwise
    (docs/architecture.md, "Dynamic batching"); every output must carry the batch along
    dim 0.
    ``methods`` (["make_prediction"]): methods of the model besides forward that clients
    may call (``infer(..., method="make_prediction")``); a load may allow more.
    """
    if methods is not None:
        methods = _checked_methods(methods)
    if batching is not None:
        known = {"max_batch", "max_delay_us", "preferred_batch_sizes"}
        if not isinstance(batching, dict) or not set(batching) <= known:
            raise TypeError(f"batching must be a dict with keys among {sorted(known)}, not {batching!r}")
        batching = {k: ([int(n) for n in v] if k == "preferred_batch_sizes" else int(v)) for k, v in batching.items()}
    if quantized_engine is None and _holds_quantized_modules(model):
        quantized_engine = torch.backends.quantized.engine
    if quantized_engine is not None and not isinstance(quantized_engine, str):
        raise TypeError(f"quantized_engine must be an engine's name, not {quantized_engine!r}")
    path = os.fspath(path)
    manifest = {"format": MANIFEST_FORMAT, "name": name or os.path.splitext(os.path.basename(path))[0],
                "version": str(version) if version is not None else "1",
                "entry": _native.DEFAULT_ENTRY, "inputs": [], "outputs": [], "example": None,
                "broadcast_inputs": bool(broadcast_inputs)}
    if quantized_engine is not None:
        manifest["quantized_engine"] = quantized_engine
    if batching is not None:
        manifest["batching"] = batching
    if methods:
        manifest["methods"] = methods
    example = None
    if example_inputs is not None:
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        example_inputs = tuple(torch.as_tensor(x) for x in example_inputs)
        with torch.no_grad():
            reference = model(*example_inputs)
        manifest["inputs"] = [dict(_spec(x), name=f"input{i}") for i, x in enumerate(example_inputs)]
        manifest["outputs"] = _output_specs(reference)
        manifest["example"] = EXAMPLE
        example = {"inputs": example_inputs, "output": reference}
    with PackageExporter(path) as exp:
        if progress is not None and isinstance(model, torch.nn.Module):
            total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
            exp.zip_file = _Progress(exp.zip_file, total, progress)
        exp.extern(DEFAULT_EXTERN + _standard_library() + list(extern))
        if mock:
            exp.mock(list(mock))
        exp.intern(list(intern) + ["**"])
        exp.save_pickle(ENTRY_PACKAGE, ENTRY_RESOURCE, model)
        if example is not None:
            exp.save_pickle(SHOAL_PACKAGE, "example.pkl", example)
        exp.save_text(SHOAL_PACKAGE, "manifest.json", json.dumps(manifest, indent=2))
    if progress is not None:
        progress.write("\n")
    return path


def torchscript_manifest(broadcast_inputs=False, quantized_engine=None, methods=None):
    """The manifest of a TorchScript archive, as ``torch.jit.save``'s ``_extra_files``:
    ``torch.jit.save(m, path, _extra_files=shoal.torchscript_manifest(broadcast_inputs=True))``.
    shoald reads it (extra/shoal/manifest.json) when the archive is loaded.
    ``quantized_engine``: the engine the worker loads and runs it with (see ``export``).
    ``methods``: methods of the module besides forward that clients may call."""
    manifest = {"format": MANIFEST_FORMAT, "broadcast_inputs": bool(broadcast_inputs)}
    if quantized_engine is not None:
        manifest["quantized_engine"] = quantized_engine
    if methods:
        manifest["methods"] = _checked_methods(methods)
    return {TORCHSCRIPT_MANIFEST: json.dumps(manifest)}


def read_zip(path, label=None, entry=None):
    """The archive as the C++ reader sees it (package_format/archive_reader.h, the one
    shoald checks loads with): ``{"kind", "prefix", "problem", "records", "broadcast_inputs",
    "entry"}``; ``problem`` is why shoald would refuse it (None: servable) when serving
    ``entry`` (None: the manifest's or model/model.pkl); ``broadcast_inputs`` what its
    manifest says; ``entry`` the pickle it serves. ArchiveError when it is not a readable zip.
    ``path`` may be an open file descriptor (``label`` then names it in errors)."""
    try:
        return _native.read_archive(path if isinstance(path, int) else os.fspath(path), entry)
    except (_native.ZipError, OSError) as e:
        raise ArchiveError(f"archive {label or path}: not a readable zip file ({e}); "
                           "build archives with shoal.export") from None


def record_bytes(f, record):
    """The uncompressed bytes of a record of ``read_zip``, read from the open file ``f``."""
    f.seek(record["offset"])
    data = f.read(record["size"])
    if len(data) != record["size"]:
        raise ArchiveError(f"record {record['name']} is truncated")
    if record["method"] == 8:
        try:
            data = zlib.decompress(data, -15)
        except zlib.error as e:
            raise ArchiveError(f"record {record['name']} does not inflate: {e}") from None
    elif record["method"] != 0:
        raise ArchiveError(f"record {record['name']} uses zip compression method {record['method']}; "
                           "shoal reads stored and deflated records")
    if zlib.crc32(data) != record["crc32"]:
        raise ArchiveError(f"record {record['name']} is damaged (CRC mismatch)")
    return data


def storage_records(path, label=None, entry=None):
    """Maps each ``.data/<n>.storage`` record to (data offset in the file, size), after the
    C++ reader checked that the archive is servable (storages stored and 64-byte aligned)
    with ``entry`` as its served pickle. ``path`` may be an open file descriptor, named
    ``label`` in errors."""
    return _storage_records(read_zip(path, label, entry), label or path)


def _storage_records(info, label):
    if info["problem"]:
        raise ArchiveError(f"archive {label}: {info['problem']}")
    return {r["name"]: (r["offset"], r["size"]) for r in info["records"] if r["storage"]}


class _MappedReader:
    """A duck-typed zip reader for PackageImporter: records as usual, storages as tensors
    over a read-only mapping of the archive (a model that writes into its weights faults)."""

    def __init__(self, inner, mapping, label, records):
        self._inner = inner
        self._path = label
        self._records = records
        self._map = mapping

    def get_storage_from_record(self, name, numel, dtype):
        if name not in self._records:
            raise ArchiveError(f"archive {self._path}: the pickle references storage {name}, "
                               "which the archive does not contain")
        offset, size = self._records[name]
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        if nbytes > size:
            raise ArchiveError(f"archive {self._path}: storage {name} holds {size} bytes, "
                               f"the pickle expects {nbytes}")
        if numel == 0:
            return torch.empty(0, dtype=dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "non-writable buffer": read-only on purpose
            return torch.frombuffer(self._map, dtype=dtype, count=numel, offset=offset)

    def __getattr__(self, attr):
        return getattr(self._inner, attr)


def is_torchscript(path):
    """True for a TorchScript zip (torch.jit.save): data.pkl + constants.pkl, no model.pkl."""
    try:
        return read_zip(path)["kind"] == "torchscript"
    except ArchiveError:
        return False


def manifest_record(has_record):
    """The name of a torch.package archive's manifest (``has_record(name)`` says whether the
    archive holds a record), None without one: ``_shoal/``, else where older exports put it."""
    for name in (MANIFEST, OLD_MANIFEST):
        if has_record(name):
            return name
    return None


def read_manifest(path, reader):
    """The archive's manifest (a dict), None without one; ArchiveError if it is broken or
    contradicts the archive."""
    name = manifest_record(reader.has_record)
    if name is None:
        return None
    try:
        manifest = json.loads(bytes(reader.get_record(name)).decode())
    except (ValueError, UnicodeDecodeError) as e:
        raise ArchiveError(f"archive {path}: {name} does not parse: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ArchiveError(f"archive {path}: {name} is not a format-{MANIFEST_FORMAT} shoal manifest")
    entry = manifest.get("entry", _native.DEFAULT_ENTRY)
    if not isinstance(entry, str) or "/" not in entry or not reader.has_record(entry):
        raise ArchiveError(f"archive {path}: the manifest names entry {entry!r}, which the archive does not contain")
    example = manifest.get("example")
    if example is not None and (not isinstance(example, str) or not reader.has_record(example)):
        raise ArchiveError(f"archive {path}: the manifest names example {example!r}, which the archive does not contain")
    engine = manifest.get("quantized_engine")
    if engine is not None and not isinstance(engine, str):
        raise ArchiveError(f"archive {path}: the manifest's quantized_engine must be an engine's name")
    for key in ("inputs", "outputs"):
        specs = manifest.get(key, [])
        if not isinstance(specs, list) or not all(
                isinstance(x, dict) and isinstance(x.get("shape"), list) and x.get("dtype") in _tensors.DTYPES
                for x in specs):
            raise ArchiveError(f"archive {path}: the manifest's {key} must be a list of "
                               "{{dtype, shape}} specs with known dtypes")
    return manifest


def _close(a, b, path):
    """Raises SelfCheckError unless `a` (served) matches `b` (reference)."""
    if isinstance(b, torch.Tensor):
        if not isinstance(a, torch.Tensor) or a.shape != b.shape or a.dtype != b.dtype:
            raise SelfCheckError(f"archive {path}: self-check failed: the output's type/shape/dtype differs from "
                                 f"the reference ({getattr(a, 'shape', type(a))} vs {tuple(b.shape)})")
        if a.is_floating_point():
            diff = float((a - b).abs().max()) if a.numel() else 0.0
            if not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
                raise SelfCheckError(f"archive {path}: self-check failed: max abs diff {diff:.3g} from the reference "
                                     "output recorded at export")
        elif not torch.equal(a, b):
            raise SelfCheckError(f"archive {path}: self-check failed: output differs from the reference")
    elif isinstance(b, (tuple, list)):
        if not isinstance(a, (tuple, list)) or len(a) != len(b):
            raise SelfCheckError(f"archive {path}: self-check failed: output structure differs from the reference")
        for x, y in zip(a, b):
            _close(x, y, path)
    elif isinstance(b, dict):
        if not isinstance(a, dict) or set(a) != set(b):
            raise SelfCheckError(f"archive {path}: self-check failed: output keys differ from the reference")
        for k in b:
            _close(a[k], b[k], path)
    elif a != b:
        raise SelfCheckError(f"archive {path}: self-check failed: {a!r} != reference {b!r}")


_OLD_RECORDS = (OLD_MANIFEST, OLD_EXAMPLE)


class _Importer(PackageImporter):
    """PackageImporter that leaves shoal's records in an archive exported before
    2026-12-07 (``shoal/manifest.json``, ``shoal/example.pkl``) out of the module tree: a
    model whose code imports shoal has shoal extern, and torch.package refuses files inside
    an extern package. They are read as records, not modules. (Exports now put them in
    ``_shoal/``, which no model imports.)"""

    def _add_file(self, filename):
        if filename in _OLD_RECORDS:
            return
        super()._add_file(filename)

    def _zipfile_path(self, package, resource=None):
        if isinstance(package, str) and resource is not None and f"{package}/{resource}" in _OLD_RECORDS:
            return f"{package}/{resource}"
        return super()._zipfile_path(package, resource)


class NoGpuError(ArchiveError):
    """The model needs a GPU this process does not have."""


def _need_gpu(path, location):
    if not torch.cuda.is_available():
        raise NoGpuError(f"archive {path} was exported for CUDA (its weights were on {location}) but this worker "
                         "has no usable GPU (shoald --gpus, CUDA_VISIBLE_DEVICES, the driver); to serve it on the "
                         "CPU on purpose, load it with device='cpu' (shoal load --device cpu)")


def _restore(path, device, weights=None):
    """map_location for an archive loaded for ``device``: "cpu" or "cuda" put every
    storage there; "auto" puts each back on the kind of device it was exported from, a
    CUDA one on this worker's GPU (a worker sees one GPU: shoald sets CUDA_VISIBLE_DEVICES).
    ``weights`` (a bound _gpu_weights.Weights): storages that go to the GPU become views of
    the copy shared by every worker on it, rather than copies of their own."""
    if device == "cpu":
        return "cpu"

    def to_gpu(storage):
        if weights is not None:
            return weights.storage(storage)
        return storage.cuda(torch.cuda.current_device())

    if device.startswith("cuda"):
        _need_gpu(path, device)
        if weights is None:
            return torch.device("cuda", torch.cuda.current_device())
        return lambda storage, location: to_gpu(storage)

    def restore(storage, location):
        if str(location).startswith("cuda"):
            _need_gpu(path, location)
            return to_gpu(storage)
        return storage
    return restore


def saved_on_cuda(path, label=None):
    """Whether a TorchScript archive's tensors were saved from a CUDA device: its data.pkl
    names each storage's location ("cpu", "cuda:0"); the rule is C++'s
    (package_format/archive_reader.h, PickleNamesCuda), shared with the TorchScript runner.
    ``path`` may be an open file descriptor (``label`` names it in errors)."""
    fd = path if isinstance(path, int) else os.open(os.fspath(path), os.O_RDONLY | os.O_CLOEXEC)
    try:
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapping:
            return _saved_on_cuda(read_zip(fd, label or path), mapping)
    finally:
        if fd is not path:
            os.close(fd)


def _saved_on_cuda(info, mapping):
    for r in info["records"]:
        if r["name"] == "data.pkl":
            return _native.pickle_names_cuda(record_bytes(mapping, r))
    return False


def device_of(obj):
    """"cuda" when the served object (a module) holds tensors on a GPU, else "cpu"."""
    if isinstance(obj, (torch.nn.Module, torch.jit.ScriptModule)):
        for t in list(obj.parameters()) + list(obj.buffers()):
            if t.is_cuda:
                return "cuda"
    return "cpu"


def load_with_manifest(path, device="auto", label=None, gpu_weights=None, entry=None):
    """(served object, manifest or None) for ``device`` ("auto": where it was exported,
    "cpu", "cuda"). Weights are mapped, not copied, on the CPU (TorchScript archives are
    read by torch.jit.load). A manifest with an example is checked: the model must
    reproduce the reference output.

    ``entry`` ("package/resource.pkl", MultiPy's ``load_pickle(package, resource)``): the
    pickle to serve instead of the manifest's entry or model/model.pkl; the example, which
    belongs to the manifest's entry, is then not run.

    ``path`` may be an open file descriptor (it stays open; ``label`` names it in errors):
    a worker loads the very file shoald passed it and opens no path. Everything is read
    from one read-only mapping of the file, which keeps its own position, so descriptors
    shared with other interpreters (dup) are never seeked.

    ``gpu_weights`` (a worker's _gpu_weights.Weights): weights that go to the GPU are the
    copy shared by every worker on it (packaged models)."""
    if isinstance(path, int):
        return _load_fd(path, label or f"<fd {path}>", device, gpu_weights, entry)
    path = os.fspath(path)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _load_fd(fd, path, device, gpu_weights, entry)
    finally:
        os.close(fd)


def _load_fd(fd, path, device, gpu_weights=None, entry=None):
    info = read_zip(fd, path, entry)
    if info["kind"] == "torchscript":
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapping:
            if device == "auto":
                device = "cuda" if _saved_on_cuda(info, mapping) else "cpu"
            where = _restore(path, device)
            mapping.seek(0)
            try:
                module = torch.jit.load(mapping, map_location=where)
            except Exception as e:  # torch raises RuntimeError
                raise ArchiveError(f"archive {path}: TorchScript cannot load it: {e}") from None
        return module.eval(), None
    records = _storage_records(info, path)
    mapping = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    try:
        importer = _Importer(mapping)  # reads records through the mapping (seek/read), no copy of the file
    except Exception as e:  # torch raises RuntimeError for damaged zips
        raise ArchiveError(f"archive {path}: torch.package cannot open it: {e}") from None
    importer.filename = path
    manifest = read_manifest(path, importer.zip_reader)
    use_quantized_engine((manifest or {}).get("quantized_engine"), path)  # before its packed weights are made
    served = info["entry"]  # the C++ reader checked it is a pickle of this archive (_storage_records)
    importer.zip_reader = _MappedReader(importer.zip_reader, mapping, path, records)
    folder, resource = served.rsplit("/", 1)
    package = folder.replace("/", ".")  # torch.package's save_pickle("a.b", "x.pkl") wrote a/b/x.pkl
    if gpu_weights is not None:
        gpu_weights.bind(mapping, records, path)
    where = _restore(path, device, gpu_weights)
    obj = importer.load_pickle(package, resource, map_location=where)
    if isinstance(obj, torch.nn.Module):
        obj.eval()
    if manifest and manifest.get("example") and served == manifest.get("entry", _native.DEFAULT_ENTRY):
        pkg, res = manifest["example"].rsplit("/", 1)
        example = importer.load_pickle(pkg, res, map_location=where)
        with torch.no_grad():
            out = obj(*example["inputs"])
        _close(out, example["output"], path)
    return obj, manifest


def load(path, entry=None):
    """Loads the served object of an archive with its weights mapped, not copied
    (``entry``: see ``load_with_manifest``)."""
    return load_with_manifest(path, entry=entry)[0]
