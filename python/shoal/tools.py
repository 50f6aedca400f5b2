"""Archive tools behind `shoal package` and `shoal inspect`: build an archive from a
Python file, describe one without running it, and rewrite one into a servable layout."""
import importlib.util
import json
import os
import pickletools
import struct
import sys
import zipfile

from . import archive

STORAGE_DTYPES = {"FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
                  "BFloat16Storage": "bfloat16", "ByteStorage": "uint8", "CharStorage": "int8",
                  "ShortStorage": "int16", "IntStorage": "int32", "LongStorage": "int64",
                  "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
                  "ComplexDoubleStorage": "complex128"}


def load_factory(spec):
    """`path/to/module.py:factory` -> the object factory() returns. The module's folder goes
    on sys.path so that its helper modules import (and are interned)."""
    if ":" not in spec:
        raise ValueError(f"expected MODULE.py:FACTORY, got {spec!r}")
    path, factory = spec.rsplit(":", 1)
    if not os.path.isfile(path):
        raise ValueError(f"no such file: {path}")
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:
        sys.path.insert(0, folder)
    name = os.path.splitext(os.path.basename(path))[0]
    mod_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[name] = module
    mod_spec.loader.exec_module(module)
    if not hasattr(module, factory):
        raise ValueError(f"{path} has no function {factory!r}")
    return getattr(module, factory)()


def _local_data_offset(f, info):
    f.seek(info.header_offset)
    header = f.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        return None
    n, e = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + n + e


def _storage_dtypes(pickle_bytes):
    """Storage key -> dtype, read from the pickle's persistent ids without unpickling:
    each id is (\"storage\", <GLOBAL torch XStorage, or a memo get of it>, key, location, n)."""
    dtypes, pending, memo, last_storage_global, puts = {}, None, {}, None, 0
    try:
        for op, arg, _ in pickletools.genops(pickle_bytes):
            name = op.name
            if name in ("GLOBAL", "STACK_GLOBAL") and isinstance(arg, str) and arg.endswith("Storage"):
                pending = last_storage_global = STORAGE_DTYPES.get(arg.split()[-1], arg.split()[-1])
                continue
            if name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
                index = puts if name == "MEMOIZE" else arg
                puts += 1
                if last_storage_global is not None:
                    memo[index] = last_storage_global
                last_storage_global = None
                continue
            last_storage_global = None
            if name in ("BINGET", "LONG_BINGET", "GET") and arg in memo:
                pending = memo[arg]
            elif pending and name in ("BINUNICODE", "SHORT_BINUNICODE", "UNICODE", "BININT1", "BININT2",
                                      "BININT", "LONG1"):
                dtypes[str(arg)] = pending  # the storage key follows its type
                pending = None
    except Exception:  # noqa: BLE001 - a damaged pickle: describe what could be read
        pass
    return dtypes


def inspect_archive(path):
    """A description of the archive: manifest, modules, storages, problems, servable."""
    out = {"path": os.path.abspath(path), "kind": None, "manifest": None, "interned_modules": [],
           "extern_modules": [], "storages": {"count": 0, "bytes": 0, "dtypes": {}, "records": []},
           "problems": [], "servable": False}
    problems = out["problems"]
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        problems.append(f"not a readable zip file: {e}")
        return out
    with zf, open(path, "rb") as f:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        prefix = names[0].split("/", 1)[0] + "/" if names and "/" in names[0] else ""
        rel = {}
        for info in infos:
            name = info.filename[len(prefix):] if prefix and info.filename.startswith(prefix) else info.filename
            if info.filename.startswith("/") or ".." in info.filename.split("/"):
                problems.append(f"unsafe record name {info.filename!r}")
            if name in rel:
                problems.append(f"duplicate record {name!r}")
            rel[name] = info
        if "model/model.pkl" in rel:
            out["kind"] = "torch.package"
        elif "data.pkl" in rel and "constants.pkl" in rel:
            out["kind"] = "torchscript"
        else:
            problems.append("no entry pickle model/model.pkl (and not TorchScript)")
        storage_prefix = ".data/" if out["kind"] != "torchscript" else "data/"
        dtypes = {}
        if out["kind"] == "torch.package":
            for name, info in rel.items():  # storage keys are shared by all pickles of a package
                if name.endswith(".pkl") and not name.startswith(".data/"):
                    dtypes.update(_storage_dtypes(zf.read(info)))
            if archive.MANIFEST in rel:
                try:
                    out["manifest"] = json.loads(zf.read(rel[archive.MANIFEST]).decode())
                except ValueError as e:
                    problems.append(f"{archive.MANIFEST} does not parse: {e}")
            if ".data/extern_modules" in rel:
                out["extern_modules"] = sorted(
                    x for x in zf.read(rel[".data/extern_modules"]).decode().split("\n") if x)
            out["interned_modules"] = sorted(
                n[:-3].replace("/", ".").removesuffix(".__init__") for n in rel
                if n.endswith(".py") and not n.startswith(".data/"))
        st = out["storages"]
        for name, info in rel.items():
            is_storage = name.startswith(storage_prefix) and (name.endswith(".storage") or out["kind"] == "torchscript")
            if not is_storage:
                continue
            offset = _local_data_offset(f, info)
            key = name[len(storage_prefix):].removesuffix(".storage")
            rec = {"name": name, "bytes": info.file_size, "offset": offset,
                   "aligned": offset is not None and offset % archive.ALIGNMENT == 0,
                   "compressed": info.compress_type != zipfile.ZIP_STORED, "dtype": dtypes.get(key, "?")}
            st["records"].append(rec)
            st["count"] += 1
            st["bytes"] += info.file_size
            st["dtypes"][rec["dtype"]] = st["dtypes"].get(rec["dtype"], 0) + 1
            if rec["compressed"]:
                problems.append(f"storage {name} is compressed")
            elif not rec["aligned"]:
                problems.append(f"storage {name} is not {archive.ALIGNMENT}-byte aligned")
    out["servable"] = not problems
    return out


def format_inspection(info):
    lines = [f"archive   {info['path']}", f"kind      {info['kind'] or '?'}"]
    m = info["manifest"]
    if m:
        lines.append(f"manifest  name={m.get('name')} version={m.get('version')} entry={m.get('entry')}")
        for key in ("inputs", "outputs"):
            for spec in m.get(key, []):
                dims = ", ".join("*" if d is None else str(d) for d in spec.get("shape", []))
                lines.append(f"  {key[:-1]:<6}  {spec.get('name', '')} {spec.get('dtype')}[{dims}]")
        lines.append(f"  self-check: {'yes' if m.get('example') else 'no'}")
    else:
        lines.append("manifest  none (defaults apply)")
    lines.append(f"interned  {len(info['interned_modules'])} modules: {', '.join(info['interned_modules'][:12])}"
                 + (" ..." if len(info["interned_modules"]) > 12 else ""))
    lines.append(f"extern    {', '.join(info['extern_modules']) or '-'}")
    st = info["storages"]
    mix = ", ".join(f"{k} x{v}" for k, v in sorted(st["dtypes"].items()))
    lines.append(f"storages  {st['count']} ({st['bytes'] / 2**20:.1f} MiB) {mix}")
    bad = [r for r in st["records"] if r["compressed"] or not r["aligned"]]
    lines.append(f"layout    {'all stored and 64-byte aligned' if not bad else f'{len(bad)} storages need --repack'}")
    for p in info["problems"]:
        lines.append(f"problem   {p}")
    lines.append(f"servable  {'yes' if info['servable'] else 'NO'}")
    return "\n".join(lines)


def repack(src, dst):
    """Rewrites `src` into `dst` with every record stored (uncompressed) and 64-byte
    aligned, the layout workers map in place. Returns the number of records."""
    with zipfile.ZipFile(src) as zin:
        infos = zin.infolist()
        seen = set()
        with open(dst, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED, allowZip64=True) as zout:
            for info in infos:
                if info.filename in seen:
                    raise ValueError(f"{src}: duplicate record {info.filename!r}")
                seen.add(info.filename)
                data = zin.read(info)
                out = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                out.compress_type = zipfile.ZIP_STORED
                # Pad the local header's extra field so that the data starts on a 64-byte boundary.
                header_end = raw.tell() + 30 + len(info.filename.encode())
                pad = (-(header_end + 4)) % archive.ALIGNMENT
                out.extra = struct.pack("<HH", 0xCAFE, pad) + b"\0" * pad
                zout.writestr(out, data)
    return len(infos)
