"""The README's Failover section, run as written (issue 13, items 1 to 3):
a test failover on overlays of a held replica, a planned failover,
failback with reverse replication, a planned failback and the original
direction again -- prod -> dr1, promote dr1, writes on dr1, dr1 -> prod,
promote prod, prod -> dr1 -- with the images compared after every step and
the bytes on the wire measured against the bytes that differ.

Two "hosts", prod and dr1, are directories of this machine: every path of
the README (/srv/aim/..., /etc/aimfs/..., /etc/aim-remote/...,
/var/lib/libvirt/images) is moved under its host's directory, its ports
(9380, 9381, 9443) become free ones of its own, and prod.example.net or
dr1.example.net become 127.0.0.1; nothing else of a command changes, and
every one of them must be there (the README and this test cannot drift
apart silently).  `systemctl start|stop UNIT@NAME` runs the daemon the way
the unit does (aimfs -f -o config=/etc/aimfs/NAME.conf; aim-remote
$AIM_REMOTE_OPTIONS of /etc/aim-remote/NAME.env), records its PID and waits
until it serves; every daemon is stopped by that PID at the end, and every
mount undone with fusermount3, even when the test fails.  The README's
blocks say where they run (`# on prod`, `# on dr1`, or `# FILE on HOST`
for a file to write); the test runs them in order, between its own writes
(the VMs) and checks."""
import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from aimtest import AIM_REMOTE, AIMCTL, AIMFS, ALARM_WORDS, assert_trees_equal, is_mounted, \
    run, wait_for
from remote_helpers import PKI, free_port
from servers import get_status, wait_in_sync

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOSTS = ("prod", "dr1")
IMAGE_MB = 64
BLOCK = 65536                  # the resync's hash block


# ---- the README's blocks ----

def readme_blocks():
    """[(kind, host, path, text)] of the Failover section's fenced blocks:
    kind 'run' (a `# on HOST` shell block) or 'file' (`# PATH on HOST`)."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text.split("\n## Failover\n", 1)[1].split("\n## ", 1)[0]
    blocks = []
    for lang, body in re.findall(r"```(sh|ini)\n(.*?)```", section, re.S):
        m = re.match(r"# (?:(/\S+) )?on (prod|dr1)\b", body)
        assert m, f"a Failover block says neither where it runs nor which file it is:\n{body}"
        blocks.append(("file" if m.group(1) else "run", m.group(2), m.group(1), body))
    return section, blocks


# ---- the hosts ----

SYSTEMCTL = r'''#!/usr/bin/python3
"""systemctl for the README test: start|stop aimfs@NAME|aim-remote@NAME,
run as the units run them, under the host directory $AIM_TEST_HOST."""
import os, shlex, signal, socket, subprocess, sys, time
verb, unit = sys.argv[1], sys.argv[2]
root = os.environ["AIM_TEST_HOST"]
kind, name = unit.split("@", 1)
pidfile = f"{root}/run/{unit}.pid"
def listening(addr):
    host, port = addr.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), 0.5).close()
        return True
    except OSError:
        return False
def mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(l.split()[4] == os.path.realpath(path) for l in f)
if verb == "start":
    if kind == "aimfs":
        conf = f"{root}/etc/aimfs/{name}.conf"
        keys = dict(l.split("=", 1) for l in open(conf) if "=" in l and not l.startswith("#"))
        keys = {k.strip(): v.strip() for k, v in keys.items()}
        cmd = [os.environ["AIM_TEST_AIMFS"], "-f", "-o", f"config={conf}"]
        ready = lambda: mounted(keys["mountpoint"]) and listening(keys["status"])
    else:
        env = dict(l.strip().split("=", 1) for l in open(f"{root}/etc/aim-remote/{name}.env")
                   if "=" in l and not l.startswith("#"))
        opts = shlex.split(env["AIM_REMOTE_OPTIONS"])
        cmd = [os.environ["AIM_TEST_AIM_REMOTE"], *opts]
        addrs = [opts[i + 1] for i, o in enumerate(opts) if o in ("--status", "--listen")]
        ready = lambda: all(listening(a) for a in addrs)
    log = open(f"{root}/log/{unit}.log", "ab")
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         start_new_session=True)
    with open(pidfile, "w") as f:
        f.write(f"{p.pid}\n")
    deadline = time.monotonic() + 60
    while not ready():
        if p.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"systemctl: {unit} did not start ({p.poll()}): see {root}/log/{unit}.log")
        time.sleep(0.05)
elif verb == "stop":
    pid = int(open(pidfile).read())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 120
    while os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z":
        if time.monotonic() > deadline:
            sys.exit(f"systemctl: {unit} did not stop")
        time.sleep(0.05)
    os.unlink(pidfile)
else:
    sys.exit(f"systemctl: {verb}: only start and stop here")
'''


class Host:
    def __init__(self, workdir, name):
        self.name = name
        self.root = os.path.join(workdir, name)
        self.ports = {"aimfs": free_port(), "remote": free_port(), "rx": free_port()}
        for d in ("srv/aim", "etc/aimfs/pki", "etc/aim-remote/pki", "var/lib/libvirt/images",
                  "run", "log"):
            os.makedirs(os.path.join(self.root, d), exist_ok=True)

    def path(self, p):
        return self.root + p

    @property
    def aimfs_status(self):
        return f"127.0.0.1:{self.ports['aimfs']}"

    @property
    def remote_status(self):
        return f"127.0.0.1:{self.ports['remote']}"


class Sites:
    def __init__(self, workdir):
        self.workdir = workdir
        self.hosts = {h: Host(workdir, h) for h in HOSTS}
        self.prod, self.dr1 = self.hosts["prod"], self.hosts["dr1"]
        self.bin = os.path.join(workdir, "bin")
        os.makedirs(self.bin)
        with open(os.path.join(self.bin, "systemctl"), "w") as f:
            f.write(SYSTEMCTL)
        os.chmod(os.path.join(self.bin, "systemctl"), 0o755)
        self.env = dict(os.environ, AIM_TEST_AIMFS=AIMFS, AIM_TEST_AIM_REMOTE=AIM_REMOTE,
                        PATH=":".join([self.bin, os.path.dirname(AIMCTL),
                                       os.path.dirname(AIMFS), os.path.dirname(AIM_REMOTE),
                                       os.environ.get("PATH", "/usr/bin:/bin")]))
        self.ran = []              # the commands run, for failure messages

    def localize(self, host, text):
        h = self.hosts[host]
        pairs = [("/srv/aim/", h.path("/srv/aim/")), ("/etc/aimfs/", h.path("/etc/aimfs/")),
                 ("/etc/aim-remote/", h.path("/etc/aim-remote/")),
                 ("/var/lib/libvirt/images", h.path("/var/lib/libvirt/images")),
                 ("127.0.0.1:9380", h.aimfs_status), ("127.0.0.1:9381", h.remote_status),
                 ("0.0.0.0:9443", f"127.0.0.1:{h.ports['rx']}")]
        for other in self.hosts.values():
            pairs.append((f"https://{other.name}.example.net:9443",
                          f"https://127.0.0.1:{other.ports['rx']}"))
        for old, new in pairs:
            text = text.replace(old, new)
        return text

    def systemctl(self, host, *args):
        p = subprocess.run(["systemctl", *args], env=dict(self.env,
                           AIM_TEST_HOST=self.hosts[host].root), capture_output=True, text=True,
                           timeout=180)
        assert p.returncode == 0, f"systemctl {' '.join(args)} on {host}: {p.stdout}{p.stderr}"

    def run_block(self, block, timeout=300):
        kind, host, path, text = block
        text = self.localize(host, text)
        if kind == "file":
            path = self.localize(host, path)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
            self.ran.append(f"[{host}] wrote {path}")
            return None
        self.ran.append(f"[{host}] {text.strip()}")
        p = subprocess.run(["bash", "-euo", "pipefail", "-c", text], capture_output=True,
                           text=True, timeout=timeout,
                           env=dict(self.env, AIM_TEST_HOST=self.hosts[host].root))
        assert p.returncode == 0, (f"README block on {host} failed ({p.returncode}):\n{text}\n"
                                   f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}\n"
                                   f"{self.logs()}")
        return p

    def logs(self):
        out = []
        for h in self.hosts.values():
            d = h.path("/log")
            for f in sorted(os.listdir(d)):
                with open(os.path.join(d, f), errors="replace") as fh:
                    out.append(f"--- {h.name} {f} (tail)\n" + "".join(fh.readlines()[-25:]))
        return "\n".join(out)

    def cleanup(self):
        """Every daemon by its PID, every mount by fusermount3; never raises."""
        for h in self.hosts.values():
            run_dir = h.path("/run")
            for f in os.listdir(run_dir):
                try:
                    pid = int(open(os.path.join(run_dir, f)).read())
                    os.kill(pid, signal.SIGTERM)
                    for _ in range(200):
                        if not os.path.exists(f"/proc/{pid}"):
                            break
                        time.sleep(0.05)
                    else:
                        os.kill(pid, signal.SIGKILL)
                except (OSError, ValueError):
                    pass
            mnt = h.path("/var/lib/libvirt/images")
            if is_mounted(mnt):
                subprocess.run(["fusermount3", "-u", "-z", mnt], check=False)

    def alarms(self, host, unit):
        with open(self.hosts[host].path(f"/log/{unit}.log"), errors="replace") as f:
            return [line for line in f if any(w in line for w in ALARM_WORDS)]


@pytest.fixture
def sites(workdir):
    s = Sites(workdir)
    yield s
    s.cleanup()


def install(sites, pki):
    """What examples/ sets up before this section: the PKI, prod's
    aimfs@images (examples/aimfs.conf, one destination) and dr1's
    aim-remote@dr1 (examples/systemd/dr1.env)."""
    prod, dr1 = sites.prod, sites.dr1
    for h in (prod, dr1):
        for src, dst in ((pki.ca, "/etc/aimfs/pki/ca.pem"), (pki.client, "/etc/aimfs/pki/client.pem"),
                         (pki.client_key, "/etc/aimfs/pki/client.key"),
                         (pki.server, "/etc/aim-remote/pki/server.pem"),
                         (pki.server_key, "/etc/aim-remote/pki/server.key"),
                         (pki.ca, "/etc/aim-remote/pki/ca.pem"),
                         (pki.token_file, "/etc/aim-remote/token"),
                         (pki.token_file, "/etc/aimfs/prod.token"),
                         (pki.token_file, "/etc/aimfs/dr1.token")):
            run(["cp", src, h.path(dst)])
    os.makedirs(prod.path("/srv/aim/images"))
    with open(prod.path("/etc/aimfs/images.conf"), "w") as f:
        f.write(sites.localize("prod", """[aimfs]
backing_dir = /srv/aim/images
mountpoint = /var/lib/libvirt/images
journal = /srv/aim/journal
status = 127.0.0.1:9380
segment_size = 1M
segment_age = 300ms
[destination dr1]
url = https://dr1.example.net:9443/aim
ca_file = /etc/aimfs/pki/ca.pem
cert_file = /etc/aimfs/pki/client.pem
key_file = /etc/aimfs/pki/client.key
token_file = /etc/aimfs/dr1.token
"""))
    for d in ("/srv/aim/inbox", "/srv/aim/replica"):
        os.makedirs(dr1.path(d))
    with open(dr1.path("/etc/aim-remote/dr1.env"), "w") as f:
        f.write(sites.localize("dr1", "AIM_REMOTE_OPTIONS=--inbox /srv/aim/inbox --target-dir "
                               "/srv/aim/replica --state /srv/aim/state --listen 0.0.0.0:9443 "
                               "--tls-cert /etc/aim-remote/pki/server.pem --tls-key "
                               "/etc/aim-remote/pki/server.key --client-ca "
                               "/etc/aim-remote/pki/ca.pem --token-file /etc/aim-remote/token "
                               "--status 127.0.0.1:9381\n"))


# ---- the VMs: writes of whole 64 KiB blocks, fsynced ----

def write_blocks(path, rng, nblocks, size=IMAGE_MB << 20, among=None):
    """Writes nblocks random 64 KiB blocks at random block offsets (or
    among those given), then fsync and close (a barrier).  Returns the
    blocks written."""
    fd = os.open(path, os.O_RDWR)
    try:
        done = set()
        for _ in range(nblocks):
            b = rng.choice(sorted(among)) if among else rng.randrange(size // BLOCK)
            os.pwrite(fd, rng.randbytes(BLOCK), b * BLOCK)
            done.add(b)
        os.fsync(fd)
    finally:
        os.close(fd)
    return done


def qcow2_write(path, rng, n):
    for _ in range(n):
        off = rng.randrange(IMAGE_MB - 1) << 20
        run(["qemu-io", "-f", "qcow2", "-c", f"write -P {rng.randrange(1, 255)} {off} 1M", path])


def differing_bytes(a, b):
    """Bytes of the 64 KiB blocks in which two image directories differ
    (each image compared block by block; a block only one side has counts
    whole), and the bytes of the hashes a comparison of them ships."""
    diff = hashes = 0
    for name in sorted(os.listdir(a)):
        pa, pb = os.path.join(a, name), os.path.join(b, name)
        if not os.path.isfile(pa):
            continue
        size = max(os.path.getsize(pa), os.path.getsize(pb) if os.path.exists(pb) else 0)
        hashes += (size + BLOCK - 1) // BLOCK * 8
        with open(pa, "rb") as fa, open(pb, "rb") as fb:
            while True:
                x, y = fa.read(BLOCK), fb.read(BLOCK)
                if not x and not y:
                    break
                if x != y:
                    diff += max(len(x), len(y))
    return diff, hashes


def framing_records(d):
    """How many records a comparison of the images of d needs besides its
    data and hashes: one per data extent and one per hole (ZERO records:
    holes travel as records, not data) and one HASH record per MiB of data
    at most; each costs a 64-byte record header and a few bytes more."""
    n = 0
    for name in os.listdir(d):
        p = os.path.join(d, name)
        fd = os.open(p, os.O_RDONLY)
        try:
            end, off = os.fstat(fd).st_size, 0
            while off < end:
                try:
                    data = os.lseek(fd, off, os.SEEK_DATA)
                except OSError:
                    n += 1                      # a hole to the end
                    break
                hole = os.lseek(fd, data, os.SEEK_HOLE)
                n += (1 if data > off else 0) + 1 + (hole - data) // (1 << 20)
                off = hole
        finally:
            os.close(fd)
    return n


def digests(d):
    out = {}
    for name in sorted(os.listdir(d)):
        p = os.path.join(d, name)
        if os.path.isfile(p):
            st = os.stat(p)
            with open(p, "rb") as f:
                out[name] = (hashlib.sha256(f.read()).hexdigest(), st.st_size, st.st_mtime_ns)
    return out


def remote_group(addr, gid):
    for g in get_status(addr)["groups"]:
        if g["group"] == gid:
            return g
    return None


def converged(source_addr, remote_addr, timeout=240, what="convergence"):
    """The source in sync (every destination in_sync, nothing in flight),
    the remote idle with the acknowledged segment applied."""
    last = {}

    def ok():
        st = last["source"] = get_status(source_addr)
        if st.get("in_sync") is not True:
            return False
        (d,) = st["destinations"]
        g = last["remote"] = remote_group(remote_addr, st["group"])
        return g is not None and g["state"] == "idle" and g["consistent"] and \
            g["applied_segment"] >= d["acked_segment"]
    try:
        wait_for(ok, timeout, 0.2, what=what)
    except TimeoutError:
        raise AssertionError(f"no {what}: {last}") from None
    return last["source"]


def test_readme_failover_failback_walk(sites, workdir):
    t_start = time.monotonic()
    section, blocks = readme_blocks()
    for old in ("/srv/aim/", "/etc/aimfs/", "/etc/aim-remote/", "/var/lib/libvirt/images",
                "127.0.0.1:9380", "127.0.0.1:9381", "0.0.0.0:9443",
                "https://prod.example.net:9443", "systemctl start aimfs@failback"):
        assert old in section, f"the README's Failover section no longer contains {old!r}"
    todo = list(blocks)

    def readme(host, first):
        """Runs the README's next block, which must be on host and contain first."""
        assert todo, f"the README has no more blocks; expected {first!r} on {host}"
        kind, h, path, text = todo[0]
        assert h == host and first in text, (f"the README's next block is not {first!r} on "
                                             f"{host}:\n{text}")
        todo.pop(0)
        return sites.run_block((kind, h, path, text))

    pki = PKI(os.path.join(workdir, "pki"))
    install(sites, pki)
    prod, dr1 = sites.prod, sites.dr1
    rng = random.Random(1313)
    figures = []
    prod_mnt = prod.path("/var/lib/libvirt/images")
    dr1_mnt = dr1.path("/var/lib/libvirt/images")
    prod_images = prod.path("/srv/aim/images")
    replica = dr1.path("/srv/aim/replica")

    # ---- prod -> dr1, as installed ----
    sites.systemctl("dr1", "start", "aim-remote@dr1")
    sites.systemctl("prod", "start", "aimfs@images")
    run(["qemu-img", "create", "-q", "-f", "qcow2", os.path.join(prod_mnt, "vm1.qcow2"),
         f"{IMAGE_MB}M"])
    with open(os.path.join(prod_mnt, "vm1-data.raw"), "wb") as f:
        f.truncate(IMAGE_MB << 20)
    data_blocks = write_blocks(os.path.join(prod_mnt, "vm1-data.raw"), rng, 200)
    qcow2_write(os.path.join(prod_mnt, "vm1.qcow2"), rng, 6)
    st = converged(prod.aimfs_status, dr1.remote_status, what="the first sync")
    g1 = st["group"]
    assert_trees_equal(prod_images, replica)

    # ---- test failover ----
    at_mark = digests(prod_images)
    readme("dr1", "--timeout 0")
    readme("prod", "aimctl mark")
    p = readme("dr1", "mkdir -p /srv/aim/test")
    assert "held at LSN" in p.stdout and "(MARK," in p.stdout, p.stdout
    held = digests(replica)
    assert {k: v[:2] for k, v in held.items()} == {k: v[:2] for k, v in at_mark.items()}
    # the source keeps writing; its segments arrive and wait
    write_blocks(os.path.join(prod_mnt, "vm1-data.raw"), rng, 64)
    qcow2_write(os.path.join(prod_mnt, "vm1.qcow2"), rng, 2)
    wait_for(lambda: remote_group(dr1.remote_status, g1)["backlog_segments"] > 0, 60,
             what="segments to wait at dr1")
    # the test VM writes to its overlays, and reads the held point through them
    test_dir = dr1.path("/srv/aim/test")
    for name, fmt in (("vm1.qcow2", "qcow2"), ("vm1-data.raw", "raw")):
        ov = os.path.join(test_dir, name if fmt == "qcow2" else "vm1-data.qcow2")
        run(["qemu-img", "compare", "-f", "qcow2", "-F", fmt, ov, os.path.join(replica, name)])
        run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x7e 0 4M", ov])
    g = remote_group(dr1.remote_status, g1)
    assert g["state"] == "held" and g["hold"]["reached"], g
    assert digests(replica) == held, "the held replica changed"
    readme("dr1", "aimctl release")
    converged(prod.aimfs_status, dr1.remote_status, what="the catch-up after the release")
    assert_trees_equal(prod_images, replica)

    # ---- planned failover to dr1 ----
    write_blocks(os.path.join(prod_mnt, "vm1-data.raw"), rng, 32)
    readme("prod", "jq -e .in_sync")
    p = readme("dr1", "aimctl promote")
    assert f"group {g1}: promoted at LSN" in p.stdout and "consistent" in p.stdout, p.stdout
    assert not is_mounted(prod_mnt)
    assert_trees_equal(prod_images, replica)
    readme("dr1", "/etc/aimfs/failback.conf")
    readme("dr1", "systemctl start aimfs@failback")
    # the VMs run at dr1 while prod is away; prod's images also hold writes
    # that never reached dr1 (what an unplanned failover leaves behind)
    write_blocks(os.path.join(dr1_mnt, "vm1-data.raw"), rng, 48)
    qcow2_write(os.path.join(dr1_mnt, "vm1.qcow2"), rng, 2)
    write_blocks(os.path.join(prod_images, "vm1-data.raw"), rng, 24, among=data_blocks)
    diff, hashes = differing_bytes(prod_images, replica)
    framing = 128 * framing_records(replica)
    assert diff >= 48 * BLOCK, diff

    # ---- failback: dr1 -> prod, only the differences ----
    t0 = time.monotonic()
    readme("prod", "/etc/aim-remote/failback.env")
    readme("prod", "systemctl start aim-remote@failback")
    st = converged(dr1.aimfs_status, prod.remote_status, what="the reverse sync")
    g2 = st["group"]
    assert g2 != g1
    shipped = st["destinations"][0]["bytes_shipped"]
    figures.append(f"reverse sync dr1 -> prod: {shipped} bytes on the wire for {diff} bytes in"
                   f" differing 64 KiB blocks + {hashes} bytes of hashes"
                   f" ({shipped / (diff + hashes):.3f}x; record framing allowed: {framing}),"
                   f" {time.monotonic() - t0:.1f} s")
    assert shipped <= 1.1 * diff + hashes + framing, figures[-1]
    assert_trees_equal(replica, prod_images)

    # ---- planned failback to prod, then prod -> dr1 again ----
    write_blocks(os.path.join(dr1_mnt, "vm1-data.raw"), rng, 16)
    readme("dr1", "jq -e .in_sync")
    t0 = time.monotonic()
    p = readme("prod", "aimctl promote")
    assert f"group {g2}: promoted at LSN" in p.stdout, p.stdout
    assert "consistent" in p.stdout and "NOT" not in p.stdout, p.stdout
    assert_trees_equal(replica, prod_images)
    st = converged(prod.aimfs_status, dr1.remote_status, what="prod -> dr1 again")
    g3 = st["group"]
    assert g3 not in (g1, g2)
    shipped3 = st["destinations"][0]["bytes_shipped"]
    diff3, hashes3 = differing_bytes(prod_images, replica)
    framing3 = 128 * framing_records(prod_images)
    figures.append(f"prod -> dr1 again: {shipped3} bytes on the wire, {diff3} differing,"
                   f" {hashes3} bytes of hashes, record framing allowed: {framing3},"
                   f" {time.monotonic() - t0:.1f} s")
    assert diff3 == 0 and shipped3 <= 1.1 * hashes3 + framing3, figures[-1]
    assert_trees_equal(prod_images, replica)
    write_blocks(os.path.join(prod_mnt, "vm1-data.raw"), rng, 32)
    qcow2_write(os.path.join(prod_mnt, "vm1.qcow2"), rng, 1)
    converged(prod.aimfs_status, dr1.remote_status, what="new writes at prod")
    assert_trees_equal(prod_images, replica)
    assert not todo, f"README blocks not run: {todo}"
    # dr1 refuses the old group; both aim-remotes said nothing alarming
    assert remote_group(dr1.remote_status, g1)["state"] == "promoted"
    sites.systemctl("prod", "stop", "aimfs@images")
    sites.systemctl("dr1", "stop", "aim-remote@dr1")
    for host, unit in (("dr1", "aim-remote@dr1"), ("prod", "aim-remote@failback"),
                       ("prod", "aimfs@images")):
        assert not sites.alarms(host, unit), (unit, sites.alarms(host, unit))
    figures.append(f"whole walk {time.monotonic() - t_start:.1f} s")
    print("\n".join(figures))
    sys.stdout.flush()


def test_unplanned_failover_lands_on_the_latest_consistent_barrier(aimfs, workdir):
    """The source dies (kill -9 of aimfs) in the middle of fsynced writes,
    while dr holds its replica for a test failover, so segments wait there:
    promote applies what arrived up to its last FLUSH, and the promoted copy
    is exactly the source's images at that record -- a replay of the
    source's own journal up to it gives the same bytes."""
    from remote_helpers import Remote
    pki = PKI(os.path.join(workdir, "pki"))
    inbox, target = os.path.join(workdir, "inbox"), os.path.join(workdir, "replica")
    os.makedirs(inbox)
    os.makedirs(target)
    r = Remote(workdir, inbox, target, listen=True, pki=pki,
               args=["--client-ca", pki.ca, "--token-file", pki.token_file])
    remote = ["--status", f"127.0.0.1:{r.status_port}"]
    try:
        r.start()
        status = f"127.0.0.1:{free_port()}"
        conf = os.path.join(workdir, "a.conf")
        with open(conf, "w") as f:
            f.write(f"[aimfs]\nstatus = {status}\nsegment_size = 256K\nsegment_age = 200ms\n"
                    f"retain = 1h\n[destination dr]\nurl = {r.base_url}/aim\n"
                    f"ca_file = {pki.ca}\ncert_file = {pki.client}\n"
                    f"key_file = {pki.client_key}\ntoken_file = {pki.token_file}\n")
        m = aimfs(options=[f"config={conf}"])
        rng = random.Random(7)
        fds = []
        for name in ("vm-a.raw", "vm-b.raw"):
            fd = os.open(os.path.join(m.mountpoint, name), os.O_RDWR | os.O_CREAT, 0o644)
            os.ftruncate(fd, 16 << 20)
            fds.append(fd)

        def write_for(seconds):
            n, deadline = 0, time.monotonic() + seconds
            while time.monotonic() < deadline:
                fd = fds[n % 2]
                os.pwrite(fd, rng.randbytes(4096 * rng.randrange(1, 16)),
                          rng.randrange(16 << 20 >> 12) << 12)
                n += 1
                if n % 7 == 0:
                    os.fsync(fd)
            return n
        # from a copy that is consistent: the initial sync is over
        wait_in_sync(status)
        n = write_for(1.5)
        group = get_status(status)["group"]
        p = subprocess.run([AIMCTL, "hold", *remote], capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr
        n += write_for(1.5)
        wait_for(lambda: r.group(group)["backlog_segments"] > 2, 60, what="segments to wait")
        m.kill9()                               # unplanned: the source is gone
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        p = subprocess.run([AIMCTL, "promote", *remote], capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr
        got = re.search(r"promoted at LSN (\d+) \(FLUSH, source time", p.stdout)
        assert got and "the last barrier of the segments that arrived" in p.stdout, p.stdout
        lsn = int(got.group(1))
        # the source's own journal, replayed from nothing up to that record
        again = os.path.join(workdir, "again")
        os.makedirs(again)
        run([AIMCTL, "replay", "--target-dir", again, "--until", str(lsn),
             os.path.join(m.backing, ".aimfs")])
        assert_trees_equal(again, target)
        g = r.group(group)
        assert g["state"] == "promoted" and g["applied_lsn"] == lsn, g
        print(f"{n} writes; promoted at LSN {lsn} (FLUSH), {g['backlog_segments']} segment(s)"
              f" left unapplied; the source's journal replayed to it is equal")
        r.check_quiet()
    finally:
        r.close()
