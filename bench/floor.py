"""The physical floor of a dependency-layer build, for bench/big.sh: download every wheel,
inflate and sha256 every member (what verifying against RECORD needs anyway), and upload the
wheel's bytes as a blob, overlapped: wheels in parallel, and per wheel the upload beside the
inflate. No tar, no compression, no layer: nothing a builder could skip.

usage: floor.py PYLOCK WHEEL_FILE_NAMES_FILE REGISTRY_URL WORKDIR
Prints the wall time in seconds and the bytes downloaded.
"""

import concurrent.futures as cf
import hashlib
import http.client
import os
import sys
import time
import tomllib
import urllib.parse
import urllib.request
import zipfile

CHUNK = 1 << 20


def download(url: str, path: str) -> int:
    n = 0
    with urllib.request.urlopen(url) as r, open(path, "wb") as f:
        while chunk := r.read(CHUNK):
            f.write(chunk)
            n += len(chunk)
    return n


def inflate_and_hash(path: str) -> None:
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            h = hashlib.sha256()
            with z.open(info) as m:
                while chunk := m.read(CHUNK):
                    h.update(chunk)


def upload(registry: str, path: str, sha256: str) -> None:
    """Monolithic blob upload (distribution spec: POST, then PUT ?digest=) of the file."""
    u = urllib.parse.urlsplit(registry)
    conn = http.client.HTTPConnection(u.hostname, u.port)
    conn.request("POST", "/v2/floor/blobs/uploads/")
    r = conn.getresponse()
    r.read()
    loc = urllib.parse.urlsplit(r.getheader("Location"))
    sep = "&" if loc.query else "?"
    target = f"{loc.path}?{loc.query}{sep}digest=sha256:{sha256}".replace("?&", "?")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        conn.request(
            "PUT",
            target,
            body=f,
            headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
        )
        r = conn.getresponse()
        r.read()
    if r.status != 201:
        raise SystemExit(f"upload of {path}: HTTP {r.status}")


def one(wheel: dict, registry: str, work: str) -> int:
    path = os.path.join(work, os.path.basename(urllib.parse.urlsplit(wheel["url"]).path))
    n = download(wheel["url"], path)
    with cf.ThreadPoolExecutor(2) as both:
        jobs = [
            both.submit(inflate_and_hash, path),
            both.submit(upload, registry, path, wheel["hashes"]["sha256"]),
        ]
        for j in jobs:
            j.result()
    return n


def main() -> None:
    lock, names_file, registry, work = sys.argv[1:5]
    names = set(open(names_file).read().split())
    wheels = {}
    for package in tomllib.load(open(lock, "rb"))["packages"]:
        for w in package.get("wheels", []):
            name = os.path.basename(urllib.parse.urlsplit(w.get("url", "")).path)
            if name in names:
                wheels[name] = w
    missing = names - wheels.keys()
    if missing:
        raise SystemExit(f"not in {lock}: {sorted(missing)}")
    start = time.monotonic()
    # Largest first, so the longest chain starts at once (as the builder schedules it).
    order = sorted(wheels.values(), key=lambda w: -w.get("size", 0))
    with cf.ThreadPoolExecutor(4) as pool:
        total = sum(pool.map(lambda w: one(w, registry, work), order))
    print(f"{time.monotonic() - start:.2f} {total}")


if __name__ == "__main__":
    main()
