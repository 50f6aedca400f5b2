"""Model archives: torch.package zips whose served object is the pickle ``model/model.pkl``
(the torch::deploy / MultiPy convention).

``export`` writes one; ``load`` reads one the way a worker does: the file is mapped
read-only once and every storage becomes a tensor *over the mapping*, so weights are never
copied, and all processes that load the same archive share the same page-cache pages.
"""
import mmap
import os
import struct
import warnings
import zipfile

import torch
from torch.package import PackageExporter, PackageImporter

ENTRY_PACKAGE = "model"
ENTRY_RESOURCE = "model.pkl"
ALIGNMENT = 64
DEFAULT_EXTERN = ["torch", "torch.**", "numpy", "numpy.**", "torchvision", "torchvision.**",
                  "shoal", "shoal.**"]


class ArchiveError(Exception):
    """An archive shoal cannot serve; the message names the archive and what is wrong."""


def export(model, path, extern=(), intern=(), mock=()):
    """Packages ``model`` (any picklable object; usually an ``nn.Module``) into ``path``.

    torch, numpy, torchvision and shoal are extern (taken from the serving environment); every
    other module the model needs, the user's own code included, is interned (copied into
    the archive as source). ``extern``/``intern``/``mock`` add torch.package patterns.
    """
    path = os.fspath(path)
    with PackageExporter(path) as exp:
        exp.extern(DEFAULT_EXTERN + list(extern))
        if mock:
            exp.mock(list(mock))
        exp.intern(list(intern) + ["**"])
        exp.save_pickle(ENTRY_PACKAGE, ENTRY_RESOURCE, model)
    return path


def _record_prefix(names):
    # PyTorchFileWriter puts every record under one top-level folder (the archive's name).
    first = names[0]
    return first.split("/", 1)[0] + "/" if "/" in first else ""


def storage_records(path):
    """Maps each ``.data/<n>.storage`` record to (data offset in the file, size); checks
    that storages are stored uncompressed and 64-byte aligned."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ArchiveError(f"archive {path}: not a readable zip file ({e}); "
                           "build archives with shoal.export") from None
    with zf, open(path, "rb") as f:
        infos = zf.infolist()
        if not infos:
            raise ArchiveError(f"archive {path}: the zip is empty")
        prefix = _record_prefix([i.filename for i in infos])
        records = {}
        for info in infos:
            name = info.filename[len(prefix):] if info.filename.startswith(prefix) else info.filename
            if not (name.startswith(".data/") and name.endswith(".storage")):
                continue
            if info.compress_type != zipfile.ZIP_STORED:
                raise ArchiveError(
                    f"archive {path}: storage record {name} is compressed; shoal maps weights "
                    "in place and needs them stored uncompressed (re-export with shoal.export)")
            f.seek(info.header_offset)
            header = f.read(30)
            if len(header) != 30 or header[:4] != b"PK\x03\x04":
                raise ArchiveError(f"archive {path}: bad local header for {name} (truncated?)")
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            offset = info.header_offset + 30 + name_len + extra_len
            if offset % ALIGNMENT:
                raise ArchiveError(
                    f"archive {path}: storage record {name} starts at byte {offset}, not "
                    f"{ALIGNMENT}-byte aligned; re-export with shoal.export")
            records[name] = (offset, info.file_size)
        return records


class _MappedReader:
    """A duck-typed zip reader for PackageImporter: records as usual, storages as tensors
    over a read-only mapping of the archive (a model that writes into its weights faults)."""

    def __init__(self, inner, path, records):
        self._inner = inner
        self._path = path
        self._records = records
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

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


def load(path):
    """Loads the served object of an archive with its weights mapped, not copied."""
    path = os.fspath(path)
    records = storage_records(path)
    try:
        importer = PackageImporter(path)
    except Exception as e:  # torch raises RuntimeError for damaged zips
        raise ArchiveError(f"archive {path}: torch.package cannot open it: {e}") from None
    if not importer.zip_reader.has_record(f"{ENTRY_PACKAGE}/{ENTRY_RESOURCE}"):
        raise ArchiveError(f"archive {path}: no entry pickle {ENTRY_PACKAGE}/{ENTRY_RESOURCE}; "
                           "export the model with shoal.export (or save_pickle('model', 'model.pkl', m))")
    importer.zip_reader = _MappedReader(importer.zip_reader, path, records)
    obj = importer.load_pickle(ENTRY_PACKAGE, ENTRY_RESOURCE, map_location="cpu")
    if isinstance(obj, torch.nn.Module):
        obj.eval()
    return obj
