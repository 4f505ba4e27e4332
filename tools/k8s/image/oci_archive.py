#!/usr/bin/env python3
"""Write an OCI image archive (oci-layout + index.json + blobs, one layer) from a directory,
for `ctr images import`: the images of ibrain's Kubernetes tests are built on this machine,
since no registry is reachable. Deterministic: the same tree gives the same digests (file
modes kept, owners 0:0, mtimes 0, names sorted, gzip without a timestamp).

usage: oci_archive.py --name REF --rootfs DIR --out FILE.tar [--entrypoint JSON] [--cmd JSON]
                      [--user UID:GID] [--env K=V ...] [--workdir DIR]
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile


def layer_tar(rootfs):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            names = sorted(dirnames + filenames)
            for n in names:
                full = os.path.join(dirpath, n)
                arc = os.path.relpath(full, rootfs)
                info = tar.gettarinfo(full, arcname=arc)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = 0
                if info.isfile():
                    with open(full, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    return buf.getvalue()


def blob(out, data, media):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo("blobs/sha256/" + digest[7:])
    info.size = len(data)
    info.mode = 0o644
    out.addfile(info, io.BytesIO(data))
    return {"mediaType": media, "digest": digest, "size": len(data)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--rootfs", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--entrypoint")
    p.add_argument("--cmd")
    p.add_argument("--user", default="65532:65532")
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--workdir", default="/")
    a = p.parse_args()
    if not os.path.isdir(a.rootfs):
        sys.exit("oci_archive.py: --rootfs %s: not a directory" % a.rootfs)

    raw = layer_tar(a.rootfs)
    gz = gzip.compress(raw, compresslevel=6, mtime=0)
    cfg = {"User": a.user, "WorkingDir": a.workdir,
           "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"] + a.env}
    if a.entrypoint:
        cfg["Entrypoint"] = json.loads(a.entrypoint)
    if a.cmd:
        cfg["Cmd"] = json.loads(a.cmd)
    config = {"architecture": "amd64", "os": "linux", "config": cfg,
              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
              "history": [{"created_by": "tools/k8s/image/oci_archive.py"}]}
    tmp = a.out + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as out:
        layout = json.dumps({"imageLayoutVersion": "1.0.0"}).encode()
        info = tarfile.TarInfo("oci-layout")
        info.size = len(layout)
        out.addfile(info, io.BytesIO(layout))
        c = blob(out, json.dumps(config, sort_keys=True).encode(), "application/vnd.oci.image.config.v1+json")
        l = blob(out, gz, "application/vnd.oci.image.layer.v1.tar+gzip")
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": c, "layers": [l]}
        m = blob(out, json.dumps(manifest, sort_keys=True).encode(), "application/vnd.oci.image.manifest.v1+json")
        tag = a.name.rsplit(":", 1)[1] if ":" in a.name.rsplit("/", 1)[-1] else "latest"
        m["annotations"] = {"io.containerd.image.name": a.name, "org.opencontainers.image.ref.name": tag}
        m["platform"] = {"architecture": "amd64", "os": "linux"}
        index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                            "manifests": [m]}).encode()
        info = tarfile.TarInfo("index.json")
        info.size = len(index)
        out.addfile(info, io.BytesIO(index))
    os.replace(tmp, a.out)
    print("%s %s layer %d bytes (%d unpacked)" % (a.name, m["digest"], len(gz), len(raw)))


if __name__ == "__main__":
    main()
