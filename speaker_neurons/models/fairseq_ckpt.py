"""Read fairseq wav2vec 2.0 / HuBERT checkpoints without fairseq, omegaconf or unrestricted unpickling.

A checkpoint file is untrusted input (SPEC section 8): `torch.load(weights_only=False)` would run whatever
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
`UnsafeCheckpointError` naming the file and the global, before anything is called.

`read_fairseq_checkpoint(path)` turns a pre-training (or CTC fine-tuning) checkpoint into
`(config, state_dict, dropped)`: `config` holds the keyword arguments of torchaudio's
`wav2vec2_model(...)` plus `model_type` and `normalize_waveform`; `state_dict` uses torchaudio's parameter
names exactly; `dropped` lists the tensors of the file deliberately left out (quantizer, projections for
the pre-training loss, label embeddings, mask embedding, CTC head). Any other tensor of the file raises
`CheckpointError` naming it, and so does any parameter of the model the file does not provide.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import ast
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
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

from speaker_neurons.utils import get_logger

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "safe_torch_load",
    "read_fairseq_checkpoint",
    "parse_conv_layers",
    "torchaudio_param_shapes",
    "check_torchaudio_config",
    "assemble_state_dict",
    "TORCHAUDIO_KWARGS",
    "WAVLM_KWARGS",
    "POS_CONV_WEIGHT_G",
    "POS_CONV_WEIGHT_V",
]

log = get_logger("models.fairseq_ckpt")


# --------------------------------------------------------------------------------------------------
# errors


try:  # one error type for every model reader: the loader catches speaker_neurons.models.base.CheckpointError
    from speaker_neurons.models.base import CheckpointError as _BaseCheckpointError
except ImportError:  # pragma: no cover - base is part of the package
    _BaseCheckpointError = Exception


class CheckpointError(_BaseCheckpointError, ValueError):
    """A checkpoint cannot be read or mapped; the message names the file (and the key, when one is at fault).

    A subclass of `speaker_neurons.models.base.CheckpointError` (and of ValueError)."""

    def __init__(self, path: str | os.PathLike | None, message: str, key: str | None = None):
        self.key = key
        if _BaseCheckpointError is Exception:  # pragma: no cover
            self.path, self.reason = (None if path is None else str(path)), message
            Exception.__init__(self, f"{self.path}: {message}" if self.path else message)
        else:
            super().__init__(path, message)


class UnsafeCheckpointError(CheckpointError):
    """The pickle references a global outside the allow-list; nothing of it was called."""

    def __init__(self, path: str | os.PathLike | None, global_name: str, reason: str = ""):
        self.global_name = global_name
        msg = (
            f"refusing to unpickle: it references the global '{global_name}', which is not on the allow-list "
            "of a checkpoint reader (checkpoints are untrusted input; nothing was executed)"
        )
        if reason:
            msg += f": {reason}"
        super().__init__(path, msg, key=global_name)


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
    and the global) for any global outside the allow-list, and `CheckpointError` for malformed files.
    TorchScript archives and the pre-0.4 tar format are refused.
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
        raise
    except Exception as exc:  # malformed pickles, rejected arguments of allowed callables, ...
        raise CheckpointError(path, f"cannot unpickle safely: {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------------------------------
# model configuration (shared with the Hugging Face reader)

#: keyword arguments of torchaudio.models.wav2vec2_model (and the extra two of wavlm_model)
TORCHAUDIO_KWARGS = (
    "extractor_mode",
    "extractor_conv_layer_config",
    "extractor_conv_bias",
    "encoder_embed_dim",
    "encoder_projection_dropout",
    "encoder_pos_conv_kernel",
    "encoder_pos_conv_groups",
    "encoder_num_layers",
    "encoder_num_heads",
    "encoder_attention_dropout",
    "encoder_ff_interm_features",
    "encoder_ff_interm_dropout",
    "encoder_dropout",
    "encoder_layer_norm_first",
    "encoder_layer_drop",
    "aux_num_out",
)
WAVLM_KWARGS = ("encoder_num_buckets", "encoder_max_distance")

#: names of the weight-normalised positional convolution, as torchaudio's state_dict() writes them
#: (torch.nn.utils.parametrizations.weight_norm; `original0` is g, `original1` is v)
POS_CONV_WEIGHT_G = "encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original0"
POS_CONV_WEIGHT_V = "encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original1"


def parse_conv_layers(spec: str | Iterable, path=None) -> list[list[int]]:
    """fairseq's `conv_feature_layers` string, e.g. "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2",
    evaluated without `eval`: only list/tuple literals of integers, `+` of lists and `* int` are accepted.
    Returns [[dim, kernel, stride], ...]."""

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, (ast.List, ast.Tuple)):
            vals = [ev(e) for e in node.elts]
            return vals if isinstance(node, ast.List) else tuple(vals)
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            a, b = ev(node.left), ev(node.right)
            if isinstance(a, list) and isinstance(b, list):
                return a + b
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            a, b = ev(node.left), ev(node.right)
            if isinstance(a, list) and isinstance(b, int) and 0 <= b <= 1000:
                return a * b
            if isinstance(b, list) and isinstance(a, int) and 0 <= a <= 1000:
                return b * a
        raise ValueError(f"unsupported expression {ast.dump(node)[:80]}")

    if isinstance(spec, str):
        try:
            value = ev(ast.parse(spec, mode="eval"))
        except (SyntaxError, ValueError, RecursionError) as exc:
            raise CheckpointError(path, f"cannot parse conv_feature_layers {spec!r}: {exc}") from None
    else:
        value = list(spec)
    out = []
    for layer in value if isinstance(value, list) else [None]:
        ok = isinstance(layer, (list, tuple)) and len(layer) == 3
        if not (ok and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in layer)):
            raise CheckpointError(path, f"conv_feature_layers {spec!r}: every layer must be (dim, kernel, stride)")
        out.append([int(v) for v in layer])
    if not out:
        raise CheckpointError(path, f"conv_feature_layers {spec!r} is empty")
    return out


def _ffn_widths(config: Mapping) -> list[int]:
    f = config["encoder_ff_interm_features"]
    n = int(config["encoder_num_layers"])
    if isinstance(f, int):
        return [f] * n
    widths = [int(v) for v in f]
    if len(widths) != n:
        raise ValueError(f"encoder_ff_interm_features has {len(widths)} entries for {n} layers")
    return widths


def torchaudio_param_shapes(config: Mapping) -> dict[str, tuple[int, ...]]:
    """Every parameter of torchaudio's `wav2vec2_model(**kw)` / `wavlm_model(**kw)` and its shape, from the
    config alone (`model_type` 'wavlm' selects the WavLM attention). The pos-conv weight uses
    `POS_CONV_WEIGHT_G/V`; `encoder_ff_interm_features` may be a per-layer list."""
    shapes: dict[str, tuple[int, ...]] = {}
    convs = [tuple(int(v) for v in c) for c in config["extractor_conv_layer_config"]]
    mode = config["extractor_mode"]
    in_ch = 1
    for i, (out_ch, k, _s) in enumerate(convs):
        p = f"feature_extractor.conv_layers.{i}"
        if mode == "layer_norm" or (mode == "group_norm" and i == 0):
            shapes[f"{p}.layer_norm.weight"] = (out_ch,)
            shapes[f"{p}.layer_norm.bias"] = (out_ch,)
        shapes[f"{p}.conv.weight"] = (out_ch, in_ch, k)
        if config["extractor_conv_bias"]:
            shapes[f"{p}.conv.bias"] = (out_ch,)
        in_ch = out_ch
    d = int(config["encoder_embed_dim"])
    h = int(config["encoder_num_heads"])
    k = int(config["encoder_pos_conv_kernel"])
    g = int(config["encoder_pos_conv_groups"])
    shapes["encoder.feature_projection.layer_norm.weight"] = (in_ch,)
    shapes["encoder.feature_projection.layer_norm.bias"] = (in_ch,)
    shapes["encoder.feature_projection.projection.weight"] = (d, in_ch)
    shapes["encoder.feature_projection.projection.bias"] = (d,)
    shapes["encoder.transformer.pos_conv_embed.conv.bias"] = (d,)
    shapes[POS_CONV_WEIGHT_G] = (1, 1, k)
    shapes[POS_CONV_WEIGHT_V] = (d, d // g, k)
    shapes["encoder.transformer.layer_norm.weight"] = (d,)
    shapes["encoder.transformer.layer_norm.bias"] = (d,)
    wavlm = config.get("model_type") == "wavlm"
    for i, w in enumerate(_ffn_widths(config)):
        p = f"encoder.transformer.layers.{i}"
        if wavlm:
            if i == 0:
                shapes[f"{p}.attention.rel_attn_embed.weight"] = (int(config["encoder_num_buckets"]), h)
            shapes[f"{p}.attention.attention.in_proj_weight"] = (3 * d, d)
            shapes[f"{p}.attention.attention.in_proj_bias"] = (3 * d,)
            shapes[f"{p}.attention.attention.out_proj.weight"] = (d, d)
            shapes[f"{p}.attention.attention.out_proj.bias"] = (d,)
            shapes[f"{p}.attention.gru_rel_pos_const"] = (1, h, 1, 1)
            shapes[f"{p}.attention.gru_rel_pos_linear.weight"] = (8, d // h)
            shapes[f"{p}.attention.gru_rel_pos_linear.bias"] = (8,)
        else:
            for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
                shapes[f"{p}.attention.{proj}.weight"] = (d, d)
                shapes[f"{p}.attention.{proj}.bias"] = (d,)
        shapes[f"{p}.layer_norm.weight"] = (d,)
        shapes[f"{p}.layer_norm.bias"] = (d,)
        shapes[f"{p}.feed_forward.intermediate_dense.weight"] = (w, d)
        shapes[f"{p}.feed_forward.intermediate_dense.bias"] = (w,)
        shapes[f"{p}.feed_forward.output_dense.weight"] = (d, w)
        shapes[f"{p}.feed_forward.output_dense.bias"] = (d,)
        shapes[f"{p}.final_layer_norm.weight"] = (d,)
        shapes[f"{p}.final_layer_norm.bias"] = (d,)
    if config.get("aux_num_out"):
        shapes["aux.weight"] = (int(config["aux_num_out"]), d)
        shapes["aux.bias"] = (int(config["aux_num_out"]),)
    return shapes


def check_torchaudio_config(config: Mapping, path) -> None:
    d, h, g = config["encoder_embed_dim"], config["encoder_num_heads"], config["encoder_pos_conv_groups"]
    if d <= 0 or h <= 0 or d % h:
        raise CheckpointError(path, f"encoder_embed_dim {d} is not a multiple of the {h} attention heads")
    if g <= 0 or d % g:
        raise CheckpointError(path, f"encoder_embed_dim {d} is not a multiple of the {g} pos-conv groups")
    if config["extractor_mode"] not in ("group_norm", "layer_norm"):
        raise CheckpointError(path, f"unsupported extractor_mode {config['extractor_mode']!r}")


# A mapping spec: target (torchaudio) name -> list of alternatives; each alternative is a tuple of source
# names whose tensors are concatenated along dim 0 (one name: used as is). The first complete alternative wins.
NameSpec = dict[str, list[tuple[str, ...]]]


def assemble_state_dict(
    path,
    source: Mapping[str, Any],
    spec: NameSpec,
    shapes: Mapping[str, tuple[int, ...]],
    drop: Callable[[str], bool],
    synthesize: Mapping[str, Callable[[], torch.Tensor]] | None = None,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Build a torchaudio-named state dict from `source`.

    Errors (CheckpointError naming `path` and the key): a source key that is neither used by `spec` nor
    accepted by `drop`; a target whose sources are absent (unless `synthesize` provides it); a shape that
    differs from `shapes`; a non-tensor value. Returns (state_dict as float32, sorted dropped source keys).
    """
    if set(spec) != set(shapes):
        missing = sorted(set(shapes) - set(spec))
        raise CheckpointError(path, f"internal: no source name for {missing[:3]}")
    known = {s for alts in spec.values() for alt in alts for s in alt}
    dropped = []
    for key in source:
        if key in known:
            continue
        if drop(key):
            dropped.append(key)
            continue
        raise CheckpointError(path, f"unexpected tensor '{key}' (not part of the supported encoder and not a "
                              "known pre-training/head tensor)", key=key)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for target, alts in spec.items():
        chosen = next((alt for alt in alts if all(s in source for s in alt)), None)
        if chosen is None:
            if synthesize and target in synthesize:
                out[target] = synthesize[target]()
                continue
            want = " or ".join(" + ".join(alt) for alt in alts)
            raise CheckpointError(path, f"missing tensor '{want}' (needed for {target})", key=alts[0][0])
        parts = []
        for s in chosen:
            v = source[s]
            if not isinstance(v, torch.Tensor):
                raise CheckpointError(path, f"'{s}' is a {type(v).__name__}, not a tensor", key=s)
            parts.append(v)
            used.add(s)
        t = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        if tuple(t.shape) != tuple(shapes[target]):
            raise CheckpointError(
                path,
                f"'{' + '.join(chosen)}' has shape {tuple(t.shape)} but the stored configuration implies "
                f"{tuple(shapes[target])} for {target}",
                key=chosen[0],
            )
        if not t.is_floating_point():
            raise CheckpointError(path, f"'{chosen[0]}' is not a floating-point tensor", key=chosen[0])
        out[target] = t.detach().to(torch.float32).contiguous()
    # sources of alternatives that were not chosen (e.g. both weight_g and parametrizations present)
    for key in sorted(known & set(source) - used):
        raise CheckpointError(path, f"tensor '{key}' is redundant with another name for the same parameter", key=key)
    return out, sorted(dropped)


# --------------------------------------------------------------------------------------------------
# fairseq


_FAIRSEQ_DROP = re.compile(
    r"(mask_emb|label_embs_concat|quantizer\..*|input_quantizer\..*|project_q\..*|project_inp\..*|"
    r"final_proj\..*|final_proj\.\d+\..*|target_glu\..*|w2v_encoder\.proj\..*|w2v_encoder\.w2v_model\.("
    r"mask_emb|label_embs_concat|quantizer\..*|project_q\..*|final_proj\..*|target_glu\..*))"
)

#: defaults of fairseq's Wav2Vec2Config / HubertConfig for fields old checkpoints may lack
_FAIRSEQ_DEFAULTS = {
    "extractor_mode": "default",
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0,
    "dropout_input": 0.0,
    "layer_norm_first": False,
    "conv_bias": False,
    "conv_pos": 128,
    "conv_pos_groups": 16,
}


def _as_dict(x, path, what) -> dict:
    if isinstance(x, argparse.Namespace):
        return dict(vars(x))
    if isinstance(x, Mapping):
        return dict(x)
    raise CheckpointError(path, f"{what} is a {type(x).__name__}, expected a mapping")


_INTERP = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\}")


def _resolve_interpolations(root: Any) -> Any:
    """Replace string values that are exactly an absolute omegaconf interpolation '${a.b}' by the value
    they point to (as omegaconf would); anything else is left as is."""

    def lookup(dotted):
        cur = root
        for part in dotted.split("."):
            if isinstance(cur, argparse.Namespace):
                cur = vars(cur)
            if not isinstance(cur, Mapping) or part not in cur:
                return _INTERP  # sentinel: unresolved
            cur = cur[part]
        return cur

    def walk(x, depth=0):
        if isinstance(x, str):
            m = _INTERP.fullmatch(x)
            if m and depth < 10:
                v = lookup(m.group(1))
                if v is not _INTERP:
                    return walk(v, depth + 1)
            return x
        if isinstance(x, dict):
            return {k: walk(v, depth) for k, v in x.items()}
        if isinstance(x, argparse.Namespace):
            return argparse.Namespace(**{k: walk(v, depth) for k, v in vars(x).items()})
        if isinstance(x, list):
            return [walk(v, depth) for v in x]
        return x

    return walk(root)


def _fairseq_sections(ckpt: Mapping, path) -> tuple[dict, dict]:
    """(model hyper-parameters, task hyper-parameters) from `cfg` (dict / omegaconf / with Namespaces) or
    the old flat `args` Namespace."""
    cfg = ckpt.get("cfg")
    if cfg is not None:
        cfg = _resolve_interpolations(_as_dict(cfg, path, "'cfg'"))
        if cfg.get("model") is None:
            raise CheckpointError(path, "'cfg' has no 'model' section")
        model = _as_dict(cfg["model"], path, "cfg.model")
        task = _as_dict(cfg["task"], path, "cfg.task") if cfg.get("task") is not None else {}
        return model, task
    args = ckpt.get("args")
    if args is not None:
        flat = _resolve_interpolations(_as_dict(args, path, "'args'"))
        return flat, flat
    raise CheckpointError(path, "neither 'cfg' nor 'args' is stored: the hyper-parameters are unknown")


def _model_name(model: Mapping) -> str:
    name = model.get("_name", model.get("arch"))
    return str(name) if name is not None else ""


def _fairseq_config(model: Mapping, task: Mapping, path) -> tuple[dict, str]:
    name = _model_name(model)
    if name.startswith("wav2vec2"):
        model_type = "wav2vec2"
    elif name.startswith("hubert"):
        model_type = "hubert"
    else:
        raise CheckpointError(path, f"unsupported fairseq model '{name}' (expected wav2vec2 or hubert)")

    used_defaults = []

    def get(key):
        if key in model and model[key] is not None:
            return model[key]
        if key not in _FAIRSEQ_DEFAULTS:
            raise CheckpointError(path, f"the stored configuration lacks '{key}'", key=key)
        used_defaults.append(key)
        return _FAIRSEQ_DEFAULTS[key]

    if "conv_feature_layers" not in model:
        raise CheckpointError(path, "the stored configuration lacks 'conv_feature_layers'", key="conv_feature_layers")
    act = str(get("activation_fn"))
    if act != "gelu":
        raise CheckpointError(path, f"activation_fn {act!r} is not supported (only exact 'gelu')", key="activation_fn")
    if str(model.get("layer_type", "transformer")) != "transformer":
        raise CheckpointError(path, f"layer_type {model['layer_type']!r} is not supported", key="layer_type")
    if int(model.get("pos_conv_depth", 1) or 1) != 1:
        raise CheckpointError(path, "pos_conv_depth > 1 is not supported", key="pos_conv_depth")
    if model.get("quantize_input"):
        raise CheckpointError(path, "quantize_input models are not supported", key="quantize_input")
    mode = str(get("extractor_mode"))
    if mode not in ("default", "layer_norm"):
        raise CheckpointError(path, f"unknown extractor_mode {mode!r}", key="extractor_mode")
    sr = task.get("sample_rate")
    if sr is not None and int(sr) != 16000:
        raise CheckpointError(path, f"task.sample_rate is {sr}, only 16000 is supported", key="sample_rate")
    normalize = task.get("normalize")
    if normalize is None:
        normalize = False
        used_defaults.append("normalize")
    config = {
        "model_type": model_type,
        "extractor_mode": "group_norm" if mode == "default" else "layer_norm",
        "extractor_conv_layer_config": parse_conv_layers(model["conv_feature_layers"], path),
        "extractor_conv_bias": bool(get("conv_bias")),
        "encoder_embed_dim": int(get("encoder_embed_dim")),
        "encoder_projection_dropout": float(get("dropout_input")),
        "encoder_pos_conv_kernel": int(get("conv_pos")),
        "encoder_pos_conv_groups": int(get("conv_pos_groups")),
        "encoder_num_layers": int(get("encoder_layers")),
        "encoder_num_heads": int(get("encoder_attention_heads")),
        "encoder_attention_dropout": float(get("attention_dropout")),
        "encoder_ff_interm_features": int(get("encoder_ffn_embed_dim")),
        "encoder_ff_interm_dropout": float(get("activation_dropout")),
        "encoder_dropout": float(get("dropout")),
        "encoder_layer_norm_first": bool(get("layer_norm_first")),
        "encoder_layer_drop": float(get("encoder_layerdrop")),
        "aux_num_out": None,
        "normalize_waveform": bool(normalize),
    }
    if used_defaults:
        log.warning("%s: not stored, fairseq defaults used for: %s", path, ", ".join(sorted(used_defaults)))
    check_torchaudio_config(config, path)
    return config, name


def _fairseq_spec(config: Mapping, prefix: str) -> NameSpec:
    p = prefix
    spec: NameSpec = {}

    def one(target, *alts):
        spec[target] = [(p + a,) for a in alts]

    for i, _ in enumerate(config["extractor_conv_layer_config"]):
        t = f"feature_extractor.conv_layers.{i}"
        one(f"{t}.conv.weight", f"feature_extractor.conv_layers.{i}.0.weight")
        if config["extractor_conv_bias"]:
            one(f"{t}.conv.bias", f"feature_extractor.conv_layers.{i}.0.bias")
        for wb in ("weight", "bias"):
            if config["extractor_mode"] == "layer_norm":
                one(f"{t}.layer_norm.{wb}", f"feature_extractor.conv_layers.{i}.2.1.{wb}")
            elif i == 0:
                one(f"{t}.layer_norm.{wb}", f"feature_extractor.conv_layers.0.2.{wb}")
    for wb in ("weight", "bias"):
        one(f"encoder.feature_projection.layer_norm.{wb}", f"layer_norm.{wb}")
        one(f"encoder.feature_projection.projection.{wb}", f"post_extract_proj.{wb}")
        one(f"encoder.transformer.layer_norm.{wb}", f"encoder.layer_norm.{wb}")
    one("encoder.transformer.pos_conv_embed.conv.bias", "encoder.pos_conv.0.bias")
    one(POS_CONV_WEIGHT_G, "encoder.pos_conv.0.weight_g", "encoder.pos_conv.0.parametrizations.weight.original0")
    one(POS_CONV_WEIGHT_V, "encoder.pos_conv.0.weight_v", "encoder.pos_conv.0.parametrizations.weight.original1")
    for i in range(int(config["encoder_num_layers"])):
        t, s = f"encoder.transformer.layers.{i}", f"encoder.layers.{i}"
        for wb in ("weight", "bias"):
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                one(f"{t}.attention.{proj}.{wb}", f"{s}.self_attn.{proj}.{wb}")
            one(f"{t}.layer_norm.{wb}", f"{s}.self_attn_layer_norm.{wb}")
            one(f"{t}.feed_forward.intermediate_dense.{wb}", f"{s}.fc1.{wb}")
            one(f"{t}.feed_forward.output_dense.{wb}", f"{s}.fc2.{wb}")
            one(f"{t}.final_layer_norm.{wb}", f"{s}.final_layer_norm.{wb}")
    return spec


def read_fairseq_checkpoint(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor], list[str]]:
    """Read a fairseq wav2vec 2.0 / HuBERT checkpoint (pre-training, or CTC fine-tuning: the encoder only).

    Returns `(config, state_dict, dropped)`:
      config: torchaudio `wav2vec2_model` keyword arguments (`aux_num_out` None) + `model_type`
        ('wav2vec2' | 'hubert') + `normalize_waveform` (fairseq `task.normalize`); conv layers as
        [[dim, kernel, stride], ...].
      state_dict: torchaudio parameter names (see `torchaudio_param_shapes`), float32 CPU tensors.
      dropped: source keys deliberately left out (quantizer, project_q, final_proj, label_embs_concat,
        mask_emb, target_glu, CTC projection).
    Raises UnsafeCheckpointError / CheckpointError (naming the file, and the key when one is at fault).
    """
    path = os.fspath(path)
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("model"), Mapping):
        raise CheckpointError(path, "not a fairseq checkpoint: no 'model' state dict")
    state = ckpt["model"]
    for k in state:
        if not isinstance(k, str):
            raise CheckpointError(path, f"non-string key {k!r} in the model state dict")
    model, task = _fairseq_sections(ckpt, path)
    prefix = ""
    if "w2v_args" in model or any(k.startswith("w2v_encoder.") for k in state):
        # fine-tuned model: the pre-trained encoder's own configuration is nested in w2v_args
        inner = model.get("w2v_args")
        if inner is None:
            raise CheckpointError(path, "fine-tuned checkpoint without 'w2v_args' (the encoder configuration)",
                                  key="w2v_args")
        inner_model, inner_task = _fairseq_sections({"cfg": inner} if "model" in _as_dict(inner, path, "w2v_args")
                                                    else {"args": inner}, path)
        if "normalize" in task and task["normalize"] is not None:
            inner_task = dict(inner_task, normalize=task["normalize"])
        model, task = inner_model, inner_task
        prefix = "w2v_encoder.w2v_model."
    config, name = _fairseq_config(model, task, path)
    shapes = torchaudio_param_shapes(config)
    spec = _fairseq_spec(config, prefix)

    synth = {}
    convs = config["extractor_conv_layer_config"]
    if convs[-1][0] == config["encoder_embed_dim"]:
        # fairseq has no post_extract_proj when the conv output already has the model width
        d = config["encoder_embed_dim"]
        synth["encoder.feature_projection.projection.weight"] = lambda: torch.eye(d)
        synth["encoder.feature_projection.projection.bias"] = lambda: torch.zeros(d)

    def drop(key: str) -> bool:
        return _FAIRSEQ_DROP.fullmatch(key) is not None

    state_dict, dropped = assemble_state_dict(path, state, spec, shapes, drop, synth)
    log.info(
        "%s: fairseq %s (%s), %d layers, d=%d, %d tensors mapped, %d dropped",
        path, name, config["model_type"], config["encoder_num_layers"], config["encoder_embed_dim"],
        len(state_dict), len(dropped),
    )
    return config, state_dict, dropped
