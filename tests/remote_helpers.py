"""Helpers for aim-remote's integration tests: start and stop the daemon by
PID (Popen), wait until its status listener and receiver answer, a
throwaway PKI made with openssl in the test's directory, uploads with the
curl command-line tool, and journals made by a real aimfs mount.

Every process a helper starts is stopped by the fixture that made it, even
when the test fails; a failed test prints the command lines that reproduce
it.
"""
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import urllib.request

from aimtest import AIM_REMOTE, AIMCTL, ALARM_WORDS, MKSEG, free_port, run, wait_for

CURL = shutil.which("curl") or "curl"


# ---- a throwaway PKI ----

class PKI:
    """A CA, a server certificate for 127.0.0.1 (SAN IP:127.0.0.1, and any
    other addresses in ips), a client certificate signed by the CA, a
    self-signed client certificate nobody trusts, and a bearer token."""

    def __init__(self, d, ips=("127.0.0.1",)):
        self.dir = d
        os.makedirs(d, exist_ok=True)
        p = lambda name: os.path.join(d, name)  # noqa: E731
        self.ca, self.ca_key = p("ca.pem"), p("ca.key")
        self.server, self.server_key = p("server.pem"), p("server.key")
        self.client, self.client_key = p("client.pem"), p("client.key")
        self.rogue, self.rogue_key = p("rogue.pem"), p("rogue.key")
        self.token_file = p("token")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        run(["openssl", "req", "-x509", *ec, "-days", "2", "-subj", "/CN=aim test CA",
             "-keyout", self.ca_key, "-out", self.ca])
        for who, cert, key, ext in (
                ("server", self.server, self.server_key,
                 "subjectAltName=" + ",".join(f"IP:{a}" for a in ips) +
                 "\nextendedKeyUsage=serverAuth\n"),
                ("client", self.client, self.client_key, "extendedKeyUsage=clientAuth\n")):
            csr, extfile = p(who + ".csr"), p(who + ".ext")
            with open(extfile, "w") as f:
                f.write(ext)
            run(["openssl", "req", *ec, "-subj", f"/CN=aim test {who}", "-keyout", key,
                 "-out", csr])
            run(["openssl", "x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key,
                 "-CAcreateserial", "-days", "2", "-extfile", extfile, "-out", cert])
        run(["openssl", "req", "-x509", *ec, "-days", "2", "-subj", "/CN=rogue",
             "-addext", "extendedKeyUsage=clientAuth", "-keyout", self.rogue_key,
             "-out", self.rogue])
        self.token = "tok-" + "".join(random.choice("abcdefghijklmnopqrstuvwxyz0123456789")
                                      for _ in range(32))
        with open(self.token_file, "w") as f:
            f.write(self.token + "\n")


# ---- the daemon ----

class Remote:
    """One aim-remote process.  args are extra command-line arguments."""

    def __init__(self, workdir, inbox, target, args=(), name="remote", listen=False, pki=None,
                 expect_alarms=False, state=None, env=None):
        """env: variables added to aim-remote's environment."""
        self.workdir = workdir
        self.env = dict(env or {})
        self.inbox = inbox
        self.target = target
        self.args = list(args)
        self.name = name
        self.pki = pki
        self.listen_port = free_port() if listen else None
        self.status_port = free_port()
        self.state = state
        self.expect_alarms = expect_alarms
        self.log_path = os.path.join(workdir, name + ".log")
        self.proc = None
        self.cmdline = None
        self.starts = 0

    @property
    def base_url(self):
        return f"https://127.0.0.1:{self.listen_port}"

    def command(self):
        cmd = [AIM_REMOTE, "--inbox", self.inbox, "--target-dir", self.target,
               "--status", f"127.0.0.1:{self.status_port}"]
        if self.state:
            cmd += ["--state", self.state]
        if self.listen_port:
            cmd += ["--listen", f"127.0.0.1:{self.listen_port}",
                    "--tls-cert", self.pki.server, "--tls-key", self.pki.server_key]
        return cmd + self.args

    def start(self, timeout=20.0):
        self.cmdline = self.command()
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmdline, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL,
                                     env={**os.environ, **self.env} if self.env else None)
        self.starts += 1

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"aim-remote exited with {self.proc.returncode}:\n"
                                   f"  {' '.join(self.cmdline)}\n{self.output()}")
            try:
                self.status()
            except OSError:
                return False
            if self.listen_port:
                try:
                    socket.create_connection(("127.0.0.1", self.listen_port), 0.5).close()
                except OSError:
                    return False
            return True
        wait_for(ready, timeout, what="aim-remote to answer")
        return self

    def output(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def status(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}/status",
                                    timeout=5) as r:
            return json.loads(r.read())

    def metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}/metrics",
                                    timeout=5) as r:
            return r.read().decode()

    def group(self, gid):
        for g in self.status()["groups"]:
            if g["group"] == gid:
                return g
        return None

    def wait_group(self, gid, cond, timeout=60.0, what="group state", interval=0.05):
        last = [None]

        def check():
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"aim-remote died ({self.proc.returncode}):\n{self.output()}")
            last[0] = self.group(gid)
            return last[0] is not None and cond(last[0])
        try:
            wait_for(check, timeout, interval=interval, what=what)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; last status: {last[0]}\n"
                                 f"command: {' '.join(self.cmdline)}\n{self.output()}") from None
        return last[0]

    def wait_applied(self, gid, lsn, timeout=60.0):
        return self.wait_group(gid, lambda g: g["applied_lsn"] >= lsn and g["state"] == "idle",
                               timeout, what=f"group {gid} to apply up to LSN {lsn}")

    def stop(self, timeout=60.0):
        """SIGTERM by PID; returns the exit status."""
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"aim-remote did not stop on SIGTERM:\n{self.output()}")
        finally:
            self.log.close()
        self.proc = None
        if rc != 0:
            print(f"aim-remote exited with {rc} after SIGTERM:\n  {' '.join(self.cmdline)}\n"
                  f"{self.output()[-20000:]}")
        return rc

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.log.close()
        self.proc = None

    def close(self):
        """For teardown: stop however we can, never raise."""
        try:
            if self.proc is not None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                self.log.close()
                self.proc = None
        except Exception:
            pass

    def check_quiet(self):
        if self.expect_alarms:
            return
        bad = [line for line in self.output().splitlines() if any(w in line for w in ALARM_WORDS)]
        assert not bad, ("aim-remote complained:\n" + "\n".join(bad) +
                         f"\ncommand: {' '.join(self.cmdline or self.command())}")

    # ---- uploads ----

    def curl(self, path, upload=None, token=True, cert=True, method=None, headers=(),
             extra=(), timeout=60):
        """Runs curl against the receiver; returns (HTTP status, body, curl's stderr).
        token: True (the right one), None (none) or a string; cert: True (the
        client certificate), None, or a (cert, key) pair."""
        cmd = [CURL, "-sS", "--cacert", self.pki.ca, "-w", "\n%{http_code}",
               "--max-time", str(timeout)]
        if token is True:
            cmd += ["-H", f"Authorization: Bearer {self.pki.token}"]
        elif token:
            cmd += ["-H", f"Authorization: Bearer {token}"]
        if cert is True:
            cmd += ["--cert", self.pki.client, "--key", self.pki.client_key]
        elif cert:
            cmd += ["--cert", cert[0], "--key", cert[1]]
        if upload:
            cmd += ["-T", upload]
        if method:
            cmd += ["-X", method]
        for h in headers:
            cmd += ["-H", h]
        cmd += list(extra)
        cmd.append(self.base_url + path if path.startswith("/") else path)
        p = subprocess.run(cmd, capture_output=True, timeout=timeout + 10)
        out = p.stdout.decode(errors="replace")
        body, _, code = out.rpartition("\n")
        return int(code or 0), body, p.stderr.decode(errors="replace")

    def put(self, group, seg_path, name=None, prefix="/aim", **kw):
        name = name or os.path.basename(seg_path)
        return self.curl(f"{prefix}/{group}/{name}", upload=seg_path, **kw)

    def mismatches(self, group, after=None, prefix="/aim", query=None, **kw):
        """GET <prefix>/<group>/mismatches[?after=N]; returns (HTTP status,
        the JSON answer or the text of a refusal).  query: the raw query
        string instead of after."""
        if query is None and after is not None:
            query = f"after={after}"
        path = f"{prefix}/{group}/mismatches" + (f"?{query}" if query is not None else "")
        code, body, err = self.curl(path, **kw)
        if code == 200:
            return code, json.loads(body)
        return code, body or err


# ---- segments ----

def journal_segments(journal):
    return sorted(os.path.join(journal, f) for f in os.listdir(journal) if f.endswith(".aimj"))


def seg_info(path):
    """{'group', 'number', 'first_lsn', 'last_lsn'} from aimctl dump."""
    out = run([AIMCTL, "dump", "--records=no", path]).stdout
    info = {}
    for line in out.splitlines():
        key, _, val = line.partition(" ")
        val = val.strip()
        if key == "group":
            info["group"] = val
        elif key == "number":
            info["number"] = int(val)
        elif key == "lsn":
            a, _, b = val.split()[0].partition("..")
            info["first_lsn"], info["last_lsn"] = int(a), int(b)
    return info


def mkseg(path, spec):
    """Forges a segment (valid checksums) from a tests/mkseg.c spec."""
    p = subprocess.run([MKSEG, path], input=spec, capture_output=True, text=True)
    assert p.returncode == 0, f"mkseg failed: {p.stderr}\nspec:\n{spec}"
    return path


def inbox_deliver(inbox, group, seg_path, name=None, direct=False):
    """Puts a segment into INBOX/<group>/ as another server would: a
    temporary name then rename (mv), or a plain cp onto the final name."""
    name = name or os.path.basename(seg_path)
    gdir = os.path.join(inbox, group)
    os.makedirs(gdir, exist_ok=True)
    if direct:
        subprocess.run(["cp", seg_path, os.path.join(gdir, name)], check=True)
        return
    tmp = os.path.join(gdir, "." + name + ".partial")
    subprocess.run(["cp", seg_path, tmp], check=True)
    subprocess.run(["mv", tmp, os.path.join(gdir, name)], check=True)


def snapshot(root, skip=()):
    """{relative path: (mode, size, mtime_ns, bytes digest)} of everything
    under root, leaving out entries (and subtrees) whose name is in skip."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip]
        for name in dirnames + filenames:
            if name in skip:
                continue
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            digest = None
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return out
