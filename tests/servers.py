"""Receivers that integration tests start for real: nginx with WebDAV PUT
(the "any WebDAV server" of the design) and a throwaway PKI.  Each object
is stopped by PID; nothing is ever killed by name."""
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request

from aimtest import free_port, wait_for  # noqa: F401 (free_port: for the tests)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_pki(directory):
    subprocess.run([os.path.join(ROOT, "scripts", "mkpki.sh"), directory], check=True,
                   capture_output=True)
    return {name: os.path.join(directory, name) for name in
            ("ca.pem", "server.pem", "server.key", "client.pem", "client.key", "token")}


class Nginx:
    """nginx serving PUT into inbox/ at https://127.0.0.1:PORT/aim/ (or http).
    single_process: no master process (master_process off), so that a kill
    -9 of the one PID is the receiver's death, with no orphaned worker."""

    def __init__(self, workdir, pki=None, port=None, single_process=False):
        self.dir = os.path.join(workdir, "nginx")
        self.inbox = os.path.join(self.dir, "inbox")
        os.makedirs(os.path.join(self.dir, "tmp"), exist_ok=True)
        os.makedirs(self.inbox, exist_ok=True)
        self.pki = pki
        self.port = port or free_port()
        self.proc = None
        scheme = "https" if pki else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}/aim"
        tls = ""
        if pki:
            tls = (f"ssl_certificate {pki['server.pem']}; ssl_certificate_key {pki['server.key']};")
        conf = f"""
daemon off;
{'master_process off;' if single_process else ''}
user root;
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log {self.dir}/access.log;
  client_body_temp_path {self.dir}/tmp;
  server {{
    listen 127.0.0.1:{self.port}{' ssl' if pki else ''};
    {tls}
    location /aim/ {{
      alias {self.inbox}/;
      dav_methods PUT;
      create_full_put_path on;
      client_max_body_size 2g;
    }}
  }}
}}
"""
        self.conf = os.path.join(self.dir, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(conf)

    def start(self):
        self.proc = subprocess.Popen(["nginx", "-c", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {open(self.dir + '/error.log').read()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return True
            except OSError:
                return False
        wait_for(up, 10, what="nginx to listen")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill9(self):
        """kill -9 by PID (with single_process, nginx is that one process)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def segments(self, group):
        d = os.path.join(self.inbox, group)
        return sorted(os.listdir(d)) if os.path.isdir(d) else []


def get_json(addr, path, refused_for=10.0):
    """GET http://ADDR/PATH as JSON.  aimfs starts its status listener just
    after the mount appears (its threads start after the mount, as libfuse's
    daemonizing requires), so a refused connection is retried for a while."""
    deadline = time.monotonic() + refused_for
    while True:
        try:
            with urllib.request.urlopen(f"http://{addr}/{path}", timeout=5) as r:
                return json.load(r)
        except urllib.error.URLError as e:
            if not isinstance(e.reason, ConnectionRefusedError) or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def get_status(addr):
    return get_json(addr, "status")


def metrics(addr):
    """A daemon's /metrics: {name (with labels): value}."""
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def wait_in_sync(addr, timeout=60, head=None):
    """Polls a source's status until it says in sync; returns the status."""
    last = {}

    def ok():
        nonlocal last
        last = get_status(addr)
        return last.get("in_sync") is True and (head is None or last["head_lsn"] >= head)
    try:
        wait_for(ok, timeout, 0.1, what="the source to be in sync")
    except TimeoutError:
        raise AssertionError(f"not in sync after {timeout}s: {json.dumps(last, indent=1)}")
    return last
