"""Read the official python-format CIFAR files, from a folder, the official archive, or a download.

We read the pickles ourselves instead of using torchvision's dataset classes: their md5 check
rejects copies whose `filenames` field differs, although pixels and labels are what matter, so we
validate those instead (shapes, dtypes, label ranges, counts, class names).
"""

import pickle
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError


@dataclass(frozen=True)
class Source:
    folder: str
    archive: str
    url: str
    md5: str
    train_files: tuple
    test_files: tuple
    meta_file: str
    label_key: bytes
    names_key: bytes
    num_classes: int
    title: str


SOURCES = {
    "cifar10": Source(
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
        num_classes=10,
        title="CIFAR-10",
    ),
    "cifar100": Source(
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
        num_classes=100,
        title="CIFAR-100",
    ),
}


@dataclass
class Cifar:
    """A whole CIFAR data set in memory: uint8 NHWC images, int64 labels, class names."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list
    folder: Path


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR files are pickles; a pickle can run code, so allow only what numpy arrays need."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes in protocol-2 pickles (re-saved copies)
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not part of a CIFAR file)")


def _unpickle(path):
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise UserError(f"{path}: file missing from the CIFAR folder") from None
    except Exception as e:  # a corrupted pickle can raise almost anything
        raise UserError(f"{path}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


def _read_batch(path, src):
    d = _unpickle(path)
    for key in (b"data", src.label_key):
        if key not in d:
            raise UserError(f"{path}: missing key {key.decode()!r}")
    data, labels = d[b"data"], d[src.label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise UserError(f"{path}: 'data' must be uint8 of shape (N, 3072), found {dtype} {shape}")
    try:
        labels = np.asarray(labels)
        ok = labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer)
    except Exception:
        ok = False
    if not ok:
        raise UserError(f"{path}: labels must be a flat list of integers")
    labels = labels.astype(np.int64)
    if len(labels) != len(data):
        raise UserError(f"{path}: {len(data)} images but {len(labels)} labels (file truncated?)")
    bad = labels[(labels < 0) | (labels >= src.num_classes)]
    if len(bad):
        raise UserError(f"{path}: label {int(bad[0])} out of range 0..{src.num_classes - 1}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _read_classes(path, src):
    d = _unpickle(path)
    names = d.get(src.names_key)
    if not isinstance(names, list) or len(names) != src.num_classes:
        raise UserError(f"{path}: expected {src.num_classes} class names under {src.names_key.decode()!r}")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def read_folder(folder, dataset):
    """Read and validate one CIFAR folder in the official python layout."""
    src = SOURCES[dataset]
    folder = Path(folder)
    classes = _read_classes(folder / src.meta_file, src)
    parts = {}
    for split, files in (("train", src.train_files), ("test", src.test_files)):
        batches = [_read_batch(folder / f, src) for f in files]
        parts[split] = (np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]))
    return Cifar(dataset, *parts["train"], *parts["test"], classes=classes, folder=folder)


def _looks_like(folder, src):
    return (folder / src.meta_file).is_file()


def locate(data_dir, dataset, download=True):
    """Find the CIFAR folder under data_dir; unpack the archive or download it if needed."""
    src = SOURCES[dataset]
    data_dir = Path(data_dir)
    for candidate in (data_dir / src.folder, data_dir):
        if _looks_like(candidate, src):
            return candidate
    archive = data_dir / src.archive
    if (data_dir / src.folder).is_dir() and not archive.is_file():
        raise UserError(f"{data_dir / src.folder}: {src.meta_file} missing (incomplete copy of {src.title}?)")
    if not archive.is_file() and download:
        _download(src, data_dir)
    if archive.is_file():
        return extract(archive, data_dir, src.folder)
    raise UserError(
        f"{src.title} not found in {data_dir}/ and not downloaded: put {src.folder}/ or {src.archive} "
        f"there, or pass --data-dir to the folder that holds them"
    )


def _download(src, data_dir):
    from torchvision.datasets.utils import download_url

    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        print(f"downloading {src.title} from {src.url} to {data_dir}/ ...")
        download_url(src.url, str(data_dir), src.archive, md5=src.md5)
    except Exception as e:  # offline, DNS, HTTP, checksum: the user's remedy is the same
        (data_dir / src.archive).unlink(missing_ok=True)
        raise UserError(
            f"{src.title} not found in {data_dir}/ and the download failed ({type(e).__name__}: {e}); "
            f"put {src.folder}/ or {src.archive} there, or pass --data-dir"
        ) from None


def _strict_data_filter(member, dest):
    """tarfile's 'data' filter, but refusing absolute names instead of quietly stripping the '/'."""
    if member.name.startswith(("/", "\\")):
        raise tarfile.AbsolutePathError(member)
    return tarfile.data_filter(member, dest)


def extract(archive, data_dir, folder):
    """Unpack with tarfile's 'data' filter (no paths out of the target, no links out, no devices)."""
    data_dir = Path(data_dir)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=data_dir))
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(tmp, filter=_strict_data_filter)
        if not (tmp / folder).is_dir():
            raise UserError(f"{archive}: no {folder}/ inside the archive")
        (tmp / folder).rename(data_dir / folder)
    except tarfile.FilterError as e:
        raise UserError(f"{archive}: refused, unsafe member ({e})") from None
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UserError(f"{archive}: cannot extract ({e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return data_dir / folder


def load(data_dir, dataset, download=True):
    """Locate (unpack, download) and read one CIFAR data set."""
    if dataset not in SOURCES:
        raise UserError(f"unknown dataset {dataset!r}: choose from {', '.join(SOURCES)}")
    return read_folder(locate(data_dir, dataset, download), dataset)
