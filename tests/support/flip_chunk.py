#!/usr/bin/env python3
"""Tampers with one file of an eStargz image on a plain-HTTP registry, for tests of the lazy
node's verification (scripts/rig.sh lazy): flips one byte of FILE's content inside its chunk's
gzip member, keeping the gzip stream valid (its CRC-32 is recomputed), and pushes the changed
layer, a config whose diff_id is the changed layer's, and a manifest naming both as
REPO:NEWTAG. The result is a consistent OCI image (a plain pull accepts it) whose TOC and TOC
digest annotation are the original's, so only the stargz snapshotter's chunk verification (the
TOC's chunkDigest) can notice: the image lazy-pulls and runs, and reading FILE fails (EIO).
The new diff_id also gives the layer its own chain ID: containerd shares remote snapshots by
chain ID (across namespaces too), so a tampered layer with the original's diff_id would stand
for the original on the node, or the other way round, whichever was pulled first.

FILE's content must be stored uncompressed by deflate (incompressible data, e.g. random
bytes), so that its bytes can be found and flipped inside the compressed stream.

  flip_chunk.py REGISTRY REPO TAG FILE NEWTAG     e.g.
  flip_chunk.py 127.0.0.1:5000 test/estargz-tamper good probe/random.bin flipped

Prints the changed layer's digest.
"""
import gzip
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
import zlib

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
FOOTER = 51  # eStargz's gzip footer, holding the TOC's offset


def get(url, accept=None):
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req) as r:
        return r.read()


def put_blob(base, repo, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    req = urllib.request.Request(f"{base}/v2/{repo}/blobs/uploads/", method="POST")
    with urllib.request.urlopen(req) as r:
        loc = r.headers["Location"]
    if loc.startswith("/"):
        loc = base + loc
    sep = "&" if "?" in loc else "?"
    req = urllib.request.Request(f"{loc}{sep}digest={digest}", data=data, method="PUT",
                                 headers={"Content-Type": "application/octet-stream"})
    urllib.request.urlopen(req).close()
    return digest


def toc(blob):
    # The footer is an empty gzip member whose extra field (subfield "SG") is "%016xSTARGZ".
    footer = blob[-FOOTER:]
    xlen = int.from_bytes(footer[10:12], "little")
    field = footer[12:12 + xlen]
    assert field[:2] == b"SG" and field[20:26] == b"STARGZ", "not an eStargz layer"
    off = int(field[4:20].decode(), 16)
    tar = zlib.decompressobj(16 + 15).decompress(blob[off:-FOOTER])
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        return json.load(t.extractfile("stargz.index.json"))


def flip(blob, entry):
    start = entry["offset"]
    # The member: a 10-byte gzip header (Go writes no optional fields), raw deflate, then
    # CRC-32 and ISIZE of everything the member decompresses to.
    assert blob[start:start + 3] == b"\x1f\x8b\x08" and blob[start + 3] == 0, "unexpected gzip header"
    d = zlib.decompressobj(-15)
    plain = d.decompress(blob[start + 10:])
    end = len(blob) - len(d.unused_data)  # first byte after the deflate data
    content = plain[:entry.get("chunkSize") or entry["size"]]
    mid = len(content) // 2
    needle = content[mid:mid + 32]
    at = blob.find(needle, start + 10, end)
    if at < 0 or len(needle) < 32:
        sys.exit(f"{entry['name']}'s content is compressed in its gzip member: use incompressible content (random bytes)")
    out = bytearray(blob)
    out[at] ^= 0xFF
    d = zlib.decompressobj(-15)
    changed = d.decompress(bytes(out[start + 10:end]))
    assert len(changed) == len(plain) and changed != plain
    out[end:end + 4] = (zlib.crc32(changed) & 0xFFFFFFFF).to_bytes(4, "little")
    return bytes(out)


def main():
    registry, repo, tag, name, newtag = sys.argv[1:]
    base = f"http://{registry}"
    manifest = json.loads(get(f"{base}/v2/{repo}/manifests/{tag}", MANIFEST))
    assert manifest.get("mediaType", MANIFEST) == MANIFEST, "an OCI image manifest is needed (not an index)"
    config = json.loads(get(f"{base}/v2/{repo}/blobs/{manifest['config']['digest']}"))
    for i, layer in enumerate(manifest["layers"]):
        if "containerd.io/snapshot/stargz/toc.digest" not in layer.get("annotations", {}):
            continue  # a plain gzip layer (a base's)
        blob = get(f"{base}/v2/{repo}/blobs/{layer['digest']}")
        entries = [e for e in toc(blob)["entries"] if e["name"] == name and e["type"] == "reg"]
        if not entries:
            continue
        tampered = flip(blob, entries[0])
        layer["digest"] = put_blob(base, repo, tampered)
        assert len(tampered) == layer["size"]
        diff_id = "sha256:" + hashlib.sha256(gzip.decompress(tampered)).hexdigest()
        config["rootfs"]["diff_ids"][i] = diff_id
        body = json.dumps(config).encode()
        manifest["config"]["digest"] = put_blob(base, repo, body)
        manifest["config"]["size"] = len(body)
        body = json.dumps(manifest).encode()
        req = urllib.request.Request(f"{base}/v2/{repo}/manifests/{newtag}", data=body, method="PUT",
                                     headers={"Content-Type": MANIFEST})
        urllib.request.urlopen(req).close()
        print(layer["digest"])
        return
    sys.exit(f"no regular file {name} in {registry}/{repo}:{tag}")


if __name__ == "__main__":
    main()
