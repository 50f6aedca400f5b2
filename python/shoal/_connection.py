"""One client connection to shoald with many requests in flight (docs/protocol.md).

    conn = Connection(sock, path)                   # a connected socket whose peer was checked
    f = conn.submit(msg, decode=d, pump=True)       # a JobFuture (concurrent.futures.Future)
    v = conn.outcome(conn.submit(msg, decode=d, attended=True))  # d(reply), or its error raised

Requests are written under the writer's send lock (``_native.ClientWriter``; releases go
through it too). Replies carry their request's id and may come in any order; whichever
thread holds the *reading role* reads them, matches each to its job, and resolves that
job. The role goes to a thread that waits for a job (``outcome``, ``JobFuture.result()``
or ``exception()``) when it is free, so a thread that sends one request and waits reads
its own reply with no thread hand-off (the cost of ``Client.infer``, which also makes no
Future). A job nobody waits on (callbacks, asyncio, ``concurrent.futures.wait``) is read
by a pump thread, started with the first ``submit(..., pump=True)``, which gives the role
up whenever a waiter asks for it. A waiter that does not hold the role sleeps on the
connection's condition and is woken when a job settles or the role is free.

Every job resolves exactly once: with its reply, with ``Timeout`` once its deadline passes
(``deadline``: shoald answers at the job's own deadline, so this covers a stopped or
wedged shoald), or with ``Unavailable`` when the connection is lost or closed. A job's
resolution is claimed under the connection's lock (``Job._claimed``) before the future is
set, outside it, so that callbacks run with no lock held. The reply to a job that resolved
otherwise, or that was cancelled, is still read when it comes: its output blocks go back
to their worker (``release``) and the arenas it announces are mapped, so the descriptors
that ride with later replies stay in step.

Thread-safety: ``submit``, ``Job`` methods and ``close`` may be called from any thread.
Done-callbacks run on the reading thread; one that submits and waits reads on that thread
(the role is re-entered), but a callback that blocks on another thread's request deadlocks.
"""
import concurrent.futures as cf
import os
import socket as _socket
import struct
import threading
import time

import msgpack

from . import _native, errors

VERSION = 1
_HEADER = struct.Struct("<I")
# How long past a job's own deadline the client waits for shoald's answer before the job
# fails with Timeout (shoald answers at the deadline; this covers a stopped or wedged shoald).
ANSWER_MARGIN_S = 2.0
# How often the reader looks at the deadlines of jobs nobody waits for (see _expire_overdue).
_RECHECK_S = 0.25


class Job:
    """One request in flight; resolves once (see the module's docstring). Its outcome is
    read with ``Connection.outcome(job)`` (waits, returns the value or raises), or through
    its ``JobFuture`` (what Client.submit returns)."""
    __slots__ = ("_conn", "_rid", "_op", "_about", "_decode", "_wait_s", "_deadline", "_attention", "_claimed",
                 "_settled", "_value", "_failure", "_future")

    def __init__(self, conn, rid, op, about, decode, wait):
        self._conn = conn
        self._rid, self._op, self._about = rid, op, about
        self._decode = decode      # reply -> value, on the reading thread. GUARDED_BY(conn._mu)
        self._wait_s = wait        # seconds it waits for its reply (None: no limit)
        self._deadline = None if wait is None else time.monotonic() + wait
        self._attention = 0        # threads waiting for it. GUARDED_BY(conn._mu)
        self._claimed = False      # who resolves it is decided. GUARDED_BY(conn._mu)
        # Set before a future is, so a waiter that sees it may wait on the future itself:
        # the resolving thread sets the future next without blocking in between.
        self._settled = False
        self._value = self._failure = None  # the outcome, without a future
        self._future = None

    @property
    def what(self):
        """"infer request 7 (model 'm')": for messages."""
        return f"{self._op} request {self._rid}" + (f" ({self._about})" if self._about else "")

    def _resolve(self, value=None, failure=None):
        """Sets the outcome (the caller claimed the job), unless its future was cancelled."""
        self._settled = True
        f, self._future = self._future, None  # (the future keeps the job: no cycle to outlive it)
        if f is None:
            self._value, self._failure = value, failure
        elif f.set_running_or_notify_cancel():
            if failure is None:
                f.set_result(value)
            else:
                f.set_exception(failure)
        self._conn._wake()


class JobFuture(cf.Future):
    """A Job as a ``concurrent.futures.Future``. ``result()``/``exception()`` read replies
    while they wait if no other thread is reading. ``cancel()`` before the reply: the future
    is cancelled at once, and the reply, when it comes, is dropped and its output blocks
    released; shoald still runs the job (the protocol has no cancel message; a running
    Python job could not be stopped anyway)."""

    def __init__(self, job):
        super().__init__()
        self._job = job
        job._future = self

    def result(self, timeout=None):
        job = self._job
        if not job._settled:
            job._conn._wait(job, timeout)
        return super().result(None if job._settled else 0)

    def exception(self, timeout=None):
        job = self._job
        if not job._settled:
            job._conn._wait(job, timeout)
        return super().exception(None if job._settled else 0)

    def cancel(self):
        if not super().cancel():
            return False
        self._job._settled = True
        self._job._conn._wake()
        return True


class Connection:
    """Owns the socket, the writer, the received bytes and fds, the output arenas answers
    announced, and the jobs in flight. Created by Client with a connected socket whose
    peer was checked; ``close`` ends it."""

    def __init__(self, sock, path):
        self.path = path
        self._sock = sock
        self.writer = _native.ClientWriter(sock.fileno())  # every frame we send, releases too
        self.out_arenas = {}  # arena id -> _native.Arena a worker owns (results). Reading role only
        # Frames and the fds that came with them, read as the C++ client reads them (polling
        # SHOAL_SPIN_US first, protocol/spin.h). Reading role only
        sock.setblocking(True)
        self._frames = _native.FrameReader(sock.fileno())
        self._mu = threading.Lock()
        self._cv = threading.Condition(self._mu)  # waiters and the pump sleep here
        self._jobs = {}           # id -> Job whose reply has not been read. GUARDED_BY(_mu)
        self._next_id = 1         # GUARDED_BY(_mu)
        self._reader = None       # thread ident holding the reading role. GUARDED_BY(_mu)
        self._queued = 0          # waiters that want the role. GUARDED_BY(_mu)
        self._sleeping = 0        # threads in _cv.wait. GUARDED_BY(_mu)
        self._lost = None         # why the connection is gone, once it is. GUARDED_BY(_mu)
        self._closing = False     # GUARDED_BY(_mu)
        self._parting = None      # an id-0 error shoald sent: why it is about to hang up
        self._pump = None         # the pump thread, once started. GUARDED_BY(_mu)

    # -- sending ----------------------------------------------------------------------
    def submit(self, msg, fds=(), decode=None, wait=None, about=None, attended=False, pump=False):
        """Sends ``msg`` (its "v" and "id" are set here) and returns its Job, or with
        ``attended=False`` its JobFuture. ``decode``
        turns an ok reply into the job's value (on the reading thread); ``wait`` (seconds)
        bounds how long the job waits for its reply before it fails with Timeout; ``about``
        ("model 'm'") goes into messages. ``attended``: the caller takes the outcome at once
        (``outcome(job)``); else ``pump`` starts the pump
        thread, so that the job resolves with nobody waiting."""
        with self._mu:
            rid = self._next_id
            job = Job(self, rid, msg.get("op"), about, decode, wait)
            if self._lost is not None:
                raise self._lost_error(job.what)
            self._next_id += 1
            future = None
            if attended:
                job._attention = 1
            else:
                future = JobFuture(job)
            self._jobs[rid] = job
            if pump and self._pump is None:
                self._pump = threading.Thread(target=self._pump_loop, name="shoal-client-reader", daemon=True)
                self._pump.start()
            if self._sleeping and not attended:
                self._cv.notify_all()  # the pump: a job nobody waits for yet
        msg["v"] = VERSION
        msg["id"] = rid
        body = msgpack.packb(msg)
        try:
            self.writer.send(_HEADER.pack(len(body)) + body, list(fds))
        except OSError as e:
            with self._mu:
                self._jobs.pop(rid, None)
                job._claimed = True
            self._read_parting()
            if self._parting is not None:
                raise type(self._parting)(self._parting.message, retry_after=self._parting.retry_after) from None
            raise errors.Unavailable(f"lost the connection to shoald at {self.path} sending {job.what}: {e}") \
                from None
        return job if attended else future

    def outcome(self, job):
        """Waits for an attended job; its value, or its error raised."""
        if job._settled:
            with self._mu:
                self._unattend_locked(job)
        else:
            self._wait(job, None, counted=True)
        if job._failure is not None:
            raise job._failure
        return job._value

    def _unattend_locked(self, job):
        job._attention -= 1
        if job._attention == 0 and self._sleeping and self._pump is not None:
            self._cv.notify_all()  # the pump reads what nobody waits for

    def _wake(self):
        with self._mu:
            if self._sleeping:
                self._cv.notify_all()

    # -- waiting and reading ------------------------------------------------------------
    def _wait(self, job, timeout, counted=False):
        """Returns once ``job`` is settled or ``timeout`` seconds passed; reads replies
        while this thread holds the reading role (taken when free, re-entered by a
        done-callback that waits). ``counted``: the caller's attention is already counted
        (submit(attended=True)); it ends here either way."""
        until = None if timeout is None else time.monotonic() + timeout
        me = threading.get_ident()
        role = nested = expired = False
        with self._mu:
            if not counted:
                job._attention += 1
            try:
                while not job._settled:
                    if self._reader is None or self._reader == me:
                        nested = self._reader == me
                        self._reader = me
                        role = True
                        break
                    now = time.monotonic()
                    if job._deadline is not None and not job._claimed and now >= job._deadline:
                        job._claimed = expired = True
                        break
                    if until is not None and now >= until:
                        break
                    limit = _earliest(until, None if job._claimed else job._deadline)
                    self._queued += 1
                    self._sleeping += 1
                    try:
                        self._cv.wait(None if limit is None else limit - now)
                    finally:
                        self._queued -= 1
                        self._sleeping -= 1
                        if self._queued == 0 and self._sleeping:
                            self._cv.notify_all()  # the pump, which gave the role up for us
            finally:
                if not role:
                    self._unattend_locked(job)
        if expired:
            job._resolve(failure=self._late_error(job))
        if not role:
            return
        try:
            self._read(lambda: not job._settled, until)
        finally:
            with self._mu:
                self._unattend_locked(job)
                if not nested:
                    self._reader = None
                    if self._sleeping:
                        self._cv.notify_all()

    def _pump_loop(self):
        me = threading.get_ident()
        while True:
            with self._mu:
                while not (self._reader is None and self._queued == 0 and self._unattended_locked()):
                    if self._lost is not None:
                        return
                    self._sleeping += 1
                    try:
                        self._cv.wait()
                    finally:
                        self._sleeping -= 1
                if self._lost is not None:
                    return
                self._reader = me
            try:
                self._read(self._pump_should_read, None)
            finally:
                with self._mu:
                    self._reader = None
                    if self._sleeping:
                        self._cv.notify_all()

    def _unattended_locked(self):
        return any(j._attention == 0 for j in self._jobs.values())

    def _pump_should_read(self):
        """While no waiter asks for the role and some reply nobody waits for is due."""
        with self._mu:
            return self._queued == 0 and self._lost is None and self._unattended_locked()

    def _read(self, keep_going, until):
        """Reads and dispatches replies while ``keep_going()`` and before ``until``; fails
        jobs past their deadlines. The caller holds the reading role."""
        while keep_going():
            expired, next_deadline = self._expire_overdue()
            if expired and not keep_going():
                return
            body = None
            try:
                body = self._recv_frame(_earliest(until, next_deadline))
                self._dispatch(body)
                body = None
            except _socket.timeout:
                if until is not None and time.monotonic() >= until:
                    return
                continue  # a job's deadline passed: expired on the next turn
            except (OSError, ConnectionError) as e:
                self._connection_lost(e)
                return
            except BaseException:
                if body is not None:
                    # Ctrl-C (or another exception from a signal handler) between reading a
                    # reply and handing it to its job: its fds may not have been taken, and
                    # later replies' fds would map the wrong arenas. The connection ends.
                    self._connection_lost(errors.Unavailable(
                        "interrupted while handing a reply to its request; the connection to shoald was closed "
                        "so that no later reply reads the wrong output arenas. Connect again (a new Client)"))
                raise

    def _expire_overdue(self):
        """Fails the jobs past their deadlines with Timeout (their entries stay, so that a
        late reply is dropped); returns (whether any was, when to look again). While a job
        nobody waits for is in flight, that is at most _RECHECK_S away: one submitted while
        this thread blocks in recvmsg may have the earliest deadline, and only the reader
        enforces it (a waiter enforces its own)."""
        now = time.monotonic()
        due, upcoming = [], None
        with self._mu:
            for j in self._jobs.values():
                if j._claimed:
                    continue
                if j._attention == 0 and (upcoming is None or now + _RECHECK_S < upcoming):
                    upcoming = now + _RECHECK_S
                if j._deadline is None:
                    continue
                if now >= j._deadline:
                    j._claimed = True
                    due.append(j)
                elif upcoming is None or j._deadline < upcoming:
                    upcoming = j._deadline
        for j in due:
            j._resolve(failure=self._late_error(j))
        return bool(due), upcoming

    def _late_error(self, job):
        return errors.Timeout(
            f"shoald at {self.path} did not answer {job.what} within {job._wait_s:.1f} s (its deadline plus "
            f"{ANSWER_MARGIN_S} s); it may be stopped or overloaded. The connection stays usable; a late answer "
            "is discarded")

    def _dispatch(self, body):
        """Hands one reply to its job (or drops it and releases its outputs)."""
        try:
            reply = msgpack.unpackb(body, raw=False, strict_map_key=False)
            rid = reply.get("id")
        except Exception as e:  # noqa: BLE001: the stream cannot be trusted any more
            self._connection_lost(errors.InternalError(f"undecodable reply from shoald: {e}"))
            return
        if rid == 0 and not reply.get("ok"):  # shoald could not read a request, or is hanging up
            self._parting = errors.from_reply(reply.get("error", {}))
            return
        with self._mu:
            job = self._jobs.pop(rid, None) if isinstance(rid, int) else None
            live = job is not None and not job._claimed and not job._settled
            decode = None
            if job is not None:
                if not job._claimed and job._settled:  # cancelled: nobody else will resolve it
                    job._future = None
                job._claimed = True
                decode, job._decode = job._decode, None  # what it holds (the inputs' blocks) goes now
        try:
            self._take_arenas(reply)
        except errors.Error as e:
            if live:
                job._resolve(failure=e)
            return
        if not live:  # cancelled, timed out, or never ours: nobody reads its outputs
            self._release_outputs(reply)
            return
        if not reply.get("ok"):
            job._resolve(failure=errors.from_reply(reply.get("error", {})))
            return
        try:
            value = decode(reply) if decode else reply
        except Exception as e:  # noqa: BLE001: the job's own failure, raised to its waiter
            job._resolve(failure=e)
            return
        job._resolve(value)  # cancelled meanwhile: dropping `value` here releases its blocks

    def _take_arenas(self, reply):
        """Maps the output arenas an answer introduces (their fds came with it, in order)."""
        announced = reply.get("new_arenas", ())
        if not announced:
            return
        held = self._frames.fds_held()
        if held < len(announced):
            raise errors.InternalError(f"shoald announced {len(announced)} output arenas with {held} fds")
        # Every fd of this reply is taken first: one that cannot be mapped must not shift
        # the next reply's fds.
        fds = self._frames.take_fds(len(announced))
        failed = None
        for a, fd in zip(announced, fds):
            try:
                if "gpu" in a:  # a worker's GPU output arena, on the GPU with that PCI bus id
                    try:
                        ordinal = _native.gpu_ordinal(a["gpu"])
                    except OSError:
                        os.close(fd)  # Arena.open/open_gpu close theirs, also on failure
                        raise
                    arena = _native.Arena.open_gpu(fd, a["size"], ordinal)
                else:
                    arena = _native.Arena.open(fd)
                self.out_arenas[a["arena"]] = arena
            except OSError as e:
                failed = failed or (f"output arena {a['arena']}" + (f" on GPU {a['gpu']}" if "gpu" in a else "") +
                                    f" cannot be mapped here: {e}; a client that cannot use the model's GPU can ask "
                                    "for host tensors (infer(..., outputs='cpu'))")
        if failed:
            raise errors.BadRequest(failed)

    def _release_outputs(self, reply):
        """An answer nobody reads: its result blocks go back to their workers."""
        seen = set()

        def walk(node):
            (kind, val), = node.items()
            if kind == "tensor":
                key = (val["arena"], val["block"])
                if val["arena"] in self.out_arenas and 0 not in val["shape"] and key not in seen:
                    seen.add(key)
                    self.writer.release(*key)
            elif kind in ("tuple", "list"):
                for n in val:
                    walk(n)
            elif kind == "dict":
                for _, n in val:
                    walk(n)
        if reply.get("ok") and "outputs" in reply:
            walk(reply["outputs"])

    def _recv_frame(self, deadline, nowait=False):
        """The next frame's body; TimeoutError (socket.timeout) past ``deadline`` (None: no
        limit) or at once when ``nowait`` and no whole frame has come. A frame read in part
        stays for the next call."""
        if nowait or deadline is None:
            return self._frames.read(0 if nowait else None)
        return self._frames.read(deadline - time.monotonic())  # <= 0: only what has come

    def _read_parting(self):
        """After a failed send: reads what shoald sent before it hung up (answers, and an
        id-0 error such as too many clients), unless another thread is reading."""
        with self._mu:
            if self._reader is not None or self._closing:
                return
            self._reader = threading.get_ident()
        try:
            while True:
                try:
                    body = self._recv_frame(None, nowait=True)
                except TimeoutError:
                    return
                except (OSError, ConnectionError) as e:
                    self._connection_lost(e)
                    return
                self._dispatch(body)
        finally:
            with self._mu:
                self._reader = None
                if self._sleeping:
                    self._cv.notify_all()

    # -- the end --------------------------------------------------------------------
    def _connection_lost(self, why):
        """Fails every job in flight, once, with the reason (shoald's parting error if it
        sent one)."""
        with self._mu:
            if self._lost is None:
                self._lost = why
            jobs = [j for j in self._jobs.values() if not j._claimed]
            for j in self._jobs.values():
                j._claimed = True
                j._decode = None
            self._jobs.clear()
            self._cv.notify_all()  # the pump stops
        for j in jobs:
            j._resolve(failure=self._lost_error(j.what))

    def _lost_error(self, what):
        if self._parting is not None:
            p = self._parting
            return type(p)(f"{p.message} (shoald hung up before answering {what})", retry_after=p.retry_after)
        if self._closing:
            return errors.Unavailable(f"the client was closed before shoald answered {what}")
        return errors.Unavailable(
            f"lost the connection to shoald at {self.path} before it answered {what}: {self._lost}; the job may "
            "or may not have run. Connect again (a new Client) and resubmit it")

    def close(self):
        """Fails the jobs still in flight (Unavailable), sends the releases still queued and
        closes the socket. Results stay valid."""
        me = threading.get_ident()
        with self._mu:
            if self._closing:
                return
            self._closing = True
        self.writer.stop()  # sends the releases still queued
        try:
            self._sock.shutdown(_socket.SHUT_RDWR)  # wakes a reader blocked in recvmsg
        except OSError:
            pass
        with self._mu:
            while self._reader is not None and self._reader != me:
                self._sleeping += 1
                try:
                    self._cv.wait()
                finally:
                    self._sleeping -= 1
        self._connection_lost(ConnectionError("closed by this client"))
        self._frames.close()  # its own socket descriptor and the fds nobody took
        self._sock.close()


def _earliest(*times):
    ts = [t for t in times if t is not None]
    return min(ts) if ts else None
