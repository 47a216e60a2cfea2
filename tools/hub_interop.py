#!/usr/bin/env python3
"""Checks that vssl and Python's huggingface_hub share one Hub cache.

    python3 -m venv /tmp/hfenv && /tmp/hfenv/bin/pip install huggingface_hub
    /tmp/hfenv/bin/python tools/hub_interop.py target/release/vssl

Serves a model repo from a loopback HTTP server that answers like the Hub's resolve
endpoint (LFS file with X-Linked-Etag/X-Linked-Size, a regular file with its git blob
sha1 ETag). Then: huggingface_hub downloads one file and `vssl pull` (offline) finds
it in the cache; `vssl pull` downloads the other and huggingface_hub
(local_files_only) finds it. Exits non-zero on any mismatch.
"""
import hashlib
import http.server
import os
import subprocess
import sys
import tempfile
import threading

REPO = "org/interop"
COMMIT = "c0ffee" + "0" * 34
FILES = {"model.safetensors": os.urandom(300_000), "config.json": b'{"arch": "r3d_18"}\n'}
LFS = {"model.safetensors"}


def git_sha1(b):
    return hashlib.sha1(b"blob %d\0" % len(b) + b).hexdigest()


class Hub(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def answer(self, body):
        prefix = f"/{REPO}/resolve/main/"
        if not self.path.startswith(prefix) or self.path[len(prefix):] not in FILES:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        name = self.path[len(prefix):]
        data = FILES[name]
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        if name in LFS:
            self.send_header("X-Linked-Etag", '"%s"' % hashlib.sha256(data).hexdigest())
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("ETag", '"%s"' % git_sha1(b"pointer"))
        else:
            self.send_header("ETag", '"%s"' % git_sha1(data))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self):
        self.answer(False)

    def do_GET(self):
        self.answer(True)


def main():
    vssl = os.path.abspath(sys.argv[1])
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    home = tempfile.mkdtemp()
    env = dict(os.environ, HF_HOME=home, HF_ENDPOINT=f"http://127.0.0.1:{srv.server_port}")
    env.pop("HF_HUB_CACHE", None)
    env.pop("HF_HUB_OFFLINE", None)
    os.environ.update(env)
    import huggingface_hub as hh  # after HF_HOME/HF_ENDPOINT are set

    # Python writes, vssl reads offline.
    p = hh.hf_hub_download(REPO, "model.safetensors")
    out = subprocess.run([vssl, "pull", f"hf://{REPO}/model.safetensors"], env=dict(env, HF_HUB_OFFLINE="1"),
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert os.path.realpath(out.stdout.strip()) == os.path.realpath(p), (out.stdout, p)
    print(f"huggingface_hub {hh.__version__} downloaded model.safetensors; vssl pull (offline) found it: {out.stdout.strip()}")

    # vssl writes, Python reads offline.
    out = subprocess.run([vssl, "pull", f"hf://{REPO}/config.json"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    q = hh.hf_hub_download(REPO, "config.json", local_files_only=True)
    assert os.path.realpath(q) == os.path.realpath(out.stdout.strip()), (q, out.stdout)
    assert open(q, "rb").read() == FILES["config.json"]
    print(f"vssl pull downloaded config.json; huggingface_hub (local_files_only) found it: {q}")
    srv.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
