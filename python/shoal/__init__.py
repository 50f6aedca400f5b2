"""shoal: serve PyTorch models written in plain Python, fast and safely.

    import shoal
    shoal.export(model, "m.pt")              # a torch.package archive
    c = shoal.Client()                       # talks to shoald over its Unix socket
    c.load("m", "m.pt"); y = c.infer("m", x)
"""
from .archive import ArchiveError, export, torchscript_manifest
from .archive import load as load_archive
from .client import Client, default_socket_path
from .errors import (ArenaFull, BadRequest, Error, InternalError, ModelError, ModelNotFound,
                     Overloaded, Timeout, Unavailable, WorkerCrashed)

__all__ = ["export", "torchscript_manifest", "load_archive", "ArchiveError", "Client", "default_socket_path", "Error",
           "BadRequest", "ModelNotFound", "ModelError", "WorkerCrashed", "Timeout", "ArenaFull",
           "Overloaded", "Unavailable", "InternalError"]
