"""Writes a small sdist whose only distribution needs a C compiler (an extension module).

    python3 make_sdist.py OUT_DIR  ->  prints "<path> <sha256>"
"""
import hashlib
import io
import sys
import tarfile
from pathlib import Path

FILES = {
    "pyproject.toml": '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n',
    "setup.py": 'from setuptools import Extension, setup\n\nsetup(name="fastmath", version="0.1", ext_modules=[Extension("fastmath", ["fastmath.c"])])\n',
    "fastmath.c": '#include <Python.h>\nstatic struct PyModuleDef m = {PyModuleDef_HEAD_INIT, "fastmath", NULL, -1, NULL};\nPyMODINIT_FUNC PyInit_fastmath(void) { return PyModule_Create(&m); }\n',
    "PKG-INFO": "Metadata-Version: 2.1\nName: fastmath\nVersion: 0.1\n",
}

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
path = out / "fastmath-0.1.tar.gz"
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w:gz") as tar:
    for name, text in FILES.items():
        data = text.encode()
        info = tarfile.TarInfo(f"fastmath-0.1/{name}")
        info.size = len(data)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(data))
path.write_bytes(buf.getvalue())
print(path, hashlib.sha256(buf.getvalue()).hexdigest())
