"""Downloading dataset files: HTTP with a progress bar, checksum verification, and an atomic rename.

A file appears at its destination only once it is complete and its checksum matches, so an interrupted or
failed download never leaves something that looks like data; nor does it leave the folders it made for the file.
"""

import hashlib
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from metarun.utils.atomic import atomic_path
from metarun.utils.disk import made_folders
from metarun.utils.errors import RunError

CHUNK = 1 << 20


def download(url: str, dest: Path, md5: str, timeout: float = 30.0) -> Path:
    """Fetch ``url`` into ``dest`` when its md5 is ``md5``; otherwise raise RunError and leave nothing behind, not
    even the folders made for ``dest``.

    Raises:
        RunError: no network, an HTTP error, or a checksum mismatch; the message names the file, the URL and
            where to put the file by hand. A symbolic link loop on the way to ``dest``; the message names it.
    """
    dest = Path(dest)
    by_hand = f"download {url} yourself and put it at {dest}"
    try:
        with made_folders(dest.parent), atomic_path(dest) as tmp:
            digest = hashlib.md5()
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}", leave=False) as bar:
                    while chunk := response.read(CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
            if digest.hexdigest() != md5:
                raise RunError(f"{dest.name} from {url} has md5 {digest.hexdigest()}, expected {md5}; {by_hand}")
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise RunError(f"cannot download {dest.name} from {url} ({reason}); {by_hand}") from err
    return dest
