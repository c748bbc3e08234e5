"""aim-remote's receiver against hostile and broken peers (issue 12).

Attackers connect from other loopback addresses (127.0.0.2, 127.0.0.3, ...)
so that limits per address apply to them as to distinct hosts; their number
and the time they run are bounded, and every socket and process a test
opens is closed by the test, by object or PID, even when it fails.  No test
asserts a duration: each asserts an outcome (the uploads got through, the
connection was closed, memory stayed bounded), with generous time to reach
it."""
import os
import select
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time

import pytest

from aimtest import AIM_REMOTE, wait_for
from remote_helpers import PKI, free_port, inbox_deliver, mkseg
from servers import get_status, wait_in_sync

G = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
ZSTD = shutil.which("zstd")


@pytest.fixture(autouse=True)
def _need_remote():
    if not os.path.exists(AIM_REMOTE):
        pytest.fail(f"{AIM_REMOTE} is not built (set AIM_BUILD)")


@pytest.fixture
def pki(workdir):
    return PKI(os.path.join(workdir, "pki"))


def segments(workdir, n, group=G, size=64, first=1):
    """n valid segments of group (numbers first..), each one WRITE of size
    bytes and a FLUSH; returns their paths."""
    out = []
    lsn = 1
    for i in range(first, first + n):
        data = bytes([i % 251]) * size
        path = os.path.join(workdir, f"seg-{group[:8]}-{i}.aimj")
        mkseg(path, f"group {group}\nnumber {i}\nfirst_lsn {lsn}\nimage 1 vm.img\n"
                    f"write 1 {(i - 1) * size} {data.hex()}\nflush\n")
        lsn += 2
        out.append(path)
    return out


def seg_name(n):
    return f"{n:020d}.aimj"


def filled_segments(workdir, tag, sizes, offset):
    """Segments 1.. of G, segment n one WRITE of sizes[n-1] bytes of value
    n at offset(n), and a FLUSH; returns their paths."""
    out = []
    for n, size in enumerate(sizes, start=1):
        path = os.path.join(workdir, f"{tag}{n}.aimj")
        mkseg(path, f"group {G}\nnumber {n}\nfirst_lsn {2 * n - 1}\nimage 1 vm.img\n"
                    f"write 1 {offset(n)} @{size}:{n}\nflush\n")
        out.append(path)
    return out


def put_first_and_keep_it(r, segs):
    """Uploads segs[0] as segment 1 and waits until it is applied and its
    file kept in inbox/.free for the next upload."""
    code, text, err = r.put(G, segs[0], name=seg_name(1))
    assert code == 201, (code, text, err)
    r.wait_applied(G, 2)
    wait_for(lambda: r.status()["receiver"]["kept_files"] == 1, 10, what="1's file kept")


# What the receiver's memory may grow by in the budget test: loose enough
# for ASan's quarantine and shadow memory; six uploads that each asked for a
# 128 MiB window made it grow by about 770 MiB before windows were bounded.
RSS_GROWTH_KIB = 256 << 10


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# ---- attackers ----

class Attack:
    """A slowloris from other loopback addresses: TCP connections that never
    start their TLS handshake (idle), and TLS connections that trickle a
    request header one byte a second (trickle).  A connection the receiver
    closes is opened again after `pause`; stop() closes everything."""

    HEADER = (f"PUT /aim/{G}/{seg_name(1)} HTTP/1.1\r\nHost: x\r\nX-Slow: ".encode()
              + b"a" * 100000)

    def __init__(self, port, idle, trickle, pause=0.5):
        self.port = port
        self.idle = idle          # [(address, connections)]
        self.trickle = trickle    # [(address, connections)]
        self.pause = pause
        self.stop_ev = threading.Event()
        self.threads = []
        self.closed = 0           # connections the receiver closed
        self.opened = 0
        self.lock = threading.Lock()

    def _count(self, what):
        with self.lock:
            setattr(self, what, getattr(self, what) + 1)

    def _idle_loop(self):
        sel = selectors.DefaultSelector()
        due = []  # (when, address)
        for addr, n in self.idle:
            due += [(0, addr)] * n
        try:
            while not self.stop_ev.is_set():
                now = time.monotonic()
                later = []
                for when, addr in due:
                    if when > now:
                        later.append((when, addr))
                        continue
                    s = socket.socket()
                    s.setblocking(False)
                    try:
                        s.bind((addr, 0))
                        s.connect_ex(("127.0.0.1", self.port))
                    except OSError:
                        s.close()
                        later.append((now + self.pause, addr))
                        continue
                    sel.register(s, selectors.EVENT_READ, addr)
                    self._count("opened")
                due = later
                for key, _ in sel.select(0.05):
                    s = key.fileobj
                    try:
                        data = s.recv(4096)
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(s)
                        s.close()
                        self._count("closed")
                        due.append((time.monotonic() + self.pause, key.data))
        finally:
            for key in list(sel.get_map().values()):
                key.fileobj.close()
            sel.close()

    def _trickle_one(self, addr):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        while not self.stop_ev.is_set():
            s = socket.socket()
            s.settimeout(5)
            try:
                s.bind((addr, 0))
                s.connect(("127.0.0.1", self.port))
                t = ctx.wrap_socket(s)
                self._count("opened")
                for i in range(len(self.HEADER)):
                    if self.stop_ev.wait(1.0 if i else 0):
                        break
                    t.send(self.HEADER[i:i + 1])
                t.close()
            except (OSError, ssl.SSLError):
                s.close()
                self._count("closed")
                self.stop_ev.wait(self.pause)

    def start(self):
        t = threading.Thread(target=self._idle_loop, daemon=True)
        t.start()
        self.threads.append(t)
        for addr, n in self.trickle:
            for _ in range(n):
                t = threading.Thread(target=self._trickle_one, args=(addr,), daemon=True)
                t.start()
                self.threads.append(t)
        return self

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(15)


def addresses(first, count):
    return [f"127.0.0.{i}" for i in range(first, first + count)]


def test_connection_abuse_does_not_starve_a_sender(workdir, pki, remotes):
    """400 idle TCP connections and 100 TLS connections trickling a header,
    from 32 other addresses, against the default limits: a sender with the
    token gets all its uploads through while they try."""
    r = remotes(listen=True, pki=pki, args=["--token-file", pki.token_file]).start()
    segs = segments(workdir, 6)
    attack = Attack(r.listen_port, [(a, 16) for a in addresses(2, 25)],
                    [(a, 15) for a in addresses(27, 7)])
    results = []
    try:
        attack.start()
        time.sleep(2)                       # the attack is in full swing
        during = r.status()["receiver"].get("connections", {})
        t_end = time.monotonic() + 40
        for i, seg in enumerate(segs, 1):
            t0 = time.monotonic()
            attempts = 0
            code = 0
            while code != 201 and time.monotonic() < t_end:
                attempts += 1
                code, text, err = r.put(G, seg, name=seg_name(i), cert=None, timeout=10)
                if code != 201:
                    time.sleep(1)          # the transport backs off 1, 2, 4 s...
            results.append((code, attempts, round(time.monotonic() - t0, 2)))
            time.sleep(1.5)                # uploads spread over the deadlines
        after = r.status()["receiver"].get("connections", {})
    finally:
        attack.stop()
    print(f"uploads (code, attempts, seconds): {results}")
    print(f"attack: {attack.opened} connections opened, {attack.closed} closed by the receiver")
    print(f"receiver during the attack: {during}")
    print(f"receiver after: {after}")
    assert [c for c, _, _ in results] == [201] * 6, results
    # the attackers were cut off (evicted by newer ones, or at their
    # deadlines), not waited for, and never held more than their share
    assert after["evicted"] + after["handshake_timeouts"] + after["header_timeouts"] > 0, after
    assert during["unauthenticated"] <= 128, during
    r.wait_applied(G, 12)
    # and once they are gone, their slots are free again
    wait_for(lambda: r.status()["receiver"]["connections"]["open"] == 0, 20,
             what="the attackers' connections to be closed")
    assert r.stop() == 0
    r.check_quiet()


# ---- one connection, by hand ----

def tls_connect(r, pki, cert=True, source=None, timeout=10, ctx=None):
    """A TLS connection to r's receiver (with the client certificate unless
    cert is False), from source if given."""
    if ctx is None:
        ctx = ssl.create_default_context(cafile=pki.ca)
        if cert:
            ctx.load_cert_chain(pki.client, pki.client_key)
    s = socket.socket()
    s.settimeout(timeout)
    try:
        if source:
            s.bind((source, 0))
        s.connect(("127.0.0.1", r.listen_port))
        return ctx.wrap_socket(s, server_hostname="127.0.0.1")
    except BaseException:
        s.close()
        raise


def request_head(method, path, token, length=None, headers=()):
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += list(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_answer(t, timeout=10):
    """(status, {header: value}, body) of the next answer on t, or
    (0, {}, b"") when the connection ends or nothing comes in time."""
    t.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = t.recv(65536)
            if not chunk:
                return 0, {}, b""
            data += chunk
        head, _, first = data.partition(b"\r\n\r\n")
        body = bytearray(first)    # appended to in place: bytes += is quadratic
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        want = int(headers.get("content-length", "0"))
        while len(body) < want:
            chunk = t.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(lines[0].split()[1]), headers, bytes(body)
    except (OSError, ssl.SSLError, ValueError, IndexError):
        return 0, {}, b""


def ends_within(t, seconds):
    """True if the peer ends the connection within seconds (anything it
    sends meanwhile is read and dropped)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if not t.recv(65536):
                return True
        except socket.timeout:
            return False
        except (OSError, ssl.SSLError):
            return True
    return False


def test_slow_headers_slow_bodies_and_idle_connections_are_cut_off(workdir, pki, remotes):
    """Deadlines that no byte moves: the whole header, the body at the
    minimum rate, the time between requests.  Authenticated or not."""
    r = remotes(listen=True, pki=pki,
                args=["--token-file", pki.token_file, "--client-ca", pki.ca,
                      "--header-timeout", "2s", "--idle-timeout", "2s",
                      "--min-rate", "64K"]).start()
    path = f"/aim/{G}/{seg_name(1)}"
    segs = segments(workdir, 2)
    opened = []
    try:
        # a header trickled a byte every half second
        t = tls_connect(r, pki)
        opened.append(t)
        head = request_head("PUT", path, pki.token, 1000)
        cut = False
        for i in range(len(head)):
            try:
                t.send(head[i:i + 1])
            except (OSError, ssl.SSLError):
                cut = True
                break
            if ends_within(t, 0.5):
                cut = True
                break
        assert cut, "a header trickled for %d bytes was never cut off" % len(head)

        # a body that falls below --min-rate is answered 408, with the reason
        t = tls_connect(r, pki)
        opened.append(t)
        t.sendall(request_head("PUT", path, pki.token, 1 << 20))
        answer = (0, {}, b"")
        for _ in range(60):
            try:
                t.sendall(b"x" * 1000)
            except (OSError, ssl.SSLError):
                break
            if select.select([t], [], [], 0.5)[0]:
                answer = read_answer(t)
                break
        code, headers, body = answer
        assert code == 408 and b"--min-rate" in body, answer
        assert headers.get("connection") == "close", headers

        # a body that stops coming is closed at its deadline
        t = tls_connect(r, pki)
        opened.append(t)
        t.sendall(request_head("PUT", path, pki.token, 1 << 20) + b"y" * 100)
        assert ends_within(t, 15), "a stalled body was kept open"

        # a kept-alive connection idle between requests is closed
        t = tls_connect(r, pki)
        opened.append(t)
        with open(segs[0], "rb") as f:
            data = f.read()
        t.sendall(request_head("PUT", path, pki.token, len(data)) + data)
        code, headers, _ = read_answer(t)
        assert code == 201 and headers.get("connection") != "close", (code, headers)
        assert ends_within(t, 15), "an idle kept-alive connection was kept open"
    finally:
        for t in opened:
            t.close()
    conns = r.status()["receiver"]["connections"]
    assert conns["header_timeouts"] >= 1 and conns["slow_uploads"] >= 2, conns
    assert conns["idle_closed"] >= 1, conns
    assert r.status()["receiver"]["rejected"].get("408") == 1
    # the receiver still serves
    code, text, _ = r.put(G, segs[1], name=seg_name(2))
    assert code == 201, text
    r.wait_applied(G, 4)
    assert r.stop() == 0
    r.check_quiet()


def test_client_certificate_is_required_by_the_handshake(workdir, pki, remotes):
    """With --client-ca, a peer without a good certificate never gets an HTTP
    answer: its handshake fails and its connection is gone at once."""
    r = remotes(listen=True, pki=pki, args=["--client-ca", pki.ca]).start()
    before = r.status()["receiver"].get("connections", {}).get("handshake_failures", 0)
    for cert in (None, (pki.rogue, pki.rogue_key), (pki.server, pki.server_key)):
        ctx = ssl.create_default_context(cafile=pki.ca)
        if cert:
            ctx.load_cert_chain(*cert)
        try:
            t = tls_connect(r, pki, ctx=ctx)
        except (OSError, ssl.SSLError):
            continue                  # refused within the handshake (TLS 1.2)
        try:
            # TLS 1.3: the client's side of the handshake is over before
            # the server has seen the certificate; the refusal comes next
            try:
                t.sendall(request_head("GET", f"/aim/{G}/{seg_name(1)}", None))
            except (OSError, ssl.SSLError):
                pass
            assert read_answer(t, 5)[0] == 0, f"an HTTP answer without a valid certificate ({cert})"
        finally:
            t.close()
    wait_for(lambda: r.status()["receiver"]["connections"]["open"] == 0, 10,
             what="the refused connections to be gone")
    conns = r.status()["receiver"]["connections"]
    assert conns["handshake_failures"] >= before + 3, conns
    # with the certificate, it works
    t = tls_connect(r, pki)
    try:
        t.sendall(request_head("GET", f"/aim/{G}/{seg_name(1)}", None))
        assert read_answer(t)[0] == 404
    finally:
        t.close()
    assert r.stop() == 0
    r.check_quiet()


def old_tls_context(version, pki=None, server=False):
    """An OpenSSL context limited to TLS version (TLSVersion.TLSv1,
    TLSv1_1...), at security level 0 so that OpenSSL 3 lets it speak."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    ctx.maximum_version = version
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if server:
        ctx.load_cert_chain(pki.server, pki.server_key)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def handshake_version(r, pki, version):
    """The TLS version the receiver agrees to when the client offers at most
    version, or None if the handshake fails."""
    try:
        t = tls_connect(r, pki, ctx=old_tls_context(version))
    except (OSError, ssl.SSLError):
        return None
    try:
        return t.version()
    finally:
        t.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # ssl.TLSVersion.TLSv1, TLSv1_1
def test_tls_before_1_2_is_refused(workdir, pki, remotes):
    r = remotes(listen=True, pki=pki, args=["--token-file", pki.token_file]).start()
    V = ssl.TLSVersion
    assert handshake_version(r, pki, V.TLSv1) is None
    assert handshake_version(r, pki, V.TLSv1_1) is None
    assert handshake_version(r, pki, V.TLSv1_2) == "TLSv1.2"
    assert handshake_version(r, pki, V.TLSv1_3) == "TLSv1.3"
    assert r.status()["receiver"]["limits"]["tls_priority"].endswith("+VERS-TLS1.2")
    assert r.stop() == 0
    # the priority string is an option
    r = remotes(listen=True, pki=pki, name="tls13",
                args=["--token-file", pki.token_file,
                      "--tls-priority", "NORMAL:-VERS-ALL:+VERS-TLS1.3"]).start()
    assert handshake_version(r, pki, V.TLSv1_2) is None
    assert handshake_version(r, pki, V.TLSv1_3) == "TLSv1.3"
    assert r.stop() == 0


# ---- refusals in the middle of a body ----

@pytest.fixture
def small_fs(workdir):
    """Factory: small_fs(path, size) mounts a tmpfs of size at path (made
    if needed); every one is detached at teardown (lazily: a daemon the
    test could not stop yet keeps it until the remotes fixture stops it)."""
    mounted = []

    def mount(path, size):
        os.makedirs(path, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                       check=True)
        mounted.append(path)
        return path
    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", path], check=False)


@pytest.mark.skipif(not ZSTD, reason="needs the zstd command")
def test_refusals_in_the_middle_of_a_body_are_answered(workdir, pki, remotes):
    """413 (too large once decompressed) and 400 (a corrupt stream) decided
    after the body started: answered at once with Connection: close and the
    reason, counted, while the client is still sending tens of MiB."""
    r = remotes(listen=True, pki=pki,
                args=["--token-file", pki.token_file, "--max-segment", "1M"]).start()
    noise = os.path.join(workdir, "noise")
    with open(noise, "wb") as f:
        f.write(os.urandom(48 << 20))
    packed = noise + ".zst"
    subprocess.run([ZSTD, "-q", "-1", "-f", noise, "-o", packed], check=True)
    zstd = ("Content-Encoding: zstd",)
    code, text, err = r.put(G, packed, name=seg_name(1), cert=None, headers=zstd)
    assert code == 413 and "larger than the limit" in text, (code, text, err)
    code, text, err = r.put(G, noise, name=seg_name(1), cert=None, headers=zstd)
    assert code == 400 and "zstd" in text, (code, text, err)
    assert r.status()["receiver"]["rejected"] == {"413": 1, "400": 1}
    wait_for(lambda: r.status()["receiver"]["uploads"] == 0, 10, what="the uploads to end")
    assert r.status()["receiver"]["temp_bytes"] == 0
    assert os.listdir(os.path.join(r.inbox, ".tmp")) == []
    assert r.stop() == 0
    r.check_quiet()


def test_a_full_inbox_is_answered_507_and_the_sender_says_why(aimfs, workdir, pki, remotes,
                                                               small_fs):
    """A segment larger than the room left in the inbox: the receiver
    answers 507 with the figures as soon as the disk is full, the sender's
    status shows the code and the reason, and once there is room the
    segment goes through without a restart."""
    inbox = small_fs(os.path.join(workdir, "inbox"), "8M")
    r = remotes(inbox=inbox, listen=True, pki=pki, expect_alarms=False,
                args=["--token-file", pki.token_file, "--client-ca", pki.ca]).start()
    status = f"127.0.0.1:{free_port()}"
    conf = os.path.join(workdir, "aimfs.conf")
    with open(conf, "w") as f:
        f.write(f"[aimfs]\nstatus = {status}\nsegment_size = 32M\nsegment_age = 500ms\n\n"
                f"[destination dr1]\nurl = {r.base_url}/aim\nca_file = {pki.ca}\n"
                f"cert_file = {pki.client}\nkey_file = {pki.client_key}\n"
                f"token_file = {pki.token_file}\n")
    m = aimfs(options=[f"config={conf}"])
    with open(os.path.join(m.mountpoint, "vm.img"), "wb") as f:
        f.write(os.urandom(40 << 20))
        os.fsync(f.fileno())
    last = {}

    def refused():
        last["src"] = d = get_status(status)["destinations"][0]
        return "HTTP 507" in (d.get("last_error") or "")
    try:
        wait_for(refused, 60, 0.2, what="the sender to report the 507")
    except TimeoutError:
        raise AssertionError(f"sender: {last}\n{r.output()}") from None
    d = last["src"]
    assert d["state"] == "retrying" and "inbox full" in d["last_error"], d
    st = r.status()
    assert st["receiver"]["rejected"].get("507", 0) >= 1, st["receiver"]
    g = r.group(get_status(status)["group"])
    # Every 507 here is the large segment's: the small ones before it are
    # each the one their group applies next (a race in that decision once
    # refused one as if a segment before it were missing: test_receiver).
    assert g["inbox_full"] and "does not fit" in g["inbox_full"], \
        f"{g}\nsender: {get_status(status)}\n{r.output()}"
    # room again: the same segment goes through, nothing restarted
    subprocess.run(["mount", "-o", "remount,size=256M", inbox], check=True)
    src = wait_in_sync(status, timeout=90)
    g = r.wait_applied(src["group"], src["head_lsn"], timeout=60)
    assert g["inbox_full"] is None, g
    assert m.unmount() == 0
    m.check_quiet()
    assert r.stop() == 0
    assert r.starts == 1


# ---- the budget of uploads ----

def hold_upload(r, pki, group, body, headers=(), number=1, length=None):
    """Starts a PUT of body for group and sends all of it but its last 4
    bytes; returns the connection, holding the upload open."""
    t = tls_connect(r, pki, cert=False)
    length = len(body) if length is None else length
    t.sendall(request_head("PUT", f"/aim/{group}/{seg_name(number)}", pki.token, length,
                           headers) + body[:-4])
    return t


def answered_now(t, timeout=5):
    """The answer the receiver gives at once (code, reason, Retry-After), or
    (0, "", None) if it says nothing: it is still receiving."""
    if not select.select([t], [], [], timeout)[0]:
        return 0, "", None
    code, headers, body = read_answer(t)
    return code, body.decode(errors="replace"), headers.get("retry-after")


def group_id(i):
    return f"aaaaaaaa-0000-4000-8000-{i:012d}"


@pytest.mark.skipif(not ZSTD, reason="needs the zstd command")
def test_compressed_uploads_have_a_budget(workdir, pki, remotes):
    """zstd frames larger than the sender's window are refused before they
    cost anything; uploads held open are limited per group and in all, and
    so is their temporary space: over any of these, 503 with Retry-After at
    once.  The receiver's memory stays bounded throughout."""
    # what zstd --long=27 makes of 130 MiB of zeros: 5 KB asking for a
    # 128 MiB window
    zeros = os.path.join(workdir, "zeros")
    with open(zeros, "wb") as f:
        f.truncate(130 << 20)
    subprocess.run([ZSTD, "-q", "-f", "--long=27", "-1", zeros, "-o", zeros + ".zst"],
                   check=True)
    os.unlink(zeros)
    with open(zeros + ".zst", "rb") as f:
        wide = f.read()
    noise = os.path.join(workdir, "noise")
    with open(noise, "wb") as f:
        f.write(os.urandom(2 << 20))
    subprocess.run([ZSTD, "-q", "-f", "-3", noise, "-o", noise + ".zst"], check=True)
    with open(noise + ".zst", "rb") as f:
        narrow = f.read()
    zstd = ("Content-Encoding: zstd",)

    r = remotes(listen=True, pki=pki,
                args=["--token-file", pki.token_file, "--max-uploads", "6",
                      "--max-group-uploads", "3", "--max-temp", "3G"]).start()
    base = rss_kib(r.proc.pid)
    held = []
    try:
        # windows wider than the sender's: refused at once, nothing kept
        for i in range(6):
            held.append(hold_upload(r, pki, group_id(i), wide, zstd))
        for t in held:
            code, text, _ = answered_now(t)
            assert code == 400 and "window" in text, (code, text)
        peak = rss_kib(r.proc.pid)
        assert peak - base < RSS_GROWTH_KIB, f"RSS {base} -> {peak} KiB"
        for t in held:
            t.close()
        held.clear()

        # uploads held open: three per group, six in all
        def receiving(n):
            wait_for(lambda: r.status()["receiver"]["uploads"] == n, 10,
                     what=f"{n} uploads to be received")
        for i in range(3):
            held.append(hold_upload(r, pki, group_id(10), narrow, zstd, number=i + 1))
        receiving(3)
        t = hold_upload(r, pki, group_id(10), narrow, zstd, number=4)
        held.append(t)
        code, text, retry = answered_now(t)
        assert code == 503 and "--max-group-uploads" in text and retry, (code, text, retry)
        for i in range(3):
            held.append(hold_upload(r, pki, group_id(11), narrow, zstd, number=i + 1))
        receiving(6)
        t = hold_upload(r, pki, group_id(12), narrow, zstd)
        held.append(t)
        code, text, retry = answered_now(t)
        assert code == 503 and "--max-uploads" in text and retry, (code, text, retry)
        for t in held[:3] + held[4:7]:
            assert answered_now(t, 0.2)[0] == 0, "a held upload within the limits was refused"
        st = r.status()["receiver"]
        assert st["uploads"] == 6, st
        peak = max(peak, rss_kib(r.proc.pid))
        assert peak - base < RSS_GROWTH_KIB, f"RSS {base} -> {peak} KiB"
    finally:
        for t in held:
            t.close()
    wait_for(lambda: r.status()["receiver"]["uploads"] == 0, 10, what="the uploads to end")
    assert r.status()["receiver"]["temp_bytes"] == 0
    assert r.stop() == 0

    # temporary space: three plain bodies of 8M hold 24M, the limit
    r = remotes(listen=True, pki=pki, name="temp",
                args=["--token-file", pki.token_file, "--max-segment", "8M",
                      "--max-temp", "24M"]).start()
    try:
        for i in range(3):
            held.append(hold_upload(r, pki, group_id(20 + i), b"x" * 1000, length=8 << 20))
        wait_for(lambda: r.status()["receiver"]["temp_bytes"] == 24 << 20, 10,
                 what="three bodies of 8M to be counted")
        t = hold_upload(r, pki, group_id(30), b"x" * 1000, length=8 << 20)
        held.append(t)
        code, text, retry = answered_now(t)
        assert code == 503 and "--max-temp" in text and retry, (code, text, retry)
    finally:
        for t in held:
            t.close()
    wait_for(lambda: r.status()["receiver"]["temp_bytes"] == 0, 10,
             what="the temporary space to be released")
    assert os.listdir(os.path.join(r.inbox, ".tmp")) == []
    assert r.stop() == 0
    r.check_quiet()


def test_the_sender_waits_as_long_as_retry_after_says(aimfs, workdir, pki, remotes):
    """A receiver over its budget answers 503 with Retry-After; the
    transport shows the code and the reason and comes back when told (not
    after its own 1 s back-off), then catches up."""
    r = remotes(listen=True, pki=pki,
                args=["--token-file", pki.token_file, "--max-group-uploads", "1"]).start()
    status = f"127.0.0.1:{free_port()}"
    conf = os.path.join(workdir, "aimfs.conf")
    with open(conf, "w") as f:
        f.write(f"[aimfs]\nstatus = {status}\nsegment_size = 256K\nsegment_age = 200ms\n\n"
                f"[destination dr1]\nurl = {r.base_url}/aim\nca_file = {pki.ca}\n"
                f"token_file = {pki.token_file}\n")
    m = aimfs(options=[f"config={conf}"])
    group = wait_in_sync(status)["group"]   # what the mount ships first is through
    t = hold_upload(r, pki, group, b"y" * 1000, number=999)
    last = {}
    try:
        wait_for(lambda: r.status()["receiver"]["uploads"] == 1, 10,
                 what="the held upload to take the group's slot")
        with open(os.path.join(m.mountpoint, "vm.img"), "wb") as f:
            f.write(os.urandom(100000))
            os.fsync(f.fileno())

        def busy():
            last["d"] = d = get_status(status)["destinations"][0]
            return d["state"] == "retrying" and "HTTP 503" in (d.get("last_error") or "")
        try:
            wait_for(busy, 30, 0.05, what="the sender to be told 503")
        except TimeoutError:
            raise AssertionError(f"sender: {last}") from None
        d = last["d"]
        assert "--max-group-uploads" in d["last_error"], d
        # Retry-After: 5, where its own back-off would say about 1 s
        assert d["next_attempt_in_seconds"] > 2.5, d
    finally:
        t.close()
    src = wait_in_sync(status, timeout=60)
    r.wait_applied(group, src["head_lsn"])
    assert m.unmount() == 0
    m.check_quiet()
    assert r.stop() == 0
    r.check_quiet()


# ---- a full inbox ----

def test_a_full_inbox_never_deadlocks_a_group(workdir, pki, remotes, small_fs):
    """Segments after a missing one fill the inbox: the receiver keeps
    --inbox-reserve free for the missing one and refuses the rest with 507
    and Retry-After (the group's status says so, with the figures); the
    missing one is stored, the group applies, and what was refused goes
    through when it is sent again.  No restart."""
    inbox = small_fs(os.path.join(workdir, "inbox"), "8M")
    r = remotes(inbox=inbox, listen=True, pki=pki,
                args=["--token-file", pki.token_file, "--max-segment", "2M"]).start()
    segs = []
    lsn = 1
    for n in range(1, 10):
        path = os.path.join(workdir, f"big{n}.aimj")
        mkseg(path, f"group {G}\nnumber {n}\nfirst_lsn {lsn}\nimage 1 vm.img\n"
                    f"write 1 {(n - 1) << 20} @{1 << 20}:{n}\nflush\n")
        lsn += 2
        segs.append(path)
    stored, refused, why = [], [], []
    for n in range(2, 10):                 # 1 is late
        code, text, err = r.put(G, segs[n - 1], name=seg_name(n), cert=None)
        assert code in (201, 507), (n, code, text, err)
        (stored if code == 201 else refused).append(n)
        if code == 507:
            why.append(text)
    assert stored and refused, (stored, refused)
    g = r.wait_group(G, lambda g: g["state"] == "waiting" and g["inbox_full"] is not None,
                     what="the group to wait for segment 1")
    assert g["waiting_for"] == 1, g
    # the one the group needs next always has room
    code, text, err = r.put(G, segs[0], name=seg_name(1), cert=None)
    assert code == 201, (code, text, err)
    # the refusals said why, and so did the group's status
    assert all("inbox full" in t and "--inbox-reserve" in t for t in why), why
    assert g["inbox_full"] and "MiB free" in g["inbox_full"], g
    r.wait_group(G, lambda g: g["applied_segment"] == max(stored), what="the stored ones applied")
    # and the sender's retries converge
    for n in refused:
        code, text, err = r.put(G, segs[n - 1], name=seg_name(n), cert=None)
        assert code == 201, (n, code, text, err)
    g = r.wait_applied(G, lsn - 1)
    assert g["applied_segment"] == 9 and g["inbox_full"] is None, g
    assert r.status()["receiver"]["rejected"] == {"507": len(refused)}
    assert r.stop() == 0
    assert r.starts == 1
    r.check_quiet()


# ---- applied files written over ----

def test_uploads_are_written_over_applied_files_and_cut_to_their_length(workdir, pki,
                                                                          remotes):
    """An applied segment's file is kept in inbox/.free and the next upload
    is written over it (its pages are cached): segments longer and shorter
    than the file they reuse, plain and zstd bodies, all arrive whole and
    apply exactly; at most two are kept, and a restart empties .free."""
    r = remotes(listen=True, pki=pki,
                args=["--token-file", pki.token_file, "--inbox-reserve", "1M"]).start()
    sizes = [600 << 10, 300 << 10, 900 << 10, 100 << 10, 7, 700 << 10, 50 << 10]
    image = bytearray()
    lsn = 1
    for n, size in enumerate(sizes, start=1):
        path = os.path.join(workdir, f"over{n}.aimj")
        mkseg(path, f"group {G}\nnumber {n}\nfirst_lsn {lsn}\nimage 1 vm.img\n"
                    f"write 1 {n << 20} @{size}:{n}\nflush\n")
        body, headers = path, ()
        if ZSTD and n % 3 == 0:
            body = path + ".zst"
            subprocess.run([ZSTD, "-q", "-f", path, "-o", body], check=True)
            headers = ("Content-Encoding: zstd",)
        code, text, err = r.put(G, body, name=seg_name(n), headers=headers)
        assert code == 201, (n, code, text, err)
        g = r.wait_applied(G, lsn + 1)
        assert g["quarantined_total"] == 0, g
        wait_for(lambda: r.status()["receiver"]["kept_files"] == 1, 10,
                 what=f"segment {n}'s file to be kept")
        lsn += 2
        image[len(image):] = bytes((n << 20) + size - len(image))
        image[n << 20:(n << 20) + size] = bytes([n]) * size
    with open(os.path.join(r.target, "vm.img"), "rb") as f:
        assert f.read() == bytes(image)
    rx = r.status()["receiver"]
    # each upload after the first reused the file applied before it
    assert rx["written_over"] == len(sizes) - 1, rx
    free = os.path.join(r.inbox, ".free")
    kept = [os.path.getsize(os.path.join(free, f)) for f in os.listdir(free)]
    assert rx["kept_files"] == len(kept) == 1 and rx["kept_bytes"] == sum(kept), (rx, kept)
    assert kept == [os.path.getsize(os.path.join(workdir, f"over{len(sizes)}.aimj"))]
    assert os.listdir(os.path.join(r.inbox, ".tmp")) == []
    assert f"aim_remote_written_over_total {len(sizes) - 1}" in r.metrics()
    assert r.stop() == 0
    r.start()
    assert os.listdir(free) == [] and r.status()["receiver"]["kept_files"] == 0
    assert r.stop() == 0
    r.check_quiet()


def test_the_group_validates_an_upload_with_the_receivers_hashes(workdir, pki, remotes):
    """The receiver hashes each payload as it arrives; the group then
    validates the stored file with those hashes instead of reading and
    hashing every payload again (plain and zstd bodies).  A segment copied
    into the inbox by other means is checked whole."""
    r = remotes(listen=True, pki=pki,
                args=["--token-file", pki.token_file, "--inbox-reserve", "1M"]).start()
    sizes = (256 << 10, 7, 512 << 10, 64 << 10)
    segs = filled_segments(workdir, "pre", sizes, lambda n: n << 20)
    for n, path in enumerate(segs[:3], start=1):
        body, headers = path, ()
        if ZSTD and n == 3:
            body = path + ".zst"
            subprocess.run([ZSTD, "-q", "-f", path, "-o", body], check=True)
            headers = ("Content-Encoding: zstd",)
        code, text, err = r.put(G, body, name=seg_name(n), headers=headers)
        assert code == 201, (n, code, text, err)
        r.wait_applied(G, 2 * n)
    assert r.status()["receiver"]["checks_reused"] == 3
    inbox_deliver(r.inbox, G, segs[3], name=seg_name(4))
    g = r.wait_applied(G, 8)
    assert g["quarantined_total"] == 0, g
    assert r.status()["receiver"]["checks_reused"] == 3
    assert "aim_remote_checks_reused_total 3" in r.metrics()
    with open(os.path.join(r.target, "vm.img"), "rb") as f:
        image = f.read()
    want = bytearray()
    for n, size in enumerate(sizes, start=1):
        want[len(want):] = bytes((n << 20) - len(want)) + bytes([n]) * size
    assert image == bytes(want)
    assert r.stop() == 0
    r.check_quiet()


def test_an_upload_written_to_in_the_inbox_is_checked_whole(workdir, pki, remotes):
    """A payload byte changed in an uploaded segment's inbox file, its
    record header left as it was (so the hashes the header states still
    match what the receiver saw): the group does not take the receiver's
    word for the file, finds the damage and puts the segment aside,
    applying nothing of it."""
    r = remotes(listen=True, pki=pki, expect_alarms=True,
                args=["--token-file", pki.token_file, "--inbox-reserve", "1M"]).start()
    segs = filled_segments(workdir, "bad", (64 << 10, 256 << 10), lambda n: n << 20)
    code, text, err = r.put(G, segs[1], name=seg_name(2))    # waits for 1
    assert code == 201, (code, text, err)
    path = os.path.join(r.inbox, G, seg_name(2))
    size = os.path.getsize(path)
    time.sleep(0.05)    # past the clock tick of the receiver's last write
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, b"\xee", size // 2)    # inside the 256 KiB payload
    finally:
        os.close(fd)
    code, text, err = r.put(G, segs[0], name=seg_name(1))
    assert code == 201, (code, text, err)
    g = r.wait_group(G, lambda g: g["state"] == "stopped", what="segment 2 to be refused")
    assert g["applied_lsn"] == 2 and g["quarantined"][-1]["segment"] == 2, g
    assert "payload checksum mismatch" in g["quarantined"][-1]["reason"], g
    with open(os.path.join(r.target, "vm.img"), "rb") as f:
        assert f.read() == bytes(1 << 20) + bytes([1]) * (64 << 10)
    assert r.stop() == 0


def read_bytes(pid):
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    return 0


def test_a_kept_file_out_of_the_page_cache_is_written_over_without_reads(workdir, pki,
                                                                         remotes):
    """A kept file whose pages have left the cache (memory pressure, a
    long wait) is written in whole pages: a write ending inside a page the
    kernel no longer holds would make it read that page's old bytes from
    the disk first, once per write of the body."""
    r = remotes(listen=True, pki=pki,
                args=["--token-file", pki.token_file, "--inbox-reserve", "1M"]).start()
    segs = filled_segments(workdir, "cold", (4 << 20, 3 << 20), lambda n: (n - 1) << 22)
    put_first_and_keep_it(r, segs)
    free = os.path.join(r.inbox, ".free")
    for name in os.listdir(free):    # as memory pressure would
        fd = os.open(os.path.join(free, name), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    with open(segs[1], "rb") as f:
        body = f.read()
    before = read_bytes(r.proc.pid)
    # in TLS records of 5000 bytes: the receiver gets pieces that end
    # anywhere in a page (curl's 16 KiB records mostly end on one)
    t = tls_connect(r, pki)
    try:
        t.sendall(request_head("PUT", f"/aim/{G}/{seg_name(2)}", pki.token, len(body)))
        for i in range(0, len(body), 5000):
            t.sendall(body[i:i + 5000])
        code, _, answer = read_answer(t, 60)
    finally:
        t.close()
    assert code == 201, (code, answer)
    r.wait_applied(G, 4)
    read = read_bytes(r.proc.pid) - before
    assert r.status()["receiver"]["written_over"] == 1
    # Measured: nothing.  Written as the body came: 2.5 MB (a page a piece).
    assert read <= 16 * 4096, f"{read} bytes read from the disk for a 3 MiB upload"
    with open(os.path.join(r.target, "vm.img"), "rb") as f:
        assert f.read() == bytes([1]) * (4 << 20) + bytes([2]) * (3 << 20)
    assert r.stop() == 0
    r.check_quiet()


def test_a_kept_file_is_cut_to_the_upload_before_it_is_written_over(workdir, pki, remotes):
    """A kept file longer than the upload that takes it gives back the rest
    as the upload starts (its length is announced), not when it ends: the
    temporary file never holds more than the room the upload was given."""
    r = remotes(listen=True, pki=pki,
                args=["--token-file", pki.token_file, "--inbox-reserve", "1M"]).start()
    segs = filled_segments(workdir, "cut", (4 << 20, 100 << 10), lambda n: (n - 1) << 23)
    put_first_and_keep_it(r, segs)
    with open(segs[1], "rb") as f:
        body = f.read()
    tmp = os.path.join(r.inbox, ".tmp")
    t = tls_connect(r, pki)
    try:
        t.sendall(request_head("PUT", f"/aim/{G}/{seg_name(2)}", pki.token, len(body)))
        t.sendall(body[:len(body) // 2])
        wait_for(lambda: os.listdir(tmp), 10, what="the upload to start")
        parts = os.listdir(tmp)
        assert len(parts) == 1, parts
        part = os.path.join(tmp, parts[0])

        def begins_with_body():
            with open(part, "rb") as f:
                return f.read(4096) == body[:4096]
        # the cut comes before the first byte of the body is written
        wait_for(begins_with_body, 10, what="the body's first page to be written")
        assert r.status()["receiver"]["written_over"] == 1
        parts = [part]
        pages = -(-len(body) // 4096) * 4096
        # Measured without the cut: the old file's 4 MiB until the end.
        assert os.path.getsize(parts[0]) <= pages, os.path.getsize(parts[0])
        assert os.stat(parts[0]).st_blocks * 512 <= pages + (64 << 10)
        t.sendall(body[len(body) // 2:])
        code, _, answer = read_answer(t, 30)
    finally:
        t.close()
    assert code == 201, (code, answer)
    r.wait_applied(G, 4)
    with open(os.path.join(r.target, "vm.img"), "rb") as f:
        assert f.read() == bytes([1]) * (4 << 20) + bytes(4 << 20) + bytes([2]) * (100 << 10)
    assert r.stop() == 0
    r.check_quiet()


def test_a_file_being_read_is_not_written_over(workdir, pki, remotes):
    """A GET of a segment still in the inbox that outlives its apply: the
    file is kept, but the next upload does not write over it while the
    answer is being sent (it takes the other kept file); the reader gets
    the segment it asked for, whole."""
    r = remotes(listen=True, pki=pki,
                args=["--token-file", pki.token_file, "--inbox-reserve", "1M"]).start()
    segs = filled_segments(workdir, "read", (1 << 20, 8 << 20, 1 << 20), lambda n: (n - 1) << 24)
    code, text, err = r.put(G, segs[1], name=seg_name(2))    # waits for 1
    assert code == 201, (code, text, err)
    t = tls_connect(r, pki)
    try:
        # ask for segment 2 and read almost none of it: the answer stalls
        t.sendall(request_head("GET", f"/aim/{G}/{seg_name(2)}", pki.token))
        t.settimeout(10)
        got = t.recv(4096)
        assert got.startswith(b"HTTP/1.1 200"), got[:200]
        code, text, err = r.put(G, segs[0], name=seg_name(1))
        assert code == 201, (code, text, err)
        r.wait_applied(G, 4)
        wait_for(lambda: r.status()["receiver"]["kept_files"] == 2, 10,
                 what="both applied files kept")
        code, text, err = r.put(G, segs[2], name=seg_name(3))
        assert code == 201, (code, text, err)
        r.wait_applied(G, 6)
        t.settimeout(60)
        while b"\r\n\r\n" not in got:
            got += t.recv(65536)
        head, _, first = got.partition(b"\r\n\r\n")
        body = bytearray(first)    # appended to in place: bytes += is quadratic
        with open(segs[1], "rb") as f:
            want = f.read()
        while len(body) < len(want):
            chunk = t.recv(1 << 20)
            if not chunk:
                break
            body += chunk
    finally:
        t.close()
    assert body == want, f"{len(body)} bytes, {sum(a != b for a, b in zip(body, want))} differ"
    # 2's file was passed over (and let go), 1's written over; kept now: 3's
    wait_for(lambda: r.status()["receiver"]["kept_files"] == 1, 10, what="3's file kept")
    assert r.status()["receiver"]["written_over"] == 1
    free = os.path.join(r.inbox, ".free")
    assert [os.path.getsize(os.path.join(free, f)) for f in os.listdir(free)] == \
        [os.path.getsize(segs[2])]
    with open(os.path.join(r.target, "vm.img"), "rb") as f:
        image = f.read()
    assert image == (bytes([1]) * (1 << 20) + bytes((16 << 20) - (1 << 20))
                     + bytes([2]) * (8 << 20) + bytes(8 << 20) + bytes([3]) * (1 << 20))
    assert r.stop() == 0
    r.check_quiet()


def test_kept_files_give_way_to_an_upload_that_needs_their_room(workdir, pki, remotes,
                                                                small_fs):
    """The applied files kept to be written over are the inbox's space: an
    upload that would not fit without them is not refused, they go."""
    inbox = small_fs(os.path.join(workdir, "inbox"), "8M")
    r = remotes(inbox=inbox, listen=True, pki=pki,
                args=["--token-file", pki.token_file, "--inbox-reserve", "1M"]).start()
    segs = filled_segments(workdir, "room", (1 << 20, 1 << 20, 3 << 20), lambda n: 0)
    # two applied without an upload between them: both kept
    for n in (1, 2):
        inbox_deliver(inbox, G, segs[n - 1], name=seg_name(n))
        r.wait_applied(G, 2 * n)
    wait_for(lambda: r.status()["receiver"]["kept_files"] == 2, 10, what="two files kept")
    # fill the rest: the third fits only where the kept ones are
    st = os.statvfs(inbox)
    ballast = st.f_bavail * st.f_frsize - (os.path.getsize(segs[2]) - (512 << 10))
    with open(os.path.join(inbox, "ballast"), "wb") as f:
        f.write(b"\xee" * ballast)
    code, text, err = r.put(G, segs[2], name=seg_name(3))
    assert code == 201, (code, text, err)
    rx = r.status()["receiver"]
    assert rx["kept_files"] == 0 and rx["rejected_total"] == 0, rx
    r.wait_applied(G, 6)
    with open(os.path.join(r.target, "vm.img"), "rb") as f:
        assert f.read() == bytes([3]) * (3 << 20)
    os.unlink(os.path.join(inbox, "ballast"))
    assert r.stop() == 0
    r.check_quiet()


# ---- a stopped group resumes ----

def test_a_stopped_group_resumes_on_aimctl_resume_and_sighup(workdir, remotes, small_fs):
    """A group stopped by a full target: asked to resume while the disk is
    still full, it stops again with the same reason; once there is room,
    SIGHUP (or `aimctl resume`) makes it go on from where it was durable."""
    target = small_fs(os.path.join(workdir, "target"), "1M")
    r = remotes(target=target, expect_alarms=True).start()
    H = "11111111-2222-4333-8444-555555555555"
    lsn = {G: 1, H: 1}
    for n in (1, 2):
        for g in (G, H):
            path = os.path.join(workdir, f"{g[:4]}-{n}.aimj")
            mkseg(path, f"group {g}\nnumber {n}\nfirst_lsn {lsn[g]}\nimage 1 {g[:4]}.img\n"
                        f"write 1 {(n - 1) << 19} @{(n * 3) << 17}:{n}\nflush\n")
            lsn[g] += 2
            os.makedirs(os.path.join(r.inbox, g), exist_ok=True)
            os.rename(path, os.path.join(r.inbox, g, seg_name(n)))
    for g in (G, H):
        st = r.wait_group(g, lambda s: s["state"] == "stopped", what=f"{g} to stop")
        assert "No space left on device" in st["error"], st
    aimctl = os.path.join(os.path.dirname(os.path.dirname(AIM_REMOTE)), "tools", "aimctl")
    addr = f"127.0.0.1:{r.status_port}"

    def resume(*args):
        return subprocess.run([aimctl, "resume", "--status", addr, *args],
                              capture_output=True, text=True, timeout=30)
    # the cause is still there: it stops again, and says so
    errors = r.output().count("stopped:")
    p = resume(G)
    assert p.returncode == 0 and "1 stopped group asked" in p.stdout, (p.stdout, p.stderr)
    wait_for(lambda: r.output().count("stopped:") > errors, 20, what="G to stop again")
    st = r.wait_group(G, lambda s: s["state"] == "stopped", what="G stopped again")
    assert "No space left on device" in st["error"], st
    # unknown and malformed groups are refused
    p = resume("22222222-2222-4222-8222-222222222222")
    assert p.returncode == 1 and "no such group" in p.stderr, p.stderr
    p = resume("Not-A-Group")
    assert p.returncode == 1 and "not a group" in p.stderr, p.stderr
    # room on the target: aimctl resume for one group, SIGHUP for the rest
    subprocess.run(["mount", "-o", "remount,size=16M", target], check=True)
    p = resume(G)
    assert p.returncode == 0, p.stderr
    r.wait_applied(G, lsn[G] - 1)
    assert r.group(H)["state"] == "stopped"
    r.proc.send_signal(signal.SIGHUP)
    r.wait_applied(H, lsn[H] - 1)
    for g in (G, H):
        with open(os.path.join(target, f"{g[:4]}.img"), "rb") as f:
            data = f.read()
        assert data[:3 << 17] == b"\x01" * (3 << 17) and data[1 << 19:] == b"\x02" * (6 << 17)
    assert r.stop() == 0
    assert r.starts == 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # ssl.TLSVersion.TLSv1_1
def test_the_transport_refuses_tls_before_1_2(aimfs, workdir, pki, monkeypatch):
    """A destination that speaks TLS 1.1 at most is never sent a segment,
    even where the system's OpenSSL configuration would allow TLS 1.0."""
    conf = os.path.join(workdir, "openssl.cnf")
    with open(conf, "w") as f:
        f.write("openssl_conf = conf\n[conf]\nssl_conf = ssl\n[ssl]\nsystem_default = sys\n"
                "[sys]\nMinProtocol = TLSv1\nCipherString = DEFAULT@SECLEVEL=0\n")
    monkeypatch.setenv("OPENSSL_CONF", conf)
    ctx = old_tls_context(ssl.TLSVersion.TLSv1_1, pki, server=True)
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    lsock.settimeout(0.2)
    port = lsock.getsockname()[1]
    seen = {"handshakes": 0, "versions": [], "refused": 0}
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                s, _ = lsock.accept()
            except OSError:
                continue
            s.settimeout(5)
            try:
                with ctx.wrap_socket(s, server_side=True) as t:
                    seen["handshakes"] += 1
                    seen["versions"].append(t.version())
                    t.recv(65536)
                    t.sendall(b"HTTP/1.1 500 no\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except (OSError, ssl.SSLError):
                seen["refused"] += 1
            finally:
                s.close()
    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        status = f"127.0.0.1:{free_port()}"
        aconf = os.path.join(workdir, "aimfs.conf")
        with open(aconf, "w") as f:
            f.write(f"[aimfs]\nstatus = {status}\nsegment_size = 256K\nsegment_age = 200ms\n\n"
                    f"[destination old]\nurl = https://127.0.0.1:{port}/aim\n"
                    f"ca_file = {pki.ca}\n")
        m = aimfs(options=[f"config={aconf}"])
        with open(os.path.join(m.mountpoint, "vm.img"), "wb") as f:
            f.write(b"x" * 100000)
        last = {}

        def tried():
            last["d"] = d = get_status(status)["destinations"][0]
            return seen["handshakes"] > 0 or (seen["refused"] >= 2 and d["state"] == "retrying")
        try:
            wait_for(tried, 30, 0.1, what="the transport to try twice")
        except TimeoutError:
            raise AssertionError(f"{seen} {last}") from None
        d = last["d"]
        assert seen["handshakes"] == 0, (seen, d)
        assert d["acked_lsn"] == 0 and d.get("last_error"), d
        assert m.unmount() == 0
    finally:
        stop.set()
        th.join(10)
        lsock.close()
