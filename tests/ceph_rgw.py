"""A throwaway single-node Ceph cluster with a RADOS Gateway (S3) on
loopback, from Debian's packages (ceph-mon, ceph-osd, radosgw), for the
object-store tests and bench/s3-bench.sh.

One mon, one OSD with `osd objectstore = memstore` (the data lives in the
OSD's memory), radosgw's beast frontend on 127.0.0.1, no cephx
(`auth ... required = none`), pool size 1.  Everything it makes (config,
mon store, OSD directory, logs, admin sockets, pid files) is under one
directory; every daemon runs in the foreground as our child and is
stopped by PID, radosgw first, then the OSD, then the mon, one at a time.
No ceph-mgr: nothing here needs one, but `ceph df`-style commands then
hang, so every `ceph` call runs under `timeout`.

What was found when this was built (Ceph 16.2 of Debian 12):
  * without cephx, radosgw hangs at start unless `ms mon client mode =
    crc secure`;
  * `paxos propose interval = 0.1` cuts start-up from ~18 s to ~4 s;
  * radosgw creates ~8 pools: `osd pool default pg num = 8` keeps them
    under the mon's per-OSD PG limit;
  * a full OSD makes librados wait for space forever, so a PUT would
    hang; `rados osd op timeout = 5` makes radosgw answer it with
    408 RequestTimeout instead (set_full() fills the OSD by lowering the
    full ratios, which is instant and reversible);
  * radosgw cannot start while the OSD is full.

Used as a library (class CephRGW, and S3, a small independent SigV4
client for checking what is in a bucket) and from the shell:

    tests/ceph_rgw.py start DIR     # starts the cluster, prints shell variables
    tests/ceph_rgw.py stop DIR      # stops it by the pid files in DIR/run
    tests/ceph_rgw.py kill DIR      # ... with SIGKILL (its data is thrown away)

A memstore OSD's space accounting went wrong here after radosgw's garbage
collection of deleted objects (the OSD then said it was full, "-2147483648%
full", and refused writes): the benchmark starts a fresh cluster per round
instead of deleting.
"""
import datetime
import hashlib
import hmac
import http.client
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET

from aimtest import free_port

PACKAGES = ("ceph-mon", "ceph-osd", "radosgw")
ACCESS_KEY = "AIMTESTACCESSKEY0001"
SECRET_KEY = "aimtestsecretkey0000000000000000000000001"
REGION = "us-east-1"
FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"


def missing_packages():
    return [p for p in ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool")
            if not shutil.which(p)]


class CephError(RuntimeError):
    pass


class CephRGW:
    """The cluster.  start() returns self; stop() never raises and removes
    nothing but what start() made (the directory when remove=True)."""

    def __init__(self, directory, memstore_bytes=1 << 30, remove=True):
        self.dir = os.path.abspath(directory)
        self.memstore_bytes = memstore_bytes
        self.remove = remove
        self.fsid = str(uuid.uuid4())
        self.mon_port = free_port()
        self.rgw_port = free_port()
        self.conf = os.path.join(self.dir, "ceph.conf")
        self.procs = {}            # name -> Popen
        self.logs = {}
        self.started_s = None
        self.access_key, self.secret_key, self.region = ACCESS_KEY, SECRET_KEY, REGION

    # ---- paths and commands ----

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.rgw_port}"

    def path(self, *p):
        return os.path.join(self.dir, *p)

    def ceph(self, *args, timeout=20, check=True):
        """A `ceph` command (always under timeout: without a mgr some hang)."""
        cmd = ["timeout", str(timeout), "ceph", "-c", self.conf, *args]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if check and p.returncode != 0:
            raise CephError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
        return p.stdout

    def admin(self, *args, timeout=60):
        cmd = ["timeout", str(timeout), "radosgw-admin", "-c", self.conf, "-n", "client.admin",
               *args]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise CephError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
        return p.stdout

    def write_conf(self):
        d = self.dir
        with open(self.conf, "w") as f:
            f.write(f"""[global]
fsid = {self.fsid}
mon host = [v2:127.0.0.1:{self.mon_port}]
public network = 127.0.0.0/8
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
ms mon client mode = crc secure
run dir = {d}/run
admin socket = {d}/run/$name.asok
log file = {d}/log/$name.log
pid file = {d}/run/$name.pid
keyring = /dev/null
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon max pg per osd = 1000
mon data avail warn = 1
mon data avail crit = 0
osd crush chooseleaf type = 0
paxos propose interval = 0.1
[mon.a]
mon data = {d}/mon
[osd.0]
osd data = {d}/osd
osd objectstore = memstore
memstore device bytes = {self.memstore_bytes}
[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{self.rgw_port}
rgw data = {d}/rgw
rados osd op timeout = 5
""")

    def _spawn(self, name, cmd, detach=False, env=None):
        log = open(self.path("log", name + ".out"), "ab")
        self.logs[name] = log
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=detach, env=env)
        self.procs[name] = p
        with open(self.path("run", name + ".daemon.pid"), "w") as f:
            f.write(f"{p.pid}\n")
        return p

    def _check_alive(self, name):
        p = self.procs.get(name)
        if p is None or p.poll() is not None:
            raise CephError(f"{name} exited ({p.returncode if p else None}):\n{self.tail(name)}")

    def tail(self, name, n=30):
        out = []
        for f in (self.path("log", name + ".out"), self.path("log", self.logname(name))):
            try:
                with open(f, errors="replace") as fh:
                    out.append(f"---- {f}\n" + "".join(fh.readlines()[-n:]))
            except OSError:
                pass
        return "\n".join(out)

    @staticmethod
    def logname(name):
        return {"mon": "mon.a.log", "osd": "osd.0.log", "rgw": "client.rgw.log"}.get(name, name)

    def _wait(self, what, cond, timeout, name=None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if name:
                self._check_alive(name)
            if cond():
                return
            time.sleep(0.1)
        raise CephError(f"timed out after {timeout}s waiting for {what}\n"
                        + (self.tail(name) if name else ""))

    # ---- life ----

    def start(self, detach=False):
        """Makes and starts the cluster, then the user.  detach: the daemons
        get sessions of their own (the shell CLI, which exits meanwhile)."""
        miss = missing_packages()
        if miss:
            raise CephError(f"missing {', '.join(miss)}: apt-get install --no-install-recommends "
                            f"{' '.join(PACKAGES)} (scripts/install-deps.sh)")
        t0 = time.monotonic()
        for sub in ("mon", "osd", "run", "log", "rgw"):
            os.makedirs(self.path(sub), exist_ok=True)
        self.write_conf()
        try:
            subprocess.run(["monmaptool", "--create", "--addv", "a",
                            f"[v2:127.0.0.1:{self.mon_port}]", "--fsid", self.fsid,
                            self.path("monmap")], check=True, capture_output=True)
            subprocess.run(["ceph-mon", "--mkfs", "-i", "a", "-c", self.conf, "--monmap",
                            self.path("monmap")], check=True, capture_output=True)
            self._spawn("mon", ["ceph-mon", "-f", "-i", "a", "-c", self.conf], detach)
            osd_uuid = str(uuid.uuid4())
            osd_id = self.ceph("osd", "new", osd_uuid).strip()
            if osd_id != "0":
                raise CephError(f"expected OSD id 0, got {osd_id!r}")
            subprocess.run(["ceph-osd", "-i", "0", "-c", self.conf, "--mkfs", "--osd-uuid",
                            osd_uuid], check=True, capture_output=True)
            self._spawn("osd", ["ceph-osd", "-f", "-i", "0", "-c", self.conf], detach)
            self._wait("the OSD to be up", lambda: any(
                ln.startswith("osd.0 up ") for ln in self.ceph("osd", "dump").splitlines()),
                60, "osd")
            self.start_rgw(detach)
            self.admin("user", "create", "--uid=aim", "--display-name=aim test",
                       f"--access-key={self.access_key}", f"--secret-key={self.secret_key}")
        except subprocess.CalledProcessError as e:
            self.stop()
            raise CephError(f"{' '.join(e.cmd)} failed: {e.stderr.decode(errors='replace')}")
        except BaseException:
            self.stop()
            raise
        self.started_s = time.monotonic() - t0
        return self

    def start_rgw(self, detach=False, clock_offset=None):
        """clock_offset: run radosgw with its clock that far off ("+1h"),
        with Debian's libfaketime (package faketime), for clock-skew tests."""
        env = None
        if clock_offset:
            if not os.path.exists(FAKETIME_LIB):
                raise CephError(f"{FAKETIME_LIB} is missing: apt-get install faketime")
            env = dict(os.environ, LD_PRELOAD=FAKETIME_LIB, FAKETIME=clock_offset,
                       FAKETIME_DONT_FAKE_MONOTONIC="1")
        self._spawn("rgw", ["radosgw", "-f", "-n", "client.rgw", "-c", self.conf], detach, env)

        def answers():
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.rgw_port, timeout=2)
                c.request("GET", "/")
                ok = c.getresponse().status == 200
                c.close()
                return ok
            except OSError:
                return False
        self._wait("radosgw to answer", answers, 60, "rgw")

    def stop_daemon(self, name, sig=signal.SIGTERM, timeout=30):
        p = self.procs.pop(name, None)
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log = self.logs.pop(name, None)
        if log:
            log.close()
        return p.returncode

    def kill_rgw(self):
        """kill -9 of radosgw (a crash mid-upload)."""
        return self.stop_daemon("rgw", signal.SIGKILL)

    def stop(self):
        """radosgw, then the OSD, then the mon, one at a time; then the
        directory.  Never raises."""
        for name in ("rgw", "osd", "mon"):
            try:
                self.stop_daemon(name)
            except Exception:   # noqa: BLE001 - teardown goes on
                pass
        if self.remove:
            shutil.rmtree(self.dir, ignore_errors=True)

    def rss_kib(self):
        """{daemon: resident KiB}."""
        out = {}
        for name, p in self.procs.items():
            try:
                with open(f"/proc/{p.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            out[name] = int(line.split()[1])
            except OSError:
                pass
        return out

    # ---- faults ----

    def set_full(self, full, timeout=30):
        """Makes the OSD full (or not) by moving the full ratios below (or
        back above) what it uses, and waits until the OSD map says so."""
        if full:
            order = (("set-nearfull-ratio", "0.00001"), ("set-backfillfull-ratio", "0.00002"),
                     ("set-full-ratio", "0.00003"))
        else:
            order = (("set-full-ratio", "0.95"), ("set-backfillfull-ratio", "0.9"),
                     ("set-nearfull-ratio", "0.85"))
        for cmd, v in order:
            self.ceph("osd", cmd, v)

        def flagged():
            line = [ln for ln in self.ceph("osd", "dump").splitlines() if ln.startswith("osd.0 ")]
            return bool(line) and (",full" in line[0]) == full
        self._wait(f"the OSD to be {'full' if full else 'not full'}", flagged, timeout)

    def gc(self):
        """Returns deleted objects' memory to the OSD."""
        self.admin("gc", "process", "--include-all")

    # ---- S3 ----

    def s3(self, access_key=None, secret_key=None):
        return S3(self.endpoint, access_key or self.access_key, secret_key or self.secret_key,
                  self.region)

    def make_bucket(self, name):
        self.s3().create_bucket(name)
        return f"{self.endpoint}/{name}"

    def env(self):
        return {"AIM_S3_ENDPOINT": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AIM_S3_REGION": self.region}


# ---- a small S3 client, written apart from the C one, for checking ----

def _quote(s, safe="/"):
    return urllib.parse.quote(s, safe=safe + "-_.~")


class S3Error(Exception):
    def __init__(self, status, code, body):
        super().__init__(f"HTTP {status} {code}")
        self.status, self.code, self.body = status, code, body


class S3:
    """Path-style S3 requests signed with SigV4 (hmac, hashlib)."""

    def __init__(self, endpoint, access_key, secret_key, region=REGION):
        u = urllib.parse.urlparse(endpoint)
        self.host, self.port = u.hostname, u.port or 80
        self.access_key, self.secret_key, self.region = access_key, secret_key, region

    def request(self, method, path, query=None, body=b"", headers=None, ok=(200, 204)):
        query = query or {}
        headers = dict(headers or {})
        now = datetime.datetime.now(datetime.timezone.utc)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        payload_hash = hashlib.sha256(body).hexdigest()
        host = f"{self.host}:{self.port}"
        headers.update({"host": host, "x-amz-date": amz_date,
                        "x-amz-content-sha256": payload_hash})
        canon_path = _quote(path)
        canon_query = "&".join(f"{_quote(k, '')}={_quote(str(v), '')}"
                               for k, v in sorted(query.items()))
        signed = sorted(k.lower() for k in headers)
        lower = {k.lower(): str(v).strip() for k, v in headers.items()}
        canon_headers = "".join(f"{k}:{lower[k]}\n" for k in signed)
        creq = "\n".join([method, canon_path, canon_query, canon_headers, ";".join(signed),
                          payload_hash])
        scope = f"{day}/{self.region}/s3/aws4_request"
        sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(creq.encode()).hexdigest()])
        k = ("AWS4" + self.secret_key).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
        headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
                                    f"SignedHeaders={';'.join(signed)}, Signature={sig}")
        c = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            c.request(method, canon_path + ("?" + canon_query if canon_query else ""),
                      body=body, headers=headers)
            r = c.getresponse()
            data = r.read()
            rh = {k.lower(): v for k, v in r.getheaders()}
        finally:
            c.close()
        if r.status not in ok:
            code = ""
            try:
                code = ET.fromstring(data).findtext("Code") or ""
            except ET.ParseError:
                pass
            raise S3Error(r.status, code, data)
        return r.status, rh, data

    def create_bucket(self, bucket):
        self.request("PUT", f"/{bucket}")

    def put(self, bucket, key, data, headers=None):
        self.request("PUT", f"/{bucket}/{key}", body=data, headers=headers)

    def get(self, bucket, key):
        _, h, data = self.request("GET", f"/{bucket}/{key}")
        return h, data

    def delete(self, bucket, key):
        self.request("DELETE", f"/{bucket}/{key}")

    def exists(self, bucket, key):
        try:
            self.request("HEAD", f"/{bucket}/{key}")
            return True
        except S3Error as e:
            if e.status == 404:
                return False
            raise

    def list(self, bucket, prefix=""):
        """Every key under prefix (ListObjectsV2, all pages)."""
        keys, token = [], None
        while True:
            q = {"list-type": "2", "prefix": prefix}
            if token:
                q["continuation-token"] = token
            _, _, data = self.request("GET", f"/{bucket}", query=q)
            root = ET.fromstring(data)
            ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
            keys += [c.findtext(f"{ns}Key") for c in root.findall(f"{ns}Contents")]
            if root.findtext(f"{ns}IsTruncated") != "true":
                return keys
            token = root.findtext(f"{ns}NextContinuationToken")


# ---- the shell interface (bench/s3-bench.sh) ----

def _cli(argv):
    if len(argv) != 3 or argv[1] not in ("start", "stop", "kill"):
        print(f"usage: {argv[0]} start|stop|kill DIR", file=sys.stderr)
        return 2
    d = os.path.abspath(argv[2])
    if argv[1] == "start":
        os.makedirs(d, exist_ok=True)
        c = CephRGW(d, memstore_bytes=int(os.environ.get("AIM_MEMSTORE_BYTES", 4 << 30)),
                    remove=False)
        c.start(detach=True)
        for log in c.logs.values():
            log.close()
        for k, v in c.env().items():
            print(f"{k}={v}")
        print(f"CEPH_CONF={c.conf}")
        print(f"CEPH_STARTED_S={c.started_s:.1f}")
        return 0
    # kill: SIGKILL at once (a memstore OSD otherwise writes all it holds
    # to its directory as it stops: seconds per GiB, for data thrown away)
    rc = 0
    sig = signal.SIGKILL if argv[1] == "kill" else signal.SIGTERM
    for name in ("rgw", "osd", "mon"):
        pf = os.path.join(d, "run", name + ".daemon.pid")
        try:
            pid = int(open(pf).read())
        except (OSError, ValueError):
            continue
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
            rc = 1
        os.unlink(pf)
    return rc


if __name__ == "__main__":
    sys.exit(_cli(sys.argv))
