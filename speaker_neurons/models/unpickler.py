"""Read `torch.save` files without running code from them: `safe_torch_load(path)`.

A checkpoint file is untrusted input (METHOD §8): `torch.load(weights_only=False)` would run whatever
callables the pickle names. `safe_torch_load` instead reads the torch zip container (and the pre-1.6
"legacy" stream format) itself and unpickles with an allow-list:

* tensors: storages are read from the archive by this module; `torch._utils._rebuild_tensor_v2` and
  friends are replaced by local functions that only accept those storages;
* plain containers: dict, list, tuple, set, OrderedDict, defaultdict (becomes a dict), bytes, numbers;
* numpy scalars and arrays of numeric dtypes (rebuilt from their raw bytes; object arrays are refused);
* configuration objects, rebuilt as plain data WITHOUT importing or running their classes:
  `argparse.Namespace` -> `argparse.Namespace`, omegaconf `DictConfig` / `ListConfig` and their nodes ->
  dict / list / value, `fairseq.*` enum members -> their value, `fairseq.*` dataclass objects -> dict,
  `typing.*` references -> their name.

Every other global (os.system, builtins.eval, subprocess.*, functools.partial, ...) raises
`UnsafeCheckpointError` naming the file and the global, before anything is called. Every reader of a torch
pickle in this package (released MelHuBERT, fairseq, Hugging Face `pytorch_model.bin`, format sniffing) goes
through `safe_torch_load`.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import builtins
import collections
import io
import os
import pickle
import re
import struct
import sys
import zipfile
from pathlib import PurePosixPath
from typing import Any, Callable

import numpy as np
import torch

from speaker_neurons.models.errors import CheckpointError, UnsafeCheckpointError

__all__ = ["safe_torch_load", "CheckpointError", "UnsafeCheckpointError"]


# --------------------------------------------------------------------------------------------------
# stand-ins built by the unpickler (never the real classes)


class _StubMeta(type):
    """Calling a stub class (pickle REDUCE/INST/OBJ) records the arguments; no code of the original runs."""

    def __call__(cls, *args, **kwargs):
        inst = cls.__new__(cls, *args)
        if kwargs:
            object.__setattr__(inst, "_pk_kwargs", dict(kwargs))
        return inst


class _Stub(metaclass=_StubMeta):
    """Placeholder for an object of a known configuration class; converted to plain data after loading."""

    _pk_global = "?"
    _pk_kind = "object"

    def __new__(cls, *args, **kwargs):
        inst = object.__new__(cls)
        object.__setattr__(inst, "_pk_args", tuple(args))
        object.__setattr__(inst, "_pk_kwargs", dict(kwargs))
        object.__setattr__(inst, "_pk_state", None)
        object.__setattr__(inst, "_pk_items", [])
        return inst

    def __setstate__(self, state):  # pickle BUILD
        object.__setattr__(self, "_pk_state", state)

    def __setitem__(self, key, value):  # pickle SETITEM(S) on dict-like classes
        self._pk_items.append((key, value))

    def append(self, value):  # pickle APPEND(S) on list-like classes
        self._pk_items.append((None, value))

    def extend(self, values):
        for v in values:
            self.append(v)

    def __repr__(self) -> str:
        return f"<stub {self._pk_global}>"


_STUB_CLASSES: dict[tuple[str, str], type] = {}


def _stub_class(module: str, name: str, kind: str) -> type:
    key = (module, name)
    cls = _STUB_CLASSES.get(key)
    if cls is None:
        cls = _StubMeta(name, (_Stub,), {"_pk_global": f"{module}.{name}", "_pk_kind": kind, "__module__": __name__})
        _STUB_CLASSES[key] = cls
    return cls


class _TypingRef:
    """`typing.Any` and friends (omegaconf metadata); converted to the string `typing.<name>`."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


class _StorageType:
    """Stand-in for `torch.FloatStorage` etc.: only carries the dtype."""

    def __init__(self, name: str, dtype: torch.dtype):
        self.name = name
        self.dtype = dtype


class _Storage:
    """A storage read from the file: `buffer` (a bytearray) holds the bytes of the root storage; a view
    starts `elem_offset` elements into it."""

    def __init__(self, buffer: bytearray, dtype: torch.dtype, elem_offset: int = 0):
        self.buffer = buffer
        self.dtype = dtype
        self.elem_offset = elem_offset
        self._untyped = None

    def untyped(self) -> torch.UntypedStorage:
        if self._untyped is None:
            if len(self.buffer) == 0:
                self._untyped = torch.empty(0, dtype=torch.uint8).untyped_storage()
            else:
                # shares memory with the bytearray (legacy files fill it after unpickling)
                self._untyped = torch.frombuffer(self.buffer, dtype=torch.uint8).untyped_storage()
        return self._untyped


class _NumpyDType:
    """`numpy.dtype(spec, align, copy)` + BUILD state; only numeric dtypes are ever made from it."""

    def __init__(self, *args):
        self.args = args
        self.state = None

    def __setstate__(self, state):
        self.state = state

    def to_numpy(self) -> np.dtype:
        spec = self.args[0] if self.args else None
        if not isinstance(spec, str) or not re.fullmatch(r"[biufc]\d{1,2}|\?|bool|float\d\d|u?int\d\d?", spec):
            raise TypeError(f"numpy dtype {spec!r} is not a plain numeric dtype")
        dt = np.dtype(spec)
        if isinstance(self.state, tuple) and len(self.state) > 1 and self.state[1] in ("<", ">"):
            dt = dt.newbyteorder(self.state[1])
        if dt.hasobject or dt.kind not in "biufc":
            raise TypeError(f"numpy dtype {spec!r} is not numeric")
        return dt


class _NumpyArray:
    """`numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')` + BUILD state; rebuilt from raw bytes."""

    def __init__(self):
        self.state = None

    def __setstate__(self, state):
        self.state = state


_NDARRAY = object()  # stand-in for the global numpy.ndarray
_TENSOR_TYPES = object()  # stand-in for torch.Tensor / torch.nn.Parameter as a type argument


# --------------------------------------------------------------------------------------------------
# allowed callables (all local; they validate their arguments)

_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}

_TORCH_DTYPE_NAMES = (
    "float32 float float64 double float16 half bfloat16 int64 long int32 int int16 short int8 uint8 bool "
    "complex64 complex128"
).split()


def _is_int_seq(x) -> bool:
    return isinstance(x, (tuple, list, torch.Size)) and all(isinstance(v, int) and not isinstance(v, bool) for v in x)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    if not isinstance(storage, _Storage):
        raise TypeError("tensor rebuild: the storage does not come from this file")
    if not (isinstance(storage_offset, int) and _is_int_seq(size) and _is_int_seq(stride) and len(size) == len(stride)):
        raise TypeError("tensor rebuild: malformed offset/size/stride")
    t = torch.empty((0,), dtype=storage.dtype)
    # set_ checks that the view fits inside the storage
    t.set_(storage.untyped(), storage.elem_offset + storage_offset, tuple(size), tuple(stride))
    return t


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if metadata:
        raise TypeError(f"tensor rebuild: unsupported tensor metadata {metadata!r}")
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, torch.Tensor):
        raise TypeError("parameter rebuild: data is not a tensor")
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if func not in (_rebuild_tensor_v2, _rebuild_tensor, _rebuild_parameter) or new_type is not _TENSOR_TYPES:
        raise TypeError("_rebuild_from_type_v2 with a function or type outside the allow-list")
    if state:
        raise TypeError("tensor subclass state is not supported")
    return func(*args)


def _torch_size(seq=()):
    if not _is_int_seq(seq):
        raise TypeError("torch.Size of non-integers")
    return torch.Size(seq)


def _torch_device(spec, index=None):
    if not isinstance(spec, (str, int)) or (index is not None and not isinstance(index, int)):
        raise TypeError("torch.device with unexpected arguments")
    return str(spec) if index is None else f"{spec}:{index}"


def _codecs_encode(text, encoding="utf-8", errors="strict"):
    # protocol-2 pickles store bytes as _codecs.encode(str, 'latin1')
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8") or errors != "strict":
        raise TypeError("_codecs.encode with unexpected arguments")
    return text.encode(encoding)


def _make_defaultdict(default_factory=None, *args):
    if args:
        raise TypeError("defaultdict with unexpected arguments")
    return {}


def _reconstructor(cls, base, state):
    # copyreg._reconstructor (protocol 0/1 objects); only for our stubs on top of `object`
    if not (isinstance(cls, type) and issubclass(cls, _Stub)) or base is not object:
        raise TypeError("copyreg._reconstructor for a class outside the allow-list")
    inst = cls.__new__(cls)
    if state is not None:
        raise TypeError("copyreg._reconstructor with a base state")
    return inst


def _path_from_parts(*parts):
    if not all(isinstance(p, str) for p in parts):
        raise TypeError("path with non-string parts")
    return str(PurePosixPath(*parts)) if parts else "."


def _typing_getitem(base, params):
    # omegaconf metadata of structured configs: ref_type = typing.Tuple[float, float] pickles as
    # operator.getitem(typing.Tuple, (float, float)); anything but a typing reference is refused
    if not isinstance(base, _TypingRef):
        raise TypeError("operator.getitem is only allowed on typing references")
    items = params if isinstance(params, tuple) else (params,)
    names = [p.name if isinstance(p, _TypingRef) else _ALLOWED_NAMES.get(id(p), type(p).__name__) for p in items]
    return _TypingRef(f"{base.name}[{', '.join(names)}]")


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, _NumpyDType) or not isinstance(data, (bytes, bytearray)):
        raise TypeError("numpy scalar with an unsupported dtype or payload")
    dt = dtype.to_numpy()
    arr = np.frombuffer(bytes(data), dtype=dt)
    if arr.size != 1:
        raise TypeError("numpy scalar payload has the wrong size")
    return arr[0].item()


def _np_reconstruct(subtype, shape, typecode):
    if subtype is not _NDARRAY:
        raise TypeError("numpy _reconstruct of a non-ndarray type")
    return _NumpyArray()


def _build_allow_list() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "defaultdict"): _make_defaultdict,
        ("_codecs", "encode"): _codecs_encode,
        ("copyreg", "_reconstructor"): _reconstructor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch", "Tensor"): _TENSOR_TYPES,
        ("torch._tensor", "Tensor"): _TENSOR_TYPES,
        ("torch.nn.parameter", "Parameter"): _TENSOR_TYPES,
        ("torch", "Size"): _torch_size,
        ("torch", "device"): _torch_device,
        ("argparse", "Namespace"): _stub_class("argparse", "Namespace", "namespace"),
        ("_operator", "getitem"): _typing_getitem,
        ("operator", "getitem"): _typing_getitem,
        ("numpy", "dtype"): _NumpyDType,
        ("numpy", "ndarray"): _NDARRAY,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "scalar")] = _np_scalar
        allowed[(mod, "_reconstruct")] = _np_reconstruct
    for name in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str", "bytes",
                 "bytearray", "slice", "object"):
        allowed[("builtins", name)] = getattr(builtins, name)
    for name in ("Path", "PosixPath", "PurePath", "PurePosixPath"):
        allowed[("pathlib", name)] = _path_from_parts
    for name in ("Any", "Dict", "List", "Tuple", "Optional", "Union", "Sequence", "Mapping"):
        allowed[("typing", name)] = _TypingRef(f"typing.{name}")
    for name, dtype in _STORAGE_DTYPES.items():
        allowed[("torch", name)] = _StorageType(name, dtype)
    for name in _TORCH_DTYPE_NAMES:
        allowed[("torch", name)] = getattr(torch, name)
    return allowed


_ALLOWED = _build_allow_list()
_ALLOWED_NAMES = {id(v): f"{m}.{n}" for (m, n), v in _ALLOWED.items()}

# omegaconf classes are replaced by stubs of these kinds (never imported)
_OMEGACONF_KINDS = {
    "omegaconf.dictconfig": {"DictConfig": "dictconfig"},
    "omegaconf.listconfig": {"ListConfig": "listconfig"},
    "omegaconf.base": {"Metadata": "meta", "ContainerMetadata": "meta", "Node": "node", "Container": "meta"},
}
_OMEGACONF_NODE = re.compile(r"[A-Za-z]*Node")


def _lookup_global(module: str, name: str, path) -> Any:
    if not isinstance(module, str) or not isinstance(name, str):
        raise UnsafeCheckpointError(path, f"{module!r}.{name!r}", "non-string global")
    # protocol <= 2 pickles written by Python 2 or with fix_imports (e.g. '__builtin__ dict')
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    full = f"{module}.{name}"
    obj = _ALLOWED.get((module, name))
    if obj is not None:
        return obj
    ident = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) is not None
    if ident and module in _OMEGACONF_KINDS and name in _OMEGACONF_KINDS[module]:
        return _stub_class(module, name, _OMEGACONF_KINDS[module][name])
    if ident and module == "omegaconf.nodes" and _OMEGACONF_NODE.fullmatch(name):
        return _stub_class(module, name, "node")
    # fairseq enum members (by value) and dataclass objects in stored configurations
    if ident and (module == "fairseq" or module.startswith("fairseq.")) and re.fullmatch(r"[A-Za-z0-9_.]+", module):
        return _stub_class(module, name, "object")
    raise UnsafeCheckpointError(path, full)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path, persistent_load: Callable[[Any], Any] | None = None):
        super().__init__(file, encoding="utf-8")
        self._path = path
        self._persistent = persistent_load

    def find_class(self, module, name):  # noqa: D401 - pickle hook
        return _lookup_global(module, name, self._path)

    def persistent_load(self, pid):  # pickle hook
        if self._persistent is None:
            raise CheckpointError(self._path, "unexpected persistent id in a plain pickle")
        return self._persistent(pid)


# --------------------------------------------------------------------------------------------------
# conversion of stand-ins to plain data


def _plain(obj: Any, path, memo: dict[int, Any] | None = None) -> Any:
    if memo is None:
        memo = {}
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes, torch.Tensor, np.ndarray, np.generic)):
        return obj
    oid = id(obj)
    if oid in memo:
        return memo[oid]
    if isinstance(obj, _Stub):
        return _plain_stub(obj, path, memo)
    if isinstance(obj, _TypingRef):
        return obj.name
    if isinstance(obj, _NumpyArray):
        return _plain_ndarray(obj, path)
    if isinstance(obj, _NumpyDType):
        return str(obj.to_numpy())
    if isinstance(obj, (_StorageType, _Storage)):
        raise CheckpointError(path, "a bare storage object outside a tensor is not supported")
    if obj is _NDARRAY or obj is _TENSOR_TYPES:
        return "type"
    if isinstance(obj, dict):
        out = collections.OrderedDict() if isinstance(obj, collections.OrderedDict) else {}
        memo[oid] = out
        for k, v in obj.items():
            out[_plain(k, path, memo)] = _plain(v, path, memo)
        return out
    if isinstance(obj, list):
        out_l: list = []
        memo[oid] = out_l
        out_l.extend(_plain(v, path, memo) for v in obj)
        return out_l
    if isinstance(obj, tuple):
        if isinstance(obj, torch.Size):
            return obj
        return tuple(_plain(v, path, memo) for v in obj)
    if isinstance(obj, (set, frozenset)):
        return type(obj)(_plain(v, path, memo) for v in obj)
    if isinstance(obj, (bytearray, slice, torch.dtype)):
        return obj
    if isinstance(obj, type) and issubclass(obj, _Stub):
        return obj._pk_global
    if id(obj) in _ALLOWED_NAMES:  # an allowed global used as a value (e.g. omegaconf's object_type=dict)
        return _ALLOWED_NAMES[id(obj)]
    raise CheckpointError(path, f"unexpected object of type {type(obj).__name__} in the unpickled data")


def _stub_state_dict(stub: _Stub) -> dict | None:
    st = stub._pk_state
    if isinstance(st, tuple) and len(st) == 2 and (st[0] is None or isinstance(st[0], dict)):
        # (dict state, slot state) form
        merged = dict(st[0] or {})
        if isinstance(st[1], dict):
            merged.update(st[1])
        return merged
    if isinstance(st, dict):
        return st
    return None


def _plain_stub(stub: _Stub, path, memo) -> Any:
    kind = stub._pk_kind
    state = _stub_state_dict(stub)
    if kind == "dictconfig":
        content = (state or {}).get("_content")
        if isinstance(content, dict):
            out: dict = {}
            memo[id(stub)] = out
            for k, v in content.items():
                out[_plain(k, path, memo)] = _plain(v, path, memo)
            return out
        return _plain(content, path, memo)  # None, "???" (missing) or an interpolation string
    if kind == "listconfig":
        content = (state or {}).get("_content")
        if isinstance(content, (list, tuple)):
            out_l: list = []
            memo[id(stub)] = out_l
            out_l.extend(_plain(v, path, memo) for v in content)
            return out_l
        return _plain(content, path, memo)
    if kind == "node":
        return _plain((state or {}).get("_val"), path, memo)
    if kind == "meta":
        return None
    if kind == "namespace":
        fields = _plain(state or {}, path, memo)
        if not all(isinstance(k, str) for k in fields):
            raise CheckpointError(path, "argparse.Namespace with non-string attribute names")
        ns = argparse.Namespace(**fields)
        memo[id(stub)] = ns
        return ns
    # fairseq.* : enum member called with its value, or a dataclass object with a __dict__ state
    if state is None and stub._pk_state is None and len(stub._pk_args) == 1 and not stub._pk_items:
        return _plain(stub._pk_args[0], path, memo)
    if state is not None:
        return _plain(state, path, memo)
    if stub._pk_items:
        return {_plain(k, path, memo): _plain(v, path, memo) for k, v in stub._pk_items}
    return stub._pk_global


def _plain_ndarray(arr: _NumpyArray, path) -> np.ndarray:
    st = arr.state
    if not (isinstance(st, tuple) and len(st) == 5):
        raise CheckpointError(path, "malformed numpy array state")
    _version, shape, dtype, fortran, raw = st
    if not _is_int_seq(shape) or not isinstance(dtype, _NumpyDType):
        raise CheckpointError(path, "malformed numpy array state")
    if isinstance(raw, str):
        raw = raw.encode("latin1")
    if not isinstance(raw, (bytes, bytearray)):
        raise CheckpointError(path, "numpy object arrays are not supported")
    dt = dtype.to_numpy()
    flat = np.frombuffer(bytes(raw), dtype=dt).copy()
    return flat.reshape(tuple(shape), order="F" if fortran else "C")


# --------------------------------------------------------------------------------------------------
# container formats


def _read_exact_into(fobj, buf: bytearray) -> None:
    view = memoryview(buf)
    pos = 0
    while pos < len(buf):
        n = fobj.readinto(view[pos:])
        if not n:
            raise EOFError("truncated storage data")
        pos += n


def _load_zip(path, zf: zipfile.ZipFile) -> Any:
    names = zf.namelist()
    pkls = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pkls) != 1:
        if any(n.endswith("/constants.pkl") for n in names) or any("/code/" in n for n in names):
            raise CheckpointError(path, "this is a TorchScript archive, not a checkpoint; refusing to load it")
        raise CheckpointError(path, "zip file without a single '<archive>/data.pkl' record: not a torch checkpoint")
    prefix = pkls[0][: -len("data.pkl")]
    if f"{prefix}constants.pkl" in names:
        raise CheckpointError(path, "this is a TorchScript archive, not a checkpoint; refusing to load it")
    if f"{prefix}byteorder" in names:
        order = zf.read(f"{prefix}byteorder").strip()
        if order not in (b"little", b"big"):
            raise CheckpointError(path, f"unknown byte order {order!r}")
        if order.decode() != "little" or sys.byteorder != "little":
            raise CheckpointError(path, "big-endian checkpoints (or hosts) are not supported")
    loaded: dict[str, _Storage] = {}

    def persistent_load(pid):
        if not (isinstance(pid, tuple) and len(pid) == 5):
            raise CheckpointError(path, f"unexpected persistent id {pid!r}")
        typename, storage_type, key, _location, numel = pid
        if isinstance(typename, bytes):
            typename = typename.decode("ascii")
        if typename != "storage" or not isinstance(storage_type, _StorageType):
            raise CheckpointError(path, f"unexpected persistent id {pid!r}")
        key_ok = isinstance(key, str) and re.fullmatch(r"[A-Za-z0-9_]+", key) is not None
        if not key_ok or not isinstance(numel, int) or numel < 0:
            raise CheckpointError(path, f"malformed storage reference {pid!r}")
        if key in loaded:
            return loaded[key]
        dtype = storage_type.dtype
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        record = f"{prefix}data/{key}"
        try:
            info = zf.getinfo(record)
        except KeyError:
            raise CheckpointError(path, f"missing storage record {record}", key=record) from None
        if info.file_size != nbytes:
            raise CheckpointError(path, f"storage record {record} has {info.file_size} bytes, expected {nbytes}")
        buf = bytearray(nbytes)
        with zf.open(info) as f:
            _read_exact_into(f, buf)
        st = _Storage(buf, dtype)
        loaded[key] = st
        return st

    with zf.open(pkls[0]) as f:
        data = io.BytesIO(f.read())
    return _RestrictedUnpickler(data, path, persistent_load).load()


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


def _load_legacy(path, f) -> Any:
    """torch < 1.6 stream format: magic, protocol, sys_info pickles, the object pickle, the storage keys,
    then for each storage an int64 element count and its raw bytes (little-endian hosts only)."""
    if _RestrictedUnpickler(f, path).load() != _LEGACY_MAGIC:
        raise CheckpointError(path, "not a torch checkpoint (bad magic number)")
    if _RestrictedUnpickler(f, path).load() != _LEGACY_PROTOCOL:
        raise CheckpointError(path, "unsupported legacy torch protocol version")
    sys_info = _RestrictedUnpickler(f, path).load()
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise CheckpointError(path, "big-endian legacy checkpoints are not supported")
    roots: dict[str, tuple[bytearray, torch.dtype, int]] = {}
    views: dict[str, _Storage] = {}

    def persistent_load(pid):
        if not (isinstance(pid, tuple) and len(pid) == 6):
            if isinstance(pid, tuple) and pid and pid[0] in ("module", b"module"):
                raise UnsafeCheckpointError(path, "<pickled nn.Module>", "whole pickled modules are not supported")
            raise CheckpointError(path, f"unexpected persistent id {pid!r}")
        typename, storage_type, root_key, _location, numel, view_metadata = pid
        if isinstance(typename, bytes):
            typename = typename.decode("ascii")
        if typename != "storage" or not isinstance(storage_type, _StorageType):
            raise CheckpointError(path, f"unexpected persistent id {pid!r}")
        root_key = str(root_key)
        if not isinstance(numel, int) or numel < 0:
            raise CheckpointError(path, f"malformed storage reference {pid!r}")
        dtype = storage_type.dtype
        esize = torch.empty((), dtype=dtype).element_size()
        if root_key not in roots:
            roots[root_key] = (bytearray(numel * esize), dtype, numel)
        buf, rdtype, rnumel = roots[root_key]
        if rdtype != dtype:
            raise CheckpointError(path, "storage reused with another dtype")
        if view_metadata is None:
            return _Storage(buf, dtype)
        view_key, offset, view_size = view_metadata
        if not (isinstance(offset, int) and isinstance(view_size, int) and 0 <= offset <= offset + view_size <= rnumel):
            raise CheckpointError(path, "malformed storage view")
        return views.setdefault(str(view_key), _Storage(buf, dtype, elem_offset=offset))

    result = _RestrictedUnpickler(f, path, persistent_load).load()
    keys = _RestrictedUnpickler(f, path).load()
    if not isinstance(keys, list):
        raise CheckpointError(path, "malformed legacy storage key list")
    for key in keys:
        key = str(key)
        if key not in roots:
            raise CheckpointError(path, f"storage {key} listed but never referenced")
        buf, dtype, numel = roots[key]
        header = f.read(8)
        if len(header) != 8:
            raise CheckpointError(path, "truncated legacy storage data")
        (count,) = struct.unpack("<q", header)
        if count != numel:
            raise CheckpointError(path, f"storage {key}: {count} elements on disk, {numel} expected")
        _read_exact_into(f, buf)
    return result


def _is_tar(f) -> bool:
    pos = f.tell()
    f.seek(257)
    magic = f.read(5)
    f.seek(pos)
    return magic == b"ustar"


def safe_torch_load(path: str | os.PathLike) -> Any:
    """Load a `torch.save` file (zip format, or the pre-1.6 stream format) without running code from it.

    Returns the saved object (usually a dict) with tensors on the CPU and configuration objects turned into
    plain data (dict / list / argparse.Namespace / values). Raises `UnsafeCheckpointError` (naming the file
    and the global) for any global outside the allow-list, and `CheckpointError` for malformed or missing
    files. TorchScript archives and the pre-0.4 tar format are refused.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            if zipfile.is_zipfile(f):
                f.seek(0)
                with zipfile.ZipFile(f) as zf:
                    raw = _load_zip(path, zf)
            else:
                f.seek(0)
                if _is_tar(f):
                    raise CheckpointError(path, "pre-0.4 torch tar checkpoints are not supported")
                raw = _load_legacy(path, f)
        return _plain(raw, path)
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(path, "no such file") from None
    except Exception as exc:  # malformed pickles, rejected arguments of allowed callables, ...
        raise CheckpointError(path, f"cannot unpickle safely: {type(exc).__name__}: {exc}") from exc
