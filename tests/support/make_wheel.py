#!/usr/bin/env python3
"""Builds a tiny, valid pure-Python wheel for tests: make_wheel.py NAME VERSION OUTDIR [evil].
With `evil`, the wheel also carries a zip-slip member ("../../../tmp/evil") listed in RECORD.
Prints the wheel path and its sha256."""
import base64, hashlib, os, sys, zipfile

name, version, out = sys.argv[1], sys.argv[2], sys.argv[3]
evil = len(sys.argv) > 4
dist = f"{name}-{version}.dist-info"
files = {
    f"{name}/__init__.py": f"VALUE = {version!r}\n".encode(),
    f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
    f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: make_wheel\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    f"{dist}/entry_points.txt": f"[console_scripts]\n{name}-hello = {name}:__init__\n".encode(),
}
if evil:
    files["../../../tmp/evil"] = b"pwned\n"
record = "".join(
    f"{k},sha256={base64.urlsafe_b64encode(hashlib.sha256(v).digest()).rstrip(b'=').decode()},{len(v)}\n"
    for k, v in files.items()
) + f"{dist}/RECORD,,\n"
files[f"{dist}/RECORD"] = record.encode()
os.makedirs(out, exist_ok=True)
path = os.path.join(out, f"{name}-{version}-py3-none-any.whl")
with zipfile.ZipFile(path, "w") as z:
    for k, v in files.items():
        z.writestr(k, v)
print(path, hashlib.sha256(open(path, "rb").read()).hexdigest())
