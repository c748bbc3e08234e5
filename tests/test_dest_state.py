"""A destination's state has one owner (transport/dest_state.c) and one
view (transport/dest_view.c), printed by both /status and /metrics: an
operator's dashboard (Prometheus) and an operator's curl must never tell
different stories.

A sampler reads /status, /metrics, /status in a loop through every state a
destination can reach here — resyncing (the initial sync of images that
exist before the mount), shipping (a burst of writes under a rate cap),
in_sync (idle), retrying (the receiver stopped), stopped (a destination
whose token the receiver refuses), tracking (a journal that fills up while
the destination ships slowly) — and wherever the two /status reads agree,
/metrics must say the same state for every destination.  Each of the six
states must have been seen that way."""
import os
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

from aimtest import assert_trees_equal, wait_for
from remote_helpers import PKI, Remote
from servers import free_port, get_status

STATES = {"in_sync", "shipping", "retrying", "stopped", "tracking", "resyncing"}
METRIC = re.compile(r'^aimfs_destination_state\{destination="([^"]+)",state="([^"]+)"\} 1$')
UP = re.compile(r'^aimfs_destination_up\{destination="([^"]+)"\} ([01])$')


def metrics_states(addr):
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
        text = r.read().decode()
    states, up = {}, {}
    for line in text.splitlines():
        m = METRIC.match(line)
        if m:
            assert m.group(1) not in states, f"two states for {m.group(1)}:\n{text}"
            states[m.group(1)] = m.group(2)
        m = UP.match(line)
        if m:
            up[m.group(1)] = m.group(2) == "1"
    return states, up


class Sampler:
    """Status, metrics, status, again and again; a triple whose two status
    reads agree is a stable sample, and its metrics must agree too."""

    def __init__(self, addr):
        self.addr = addr
        self.seen = {}          # destination -> states seen in stable samples
        self.disagreements = []
        self.samples = 0
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop_ev.wait(0.05):
            try:
                a = get_status(self.addr)
                states, up = metrics_states(self.addr)
                b = get_status(self.addr)
            except (OSError, urllib.error.URLError, ValueError):
                continue        # between two mounts
            sa = {d["name"]: d["state"] for d in a["destinations"]}
            sb = {d["name"]: d["state"] for d in b["destinations"]}
            if sa != sb:
                continue
            self.samples += 1
            for name, state in sa.items():
                self.seen.setdefault(name, set()).add(state)
                want_up = state in ("in_sync", "shipping")
                if states.get(name) != state or up.get(name) != want_up:
                    self.disagreements.append(
                        f"{name}: /status says {state}, /metrics says state "
                        f"{states.get(name)}, up {up.get(name)}")

    def close(self):
        self.stop_ev.set()
        self.thread.join(10)


def write_random(path, size, seed):
    import random
    rnd = random.Random(seed)
    with open(path, "r+b" if os.path.exists(path) else "wb") as f:
        for off in range(0, size, 256 << 10):
            f.seek(off)
            f.write(rnd.randbytes(256 << 10))
        f.flush()
        os.fsync(f.fileno())


def dest_state(addr, name):
    for d in get_status(addr)["destinations"]:
        if d["name"] == name:
            return d
    raise KeyError(name)


def test_status_and_metrics_agree_in_every_state(aimfs, workdir):
    pki = PKI(os.path.join(workdir, "pki"))
    inbox, target = os.path.join(workdir, "inbox"), os.path.join(workdir, "replica")
    os.makedirs(inbox)
    os.makedirs(target)
    r = Remote(workdir, inbox, target, listen=True, pki=pki, expect_alarms=True,
               args=["--client-ca", pki.ca, "--token-file", pki.token_file])
    r.start()
    wrong_token = os.path.join(workdir, "wrong.token")
    with open(wrong_token, "w") as f:
        f.write("not-the-token\n")
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    write_random(os.path.join(backing, "vm1.raw"), 6 << 20, 1)   # the initial sync's work
    addr = f"127.0.0.1:{free_port()}"
    creds = f"ca_file = {pki.ca}\ncert_file = {pki.client}\nkey_file = {pki.client_key}\n"

    def conf(name, aimfs_extra, dr1_extra, with_bad):
        text = (f"[aimfs]\nstatus = {addr}\nsegment_size = 256K\nsegment_age = 200ms\n"
                f"{aimfs_extra}\n[destination dr1]\nurl = {r.base_url}/aim\n{creds}"
                f"token_file = {pki.token_file}\n{dr1_extra}\n")
        if with_bad:
            # another URL on the same receiver (one URL per destination)
            text += (f"[destination bad]\nurl = {r.base_url}/bad\n{creds}"
                     f"token_file = {wrong_token}\n")
        path = os.path.join(workdir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    sampler = Sampler(addr)
    try:
        # resyncing, then in_sync; `bad` is refused (401): stopped
        m = aimfs(backing=backing, options=[f"config={conf('1.conf', '', 'rate = 2M', True)}"],
                  expect_alarms=True)
        wait_for(lambda: dest_state(addr, "dr1")["state"] == "in_sync", 120, 0.1,
                 "the initial sync of dr1")
        assert dest_state(addr, "bad")["state"] == "stopped"
        time.sleep(0.5)
        # shipping: a burst under the rate cap
        write_random(os.path.join(m.mountpoint, "vm1.raw"), 4 << 20, 2)
        wait_for(lambda: dest_state(addr, "dr1")["state"] == "in_sync", 60, 0.1, "the burst")
        # retrying: the receiver away while the guest writes
        r.stop()
        write_random(os.path.join(m.mountpoint, "vm1.raw"), 1 << 20, 3)
        wait_for(lambda: dest_state(addr, "dr1")["state"] == "retrying", 30, 0.1, "retrying")
        time.sleep(0.5)
        r.start()
        wait_for(lambda: dest_state(addr, "dr1")["state"] == "in_sync", 120, 0.1,
                 "dr1 back in sync")
        assert m.unmount() == 0

        # tracking: the journal fills while dr1 ships slowly
        m = aimfs(backing=backing, options=[
            f"config={conf('2.conf', 'journal_max = 1M', 'rate = 512K', False)}"],
                  expect_alarms=True)
        write_random(os.path.join(m.mountpoint, "vm1.raw"), 3 << 20, 4)
        wait_for(lambda: "tracking" in sampler.seen.get("dr1", ()), 60, 0.1, "tracking")
        wait_for(lambda: get_status(addr)["in_sync"] is True, 180, 0.2, "convergence")
        assert m.unmount() == 0
    finally:
        sampler.close()
        r.close()
    assert not sampler.disagreements, "\n".join(sampler.disagreements[:20])
    seen = sampler.seen.get("dr1", set()) | sampler.seen.get("bad", set())
    assert STATES <= seen, f"states seen: {sampler.seen} ({sampler.samples} samples)"
    assert_trees_equal(backing, target)


def test_the_status_reads_each_waiting_segment_once(aimfs, workdir):
    """The backlog in the status (bytes, segments, seconds) is made of the
    segments a destination has not acknowledged.  Every request used to
    open each of them to read its size and creation time: after a long
    outage with small segments, thousands of files per request, and a
    dashboard polling it kept aimfs busy.  Their facts do not change once
    sealed: each is read once.  (strace counts the opens: the time they
    took is this VM's, the number is the code's.)"""
    addr = f"127.0.0.1:{free_port()}"
    # a port held but not listening: refused, and no other test's server
    # can take it meanwhile
    hold = socket.socket()
    hold.bind(("127.0.0.1", 0))
    away = f"https://127.0.0.1:{hold.getsockname()[1]}/aim"
    m = aimfs(options=[f"status={addr}", f"dest={away}", "segment_size=64K",
                       "segment_age=100ms"], expect_alarms=True)
    with open(os.path.join(m.mountpoint, "vm.img"), "wb") as f:
        for i in range(48):
            f.write(os.urandom(64 << 10))
            f.flush()
            os.fsync(f.fileno())

    def sealed():
        """The sealed segments the destination waits for: those after the
        last it acknowledged (the initial sync of a new destination may
        have skipped the first ones, which stay until a prune)."""
        acked = get_status(addr)["destinations"][0]["acked_segment"]
        return {n: os.path.getsize(os.path.join(m.journal, n)) for n in os.listdir(m.journal)
                if n.endswith(".aimj") and int(n.split(".")[0]) > acked}
    # everything sealed, and the status counting all of it
    wait_for(lambda: get_status(addr)["destinations"][0]["backlog_segments"] == len(sealed())
             >= 40 and not get_status(addr)["open_segment_bytes"], 30, 0.2,
             "every write in a sealed segment, waiting")
    files = sealed()
    backlog = len(files)
    trace = os.path.join(workdir, "strace.out")
    st = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=open,openat", "-o", trace,
                           "-p", str(m.proc.pid)], stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)           # attached to every thread
        views = [get_status(addr)["destinations"][0] for _ in range(10)]
    finally:
        st.terminate()
        st.wait(10)
    # the same backlog as the files say
    assert all(v["backlog_segments"] == backlog for v in views), views
    assert all(v["backlog_bytes"] == sum(files.values()) for v in views), views
    with open(trace) as f:
        opens = [line for line in f if ".aimj" in line]
    # the worker's retries open the first segment now and then; ten
    # requests used to open the whole backlog ten times
    assert len(opens) < backlog, (len(opens), backlog, opens[:20])
    assert m.unmount() == 0
    hold.close()
