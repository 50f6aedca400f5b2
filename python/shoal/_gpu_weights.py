"""A model's weights on this worker's GPU: one copy per GPU, shared by every worker there
(docs/architecture.md, "Shared GPU weights"; shoald's side is supervisor/gpu_weights.h).

shoald asks the first worker on a GPU that loads a model to upload its weights (load's
``"gpu_weights": "upload"``) and every other worker there, replacements of crashed ones
included, to map that copy (``"gpu_weights": SIZE`` with the allocation's fd). The copy
holds every storage record of the archive at the offsets ``layout`` gives, the same in
every worker, so each storage that goes to the GPU while the model is unpickled becomes a
view of the copy instead of a private one. The copy is mapped read-only: a model that
writes into its weights gets an illegal-address error (its worker is replaced) and the
other workers' weights stay as they were.
"""
import os
import warnings

import torch

from . import _native
from ._tensors import device_bytes

ALIGN = 512  # bytes: each storage starts on a boundary torch's own allocator would give it


def layout(records):
    """({file offset: offset in the copy}, bytes) for storage records {name: (offset, size)}."""
    where, at = {}, 0
    for offset, size in sorted(records.values()):
        where[offset] = at
        at += -(-size // ALIGN) * ALIGN
    return where, max(at, ALIGN)


class Weights:
    """The copy of one archive's storages on this worker's GPU, made or mapped the first time
    a storage goes to the GPU (a model that stays on the CPU costs nothing). ``mode`` is
    "upload" or "map" (``fd``/``size``: the allocation shoald holds)."""

    def __init__(self, mode, fd=None, size=0):
        self.mode = mode
        self._fd, self._size = fd, size
        self._memory = None
        self.export_fd = None  # upload: the fd shoald gets (kept open until this goes)
        self.read_only = True

    def bind(self, mapping, records, label):
        self._mapping, self._records, self._label = mapping, records, label
        self._where, self._bytes = layout(records)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a read-only mapping, on purpose
            self._host = torch.frombuffer(mapping, dtype=torch.uint8)
        self._base = self._host.data_ptr()
        return self

    @property
    def uploaded(self):
        return self.mode == "upload" and self._memory is not None

    @property
    def size(self):
        return self._memory.size if self._memory is not None else 0

    def storage(self, storage):
        """The GPU storage for ``storage`` (a CPU storage over the archive's mapping, as
        torch.package reads it): a view of the shared copy; a private copy for what the
        archive's records do not hold."""
        offset = storage.data_ptr() - self._base
        nbytes = storage.nbytes()
        device = torch.device("cuda", torch.cuda.current_device())
        if nbytes == 0 or offset not in self._where:
            return storage.cuda(device.index)
        self._ensure(device.index)
        raw = device_bytes(self, self._memory.address + self._where[offset], nbytes, device.index)
        return torch.storage.TypedStorage(wrap_storage=raw.untyped_storage(), dtype=storage.dtype, _internal=True)

    def _ensure(self, ordinal):
        if self._memory is not None:
            return
        if self.mode == "upload":
            self._upload(ordinal)
            return
        fd, self._fd = self._fd, None
        if self._size < self._bytes:
            os.close(fd)
            raise OSError(f"archive {self._label}: the shared GPU weights hold {self._size} bytes, "
                          f"its storages need {self._bytes}")
        self._memory = self._import(fd, self._size, ordinal)

    def _upload(self, ordinal):
        made = _native.GpuMemory.create(ordinal, self._bytes)
        device = torch.device("cuda", ordinal)
        for offset, size in self._records.values():
            if size:
                dst = device_bytes(made, made.address + self._where[offset], size, ordinal)
                dst.copy_(self._host[offset:offset + size])
        torch.cuda.synchronize(device)
        self.export_fd = os.dup(made.fd)
        self._memory = self._import(os.dup(made.fd), made.size, ordinal)  # then the writable mapping goes

    def _import(self, fd, size, ordinal):
        keep = os.dup(fd)
        try:
            memory = _native.GpuMemory.import_fd(fd, size, ordinal, True)
            os.close(keep)
            return memory
        except OSError:  # a driver without read-only mappings: shared, and writable
            self.read_only = False
            return _native.GpuMemory.import_fd(keep, size, ordinal, False)

    def __del__(self):
        for fd in (self._fd, self.export_fd):
            if fd is not None:
                os.close(fd)
