"""`--download`: fetch and prepare a tensorflow-datasets copy that is missing, only when asked.

    prepare("svhn", data_dir="/data/tfds")   # no-op if prepared; otherwise downloads and prepares

Off by default everywhere: `jem_tf.data.load` never downloads, and the entry points call
`prepare` only for `--download`, before they write anything. A multi-gigabyte download must not
start by surprise on a cluster node, and a machine without network must fail at once, not after
minutes of retries: before handing over to tfds, `prepare` opens one TCP connection to each host
the dataset is downloaded from (or to the configured proxy), bounded by `PROBE_TIMEOUT_S`, and
stops with a message saying what it tried. Downloads then run under a socket timeout, so a stalled
connection fails instead of hanging.

A half-downloaded or half-prepared dataset never counts as prepared (read in
tensorflow_datasets 4.9.10): `DatasetBuilder.download_and_prepare` (core/dataset_builder.py)
generates into `utils.incomplete_dir(...)` (core/utils/file_utils.py: a sibling
`incomplete.XXXXXX_<version>` folder, renamed to `<version>` only on success and deleted
otherwise), each download goes to `<file>.tmp.<uuid>` and is renamed when complete
(core/download/download_manager.py), and `is_prepared()` requires the final folder's
dataset_info.json and features.json (`file_utils.is_valid_variant_dir`). A killed run therefore
leaves only temporary folders, and the next `--download` starts that dataset again.
"""

import dataclasses
import socket
import threading
import urllib.parse
import urllib.request

from absl import logging

from jem_tf.data.image_data import DatasetUnavailableError

# Our dataset names (training datasets and evaluation OOD sets) -> tfds builder names.
TFDS_BUILDERS = {"svhn": "svhn_cropped", "cifar10": "cifar10", "cifar100": "cifar100", "celeb_a": "celeb_a"}
# How long the reachability check waits for each host (DNS lookup included).
PROBE_TIMEOUT_S = 10.0
# Socket timeout while tfds downloads: a connection silent this long fails instead of hanging.
DOWNLOAD_SOCKET_TIMEOUT_S = 60.0


@dataclasses.dataclass(frozen=True)
class DownloadSource:
    """Where tfds fetches a dataset from and roughly how much it takes (the URLs and byte counts
    in tfds 4.9.10's checksums.tsv of each builder; prepared sizes from the tfds catalog)."""

    urls: tuple  # one URL per host tfds downloads from (the reachability check needs the hosts)
    download: str
    prepared: str


DOWNLOADS = {
    # svhn_cropped fetches train, test and the 531k-image "extra" split (1.3 GB of the total).
    "svhn_cropped": DownloadSource(("http://ufldl.stanford.edu/housenumbers/train_32x32.mat",), "1.5 GiB", "1.5 GiB"),
    "cifar10": DownloadSource(("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",), "160 MiB", "130 MiB"),
    "cifar100": DownloadSource(("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",), "160 MiB", "130 MiB"),
    # From Google Drive, which may refuse with a quota error; then prepare it by hand.
    "celeb_a": DownloadSource(("https://drive.google.com/uc?export=download",), "1.4 GiB", "1.4 GiB"),
}


class DatasetDownloadError(DatasetUnavailableError):
    """`--download` was asked for and could not prepare the dataset; `str(error)` says what was
    tried and what to do. A DatasetUnavailableError, so every entry point exits 2 on it."""


def is_downloadable(name: str) -> bool:
    """Whether `prepare` can fetch dataset `name` (a training dataset or OOD set name)."""
    return name in TFDS_BUILDERS


def prepare(name: str, data_dir: str | None = None, *, probe_timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Downloads and prepares dataset `name` into `data_dir` unless it is already prepared there.

    Args:
      name: 'svhn', 'cifar10', 'cifar100' or 'celeb_a'; any other name (digits, folder:PATH,
        synthetic OOD sets) needs no download and returns False at once.
      data_dir: the tfds data directory (None: tfds' default, `$TFDS_DATA_DIR` or
        `~/tensorflow_datasets`). Downloads go to DATA_DIR/downloads, the prepared copy to
        DATA_DIR/<tfds name>/<version>.
      probe_timeout_s: how long to wait for each download host before giving up.

    Returns:
      True if it downloaded and prepared the dataset, False if there was nothing to do.

    Raises:
      DatasetDownloadError: a host is unreachable, or tfds' download or preparation failed.
    """
    if not is_downloadable(name):
        return False
    import tensorflow_datasets as tfds  # noqa: PLC0415 (heavy; only needed here)

    tfds_name = TFDS_BUILDERS[name]
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    if builder.is_prepared():
        logging.info("--download: %s (tfds %r) is already prepared in %s; nothing to download.", name, tfds_name,
                     builder.data_dir)
        return False
    source = DOWNLOADS[tfds_name]
    root = str(data_dir or getattr(builder, "data_dir_root", None) or builder.data_dir)
    logging.info("--download: %s (tfds %r) is not prepared in %s; downloading about %s and preparing about %s there "
                 "(tfds shows the progress).", name, tfds_name, root, source.download, source.prepared)
    _check_reachable(name, tfds_name, root, source, probe_timeout_s)
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)
    try:
        builder.download_and_prepare()
    # What tfds raises when a download fails: requests' ConnectionError and other IOErrors (both
    # OSError), tfds.download.DownloadError (bad status, checksum), and TensorFlow file errors.
    except (OSError, tfds.download.DownloadError, _tensorflow_errors()) as error:
        raise DatasetDownloadError(
            f"--download: downloading and preparing {name!r} (tfds {tfds_name!r}, from {_hosts_text(source)}) into "
            f"{root!r} failed: {type(error).__name__}: {error}. Nothing counts as prepared until tfds finishes (it "
            "works in temporary folders), so running the same command again starts over. Or prepare it on a "
            f"machine with internet access ({_manual_recipe(tfds_name)}) and pass --data_dir."
        ) from error
    finally:
        socket.setdefaulttimeout(previous_timeout)
    if not builder.is_prepared():
        raise DatasetDownloadError(f"--download: tfds finished preparing {tfds_name!r} but {builder.data_dir!r} is "
                                   "not a prepared copy (no dataset_info.json / features.json).")
    logging.info("--download: %s prepared in %s.", name, builder.data_dir)
    return True


def _tensorflow_errors():
    import tensorflow as tf  # noqa: PLC0415

    return tf.errors.OpError


def _hosts_text(source: DownloadSource) -> str:
    return ", ".join(sorted({urllib.parse.urlsplit(url).hostname for url in source.urls}))


def _manual_recipe(tfds_name: str) -> str:
    return (f"python -c \"import tensorflow_datasets as tfds; tfds.builder('{tfds_name}', "
            "data_dir='/path/to/tensorflow_datasets').download_and_prepare()\"")


def _endpoints(source: DownloadSource):
    """(host, port, what) to probe: each download host, or the proxy that would carry it."""
    proxies = urllib.request.getproxies()
    endpoints = {}
    for url in source.urls:
        parts = urllib.parse.urlsplit(url)
        proxy = proxies.get(parts.scheme)
        if proxy and not urllib.request.proxy_bypass(parts.hostname):
            proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            key = (proxy_parts.hostname, proxy_parts.port or 8080)
            endpoints[key] = f"the {parts.scheme} proxy {proxy_parts.hostname}:{key[1]} (for {parts.hostname})"
        else:
            key = (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
            endpoints[key] = f"{parts.hostname}:{key[1]}"
    return [(host, port, what) for (host, port), what in endpoints.items()]


def _connect(host: str, port: int, timeout_s: float, outcome: dict) -> None:
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
        outcome["ok"] = True
    except OSError as error:
        outcome["error"] = error


def _check_reachable(name, tfds_name, root, source: DownloadSource, timeout_s: float) -> None:
    """Raises DatasetDownloadError unless a TCP connection to every download endpoint opens within
    `timeout_s`. The attempt runs in a thread so that a hanging DNS lookup is bounded too."""
    for host, port, what in _endpoints(source):
        outcome = {}
        attempt = threading.Thread(target=_connect, args=(host, port, timeout_s, outcome), daemon=True)
        attempt.start()
        attempt.join(timeout_s + 1.0)
        if outcome.get("ok"):
            continue
        reason = (f"{type(outcome['error']).__name__}: {outcome['error']}" if "error" in outcome
                  else f"no answer within {timeout_s:g} s")
        raise DatasetDownloadError(
            f"--download: cannot prepare {name!r} (tfds {tfds_name!r}) in {root!r}: tried to connect to {what}, "
            f"where tfds downloads it from, and failed ({reason}). Nothing was downloaded or written. This machine "
            "seems to have no internet access (set HTTPS_PROXY / HTTP_PROXY if it needs a proxy). Otherwise prepare "
            f"it on a machine with internet access ({_manual_recipe(tfds_name)}), copy that directory here and pass "
            "--data_dir=/path/to/tensorflow_datasets."
        )
