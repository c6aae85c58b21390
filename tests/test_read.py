import io
import os
import pickle
import tarfile

import numpy as np
import pytest

from cifarkit import read
from cifarkit.errors import UserError

from conftest import dump, make_images, to_official, write_cifar10


def test_reads_cifar10_in_official_layout(cifar10_dir):
    data = read.load(cifar10_dir.parent, "cifar10")
    assert data.train_x.shape == (120, 32, 32, 3) and data.train_x.dtype == np.uint8
    assert data.test_x.shape == (40, 32, 32, 3)
    assert np.bincount(data.train_y).tolist() == [12] * 10
    assert data.classes[3] == "cat"
    # pixels come back in NHWC exactly as written (rows of R, then G, then B planes)
    with open(cifar10_dir / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    first = raw[b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(data.train_x[0], first)
    assert data.train_y[0] == raw[b"labels"][0]


def test_reads_cifar100_fine_labels(cifar100_dir):
    data = read.load(cifar100_dir, "cifar100")  # --data-dir may also point at the folder itself
    assert len(data.classes) == 100 and data.train_y.max() == 99
    assert data.train_x.shape == (600, 32, 32, 3)


def test_other_filenames_still_load(cifar10_dir):
    """The md5 of a copy differs when only `filenames` differ; pixels and labels decide."""
    path = cifar10_dir / "data_batch_2"
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    d[b"filenames"] = [b"renamed.png"] * len(d[b"labels"])
    dump(path, d)
    assert len(read.load(cifar10_dir.parent, "cifar10").train_y) == 120


def test_truncated_file_is_one_clear_error(cifar10_dir):
    path = cifar10_dir / "data_batch_3"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(UserError, match="data_batch_3: not a readable CIFAR pickle"):
        read.load(cifar10_dir.parent, "cifar10")


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update({b"labels": d[b"labels"][:-1]}), "images but .* labels"),
    (lambda d: d.update({b"data": d[b"data"][:, :1000]}), r"uint8 of shape \(N, 3072\)"),
    (lambda d: d.update({b"data": d[b"data"].astype(np.float32)}), "must be uint8"),
    (lambda d: d.update({b"labels": [10] + d[b"labels"][1:]}), "label 10 out of range 0..9"),
    (lambda d: d.pop(b"data"), "missing key 'data'"),
])
def test_malformed_batches_are_refused(cifar10_dir, change, message):
    path = cifar10_dir / "data_batch_1"
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    change(d)
    dump(path, d)
    with pytest.raises(UserError, match=message):
        read.load(cifar10_dir.parent, "cifar10")


def test_missing_meta_names_the_file(cifar10_dir):
    (cifar10_dir / "batches.meta").unlink()
    (cifar10_dir / "cifar-10-python.tar.gz").unlink(missing_ok=True)
    with pytest.raises(UserError, match="batches.meta missing"):
        read.load(cifar10_dir.parent, "cifar10", download=False)


def test_pickle_with_code_is_refused_without_running_it(cifar10_dir, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(cifar10_dir / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil()}, f, protocol=2)
    with pytest.raises(UserError, match="refusing to load"):
        read.load(cifar10_dir.parent, "cifar10")
    assert not marker.exists()


def test_offline_without_data_says_where_to_put_it(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    def offline(*a, **k):
        raise OSError("Name or service not known")

    monkeypatch.setattr(tvu, "download_url", offline)
    with pytest.raises(UserError, match=r"download failed .*put cifar-10-batches-py/ or cifar-10-python.tar.gz"):
        read.load(tmp_path / "empty", "cifar10")
    assert not (tmp_path / "empty" / "cifar-10-python.tar.gz").exists()


def test_download_with_wrong_checksum_is_refused_and_removed(tmp_path, monkeypatch):
    """torchvision's real download_url, with only the network fetch replaced by one that delivers bad bytes."""
    import torchvision.datasets.utils as tvu

    monkeypatch.setattr(tvu, "_get_redirect_url", lambda url, max_hops=3: url)
    monkeypatch.setattr(tvu, "_urlretrieve", lambda url, path, *a, **k: open(path, "wb").write(b"not the archive"))
    with pytest.raises(UserError, match="download failed"):
        read.load(tmp_path / "data", "cifar10")
    assert not (tmp_path / "data" / "cifar-10-python.tar.gz").exists()


def test_reads_from_official_archive(tmp_path):
    write_cifar10(tmp_path / "build")
    archive = tmp_path / "data" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "build" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    data = read.load(tmp_path / "data", "cifar10", download=False)
    assert len(data.train_y) == 120
    assert (tmp_path / "data" / "cifar-10-batches-py" / "test_batch").is_file()
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".extract-")]


@pytest.mark.parametrize("member", ["../escaped.txt", "/tmp/cifarkit_abs_escape.txt"])
def test_malicious_archive_is_refused(tmp_path, member):
    archive = tmp_path / "data" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        payload = b"owned"
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(UserError, match="refused, unsafe member"):
        read.load(tmp_path / "data", "cifar10", download=False)
    assert not (tmp_path / "escaped.txt").exists()


def test_archive_link_out_of_target_is_refused(tmp_path):
    archive = tmp_path / "data" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        link = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(UserError, match="refused, unsafe member"):
        read.load(tmp_path / "data", "cifar10", download=False)


def test_synthetic_images_roundtrip():
    labels = np.arange(10)
    img = make_images(labels, 10, 0)
    flat = to_official(img)
    assert np.array_equal(flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), img)
