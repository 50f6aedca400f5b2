"""Models used by shoal's tests and examples. Written in plain Python on purpose."""
import collections
import ctypes
import os
import time
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import nn

import shoal_test_helpers as helpers


class Branchy(nn.Module):
    """Data-dependent control flow, a loop whose length depends on the input, a helper
    module, and a nested output structure."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(16, 32)
        self.blocks = nn.ModuleList([nn.Linear(32, 32) for _ in range(3)])
        self.out = nn.Linear(32, 4)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        steps = 1 + helpers.count_positive(x[0, :3])
        for i in range(steps):
            h = torch.tanh(self.blocks[i % len(self.blocks)](h))
        h, mode = helpers.gated_scale(h, 0.3)
        y = self.out(h)
        return {"logits": y, "extra": (h.sum(dim=1), [steps, mode])}


class AddConst(nn.Module):
    def __init__(self, k=1.0):
        super().__init__()
        self.k = k

    def forward(self, x):
        return x * 2 + self.k


class Identity(nn.Module):
    def forward(self, *xs):
        return xs[0] if len(xs) == 1 else xs


class StampedIdentity(nn.Module):
    """x back, with the time (time.perf_counter: a clock every process on the machine shares)
    forward began and ended: bench/gpu_path.py splits a round trip with it."""

    def forward(self, x):
        t0 = time.perf_counter()
        return x, torch.tensor([t0, time.perf_counter()], dtype=torch.float64)


class Crashy(nn.Module):
    """Segfaults (a NULL write through ctypes) when the input's sum is negative."""

    def forward(self, x):
        if float(x.sum()) < 0:
            ctypes.string_at(0)  # reads address 0: SIGSEGV, like a broken C extension
        return x + 1


class Raises(nn.Module):
    def forward(self, x):
        raise ValueError(f"bad input of shape {tuple(x.shape)}")


class Exits(nn.Module):
    def forward(self, x):
        os._exit(7)


class ReturnsValues(nn.Module):
    """Outputs that travel in the message itself, of size n = x[0]: x[1] 0 -> a string of n
    characters, 1 -> a list of n ints, 2 -> a list of n strings of 250 characters."""

    def forward(self, x):
        n, kind = int(x[0]), int(x[1])
        if kind == 0:
            return "y" * n
        if kind == 1:
            return list(range(n))
        return ["y" * 250] * n


class Sleeps(nn.Module):
    def forward(self, x):
        import time
        time.sleep(float(x.flatten()[0]))
        return x


class BigWeights(nn.Module):
    """About `mb` MB of float32 weights."""

    def __init__(self, mb=200):
        super().__init__()
        n = int((mb * 1024 * 1024 / 4 / 2) ** 0.5)
        torch.manual_seed(1)
        self.a = nn.Linear(n, n, bias=False)
        self.b = nn.Linear(n, n, bias=False)
        self.n = n

    def forward(self, x):
        return self.b(self.a(x))


class Grow(nn.Module):
    def forward(self, x):
        return torch.zeros(4 << 20)  # 16 MiB: more than a 1 MiB arena


class Aborts(nn.Module):
    def forward(self, x):
        os.abort()


class Loops(nn.Module):
    """Never returns (a pure-Python infinite loop holding the GIL)."""

    def forward(self, x):
        while True:
            pass


class Hog(nn.Module):
    """Asks for 2 GiB (and touches it)."""

    def forward(self, x):
        return torch.ones(512 << 20).sum()


class SlowLoad(nn.Module):
    """Takes `seconds` to load (its unpickling sleeps)."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds
        self.lin = nn.Linear(2, 2)

    def __setstate__(self, state):
        import time
        time.sleep(state["seconds"])
        super().__setstate__(state)

    def forward(self, x):
        return x + 1


class SlowLoadFails(SlowLoad):
    """Takes `seconds` to fail loading."""

    def __setstate__(self, state):
        import time
        time.sleep(state["seconds"])
        raise RuntimeError("this model never loads")


class CrashOnce(nn.Module):
    """Segfaults the first time it runs (anywhere), then works: a flaky extension."""

    def __init__(self, marker):
        super().__init__()
        self.marker = marker

    def forward(self, x):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            ctypes.string_at(0)
        return x + 1


class SandboxProbe(nn.Module):
    """Reports what the worker it runs in may do."""

    def forward(self, x):
        import errno
        import resource
        import socket
        out = {}
        try:
            socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
            out["inet"] = "allowed"
        except OSError as e:
            out["inet"] = errno.errorcode.get(e.errno, str(e.errno))
        try:
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()
            out["unix"] = "allowed"
        except OSError as e:
            out["unix"] = errno.errorcode.get(e.errno, str(e.errno))
        libc = ctypes.CDLL(None, use_errno=True)
        # PTRACE_PEEKDATA on a process we do not trace: ESRCH when ptrace is allowed,
        # EPERM when the seccomp filter denies the call itself. (Never attach: that would
        # stop the process traced.)
        libc.ptrace.restype = ctypes.c_long
        libc.ptrace(2, 1, 0, 0)
        err = errno.errorcode.get(ctypes.get_errno(), "?")
        out["ptrace"] = "allowed" if err == "ESRCH" else err
        rc = libc.unshare(0x00020000)  # CLONE_NEWNS
        out["unshare"] = "allowed" if rc == 0 else errno.errorcode.get(ctypes.get_errno(), "?")
        status = open("/proc/self/status").read()
        for key in ("NoNewPrivs", "Seccomp"):
            out[key] = int(status.split(key + ":")[1].split()[0])
        out["nofile"] = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        out["as"] = resource.getrlimit(resource.RLIMIT_AS)[1]
        out["cpu"] = resource.getrlimit(resource.RLIMIT_CPU)[1]
        # The environment as Python sees it, and as the process has it.
        out["uid"] = os.getuid()
        out["environ"] = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "USER", "LOGNAME", "HOME")}
        libc.getenv.restype = ctypes.c_char_p
        out["process_environ"] = {k: (lambda v: v.decode() if v is not None else None)(libc.getenv(k.encode()))
                                  for k in ("CUDA_VISIBLE_DEVICES",)}
        return out


class Noisy(nn.Module):
    """Different output every call: fails a load-time self-check."""

    def forward(self, x):
        return x + torch.randn_like(x)


class ScriptableMLP(nn.Module):
    """Plain enough for torch.jit.script (the TorchScript baseline)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class Detector(nn.Module):
    """torchvision's smallest detector (random weights) on one image; a score threshold
    above 1 gives no detections at all: empty boxes, labels and scores."""

    def __init__(self, score_thresh):
        super().__init__()
        import torchvision
        torch.manual_seed(0)
        self.det = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
            weights=None, weights_backbone=None, box_score_thresh=score_thresh).eval()

    def forward(self, image):
        return self.det([image])[0]


class Escapes(nn.Module):
    """Tries, from inside a worker, each escape a malicious archive would: its input is a
    uint8 tensor holding JSON parameters; its output says what happened to each try."""

    def forward(self, params):
        import ctypes
        import errno
        import json
        import os
        import socket
        import subprocess
        p = json.loads(bytes(params.tolist()).decode())
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long

        def outcome(rc):
            return "allowed" if rc >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))

        out = {}
        # socket() whose domain hides AF_INET in the low 32 bits of a 64-bit argument.
        fd = libc.syscall(41, ctypes.c_long((1 << 32) | socket.AF_INET), socket.SOCK_STREAM, 0)
        out["socket64"] = outcome(fd)
        if fd >= 0:
            s = socket.socket(fileno=fd)
            try:
                s.connect(("127.0.0.1", p["port"]))
                out["socket64"] = "connected"
            except OSError:
                pass
            s.close()
        params_buf = ctypes.create_string_buffer(120)
        out["io_uring"] = outcome(libc.syscall(425, 4, params_buf))  # io_uring_setup
        # A new user namespace through clone (unshare is denied separately).
        pid = libc.syscall(56, ctypes.c_long(0x10000000 | 17), 0, 0, 0, 0)  # CLONE_NEWUSER | SIGCHLD
        if pid == 0:
            os._exit(0)
        out["clone_newuser"] = outcome(pid)
        if pid > 0:
            os.waitpid(pid, 0)
        # shoald's memory, through /proc.
        try:
            with open(f"/proc/{os.getppid()}/mem", "rb") as f:
                with open(f"/proc/{os.getppid()}/maps") as m:
                    start = int(m.readline().split("-")[0], 16)
                f.seek(start)
                f.read(16)
            out["parent_mem"] = "read"
        except OSError as e:
            out["parent_mem"] = errno.errorcode.get(e.errno, str(e.errno))
        with open("/proc/self/status") as f:
            out["CapEff"] = next(line.split()[1] for line in f if line.startswith("CapEff:"))
        # Who it runs as, and what that user may read and write.
        out["uid"], out["euid"], out["gid"], out["groups"] = os.getuid(), os.geteuid(), os.getgid(), os.getgroups()
        for key, path in (("shadow", "/etc/shadow"), ("secret", p.get("secret"))):
            try:
                with open(path, "rb") as f:
                    f.read(1)
                out[key] = "read"
            except OSError as e:
                out[key] = errno.errorcode.get(e.errno, str(e.errno))
        import tempfile
        out["tmp"] = tempfile.gettempdir()
        out["tmp_owner"] = os.stat(out["tmp"]).st_uid
        try:
            with tempfile.NamedTemporaryFile() as f:
                f.write(b"scratch")
            out["tmp_write"] = "ok"
        except OSError as e:
            out["tmp_write"] = errno.errorcode.get(e.errno, str(e.errno))
        # The control socket: as shoald's own user, model code would be an admin.
        try:
            import shoal
            with shoal.Client(p["socket"]) as c:
                c.unload(p["victim"])
            out["admin"] = "unloaded"
        except Exception as e:  # noqa: BLE001 (any refusal will do)
            out["admin"] = f"{type(e).__name__}: {e}"
        try:
            os.setsid()
            out["setsid"] = "allowed"
        except OSError as e:
            out["setsid"] = errno.errorcode.get(e.errno, str(e.errno))
        # A child that would like to outlive the worker.
        child = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        out["child"] = child.pid
        return out


class Confined(nn.Module):
    """Tries, from inside a worker, to leave the filesystem and the processes Landlock gives
    it. Input: a uint8 tensor holding JSON {"write": [paths], "read": [paths], "kill": pid
    (also tries shoald, its parent), "abstract": name, "tcp": port, "name_thread": true,
    "whoami": true}; output: what happened
    to each try (errno names)."""

    def forward(self, params):
        import errno
        import json
        import signal
        import socket
        import subprocess
        import tempfile
        p = json.loads(bytes(params.tolist()).decode())

        def attempt(fn):
            try:
                fn()
                return "allowed"
            except OSError as e:
                return errno.errorcode.get(e.errno, str(e.errno))

        def write(path):
            with open(path, "w") as f:
                f.write("model code was here\n")

        def read(path):
            with open(path, "rb") as f:
                f.read()

        out = {"write": {w: attempt(lambda w=w: write(w)) for w in p.get("write", [])},
               "read": {r: attempt(lambda r=r: read(r)) for r in p.get("read", [])}}
        # Its own temporary folder works as usual, files and subprocesses alike.
        tmp = tempfile.gettempdir()
        out["tmp"] = tmp
        fd, name = tempfile.mkstemp()
        os.write(fd, b"ok")
        os.close(fd)
        out["mkstemp"] = name
        out["tmp_sibling"] = attempt(lambda: write(os.path.join(os.path.dirname(tmp), "sibling")))
        out["subprocess"] = subprocess.run(["cat", name], capture_output=True, text=True).stdout
        if p.get("name_thread"):
            # As the CUDA driver does: a thread names itself through its comm file.
            import threading
            named = {}

            def name():
                comm = f"/proc/self/task/{threading.get_native_id()}/comm"
                named["own"] = attempt(lambda: write(comm))
                with open(comm) as f:
                    named["name"] = f.read().strip()
            t = threading.Thread(target=name)
            t.start()
            t.join()
            named["parent"] = attempt(lambda: write(f"/proc/{os.getppid()}/comm"))
            out["name_thread"] = named
        if p.get("whoami"):
            import getpass
            out["whoami"] = {"uid": os.getuid(), "home": os.path.expanduser("~")}
            try:
                out["whoami"]["user"] = getpass.getuser()
            except Exception as e:  # noqa: BLE001 (the test reports it)
                out["whoami"]["user"] = repr(e)
        if "kill" in p:
            out["kill"] = attempt(lambda: os.kill(p["kill"], signal.SIGTERM))
            out["kill_shoald"] = attempt(lambda: os.kill(os.getppid(), 0))  # 0: only asks whether it may
        if "abstract" in p:
            def connect():
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.connect("\0" + p["abstract"])
            out["abstract"] = attempt(connect)
        if "tcp" in p:
            def tcp():
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.connect(("127.0.0.1", p["tcp"]))
            out["tcp"] = attempt(tcp)
        return out


class SleepsThenAdds(nn.Module):
    """Sleeps x[0] seconds, then returns a new tensor (x + 1)."""
    def forward(self, x):
        import time
        time.sleep(float(x.flatten()[0]))
        return x + 1


class HoldsMemory(nn.Module):
    """Allocates `mib` MiB (every page touched) and holds it `seconds` before answering x + 1."""
    def __init__(self, mib, seconds=10.0):
        super().__init__()
        self.mib, self.seconds = mib, seconds

    def forward(self, x):
        import time
        held = torch.ones(self.mib << 18)
        time.sleep(self.seconds)
        return x + held[:1]


class Densifies(nn.Module):
    """Makes its input dense (x.contiguous(): the full logical size) and sums it."""
    def forward(self, x):
        return x.contiguous().sum()


class LiftsToGpu(nn.Module):
    """x + 1 on the worker's GPU: host inputs, a CUDA output (no weights: exported anywhere)."""
    def forward(self, x):
        return x.to("cuda") + 1


class GpuAffine(nn.Module):
    """Linear + ReLU, computed wherever its weights are (a GPU when exported from one);
    also says where its input was, to prove inputs arrive on the GPU."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 32)

    def forward(self, x):
        return torch.relu(self.fc(x)), torch.tensor([1 if x.is_cuda else 0], device=x.device)


class Wide(nn.Module):
    """`layers` square Linear layers of `width` (4 x 4096 wide: 256 MiB of fp32 weights),
    with a tied pair (the last layer reuses the first's weight) and a buffer; for shared
    GPU weights. With ``bump``, an input whose first element is over 1000 makes forward
    write into its own weights first (adds ``bump`` to a bias)."""

    def __init__(self, layers=4, width=4096, bump=0.0):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))
        self.tail = nn.Linear(width, width)
        self.tail.weight = self.layers[0].weight
        self.register_buffer("scale", torch.full((width,), 0.5))
        self.bump = bump

    def forward(self, x):
        if self.bump and float(x.flatten()[0]) > 1000:
            with torch.no_grad():
                self.layers[0].bias.add_(self.bump)
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.tail(x) * self.scale


class RaisesWhenPositive(nn.Module):
    """Scriptable: raises its own error for an input whose sum is positive."""

    def forward(self, x):
        if bool(x.sum() > 0):
            raise ValueError("the input must not be positive")
        return x


Pair = collections.namedtuple("Pair", "scores labels")


class Detection(NamedTuple):
    boxes: torch.Tensor
    score: float


class ReturnsNamedTuples(nn.Module):
    """A collections.namedtuple holding a typing.NamedTuple (scriptable)."""

    def forward(self, x):
        return Pair(x * 2, Detection(x + 1, 0.5))


class CudaAssert(nn.Module):
    """Indexes out of bounds on the GPU when asked (x[0] > 0): a device-side assert, which
    leaves the process's CUDA context unusable (a sticky error)."""

    def forward(self, x):
        if float(x[0]) > 0:
            idx = torch.tensor([x.numel() + 1000], device=x.device)
            y = x[idx]
            torch.cuda.synchronize()
            return y
        return x * 2


class Rows(nn.Module):
    """Each row's own result, for dynamic batching: a row whose first value is -1 exits the
    worker, -2 raises, -4 sleeps a second first. Returns a dict with a tuple inside."""

    def forward(self, x):
        first = x[:, 0]
        if bool((first == -1).any()):
            os._exit(3)
        if bool((first == -2).any()):
            raise ValueError("a row asked this model to fail")
        if bool((first == -4).any()):
            time.sleep(1.0)
        y = x * 2 + x.sum(dim=-1, keepdim=True)
        return {"y": y, "pair": (y[:, :1], x.sum(dim=-1))}


class RowsAndTotal(nn.Module):
    """Per-row results and a total over the whole input: cannot be split back by rows."""

    def forward(self, x):
        return x * 2, x.sum()


class InheritedListeners(nn.Module):
    """Counts the listening sockets its worker process holds: model code could accept()
    connections meant for shoald (clients, metrics scrapers) on any of them, and use a TCP
    one even where it may not create sockets."""

    def forward(self, x):
        import os
        import socket
        import stat
        n = 0
        for name in os.listdir("/proc/self/fd"):
            try:
                if not stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                    continue
                s = socket.socket(fileno=os.dup(int(name)))
            except OSError:
                continue  # the listing's own descriptor, gone already
            try:
                n += s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            finally:
                s.close()
        return torch.tensor([float(n)])


_PROFILER = {}


class ProfilesItsRunner(nn.Module):
    """The worker's side of a job, profiled from inside: a call with no profiler running
    starts torch's profiler (CUDA activity included) and returns; the next call stops it.
    What it saw in between is the runner's work: the first job's output written into the
    output arena, the second job's inputs made into tensors. Returns (x * 2, counts) where
    counts (on the CPU) is [-1, -1] for the first call, else [CUDA copies through the host
    (HtoD, DtoH), copies on the device (DtoD)]."""

    def forward(self, x):
        from torch.profiler import ProfilerActivity, profile
        running = _PROFILER.pop("p", None)
        if running is None:
            p = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            p.__enter__()
            _PROFILER["p"] = p
            return x * 2, torch.tensor([-1, -1])
        torch.cuda.synchronize()
        running.__exit__(None, None, None)
        names = [e.name for e in running.events()]
        host = sum(1 for n in names if "HtoD" in n or "DtoH" in n)
        device = sum(1 for n in names if "DtoD" in n)
        return x * 2, torch.tensor([host, device])


# -- inputs with the model's own structure (docs/protocol.md, "Call structure") --------
# Each is scriptable, so the same model serves from a torch.package and a TorchScript archive.

class Reshapes(nn.Module):
    """Outputs of many layouts, each a new tensor or a view of one, for the encoder's copy
    into the output arena (protocol/output_tree.cc): returns (x + 0, a transposed copy,
    every other column, a broadcast row, a 0-dim tensor, x.conj() of the input itself,
    torch._neg_view of a new tensor, -x as a plain tensor, a zero tensor with no memory),
    whatever x's dtype."""

    def forward(self, x):
        y = x + 0
        return (y, y.t(), y[:, ::2], y[:1].expand(3, -1), y[0, 0], x.conj(), torch._neg_view(y.clone()), -x,
                torch._efficientzerotensor(y.shape, dtype=y.dtype))


class KeywordEncoder(nn.Module):
    """Hugging Face style: model(input_ids=..., attention_mask=...), the mask optional."""

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                scale: float = 1.0) -> Dict[str, torch.Tensor]:
        h = input_ids.to(torch.float32) * scale
        if attention_mask is not None:
            h = h * attention_mask.to(torch.float32)
        return {"last_hidden_state": h, "pooled": h.sum(dim=-1)}


class ListOfImages(nn.Module):
    """torchvision detector style: model([img1, img2]) -> [{"boxes", "scores"}, ...]."""

    def forward(self, images: List[torch.Tensor]) -> List[Dict[str, torch.Tensor]]:
        out: List[Dict[str, torch.Tensor]] = []
        for img in images:
            out.append({"boxes": img.flatten()[:4].reshape(1, 4), "scores": img.mean().reshape(1)})
        return out


class DictAndScalars(nn.Module):
    """A dict of tensors, and int, float, bool, str and None arguments."""

    def forward(self, feats: Dict[str, torch.Tensor], k: int, alpha: float, flag: bool, mode: str,
                bias: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, int, float, bool, str, bool]:
        total = feats["a"] * alpha + feats["b"] * float(k)
        if bias is not None:
            total = total + bias
        if flag:
            total = -total
        return total, k + 1, alpha * 2.0, not flag, mode + "!", bias is None


class Nested(nn.Module):
    """Nested tuples, lists and dicts: ((x, [y, z]), {"w": (v,)})."""

    def forward(self, pair: Tuple[torch.Tensor, List[torch.Tensor]],
                extra: Dict[str, Tuple[torch.Tensor]]) -> torch.Tensor:
        x, ys = pair
        total = x.clone()
        for y in ys:
            total = total + y
        return total + extra["w"][0]


class ReturnsDetection(nn.Module):
    """One typing.NamedTuple of a tensor and a float: outputs named by its fields."""

    def forward(self, x):
        return Detection(x + 1, 0.5)


class SleepsThenCrashes(nn.Module):
    """Sleeps x[0] seconds; then segfaults when x[1] < 0, else returns x + 1."""

    def forward(self, x):
        time.sleep(float(x[0]))
        if float(x[1]) < 0:
            ctypes.string_at(0)
        return x + 1


class CountsCalls(nn.Module):
    """Sleeps x[0] seconds, then returns how many times it ran in this process, itself included."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        time.sleep(float(x[0]))
        self.calls += 1
        return torch.tensor([self.calls])


class Labels(nn.Module):
    """A label per element of x: a list of str ("cat" where positive, else "dog")."""

    def forward(self, x):
        return ["cat" if v > 0 else "dog" for v in x.tolist()]
