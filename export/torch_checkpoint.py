"""Reads files written by `torch.save` into numpy, without PyTorch and without running their code.

A torch checkpoint is a pickle, and unpickling runs whatever functions the file names. This reader
only accepts the globals that rebuild tensors and storages (mapped to inert stand-ins here, never to
torch's functions) and `collections.OrderedDict`; any other global is refused with
`UnsafeCheckpointError` naming it, before anything from the file is called.

Both of torch's file formats are read:
- zip (torch.save's default since torch 1.6): `<name>/data.pkl` is the pickle, `<name>/data/<key>`
  the raw bytes of each storage, `<name>/byteorder` their byte order;
- legacy (`_use_new_zipfile_serialization=False`, and every checkpoint of 2019): a magic number,
  protocol version and system-info pickle, then the pickle, then the list of storage keys, then for
  each key its element count (int64) and raw bytes.
"""

import collections
import io
import pickle
import zipfile

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# torch.<Name>Storage -> element type. BFloat16 has no numpy type; it is widened to float32.
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,
}


class CheckpointFormatError(ValueError):
    """The file is not a torch checkpoint this reader understands."""


class UnsafeCheckpointError(CheckpointFormatError):
    """The checkpoint's pickle names a global outside the allowed tensor-rebuilding set."""


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]

    @property
    def itemsize(self):
        return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize


class _Storage:
    """A storage announced by the pickle; its bytes are read after the pickle (legacy) or from the
    archive (zip)."""

    def __init__(self, storage_type, key, numel):
        self.type = storage_type
        self.key = key
        self.numel = int(numel)
        self.data = None

    def fill(self, raw: bytes, little_endian: bool):
        expected = self.numel * self.type.itemsize
        if len(raw) < expected:
            raise CheckpointFormatError(
                f"storage {self.key!r} holds {len(raw)} bytes; its {self.numel} {self.type.name} elements need {expected}."
            )
        order = "<" if little_endian else ">"
        if self.type.dtype == "bfloat16":
            halves = np.frombuffer(raw, f"{order}u2", self.numel).astype(np.uint32)
            self.data = (halves << 16).view(np.float32)
        else:
            self.data = np.frombuffer(raw, np.dtype(self.type.dtype).newbyteorder(order), self.numel)


class _StorageView:
    """A legacy-format view into part of a storage: (root storage, element offset, element count)."""

    def __init__(self, storage, offset, numel):
        self.storage, self.offset, self.numel = storage, int(offset), int(numel)


class _Tensor:
    """A strided view of a storage, turned into a numpy array once the storage bytes are read."""

    def __init__(self, storage, offset, size, stride):
        if not isinstance(storage, (_Storage, _StorageView)):
            raise CheckpointFormatError(f"a tensor is rebuilt from {type(storage).__name__}, not from a storage.")
        if len(size) != len(stride) or any(int(s) < 0 for s in tuple(size) + tuple(stride)):
            raise CheckpointFormatError(f"a tensor has invalid size {size!r} / stride {stride!r}.")
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)

    def to_numpy(self) -> np.ndarray:
        storage, base = self.storage, 0
        if isinstance(storage, _StorageView):
            storage, base = storage.storage, storage.offset
        data = storage.data
        count = int(np.prod(self.size))
        last = base + self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) if count else 0
        if count and (base + self.offset < 0 or last >= storage.numel):
            raise CheckpointFormatError(f"a tensor of size {self.size} reads past the end of storage {storage.key!r}.")
        if not count:
            return np.zeros(self.size, data.dtype.newbyteorder("="))
        itemsize = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[base + self.offset :], shape=self.size, strides=[s * itemsize for s in self.stride], writeable=False
        )
        return np.array(view, dtype=data.dtype.newbyteorder("="), copy=True)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused):
    return data


# The only globals a checkpoint may name. Each maps to a stand-in that builds inert data.
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, storages, source):
        super().__init__(file)
        self.storages = storages
        self.source = source

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeCheckpointError(
            f"{self.source} refers to the global {module}.{name}, which is not a tensor, storage or "
            "OrderedDict; loading it could run arbitrary code, so it is refused (nothing in it was executed). "
            "Only checkpoints holding tensors, storages and basic containers (e.g. a state dict and "
            "replay buffer) can be imported."
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise CheckpointFormatError(f"{self.source} has an unknown persistent id {pid!r:.200}.")
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointFormatError(f"{self.source}: storage {key!r} has no storage type.")
        storage = self.storages.setdefault(key, _Storage(storage_type, key, numel))
        view = pid[5] if len(pid) == 6 else None
        if view is not None:
            _, offset, view_numel = view
            return _StorageView(storage, offset, view_numel)
        return storage


def _materialise(value):
    if isinstance(value, _Tensor):
        return value.to_numpy()
    if isinstance(value, dict):
        result = type(value)() if isinstance(value, collections.OrderedDict) else {}
        for key, item in value.items():
            result[key] = _materialise(item)
        return result
    if isinstance(value, (list, tuple)):
        return type(value)(_materialise(item) for item in value)
    if isinstance(value, (_Storage, _StorageView)):
        raise CheckpointFormatError("the checkpoint holds a bare storage, not a tensor; it cannot be imported.")
    return value


def _load_zip(path):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pickles) != 1:
            hint = " (a TorchScript archive, not a torch.save checkpoint)" if any(
                n.endswith("constants.pkl") for n in names) else ""
            raise CheckpointFormatError(f"{path} is a zip file without exactly one data.pkl{hint}.")
        prefix = pickles[0][: -len("data.pkl")]
        little_endian = True
        if prefix + "byteorder" in names:
            little_endian = archive.read(prefix + "byteorder").decode("ascii", "replace").strip() != "big"
        storages = {}
        result = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), storages, path).load()
        for key, storage in storages.items():
            name = f"{prefix}data/{key}"
            if name not in names:
                raise CheckpointFormatError(f"{path} lacks {name}, the bytes of storage {key!r}.")
            storage.fill(archive.read(name), little_endian)
    return _materialise(result)


def _load_legacy(path):
    with open(path, "rb") as f:
        try:
            magic = _RestrictedUnpickler(f, {}, path).load()
        except UnsafeCheckpointError:
            raise
        except Exception as error:  # noqa: BLE001 (any unpickling failure means "not this format")
            raise CheckpointFormatError(
                f"{path} is neither a zip nor a legacy torch checkpoint ({type(error).__name__}: {error})."
            ) from None
        if magic != LEGACY_MAGIC_NUMBER:
            raise CheckpointFormatError(
                f"{path} is not a torch checkpoint (no torch.save magic number; a tar checkpoint of torch < 0.4 "
                "is not supported)."
            )
        protocol = _RestrictedUnpickler(f, {}, path).load()
        if protocol != LEGACY_PROTOCOL_VERSION:
            raise CheckpointFormatError(f"{path} has legacy protocol {protocol!r}; only {LEGACY_PROTOCOL_VERSION} is known.")
        system = _RestrictedUnpickler(f, {}, path).load()
        little_endian = bool(system.get("little_endian", True)) if isinstance(system, dict) else True
        storages = {}
        result = _RestrictedUnpickler(f, storages, path).load()
        keys = _RestrictedUnpickler(f, {}, path).load()
        if not isinstance(keys, list):
            raise CheckpointFormatError(f"{path}: the storage key list is a {type(keys).__name__}.")
        order = "<" if little_endian else ">"
        for key in keys:
            header = f.read(8)
            if len(header) != 8:
                raise CheckpointFormatError(f"{path} ends before storage {key!r}.")
            numel = int(np.frombuffer(header, f"{order}i8")[0])
            storage = storages.get(str(key))
            if storage is None:
                raise CheckpointFormatError(f"{path} stores bytes for {key!r}, which no tensor uses.")
            if numel != storage.numel:
                raise CheckpointFormatError(f"{path}: storage {key!r} has {numel} elements; the pickle says {storage.numel}.")
            storage.fill(f.read(numel * storage.type.itemsize), little_endian)
        missing = [k for k, s in storages.items() if s.data is None]
        if missing:
            raise CheckpointFormatError(f"{path} lacks the bytes of storages {missing[:5]}.")
    return _materialise(result)


def load(path: str):
    """Reads a torch.save file; tensors become numpy arrays (native byte order), containers stay.

    Raises:
      UnsafeCheckpointError: the pickle names a global other than tensor/storage rebuilding and
        OrderedDict (nothing from the file has been called).
      CheckpointFormatError: not a torch checkpoint, or a damaged one.
      OSError: the file cannot be read.
    """
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        return _load_legacy(path)
    except CheckpointFormatError:
        raise
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, KeyError, IndexError, TypeError, ValueError,
            AttributeError) as error:
        # A damaged file or a pickle of an unexpected shape; nothing from it was executed.
        raise CheckpointFormatError(f"{path} is damaged or not a torch checkpoint ({type(error).__name__}: {error}).") from None


__all__ = ["CheckpointFormatError", "UnsafeCheckpointError", "load"]
