"""Shared test setup: quiet TensorFlow logs; two logical CPUs for distribution tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

# Two logical CPU devices let MirroredStrategy run two replicas on this machine. This must happen
# before any test touches a device.
_cpus = tf.config.list_physical_devices("CPU")
_LOGICAL_CPU_PROBLEM = None if _cpus else "TensorFlow lists no physical CPU"
if _cpus:
    try:
        tf.config.set_logical_device_configuration(
            _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
        )
    except RuntimeError as error:  # devices already initialised by something imported earlier
        _LOGICAL_CPU_PROBLEM = str(error)


import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def two_logical_cpus():
    """The names of the two logical CPU devices for the 1-vs-2-replica tests.

    Fails, never skips, when they could not be made: a suite that quietly skipped its only
    distribution checks would pass without checking the replica arithmetic at all."""
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(devices) < 2:
        pytest.fail(
            f"needs two logical CPU devices but TensorFlow has {devices}; tests/conftest.py creates them before "
            f"TensorFlow initialises its devices" + (f", which failed: {_LOGICAL_CPU_PROBLEM}" if _LOGICAL_CPU_PROBLEM
                                                     else "") + ". Run the tests with pytest from the repository "
            "root, so that conftest.py is imported before anything touches a device.")
    return devices[:2]


@pytest.fixture(autouse=True)
def _seed_everything():
    """Fixed initial weights and global seeds per test: results do not depend on test order."""
    keras.utils.set_random_seed(0)


_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "0.0.0.0", "")


def _is_loopback(host) -> bool:
    """This machine: loopback names and addresses, or its own host name."""
    import socket  # noqa: PLC0415

    host = host.decode() if isinstance(host, bytes) else str(host)
    return (host in _LOOPBACK_HOSTS or host.startswith("127.") or host.endswith(".localhost")
            or host == socket.gethostname())


@pytest.fixture(autouse=True)
def _no_outside_network(monkeypatch):
    """No test talks to the outside world (our machines must not send traffic off the machine):
    Python sockets may reach this machine only. A connection or name lookup for any other host
    fails with an error naming it. (Child processes and gRPC's C core are not covered; the tests
    that start children block sockets in them where it matters.)"""
    import socket  # noqa: PLC0415

    real_connect, real_connect_ex, real_getaddrinfo = (socket.socket.connect, socket.socket.connect_ex,
                                                       socket.getaddrinfo)

    def refuse(host):
        raise OSError(f"tests may not open connections off this machine (to {host!r})")

    def connect(sock, address, *args):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            refuse(address[0])
        return real_connect(sock, address, *args)

    def connect_ex(sock, address, *args):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            refuse(address[0])
        return real_connect_ex(sock, address, *args)

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not _is_loopback(host):
            refuse(host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture(autouse=True)
def _distinct_collective_keys():
    """Each test's MirroredStrategy gets its own collective group keys.

    Strategies built in one process otherwise all start at group key 1, and the runtime keeps
    each (group, instance) key's first tensor shape: a second test whose model has another shape
    then fails with "Shape mismatch in the collective instance". TensorFlow's own distribution
    tests avoid this the same way (strategy_combinations.py, `_collective_key_base` "only set this
    in tests"). Bumped after each test too, since a module-scoped fixture that builds a strategy
    runs before the next test's function-scoped fixtures.
    """
    tf.distribute.MirroredStrategy._collective_key_base += 100000
    yield
    tf.distribute.MirroredStrategy._collective_key_base += 100000
