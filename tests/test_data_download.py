"""`--download`: tfds datasets are fetched only when asked, fail fast and clearly offline, and
never leave anything behind in the workdir. No test opens a connection: sockets are blocked in
this process, where the command lines run too (their main), and tfds' download step is replaced."""

import os
import socket
import time
import types
from pathlib import Path

import pytest
import requests
import tensorflow_datasets as tfds
from conftest import run_command

from jem_tf import data
from jem_tf.data import download
from jem_tf.evaluation import suite

TFDS_NAMES = {"svhn": "svhn_cropped", "cifar10": "cifar10", "cifar100": "cifar100", "celeb_a": "celeb_a"}


class NetworkBlocked(OSError):
    pass


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every way this process could open a connection raises; the attempts are recorded."""
    attempts = []

    def blocked(*args, **kwargs):
        attempts.append(args)
        raise NetworkBlocked("network access is blocked in the tests")

    monkeypatch.setattr(socket, "create_connection", blocked)
    monkeypatch.setattr(socket, "getaddrinfo", blocked)
    monkeypatch.setattr(socket.socket, "connect", blocked)
    monkeypatch.setattr(socket.socket, "connect_ex", blocked)
    for variable in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    return attempts


@pytest.fixture
def fake_tfds_download(monkeypatch):
    """Replaces DatasetBuilder.download_and_prepare: records each call and writes what a finished
    tfds preparation leaves (the version folder with dataset_info.json and features.json)."""
    calls = []

    def fake(builder, *args, **kwargs):
        calls.append({"name": builder.name, "data_dir": str(builder.data_dir),
                      "socket_timeout": socket.getdefaulttimeout()})
        write_prepared_metadata(builder)

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fake)
    return calls


@pytest.fixture
def reachable(monkeypatch):
    """The reachability check succeeds (as on a machine with network) and records its targets."""
    targets = []

    def connect(host, port, timeout_s, outcome):
        targets.append((host, port))
        outcome["ok"] = True

    monkeypatch.setattr(download, "_connect", connect)
    return targets


def write_prepared_metadata(builder):
    """What a finished tfds preparation leaves for `is_prepared` (no records: nothing reads them)."""
    Path(builder.data_dir).mkdir(parents=True)
    builder.info.write_to_directory(builder.data_dir)


def variant_dir(tfds_name, data_dir):
    return Path(tfds.builder(tfds_name, data_dir=str(data_dir)).data_dir)


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob("*")) if Path(path).exists() else []


# -- the library ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TFDS_NAMES))
def test_absent_dataset_is_downloaded_into_data_dir(name, tmp_path, fake_tfds_download, reachable):
    data_dir = tmp_path / "tfds"
    assert download.prepare(name, str(data_dir)) is True
    assert [call["name"] for call in fake_tfds_download] == [TFDS_NAMES[name]]
    assert fake_tfds_download[0]["data_dir"] == str(variant_dir(TFDS_NAMES[name], data_dir))
    assert fake_tfds_download[0]["data_dir"].startswith(str(data_dir) + os.sep)
    # Downloads run under a socket timeout, and the process default is restored afterwards.
    assert fake_tfds_download[0]["socket_timeout"] == download.DOWNLOAD_SOCKET_TIMEOUT_S
    assert socket.getdefaulttimeout() is None
    assert reachable  # the hosts were checked first
    # Now it is prepared: a second call downloads nothing.
    assert download.prepare(name, str(data_dir)) is False
    assert len(fake_tfds_download) == 1


def test_default_data_dir_is_tfds_default(tmp_path, monkeypatch, fake_tfds_download, reachable):
    # tfds reads $TFDS_DATA_DIR once, at import, into constants.DATA_DIR.
    monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(tmp_path / "default_tfds"))
    assert download.prepare("cifar10") is True
    assert fake_tfds_download[0]["data_dir"].startswith(str(tmp_path / "default_tfds") + os.sep)


def test_prepared_dataset_is_not_downloaded(tmp_path, fake_tfds_download, no_network):
    write_prepared_metadata(tfds.builder("cifar10", data_dir=str(tmp_path)))
    assert download.prepare("cifar10", str(tmp_path)) is False
    assert fake_tfds_download == [] and no_network == []


def test_half_prepared_dataset_does_not_count_as_prepared(tmp_path, fake_tfds_download, reachable):
    # What a killed tfds preparation leaves: its temporary folder, even with the JSON files in it.
    final = variant_dir("cifar10", tmp_path)
    leftover = final.parent / f"incomplete.ABC123_{final.name}"
    leftover.mkdir(parents=True)
    tfds.builder("cifar10", data_dir=str(tmp_path)).info.write_to_directory(str(leftover))
    assert {"dataset_info.json", "features.json"} <= set(os.listdir(leftover))
    assert download.prepare("cifar10", str(tmp_path)) is True
    assert len(fake_tfds_download) == 1


@pytest.mark.parametrize("name", ["digits", "folder:/nowhere", "uniform", "interp"])
def test_datasets_without_download_need_nothing(name, fake_tfds_download, no_network):
    assert download.prepare(name, "/nowhere") is False
    assert fake_tfds_download == [] and no_network == []


def test_offline_attempt_fails_fast_with_what_was_tried_and_writes_nothing(tmp_path, fake_tfds_download, no_network):
    data_dir = tmp_path / "tfds"
    with pytest.raises(data.DatasetDownloadError) as error:
        download.prepare("cifar10", str(data_dir))
    message = str(error.value)
    for part in ("--download", "'cifar10'", str(data_dir), "www.cs.toronto.edu:443", "network access is blocked",
                 "Nothing was downloaded", "--data_dir", "download_and_prepare"):
        assert part in message
    assert isinstance(error.value, data.DatasetUnavailableError)  # every entry point exits 2 on it
    assert fake_tfds_download == []
    assert files_under(data_dir) == []
    assert no_network  # the check was what failed


def test_a_hanging_connection_is_abandoned_after_the_probe_timeout(tmp_path, monkeypatch, fake_tfds_download):
    def hang(*args, **kwargs):
        time.sleep(20)
        raise NetworkBlocked("answered too late")

    monkeypatch.setattr(socket, "create_connection", hang)
    started = time.monotonic()
    with pytest.raises(data.DatasetDownloadError, match=r"no answer within 0\.2 s"):
        download.prepare("svhn", str(tmp_path), probe_timeout_s=0.2)
    assert time.monotonic() - started < 15  # it did not wait for the hanging connection
    assert fake_tfds_download == []


def test_the_proxy_is_checked_when_one_is_configured(tmp_path, monkeypatch, fake_tfds_download, reachable):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    download.prepare("cifar100", str(tmp_path))
    assert reachable == [("proxy.example", 3128)]


def test_what_tfds_raises_offline_ends_in_a_clear_message(tmp_path, monkeypatch, reachable):
    # requests' error when every retry fails to connect, as tfds' downloader lets it through.
    def offline(builder, *args, **kwargs):
        raise requests.exceptions.ConnectionError(
            "HTTPSConnectionPool(host='www.cs.toronto.edu', port=443): Max retries exceeded with url: "
            "/~kriz/cifar-10-binary.tar.gz (Caused by NameResolutionError(...))")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(data.DatasetDownloadError) as error:
        download.prepare("cifar10", str(tmp_path / "tfds"))
    message = str(error.value)
    for part in ("--download", "'cifar10'", "www.cs.toronto.edu", "failed: ConnectionError", "Max retries exceeded",
                 "starts over", "--data_dir"):
        assert part in message
    assert socket.getdefaulttimeout() is None


def test_unavailable_message_names_download_as_the_fix(tmp_path, monkeypatch):
    def must_not_download(*args, **kwargs):
        raise AssertionError("data.load must never download")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", must_not_download)
    with pytest.raises(data.DatasetUnavailableError, match="Add --download to fetch and prepare it there"):
        data.load("svhn", data_dir=str(tmp_path))


# -- evaluation: the run's dataset and the tfds OOD sets ---------------------------------------


class _Stop(Exception):
    pass


@pytest.fixture
def stub_run(monkeypatch):
    """evaluate_workdir on a stub digits run, stopped right after the download step."""
    run = types.SimpleNamespace(dataset="digits", image_shape=(8, 8, 1), num_classes=10)
    config = types.SimpleNamespace(data_dir=None, validation_fraction=0.1, validation_size=None, skip_bad_files=False,
                                   drop_empty_classes=False)
    monkeypatch.setattr(suite, "restore_run", lambda workdir, checkpoint=None, precision=None: (run, config))

    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(suite, "load_test_split", stop)
    return run


@pytest.mark.parametrize("evaluations, expected", [
    (["ood"], ["svhn_cropped", "cifar10", "cifar100", "celeb_a"]),
    (["logp_hist"], ["svhn_cropped", "cifar10", "cifar100", "celeb_a"]),
    (["accuracy"], []),  # no OOD set is read: nothing to download
])
def test_evaluation_downloads_the_tfds_ood_sets_it_reads(tmp_path, stub_run, fake_tfds_download, reachable,
                                                         evaluations, expected):
    with pytest.raises(_Stop):
        suite.evaluate_workdir("unused", evaluations, suite.EvalOptions(), data_dir=str(tmp_path), download=True)
    assert [call["name"] for call in fake_tfds_download] == expected
    assert all(call["data_dir"].startswith(str(tmp_path) + os.sep) for call in fake_tfds_download)


def test_evaluation_without_download_downloads_nothing(tmp_path, stub_run, fake_tfds_download, no_network):
    with pytest.raises(_Stop):
        suite.evaluate_workdir("unused", ["ood"], suite.EvalOptions(), data_dir=str(tmp_path))
    assert fake_tfds_download == [] and no_network == []


# -- the command lines --------------------------------------------------------------------------

def run_cli(monkeypatch, module, mode, *flags):
    """Runs a command line's main in this process (conftest.run_command) with the network blocked (the
    autouse `no_network`) and tfds' download step replaced by one that fails as offline; `mode`
    "reachable" makes the reachability check succeed. Returns (result, the download steps tried)."""
    calls = []

    def replaced_download(builder, *args, **kwargs):
        calls.append({"name": builder.name, "data_dir": str(builder.data_dir)})
        raise requests.exceptions.ConnectionError("Max retries exceeded (replaced download step, offline)")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", replaced_download)
    if mode == "reachable":
        monkeypatch.setattr(download, "_connect", lambda host, port, timeout_s, outcome: outcome.update(ok=True))
    if module == "jem_tf.evaluate":
        run = types.SimpleNamespace(dataset="digits", image_shape=(8, 8, 1), num_classes=10)
        config = types.SimpleNamespace(data_dir=None, validation_fraction=0.1, validation_size=None,
                                       skip_bad_files=False, drop_empty_classes=False)
        monkeypatch.setattr(suite, "restore_run", lambda workdir, checkpoint=None, precision=None: (run, config))
    return run_command(module, *flags), calls


@pytest.mark.slow
@pytest.mark.parametrize("mode, expected_calls, message", [
    ("offline", 0, "tried to connect to www.cs.toronto.edu:443"),
    ("reachable", 1, "failed: ConnectionError: Max retries exceeded"),
])
def test_train_download_failure_exits_2_and_writes_no_workdir(tmp_path, monkeypatch, mode, expected_calls, message):
    workdir, data_dir = tmp_path / "run", tmp_path / "tfds"
    result, calls = run_cli(monkeypatch, "jem_tf.train", mode, "--dataset=cifar10", f"--data_dir={data_dir}",
                            f"--workdir={workdir}", "--download", "--max_steps=1")
    assert result.returncode == 2, result.stderr[-3000:]
    assert message in result.stderr and "--download" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(calls) == expected_calls
    if calls:
        assert calls[0]["name"] == "cifar10" and calls[0]["data_dir"].startswith(str(data_dir) + os.sep)
    assert not workdir.exists()
    assert files_under(data_dir) == []


@pytest.mark.slow
def test_train_without_download_never_downloads_and_names_the_flag(tmp_path, monkeypatch):
    result, calls = run_cli(monkeypatch, "jem_tf.train", "reachable", "--dataset=svhn",
                            f"--data_dir={tmp_path / 'tfds'}", f"--workdir={tmp_path / 'run'}", "--max_steps=1")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Add --download to fetch and prepare it there" in result.stderr
    assert calls == []


@pytest.mark.slow
def test_evaluate_download_failure_exits_2_and_writes_nothing(tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    workdir.mkdir()
    result, calls = run_cli(monkeypatch, "jem_tf.evaluate", "reachable", f"--workdir={workdir}", "--eval=ood",
                            "--ood_sets=svhn,uniform", f"--data_dir={tmp_path / 'tfds'}", "--download")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "--download: downloading and preparing 'svhn'" in result.stderr
    assert [call["name"] for call in calls] == ["svhn_cropped"]
    assert files_under(workdir) == []


def test_export_download_failure_raises_before_anything_is_written(tmp_path, monkeypatch, reachable):
    from export import savedmodel  # noqa: PLC0415
    from jem_tf.models import WideResNet  # noqa: PLC0415
    from jem_tf.workdir import restore  # noqa: PLC0415

    network = WideResNet(10, 1, 10)
    network.build((None, 32, 32, 3))
    config = types.SimpleNamespace(dataset="cifar10", data_dir=str(tmp_path / "tfds"), validation_fraction=0.1,
                                   sgld_step_size=1.0, sgld_noise=0.01, objective="jem", preset="cifar10",
                                   skip_bad_files=False, drop_empty_classes=False)
    monkeypatch.setattr(restore, "restore_run",
                        lambda workdir, checkpoint=None, **kwargs: (network, config, {"global_step": 5}))

    def offline(builder, *args, **kwargs):
        raise requests.exceptions.ConnectionError("Max retries exceeded (replaced download step)")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    output = tmp_path / "export"
    with pytest.raises(data.DatasetDownloadError, match="--download: downloading and preparing 'cifar10'"):
        savedmodel.export_run(str(tmp_path / "run"), str(output), download=True)
    assert not output.exists()

