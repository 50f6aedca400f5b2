"""The `shoal` command: talk to shoald from a shell.

    shoal [--socket PATH] load NAME ARCHIVE [--device cpu|cuda|cuda:N] [--max-batch N]
          [--max-delay-us N] [--preferred-batch-sizes N,N] [--entry PKG/NAME.pkl] [--methods M,M]
    shoal [--socket PATH] unload NAME
    shoal [--socket PATH] models
    shoal [--socket PATH] status
    shoal [--socket PATH] health
    shoal [--socket PATH] infer NAME IN.npy|IN.npz... [-o OUT.npy] [--timeout SECONDS] [--method M]
    shoal package MODULE.py:FACTORY -o OUT.pt [--name N] [--version V] [--example-input X.npy]...
                  [--extern PATTERN]... [--intern PATTERN]...
    shoal package --repack IN.pt -o OUT.pt
    shoal inspect ARCHIVE [--json]
"""
import argparse
import json
import os
import re
import sys

import numpy as np
import torch

from . import errors
from .client import Client


def _flatten(obj, prefix, out):
    if isinstance(obj, torch.Tensor):
        out[prefix or "output"] = obj.numpy()
    elif isinstance(obj, (tuple, list)):
        for i, x in enumerate(obj):
            _flatten(x, f"{prefix}.{i}" if prefix else str(i), out)
    elif isinstance(obj, dict):
        for k, x in obj.items():
            _flatten(x, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix or "output"] = np.asarray(obj)


def _show(obj, indent=""):
    if isinstance(obj, torch.Tensor):
        flat = obj.flatten()
        head = ", ".join(f"{float(v):.6g}" for v in flat[:8])
        more = ", ..." if flat.numel() > 8 else ""
        return f"tensor(shape={list(obj.shape)}, dtype={str(obj.dtype).replace('torch.', '')}, [{head}{more}])"
    if isinstance(obj, dict):
        inner = "".join(f"\n{indent}  {k!r}: {_show(v, indent + '  ')}" for k, v in obj.items())
        return "{" + inner + f"\n{indent}}}"
    if isinstance(obj, (tuple, list)):
        o, c = ("(", ")") if isinstance(obj, tuple) else ("[", "]")
        inner = "".join(f"\n{indent}  {_show(v, indent + '  ')}," for v in obj)
        return o + inner + f"\n{indent}{c}"
    return repr(obj)


INPUTS_HELP = ("inputs: each .npy is one positional argument; in a .npz, arrays named arr_0, arr_1, ... "
               "(numpy's names for unnamed arrays: np.savez(f, a, b)) are positional arguments in that "
               "order, at the file's place, and every other name is a keyword argument "
               "(np.savez(f, input_ids=a) calls model(input_ids=a))")
_POSITIONAL = re.compile(r"arr_(0|[1-9][0-9]*)")


def read_inputs(paths):
    """(args, kwargs) for ``shoal infer`` from .npy and .npz files (the rule: INPUTS_HELP).
    ValueError naming the file when one cannot be read or a keyword comes twice."""
    args, kwargs = [], {}
    for path in paths:
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read input {path}: {e}") from None
        if isinstance(data, np.ndarray):
            args.append(data)
            continue
        with data:
            positional = []
            for key in data.files:
                m = _POSITIONAL.fullmatch(key)
                if m:
                    positional.append((int(m.group(1)), data[key]))
                elif key in kwargs:
                    raise ValueError(f"input {path}: keyword argument {key!r} is given by an earlier .npz too")
                else:
                    kwargs[key] = data[key]
            args.extend(a for _, a in sorted(positional, key=lambda p: p[0]))
    return args, kwargs


def build_parser():
    """The command line: every subcommand and option (shoal(1), docs/man/shoal.1.md, is
    checked against it)."""
    p = argparse.ArgumentParser(prog="shoal", description="Client of the shoal inference service.")
    p.add_argument("--socket", help="shoald's socket (default: $SHOAL_SOCKET or the system socket)")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("load", help="load an archive under a name")
    s.add_argument("name")
    s.add_argument("archive")
    s.add_argument("--device", help="where it runs: cpu, cuda or cuda:N (default: where it was exported)")
    s.add_argument("--max-batch", type=int, help="dynamic batching: at most this many jobs per run (1: off; "
                   "default: the archive's manifest)")
    s.add_argument("--max-delay-us", type=int, help="dynamic batching: how long a batch may wait to fill")
    s.add_argument("--preferred-batch-sizes", type=lambda v: [int(n) for n in v.split(",") if n],
                   help="dynamic batching: sizes that run at once, comma-separated (e.g. 4,8)")
    s.add_argument("--entry", metavar="PKG/NAME.pkl",
                   help="the pickle of a torch.package archive to serve, MultiPy's load_pickle(package, "
                   "resource) as package/resource (default: the manifest's entry, else model/model.pkl)")
    s.add_argument("--methods", type=lambda v: [n for n in v.split(",") if n], metavar="M,M",
                   help="methods besides forward that clients may call (infer --method), comma-separated")
    s = sub.add_parser("unload", help="unload a model")
    s.add_argument("name")
    sub.add_parser("models", help="list loaded models")
    sub.add_parser("status", help="workers, queue and counters (JSON)")
    sub.add_parser("health", help="liveness and readiness; exit code 0 only when ready")
    s = sub.add_parser("infer", help="run a model on .npy/.npz inputs", description=INPUTS_HELP)
    s.add_argument("name")
    s.add_argument("inputs", nargs="*", metavar="IN.npy|IN.npz", help=INPUTS_HELP)
    s.add_argument("--method", help="call this method of the model instead of forward (one its load or "
                   "manifest allows)")
    s.add_argument("-o", "--output", help="write the result: .npy for one tensor, .npz for a structure")
    s.add_argument("--timeout", type=float, help="deadline in seconds")
    s.add_argument("--retries", type=int, default=0, choices=(0, 1),
                   help="re-run the job once if its worker crashes")
    s = sub.add_parser("package", help="build an archive from MODULE.py:FACTORY (or --repack one)")
    s.add_argument("source", help="MODULE.py:FACTORY, or with --repack an archive")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--name")
    s.add_argument("--version")
    s.add_argument("--example-input", action="append", default=[], metavar="FILE.npy",
                   help="example input (repeat per input): records specs and a reference output")
    s.add_argument("--extern", action="append", default=[], metavar="PATTERN")
    s.add_argument("--intern", action="append", default=[], metavar="PATTERN")
    s.add_argument("--broadcast-inputs", action="store_true",
                   help="accept inputs whose strides overlap (x.expand(...)); refused otherwise")
    s.add_argument("--repack", action="store_true", help="rewrite an archive into a servable layout")
    s = sub.add_parser("inspect", help="describe an archive without running it")
    s.add_argument("archive")
    s.add_argument("--json", action="store_true")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.cmd in ("package", "inspect"):
        return _offline(args)

    try:
        with Client(args.socket) as c:
            if args.cmd == "load":
                c.load(args.name, args.archive, device=args.device, max_batch=args.max_batch,
                       max_delay_us=args.max_delay_us, preferred_batch_sizes=args.preferred_batch_sizes,
                       entry=args.entry, methods=args.methods)
                print(f"loaded {args.name} from {args.archive}" + (f" on {args.device}" if args.device else ""))
            elif args.cmd == "unload":
                c.unload(args.name)
                print(f"unloaded {args.name}")
            elif args.cmd == "models":
                for m in c.models():
                    print(f"{m['name']}\t{'ready' if m['ready'] else 'NOT READY'}\t{m['path']}")
                for p in (c.repository() or {}).get("problems", []):  # admins only
                    print(f"{p['model'] or '-'}\tNOT SERVED\t{p['file']}: {p['error']}")
            elif args.cmd == "status":
                print(json.dumps(c.status(), indent=2))
            elif args.cmd == "health":
                h = c.health()
                print(f"live: yes\nready: {'yes' if h['ready'] else 'no'}"
                      + ("\nstopping: yes" if h["stopping"] else ""))
                for name, ready in sorted(h["models"].items()):
                    print(f"  {name}: {'ready' if ready else 'NOT READY'}")
                return 0 if h["ready"] else 1
            elif args.cmd == "infer":
                try:
                    inputs, keywords = read_inputs(args.inputs)
                except ValueError as e:
                    print(f"shoal: {e}", file=sys.stderr)
                    return 2
                out = c.infer(args.name, *inputs, timeout=args.timeout, retries=args.retries, method=args.method,
                              kwargs=keywords)
                print(_show(out))
                if args.output:
                    if isinstance(out, torch.Tensor):
                        np.save(args.output, out.numpy())
                    else:
                        flat = {}
                        _flatten(out, "", flat)
                        np.savez(args.output, **flat)
                    print(f"wrote {args.output}")
    except errors.Error as e:
        print(f"shoal: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


def _offline(args):
    """Commands that need no daemon."""
    from . import archive, tools
    if args.cmd == "inspect":
        info = tools.inspect_archive(args.archive)
        print(json.dumps(info, indent=2) if args.json else tools.format_inspection(info))
        return 0 if info["servable"] else 1
    if args.repack:
        try:
            n = tools.repack(args.source, args.output)
        except (OSError, ValueError, Exception) as e:  # noqa: BLE001 - reported, not raised
            print(f"shoal: cannot repack {args.source}: {e}", file=sys.stderr)
            return 1
        info = tools.inspect_archive(args.output)
        print(f"wrote {args.output} ({n} records, servable: {'yes' if info['servable'] else 'NO'})")
        return 0 if info["servable"] else 1
    try:
        model = tools.load_factory(args.source)
        examples = [torch.from_numpy(np.load(x, allow_pickle=False)) for x in args.example_input]
    except Exception as e:  # noqa: BLE001 - the user's code: report it with its traceback
        import traceback
        traceback.print_exc()
        print(f"shoal: cannot build the model from {args.source}: {e}", file=sys.stderr)
        return 2
    archive.export(model, args.output, extern=args.extern, intern=args.intern, name=args.name,
                   version=args.version, example_inputs=tuple(examples) if examples else None,
                   progress=sys.stderr, broadcast_inputs=args.broadcast_inputs)
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
