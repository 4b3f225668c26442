#!/usr/bin/env python3
"""Adds an OCI image index over several tagged manifests of an OCI layout (umoci makes one
manifest per tag; skopeo copy --all then pushes the index). Usage: make-index.py LAYOUT TAG ARCH..."""
import hashlib, json, os, sys

layout, tag, archs = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(os.path.join(layout, "index.json")) as f:
    top = json.load(f)
by_tag = {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in top["manifests"]}
entries = []
for arch in archs:
    d = dict(by_tag[arch])
    d.pop("annotations", None)
    d["platform"] = {"architecture": arch, "os": "linux", **({"variant": "v8"} if arch == "arm64" else {})}
    entries.append(d)
index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries}
data = json.dumps(index, separators=(",", ":")).encode()
digest = hashlib.sha256(data).hexdigest()
with open(os.path.join(layout, "blobs", "sha256", digest), "wb") as f:
    f.write(data)
top["manifests"].append({"mediaType": index["mediaType"], "digest": "sha256:" + digest, "size": len(data),
                         "annotations": {"org.opencontainers.image.ref.name": tag}})
with open(os.path.join(layout, "index.json"), "w") as f:
    json.dump(top, f)
