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
import math
import os
import pickle
import pickletools
import zipfile

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# What a file may make this reader allocate or walk, checked before anything is allocated: a
# hostile file of a few hundred bytes must not claim terabytes (a stride-0 tensor, a storage larger
# than the file), minutes (shared references nested 2^40 times) or the C stack (deep nesting).
# The budget is sized from the state dicts the importer expects: the reference's WRN-28-10 holds
# 36.5 M floats and its 10 000-chain replay buffer 30.7 M (0.27 GB together); 4 GiB leaves room
# for networks several times larger and bigger buffers.
MAX_TENSOR_BYTES = 4 * 2**30  # all storages together, and all tensors made from them together
MAX_PICKLE_BYTES = 64 * 2**20  # a reference checkpoint's pickle is about 30 KB
MAX_PICKLE_OPCODES = 2_000_000
MAX_OBJECTS = 1_000_000  # containers and values walked in the unpickled structure
MAX_NESTING = 100  # a checkpoint is a dict of dicts of tensors: depth 3

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

    @property
    def nbytes(self) -> int:
        return self.numel * self.type.itemsize

    def fill(self, raw: bytes, little_endian: bool):
        expected = self.numel * self.type.itemsize
        if len(raw) < expected:
            raise CheckpointFormatError(
                f"storage {self.key!r} holds {len(raw)} bytes; its {self.numel} {self.type.name} elements "
                f"need {expected}."
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
        if (not isinstance(size, tuple) or not isinstance(stride, tuple) or len(size) != len(stride)
                or len(size) > 64 or not all(isinstance(s, int) and s >= 0 for s in size + stride)
                or not isinstance(offset, int) or offset < 0):
            raise CheckpointFormatError(
                f"a tensor has invalid offset {offset!r:.60} / size {size!r:.200} / stride {stride!r:.200}.")
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
        root = storage.storage if isinstance(storage, _StorageView) else storage
        self.count = math.prod(self.size)
        self.nbytes = self.count * root.type.itemsize
        # A state dict's tensors never hold more elements than their storage; a stride-0 (expanded)
        # or overlapping view that does would be materialised at its full size.
        if self.count > root.numel:
            raise CheckpointFormatError(
                f"a tensor of size {self.size} (stride {self.stride}) has {self.count} elements, more than the "
                f"{root.numel} of its storage {root.key!r}: an expanded or overlapping view, which a state dict "
                "does not hold and which would be materialised at its full size.")

    def to_numpy(self) -> np.ndarray:
        storage, base = self.storage, 0
        if isinstance(storage, _StorageView):
            storage, base = storage.storage, storage.offset
        data = storage.data
        count = self.count
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
    def __init__(self, file, storages, source, max_bytes=MAX_TENSOR_BYTES):
        _prescan(file, source)
        super().__init__(file)
        self.storages = storages
        self.source = source
        self.max_bytes = max_bytes

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
        if not isinstance(numel, int) or numel < 0:
            raise CheckpointFormatError(f"{self.source}: storage {key!r:.60} has {numel!r:.60} elements.")
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = _Storage(storage_type, key, numel)
            declared = sum(s.nbytes for s in self.storages.values())
            if declared > self.max_bytes:
                raise CheckpointFormatError(
                    f"{self.source}: its storages declare {declared} bytes, more than the import's budget of "
                    f"{self.max_bytes} bytes (torch_checkpoint.MAX_TENSOR_BYTES); refused before reading them.")
        view = pid[5] if len(pid) == 6 else None
        if view is not None:
            _, offset, view_numel = view
            return _StorageView(storage, offset, view_numel)
        return storage


_MEMO_OPCODES = {"PUT", "BINPUT", "LONG_BINPUT"}


def _prescan(file, source):
    """Walks the next pickle in `file` (without building anything) and refuses one that is too long,
    has too many opcodes, or stores into a memo slot far beyond the objects it made (the C
    unpickler allocates the memo up to the largest index); then rewinds `file`."""
    start = file.tell()
    count = 0
    try:
        for opcode, argument, position in pickletools.genops(file):
            count += 1
            if count > MAX_PICKLE_OPCODES or position - start > MAX_PICKLE_BYTES:
                raise CheckpointFormatError(
                    f"{source}: its pickle is longer than {MAX_PICKLE_BYTES} bytes / {MAX_PICKLE_OPCODES} opcodes; "
                    "a checkpoint's is a few kilobytes, so it is refused.")
            if opcode.name in _MEMO_OPCODES and not (isinstance(argument, int) and 0 <= argument <= count):
                raise CheckpointFormatError(f"{source}: its pickle stores into memo slot {argument!r:.30} after "
                                            f"{count} opcodes; refused.")
    except ValueError as error:  # genops' own complaints (truncated, unknown opcode, ...)
        if isinstance(error, CheckpointFormatError):
            raise
        raise pickle.UnpicklingError(str(error)) from None
    file.seek(start)


def _materialise(value, tensor_budget=MAX_TENSOR_BYTES):
    """The unpickled structure with numpy arrays for tensors. Shared references are materialised
    once (and stay shared); nesting deeper than MAX_NESTING, more than MAX_OBJECTS values or tensors
    above the budget together are refused before they are built."""
    done = {}
    state = dict(objects=0, tensor_bytes=0)

    def walk(item, depth):
        known = done.get(id(item))
        if known is not None:
            return known[1]
        state["objects"] += 1
        if state["objects"] > MAX_OBJECTS:
            raise CheckpointFormatError(f"the checkpoint holds more than {MAX_OBJECTS} objects; a state dict holds "
                                        "a few hundred, so it is refused.")
        if depth > MAX_NESTING:
            raise CheckpointFormatError(f"the checkpoint nests containers more than {MAX_NESTING} deep; a state dict "
                                        "nests 3, so it is refused.")
        if isinstance(item, _Tensor):
            state["tensor_bytes"] += item.nbytes
            if state["tensor_bytes"] > tensor_budget:
                raise CheckpointFormatError(
                    f"the checkpoint's tensors take more than {tensor_budget} bytes together (the import's budget, "
                    "torch_checkpoint.MAX_TENSOR_BYTES); refused before building them.")
            result = item.to_numpy()
        elif isinstance(item, dict):
            result = type(item)() if isinstance(item, collections.OrderedDict) else {}
            for key, element in item.items():
                result[walk(key, depth + 1)] = walk(element, depth + 1)
        elif isinstance(item, (list, tuple)):
            result = type(item)(walk(element, depth + 1) for element in item)
        elif isinstance(item, (_Storage, _StorageView)):
            raise CheckpointFormatError("the checkpoint holds a bare storage, not a tensor; it cannot be imported.")
        else:
            result = item
        done[id(item)] = (item, result)  # the item is kept alive so that its id is not reused
        return result

    return walk(value, 0)


def _load_zip(path, max_bytes=MAX_TENSOR_BYTES):
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
        if archive.getinfo(pickles[0]).file_size > MAX_PICKLE_BYTES:
            raise CheckpointFormatError(f"{path}: its data.pkl is larger than {MAX_PICKLE_BYTES} bytes; refused.")
        result = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), storages, path, max_bytes).load()
        for key, storage in storages.items():
            name = f"{prefix}data/{key}"
            if name not in names:
                raise CheckpointFormatError(f"{path} lacks {name}, the bytes of storage {key!r}.")
            # The declared size against the bytes the archive holds, before reading them.
            stored = archive.getinfo(name).file_size
            if stored < storage.nbytes or stored > max(storage.nbytes, 64) * 2:
                raise CheckpointFormatError(
                    f"{path}: storage {key!r} declares {storage.numel} {storage.type.name} elements ({storage.nbytes} "
                    f"bytes), but {name} holds {stored} bytes.")
            storage.fill(archive.read(name), little_endian)
    return _materialise(result, max_bytes)


def _load_legacy(path, max_bytes=MAX_TENSOR_BYTES):
    size = os.path.getsize(path)
    if size > max_bytes + MAX_PICKLE_BYTES:
        raise CheckpointFormatError(f"{path} has {size} bytes, more than the import's budget of {max_bytes} bytes of "
                                    "tensors (torch_checkpoint.MAX_TENSOR_BYTES); refused.")
    # Read from memory: a length field in the file can then never make a read allocate more than
    # the file holds.
    with open(path, "rb") as raw:
        f = io.BytesIO(raw.read())
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
        raise CheckpointFormatError(
            f"{path} has legacy protocol {protocol!r}; only {LEGACY_PROTOCOL_VERSION} is known.")
    system = _RestrictedUnpickler(f, {}, path).load()
    little_endian = bool(system.get("little_endian", True)) if isinstance(system, dict) else True
    storages = {}
    result = _RestrictedUnpickler(f, storages, path, max_bytes).load()
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
            raise CheckpointFormatError(
                f"{path}: storage {key!r} has {numel} elements; the pickle says {storage.numel}.")
        left = size - f.tell()
        if storage.nbytes > left:
            raise CheckpointFormatError(
                f"{path}: storage {key!r} declares {numel} {storage.type.name} elements ({storage.nbytes} bytes), "
                f"but only {left} bytes of the file are left.")
        storage.fill(f.read(storage.nbytes), little_endian)
    missing = [k for k, s in storages.items() if s.data is None]
    if missing:
        raise CheckpointFormatError(f"{path} lacks the bytes of storages {missing[:5]}.")
    return _materialise(result, max_bytes)


def load(path: str, max_bytes: int = MAX_TENSOR_BYTES):
    """Reads a torch.save file; tensors become numpy arrays (native byte order), containers stay.

    Every size the file declares is checked against the bytes it holds and `max_bytes` (all
    tensors together) before anything is allocated; see MAX_* above for the other limits.

    Raises:
      UnsafeCheckpointError: the pickle names a global other than tensor/storage rebuilding and
        OrderedDict (nothing from the file has been called).
      CheckpointFormatError: not a torch checkpoint, or a damaged one.
      OSError: the file cannot be read.
    """
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path, max_bytes)
        return _load_legacy(path, max_bytes)
    except CheckpointFormatError:
        raise
    except (MemoryError, RecursionError) as error:  # the last line of defence behind the checks above
        raise CheckpointFormatError(
            f"{path} needs more {'memory' if isinstance(error, MemoryError) else 'nesting'} to read than this "
            "process has; a reference checkpoint needs a few hundred MB, so it is refused as hostile or damaged."
        ) from None
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, KeyError, IndexError, TypeError, ValueError,
            AttributeError) as error:
        # A damaged file or a pickle of an unexpected shape; nothing from it was executed.
        raise CheckpointFormatError(
            f"{path} is damaged or not a torch checkpoint ({type(error).__name__}: {error})."
        ) from None


__all__ = ["CheckpointFormatError", "UnsafeCheckpointError", "load"]
