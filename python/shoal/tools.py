"""Archive tools behind `shoal package` and `shoal inspect`: build an archive from a
Python file, describe one without running it, and rewrite one into a servable layout.
Archives are read only through the C++ reader (``archive.read_zip``), so `shoal inspect`
calls servable exactly what shoald serves."""
import importlib.util
import json
import os
import pickletools
import struct
import sys
import zipfile

from . import _tensors, archive

STORAGE_DTYPES = _tensors.STORAGE_DTYPES


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
    out = {"path": os.path.abspath(path), "kind": None, "manifest": None, "broadcast_inputs": False,
           "interned_modules": [],
           "extern_modules": [], "storages": {"count": 0, "bytes": 0, "dtypes": {}, "records": []},
           "problems": [], "servable": False}
    problems = out["problems"]
    try:
        info = archive.read_zip(path)
    except archive.ArchiveError as e:
        problems.append(str(e))
        return out
    out["kind"] = info["kind"]
    out["entry"] = info["entry"]  # the pickle a load without entry= serves
    out["broadcast_inputs"] = info["broadcast_inputs"]
    if info["problem"]:
        problems.append(info["problem"])  # why shoald would refuse it, in its words
    rel = {}
    for rec in info["records"]:
        rel.setdefault(rec["name"], rec)

    def read(name):
        try:
            return archive.record_bytes(f, rel[name])
        except archive.ArchiveError as e:
            problems.append(str(e))
            return None

    with open(path, "rb") as f:
        dtypes = {}
        if out["kind"] == "torch.package":
            for name in rel:  # storage keys are shared by all pickles of a package
                if name.endswith(".pkl") and not name.startswith(".data/"):
                    data = read(name)
                    if data is not None:
                        dtypes.update(_storage_dtypes(data))
            manifest = archive.manifest_record(lambda name: name in rel)
            if manifest is not None:
                data = read(manifest)
                try:
                    out["manifest"] = json.loads(data.decode()) if data is not None else None
                except ValueError as e:
                    problems.append(f"{manifest} does not parse: {e}")
            if ".data/extern_modules" in rel:
                data = read(".data/extern_modules") or b""
                out["extern_modules"] = sorted(x for x in data.decode(errors="replace").split("\n") if x)
            out["interned_modules"] = sorted(
                n[:-3].replace("/", ".").removesuffix(".__init__") for n in rel
                if n.endswith(".py") and not n.startswith(".data/"))
    st = out["storages"]
    storage_prefix = "data/" if out["kind"] == "torchscript" else ".data/"
    for rec in info["records"]:
        if not rec["storage"]:
            continue
        name = rec["name"]
        key = name[len(storage_prefix):].removesuffix(".storage")
        entry = {"name": name, "bytes": rec["uncompressed"], "offset": rec["offset"],
                 "aligned": rec["offset"] % archive.ALIGNMENT == 0, "compressed": rec["method"] != 0,
                 "dtype": dtypes.get(key, "?")}
        st["records"].append(entry)
        st["count"] += 1
        st["bytes"] += entry["bytes"]
        st["dtypes"][entry["dtype"]] = st["dtypes"].get(entry["dtype"], 0) + 1
    out["servable"] = not problems
    return out


def format_inspection(info):
    lines = [f"archive   {info['path']}", f"kind      {info['kind'] or '?'}"]
    if info.get("entry"):
        lines.append(f"entry     {info['entry']}")
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
    lines.append(f"broadcast inputs  {'accepted' if info['broadcast_inputs'] else 'refused'}")
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
    info = archive.read_zip(src)
    seen = set()
    for rec in info["records"]:
        if rec["stored_name"] in seen:
            raise ValueError(f"{src}: duplicate record {rec['stored_name']!r}")
        seen.add(rec["stored_name"])
    with open(src, "rb") as fin, open(dst, "wb") as raw, \
            zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED, allowZip64=True) as zout:
        for rec in info["records"]:
            data = archive.record_bytes(fin, rec)
            t, d = rec["dos_time"], rec["dos_date"]
            date_time = ((d >> 9) + 1980, (d >> 5) & 0xF, d & 0x1F, t >> 11, (t >> 5) & 0x3F, (t & 0x1F) * 2)
            out = zipfile.ZipInfo(rec["stored_name"], date_time=date_time)
            out.compress_type = zipfile.ZIP_STORED
            # Pad the local header's extra field so that the data starts on a 64-byte boundary.
            header_end = raw.tell() + 30 + len(rec["stored_name"].encode())
            pad = (-(header_end + 4)) % archive.ALIGNMENT
            out.extra = struct.pack("<HH", 0xCAFE, pad) + b"\0" * pad
            zout.writestr(out, data)
    return len(info["records"])
