"""Tiny hostile torch.save files for the importer's tests and the fault sweep (issue #15, item 8):
raw pickle opcodes, so no torch is needed to make them."""

import io
import pickle
import struct
import zipfile

from export import torch_checkpoint


def _global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(text):
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(value):
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data  # LONG1


def _tuple(*items):
    return b"(" + b"".join(items) + b"t"


def tensor(key, numel, size, stride, offset=0):
    """A _rebuild_tensor_v2 call on storage `key` (FloatStorage of `numel` elements)."""
    storage = _tuple(_str("storage"), _global("torch", "FloatStorage"), _str(key), _str("cpu"), _int(numel)) + b"Q"
    ordered_dict = _global("collections", "OrderedDict") + b")R"
    return _global("torch._utils", "_rebuild_tensor_v2") + _tuple(
        storage, _int(offset), _tuple(*map(_int, size)), _tuple(*map(_int, stride)), b"\x89", ordered_dict) + b"R"


def state_dict(value):
    """{"model_state_dict": {"w": value}} around the opcodes of `value`."""
    return b"\x80\x02}(" + _str("model_state_dict") + b"}(" + _str("w") + value + b"uu."


def zip_file(path, pickle_bytes, storages=None):
    """torch.save's zip layout: NAME/data.pkl, NAME/byteorder, NAME/data/KEY."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hostile/data.pkl", pickle_bytes)
        archive.writestr("hostile/byteorder", "little")
        for key, data in (storages or {}).items():
            archive.writestr(f"hostile/data/{key}", data)
    return path


def legacy_file(path, pickle_bytes, storages=()):
    """torch's legacy layout; `storages`: (key, declared element count, bytes)."""
    stream = io.BytesIO()
    for header in (torch_checkpoint.LEGACY_MAGIC_NUMBER, torch_checkpoint.LEGACY_PROTOCOL_VERSION,
                   {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, stream, protocol=2)
    stream.write(pickle_bytes)
    pickle.dump([key for key, _, _ in storages], stream, protocol=2)
    for _, numel, data in storages:
        stream.write(struct.pack("<q", numel) + data)
    with open(path, "wb") as f:
        f.write(stream.getvalue())
    return path


def stride_zero(path):
    """One float stored; a 2^20 x 2^20 tensor of it by stride 0: 4 TiB once materialised."""
    return zip_file(path, state_dict(tensor("0", 1, (2**20, 2**20), (0, 0))), {"0": b"\0\0\0\0"})


def storage_larger_than_file(path):
    """Legacy format: a storage declared (in the pickle and its header) as 2^40 floats, 4 bytes present."""
    return legacy_file(path, state_dict(tensor("0", 2**40, (1,), (1,))), [("0", 2**40, b"\0\0\0\0")])


def zip_storage_larger_than_file(path):
    """Zip format: a storage declared as 2^28 floats (1 GiB, inside the budget), 4 bytes present."""
    return zip_file(path, state_dict(tensor("0", 2**28, (1,), (1,))), {"0": b"\0\0\0\0"})


def shared_nesting(path, levels=40):
    """t0 = 0; t(i+1) = (t_i, t_i): 2^40 leaves reached through 40 shared tuples."""
    body = _int(0) + b"q\x000"  # BINPUT 0, POP
    for level in range(levels):
        body += b"(h" + bytes([level]) + b"h" + bytes([level]) + b"tq" + bytes([level + 1]) + b"0"
    return zip_file(path, state_dict(body + b"h" + bytes([levels])))


def deep_nesting(path, levels=200_000):
    """200 000 nested one-element tuples."""
    return zip_file(path, state_dict(_int(0) + b"\x85" * levels))


def huge_memo_index(path):
    """LONG_BINPUT 2^31 - 1: the C unpickler would grow its memo to 16 GiB."""
    return zip_file(path, state_dict(_int(0) + b"r" + struct.pack("<I", 2**31 - 1)))


HOSTILE = {
    "stride-0 tensor (4 TiB)": stride_zero,
    "storage larger than the file": storage_larger_than_file,
    "zip storage larger than its entry": zip_storage_larger_than_file,
    "40 shared nested tuples": shared_nesting,
    "200000 nested tuples": deep_nesting,
    "memo index 2^31": huge_memo_index,
}
