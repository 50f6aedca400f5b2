"""Errors raised by shoal's Python client. Every error carries the wire code and a message
that says what happened, to which model/job, and what to do."""


class Error(Exception):
    """Base class of shoal errors. ``code`` is the protocol's error code."""

    code = "INTERNAL"

    def __init__(self, message, traceback=None, retry_after=None):
        super().__init__(message)
        self.message = message
        #: the model's Python traceback, for ModelError
        self.traceback = traceback
        #: seconds to wait before retrying, for Overloaded
        self.retry_after = retry_after

    def __str__(self):
        if self.traceback:
            return f"{self.message}\n--- model traceback ---\n{self.traceback}"
        return self.message


class BadRequest(Error):
    code = "BAD_REQUEST"


class ModelNotFound(Error):
    code = "MODEL_NOT_FOUND"


class ModelError(Error):
    """The model's own code raised; ``traceback`` holds its Python traceback."""
    code = "MODEL_ERROR"


class WorkerCrashed(Error):
    code = "WORKER_CRASHED"


class Timeout(Error):
    code = "TIMEOUT"


class ArenaFull(Error):
    code = "ARENA_FULL"


class Overloaded(Error):
    """The model's queue is full; ``retry_after`` (seconds) hints when to try again."""
    code = "OVERLOADED"


class Unavailable(Error):
    code = "UNAVAILABLE"


class InternalError(Error):
    code = "INTERNAL"


_BY_CODE = {cls.code: cls for cls in (BadRequest, ModelNotFound, ModelError, WorkerCrashed,
                                      Timeout, ArenaFull, Overloaded, Unavailable, InternalError)}


def from_reply(error):
    """Builds the exception for a reply's ``error`` map."""
    cls = _BY_CODE.get(error.get("code"), InternalError)
    retry = error.get("retry_after_ms")
    return cls(error.get("message", "(no message)"), error.get("traceback"),
               retry / 1000.0 if retry is not None else None)
