"""Every file of examples/ is exercised here, not read by eye.

The examples tell one story (examples/README.md): a libvirt host whose
images aimfs mirrors to a DR site (aim-remote's own receiver) and to an
office (nginx WebDAV in front of a watching aim-remote).  The `site`
fixture builds that story on this machine from the example files
themselves, with only their paths, ports and secrets made local: three
"hosts" under one directory, each daemon started the way its systemd unit
starts it (ExecStart with %i and the environment file expanded, the unit's
capability bounding set and NoNewPrivileges applied with setpriv, a notify
socket bound by the test), nginx running the example server block.  The
other tests check what needs no running site: virt-xml-validate,
systemd-analyze verify, the fstab line mounted through mount.fuse3,
promtool on the rules and the scrape config, the dashboard's JSON.
"""
import configparser
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.request
import xml.etree.ElementTree as ET

import pytest

from aimtest import AIM_REMOTE, AIMFS, BUILD_DIR, assert_trees_equal, is_mounted, wait_for
from remote_helpers import PKI
from servers import free_port, get_status, wait_in_sync
from test_notify import NotifySocket

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EX = os.path.join(ROOT, "examples")
UNIT_DIR = os.path.join(BUILD_DIR, "examples")   # units configured by meson
PROGRAMS = {"aimfs": AIMFS, "aim-remote": AIM_REMOTE}


def ex(*p):
    return os.path.join(EX, *p)


def read(path):
    with open(path) as f:
        return f.read()


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 120),
                          stdin=subprocess.DEVNULL, **kw)


def localize(text, pairs, what):
    """Replaces each (old, new) in text; every old must be there, so that the
    test and the example cannot drift apart silently."""
    for old, new in pairs:
        assert old in text, f"{what} no longer contains {old!r}"
        text = text.replace(old, new)
    return text


def host_paths(root, etc):
    """An example host's absolute paths (/srv/aim/ and its /etc directory),
    moved under root."""
    return [("/srv/aim/", root + "/srv/aim/"), (etc, root + etc)]


def apply_present(text, pairs):
    for old, new in pairs:
        text = text.replace(old, new)
    return text


# ---- systemd units, run as systemd would ----

def unit_settings(path):
    """{key: value} of a unit's [Service] section (last one wins)."""
    out, section = {}, None
    for line in read(path).splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            out[k] = v
    return out


def env_file(path):
    out = {}
    for line in read(path).splitlines():
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k] = v.strip('"')
    return out


def unit_command(unit, instance, env=None, subst=()):
    """The command systemd runs for unit@instance: ExecStart with %i and
    $VARS expanded (a $VAR splits into words), with the unit's UMask, under
    setpriv with its CapabilityBoundingSet and NoNewPrivileges."""
    s = unit_settings(os.path.join(UNIT_DIR, unit))
    assert s["Type"] == "notify"
    words = []
    for w in shlex.split(s["ExecStart"].replace("%i", instance)):
        m = re.fullmatch(r"\$(\w+)", w)
        words += (env or {})[m.group(1)].split() if m else [w]
    prog = os.path.basename(words[0])
    assert os.path.dirname(words[0]).endswith("/bin") and prog in PROGRAMS, words[0]
    words[0] = PROGRAMS[prog]
    words = [apply_present(w, subst) for w in words]
    caps = s["CapabilityBoundingSet"].split()
    setpriv = ["setpriv", "--bounding-set",
               "-all," + ",".join("+" + c[len("CAP_"):].lower() for c in caps)]
    if s.get("NoNewPrivileges") == "yes":
        setpriv.append("--no-new-privs")
    umask = ["sh", "-c", f'umask {s.get("UMask", "0022")} && exec "$@"', "sh"]
    return umask + setpriv + ["--"] + words


class Service:
    """One daemon started as its unit starts it, with a notify socket."""

    def __init__(self, name, cmd, workdir):
        self.name, self.cmd = name, cmd
        self.notify = NotifySocket(os.path.join(workdir, name + ".notify"))
        self.log_path = os.path.join(workdir, name + ".log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=dict(os.environ, NOTIFY_SOCKET=self.notify.path),
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    def ready(self):
        try:
            return self.notify.wait_for("READY", self.proc, 30)
        except AssertionError:
            raise AssertionError(f"{self.name} never said READY=1: {' '.join(self.cmd)}\n"
                                 f"{read(self.log_path)}") from None

    def stop(self):
        """systemctl stop: SIGTERM; returns the exit status after STOPPING=1."""
        self.proc.send_signal(signal.SIGTERM)
        stopping = self.notify.wait_for("STOPPING", self.proc, 30)
        assert stopping["STOPPING"] == "1"
        return self.proc.wait(60)

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        self.notify.close()

    def output(self):
        return read(self.log_path)


# ---- the site: the examples, running ----

class Site:
    pass


def http_get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


@pytest.fixture(scope="module")
def site():
    w = tempfile.mkdtemp(prefix="aimfs-examples-", dir=os.environ.get("AIM_TEST_TMP", "/var/tmp"))
    s = Site()
    s.dir = w
    services, nginx = [], None
    s.src, s.dr1, s.office = w + "/src", w + "/dr1", w + "/office"
    s.mnt = s.src + "/mnt"
    p = {name: free_port() for name in ("dr1", "dr1_status", "office_status", "nginx", "aimfs")}
    s.ports = p
    try:
        pki = PKI(w + "/pki")
        s.pki = pki
        for d in (s.src + "/srv/aim/images", s.src + "/srv/aim/journal", s.mnt,
                  s.src + "/etc/aimfs/pki", s.dr1 + "/etc/aim-remote/pki",
                  s.office + "/etc/aim-remote/pki", s.dr1 + "/dev", w + "/nginx"):
            os.makedirs(d)
        for host in (s.dr1, s.office):
            for d in ("inbox", "replica", "state", "nginx-tmp"):
                os.makedirs(f"{host}/srv/aim/{d}")
            shutil.copy(pki.server, host + "/etc/aim-remote/pki/server.pem")
            shutil.copy(pki.server_key, host + "/etc/aim-remote/pki/server.key")
            shutil.copy(pki.ca, host + "/etc/aim-remote/pki/ca.pem")
        shutil.copy(pki.ca, s.src + "/etc/aimfs/pki/ca.pem")
        shutil.copy(pki.client, s.src + "/etc/aimfs/pki/client.pem")
        shutil.copy(pki.client_key, s.src + "/etc/aimfs/pki/client.key")
        shutil.copy(pki.token_file, s.src + "/etc/aimfs/dr1.token")
        shutil.copy(pki.token_file, s.dr1 + "/etc/aim-remote/token")
        s.office_token = "office-" + pki.token
        with open(s.src + "/etc/aimfs/office.token", "w") as f:
            f.write(s.office_token + "\n")
        # dr1.env maps the database's data disk to an LVM volume: here a file.
        s.db1_data = s.dr1 + "/dev/db1-data"
        open(s.db1_data, "w").close()

        # aim-remote@dr1: the example environment file, the unit's command.
        dr1_env = env_file(ex("systemd", "dr1.env"))
        dr1_env["AIM_REMOTE_OPTIONS"] = localize(dr1_env["AIM_REMOTE_OPTIONS"], host_paths(s.dr1, "/etc/aim-remote/") + [
            ("/dev/vg0/db1-data", s.db1_data),
            ("0.0.0.0:9443", f"127.0.0.1:{p['dr1']}"),
            ("127.0.0.1:9381", f"127.0.0.1:{p['dr1_status']}")], "dr1.env")
        services.append(Service("aim-remote@dr1", unit_command("aim-remote@.service", "dr1",
                                                                dr1_env), w))
        s.dr1_service = services[-1]
        s.dr1_service.ready()

        # aim-remote@office behind nginx, watching only.
        office_env = env_file(ex("systemd", "office.env"))
        assert "--listen" not in office_env["AIM_REMOTE_OPTIONS"]
        office_env["AIM_REMOTE_OPTIONS"] = localize(
            office_env["AIM_REMOTE_OPTIONS"], host_paths(s.office, "/etc/aim-remote/")[:1] +
            [("127.0.0.1:9381", f"127.0.0.1:{p['office_status']}")], "office.env")
        services.append(Service("aim-remote@office",
                                unit_command("aim-remote@.service", "office", office_env), w))
        s.office_service = services[-1]
        s.office_service.ready()

        conf = localize(read(ex("nginx", "aim-receiver.conf")), host_paths(s.office, "/etc/aim-remote/") + [
            ("listen 443 ssl;", f"listen 127.0.0.1:{p['nginx']} ssl;"),
            ("CHANGE-ME-office-token", s.office_token)], "aim-receiver.conf")
        with open(w + "/nginx/aim-receiver.conf", "w") as f:
            f.write(conf)
        with open(w + "/nginx/nginx.conf", "w") as f:
            f.write(f"""daemon off;
user root;
worker_processes 1;
pid {w}/nginx/nginx.pid;
error_log {w}/nginx/error.log;
events {{ worker_connections 64; }}
http {{
  access_log {w}/nginx/access.log;
  client_body_temp_path {w}/nginx;
  include {w}/nginx/aim-receiver.conf;
}}
""")
        nginx_log = open(w + "/nginx/stderr.log", "wb")
        nginx = subprocess.Popen(["nginx", "-c", w + "/nginx/nginx.conf"],
                                 stdin=subprocess.DEVNULL, stdout=nginx_log, stderr=nginx_log)
        nginx_log.close()

        def nginx_up():
            assert nginx.poll() is None, read(w + "/nginx/stderr.log")
            try:
                socket.create_connection(("127.0.0.1", p["nginx"]), 0.2).close()
                return True
            except OSError:
                return False
        wait_for(nginx_up, 10, what="nginx to listen")
        s.nginx_url = f"https://127.0.0.1:{p['nginx']}"

        # aimfs@images with the example configuration.
        s.conf = s.src + "/etc/aimfs/images.conf"
        text = localize(read(ex("aimfs.conf")), host_paths(s.src, "/etc/aimfs/") + [
            ("/var/lib/libvirt/images", s.mnt),
            ("127.0.0.1:9380", f"127.0.0.1:{p['aimfs']}"),
            ("dr1.example.net:9443", f"127.0.0.1:{p['dr1']}"),
            ("backup.example.org", f"127.0.0.1:{p['nginx']}")], "aimfs.conf")
        with open(s.conf, "w") as f:
            f.write(text)
        s.backing = s.src + "/srv/aim/images"
        s.journal = s.src + "/srv/aim/journal"
        services.append(Service("aimfs@images", unit_command(
            "aimfs@.service", "images", subst=[("/etc/aimfs/", s.src + "/etc/aimfs/")]), w))
        s.aimfs = services[-1]
        s.aimfs.ready()
        s.mounted_at_ready = is_mounted(s.mnt)
        s.status_addr = f"127.0.0.1:{p['aimfs']}"
        s.workload_done = False
        yield s
    finally:
        for svc in reversed(services):
            if svc.name.startswith("aimfs") and svc.proc.poll() is None and is_mounted(s.mnt):
                subprocess.run(["fusermount3", "-u", s.mnt], check=False)
            svc.close()
        if is_mounted(s.mnt):
            subprocess.run(["fusermount3", "-u", "-z", s.mnt], check=False)
        if nginx:
            nginx.terminate()
            try:
                nginx.wait(10)
            except subprocess.TimeoutExpired:
                nginx.kill()
                nginx.wait()
        shutil.rmtree(w, ignore_errors=True)


def domain_disks():
    """[(path, format, cache, io)] of the example domain's disks."""
    out = []
    for disk in ET.parse(ex("libvirt", "domain.xml")).getroot().iter("disk"):
        drv = disk.find("driver")
        out.append((disk.find("source").get("file"), drv.get("type"), drv.get("cache"),
                    drv.get("io")))
    return out


@pytest.fixture(scope="module")
def written(site):
    """The example guest's disks made on the mount as domain.xml describes
    them (qemu-img, then qemu-io with the domain's cache and AIO modes),
    plus one image that is not the database's; then in sync."""
    pool = ET.parse(ex("libvirt", "pool.xml")).getroot().find("target/path").text
    for path, fmt, cache, aio in domain_disks():
        assert os.path.dirname(path) == pool
        local = os.path.join(site.mnt, os.path.basename(path))
        p = run(["qemu-img", "create", "-q", "-f", fmt, local, "32M"])
        assert p.returncode == 0, p.stderr
        p = run(["qemu-io", "-f", fmt, "-t", cache, "-i", aio,
                 "-c", "write -P 0x5a 0 1M", "-c", "write -P 0xa5 4M 64k", "-c", "flush",
                 "-c", "discard 0 64k", local])
        assert p.returncode == 0 and "error" not in p.stdout.lower(), p.stdout + p.stderr
    other = os.path.join(site.mnt, "web1.raw")
    umask = os.umask(0o002)
    try:
        fd = os.open(other, os.O_CREAT | os.O_WRONLY, 0o666)
    finally:
        os.umask(umask)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(256 * 1024))
        os.fsync(f.fileno())
    # The caller's umask, not the unit's too.
    assert os.stat(os.path.join(site.backing, "web1.raw")).st_mode & 0o777 == 0o664
    os.chmod(other, 0o640)
    os.chown(other, 65534, 65534)      # CAP_CHOWN of the unit's bounding set
    wait_in_sync(site.status_addr, timeout=90)
    return site


# ---- the tests on the running site ----

def test_units_notify_ready_once_serving(site):
    # aimfs@: READY=1 only once the mount is visible and its status answers.
    assert site.mounted_at_ready
    assert get_status(site.status_addr)["mountpoint"] == site.mnt
    # aim-remote@: both listened at READY (the fixture waited for nothing else).
    socket.create_connection(("127.0.0.1", site.ports["dr1"]), 2).close()
    http_get(f"http://127.0.0.1:{site.ports['office_status']}/status")
    # Each runs with exactly its unit's capability bounding set, and no new
    # privileges: what follows (a workload, shipping, applying) needs no more.
    for svc, unit in ((site.aimfs, "aimfs@.service"), (site.dr1_service, "aim-remote@.service"),
                      (site.office_service, "aim-remote@.service")):
        status = read(f"/proc/{svc.proc.pid}/status")
        bnd = re.search(r"^CapBnd:\s*(\w+)", status, re.M).group(1)
        decoded = run(["capsh", f"--decode={bnd}"]).stdout.strip().split("=", 1)[1]
        want = unit_settings(os.path.join(UNIT_DIR, unit))["CapabilityBoundingSet"]
        assert set(decoded.upper().split(",")) == set(want.split()), (svc.name, decoded)
        assert re.search(r"^NoNewPrivs:\s*1$", status, re.M), svc.name


def test_config_ships_to_both_destinations_and_limits_office(written):
    site = written
    st = get_status(site.status_addr)
    dests = {d["name"]: d for d in st["destinations"]}
    assert set(dests) == {"dr1", "office"}
    assert dests["office"]["images"] == ["db1-*.qcow2", "db1-*.raw"]
    assert "images" not in dests["dr1"]
    cfg = configparser.ConfigParser()
    cfg.read(ex("aimfs.conf"))
    assert cfg["destination office"]["images"].split() == dests["office"]["images"]
    # dr1 has every image (the data disk on its --map target); the office
    # only the database's.  Both acknowledged everything (in sync); the
    # appliers may still be at work.
    exp = {f for f in os.listdir(site.backing) if not f.startswith(".")}
    assert exp == {"db1-system.qcow2", "db1-data.raw", "web1.raw"}
    dr1_replica = site.dr1 + "/srv/aim/replica"
    office_replica = site.office + "/srv/aim/replica"
    wait_for(lambda: replica_equal(site.backing, dr1_replica, exp,
                                   {"db1-data.raw": site.db1_data}), 60, what="dr1's replica")
    wait_for(lambda: replica_equal(site.backing, office_replica,
                                   {"db1-system.qcow2", "db1-data.raw"}), 60,
             what="the office's replica")


def replica_equal(source, replica, names, mapped=None):
    """True once replica holds exactly names (less the mapped ones, which
    are compared at their mapped paths), each equal to source's."""
    mapped = mapped or {}
    if set(os.listdir(replica)) != set(names) - set(mapped):
        return False
    for n in names:
        with open(os.path.join(source, n), "rb") as a, \
                open(mapped.get(n, os.path.join(replica, n)), "rb") as b:
            if a.read() != b.read():
                return False
    return True


def test_libvirt_domain_disks_are_replicated_as_images(written):
    site = written
    office_replica = site.office + "/srv/aim/replica"
    for path, fmt, _, _ in domain_disks():
        name = os.path.basename(path)
        p = run(["qemu-img", "compare", "-f", fmt, "-F", fmt, site.backing + "/" + name,
                 office_replica + "/" + name])
        assert p.returncode == 0, p.stdout + p.stderr


def test_nginx_block_receives_for_the_watcher_and_refuses_strangers(written):
    site = written
    log = read(site.dir + "/nginx/access.log")
    assert re.search(r'"PUT /aim/[0-9a-f-]{36}/\d{20}\.aimj HTTP/1\.1" 201', log), log
    group = get_status(site.status_addr)["group"]
    seg = f"/aim/{group}/{99999:020d}.aimj"
    base = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", site.pki.ca]
    cert = ["--cert", site.pki.client, "--key", site.pki.client_key]
    token = ["-H", f"Authorization: Bearer {site.office_token}"]
    body = ["-T", "/dev/null"]

    def code(*args):
        return run(base + list(args) + [site.nginx_url + (seg if "-X" not in args else
                                                          f"/aim/{group}/")]).stdout

    assert code(*cert, *body) == "403"                        # no token
    assert code(*cert, "-H", "Authorization: Bearer wrong", *body) == "403"
    assert code(*token, *body) == "400"                       # no client certificate
    assert run(base + cert + token + ["-X", "DELETE", site.nginx_url + seg]).stdout == "403"
    assert run(base + cert + token + body + [site.nginx_url + "/aim/x/../../etc"]).stdout in (
        "400", "404")
    assert not os.path.exists(f"{site.office}/srv/aim/inbox/{group}/{99999:020d}.aimj")
    assert site.office_service.proc.poll() is None


def test_metrics_follow_conventions_and_feed_rules_and_dashboard(written):
    site = written
    texts = {"aimfs": http_get(f"http://{site.status_addr}/metrics"),
             "dr1": http_get(f"http://127.0.0.1:{site.ports['dr1_status']}/metrics"),
             "office": http_get(f"http://127.0.0.1:{site.ports['office_status']}/metrics")}
    names = set()
    for who, text in texts.items():
        p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 0, f"{who}: {p.stdout}{p.stderr}"
        names |= set(re.findall(r"^# TYPE ([a-z_]+) ", text, re.M))
    assert "aimfs_destination_state" in names and "aim_remote_group_state" in names

    def used(exprs):
        return {n for e in exprs for n in re.findall(r"\b((?:aimfs|aim_remote)_[a-z_]+)\b", e)}
    rules = read(ex("prometheus", "aimfs-alerts.yml"))
    rule_exprs = re.findall(r"expr: (\|\n(?:\s{10,}.*\n)+|.*)", rules)
    dash = json.loads(read(ex("grafana", "aimfs-dashboard.json")))
    dash_exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    dash_exprs += [v.get("definition", "") for v in dash["templating"]["list"]]
    assert used(rule_exprs) and used(dash_exprs)
    assert not used(rule_exprs) - names, f"rules name unknown metrics: {used(rule_exprs) - names}"
    assert not used(dash_exprs) - names, f"dashboard names unknown metrics: {used(dash_exprs) - names}"
    # The state labels the rules and the dashboard test are states that exist.
    states = set(re.findall(r'_state\{[^}]*state="([a-z_]+)"', "\n".join(texts.values())))
    for s in re.findall(r'state="([a-z_]+)"', rules):
        assert s in states, s


def test_units_stop_cleanly_on_sigterm(written):
    site = written
    assert site.aimfs.stop() == 0, site.aimfs.output()
    assert not is_mounted(site.mnt)
    assert site.dr1_service.stop() == 0, site.dr1_service.output()
    assert site.office_service.stop() == 0, site.office_service.output()
    for svc in (site.aimfs, site.dr1_service, site.office_service):
        # (the office's patterns match no image at the mount: made later)
        bad = [l for l in svc.output().splitlines() if re.search(r"\b(error|warning)\b", l)
               and "matches no image yet" not in l]
        assert not bad, f"{svc.name}: {bad}"


# ---- examples checked without a site ----

def test_libvirt_xml_validates_and_agrees_with_the_mount():
    for f, kind in (("pool.xml", "storagepool"), ("domain.xml", "domain")):
        p = run(["virt-xml-validate", ex("libvirt", f), kind])
        assert p.returncode == 0, p.stdout + p.stderr
    pool = ET.parse(ex("libvirt", "pool.xml")).getroot().find("target/path").text
    cfg = configparser.ConfigParser()
    cfg.read(ex("aimfs.conf"))
    assert cfg["aimfs"]["mountpoint"] == pool
    fstab = [l.split() for l in read(ex("fstab")).splitlines() if l and not l.startswith("#")]
    assert [(l[0], l[1], l[2]) for l in fstab] == [(cfg["aimfs"]["backing_dir"], pool, "fuse.aimfs")]
    for path, _, cache, _ in domain_disks():
        assert os.path.dirname(path) == pool and cache == "none"


@pytest.mark.parametrize("unit", ["aimfs@.service", "aim-remote@.service"])
def test_unit_passes_systemd_analyze_verify(unit, workdir):
    text = read(os.path.join(UNIT_DIR, unit))
    m = re.search(r"^ExecStart=(\S+)", text, re.M)
    prog = os.path.basename(m.group(1))
    # The installed path does not exist here: point it at the build.
    text = text.replace(m.group(1), PROGRAMS[prog])
    instance = unit.replace("@", "@example")
    with open(os.path.join(workdir, unit), "w") as f:
        f.write(text)
    p = run(["systemd-analyze", "verify", "--man=no", instance], cwd=workdir)
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), \
        p.stdout + p.stderr


def test_fstab_line_makes_a_remote_fs_mount_unit(workdir):
    gen = "/lib/systemd/system-generators/systemd-fstab-generator"
    out = os.path.join(workdir, "gen")
    os.makedirs(out)
    p = run([gen, out, out, out], env=dict(os.environ, SYSTEMD_FSTAB=ex("fstab"),
                                           SYSTEMD_LOG_LEVEL="err"))
    assert p.returncode == 0, p.stderr
    unit = "var-lib-libvirt-images.mount"
    assert os.path.islink(os.path.join(out, "remote-fs.target.wants", unit))
    text = read(os.path.join(out, unit))
    assert "Type=fuse.aimfs" in text and "Before=libvirt-guests.service" in text, text
    p = run(["systemd-analyze", "verify", "--man=no", unit], cwd=out)
    assert p.returncode == 0 and not p.stderr.strip(), p.stdout + p.stderr


FSTAB_SCRIPT = r"""
set -u
# In a mount namespace of our own: /usr/local/sbin (one of the places
# mount.fuse3's shell looks, mount(8) passes no PATH) holds aimfs.
AIMFS_PID=
cleanup() {
	if grep -q " $MNT " /proc/self/mountinfo; then umount -l "$MNT"; fi
	if [ -n "$AIMFS_PID" ] && kill -0 "$AIMFS_PID" 2>/dev/null; then kill -9 "$AIMFS_PID"; fi
}
trap cleanup EXIT
mount --bind "$BIN" /usr/local/sbin
# A /dev whose log is the test's socket: a detached aimfs logs to syslog.
mount -t tmpfs -o mode=755 tmpfs /dev
mknod -m 666 /dev/null c 1 3; mknod -m 666 /dev/zero c 1 5
mknod -m 666 /dev/random c 1 8; mknod -m 666 /dev/urandom c 1 9
mknod -m 666 /dev/fuse c 10 229
touch /dev/log && mount --bind "$LOGSOCK" /dev/log
mount -a -T "$FSTAB" || exit 11
line=$(grep " $MNT " /proc/self/mountinfo) || exit 12
echo "MOUNTINFO $line"
for p in /proc/[0-9]*; do
	if [ "$(readlink "$p/exe")" = "$AIMFS" ] && grep -qz "^$BACKING$" "$p/cmdline"; then
		AIMFS_PID=${p#/proc/}
	fi
done
[ -n "$AIMFS_PID" ] || exit 13
echo "ARGV $(tr '\0' ' ' < /proc/$AIMFS_PID/cmdline)"
echo hello > "$MNT/vm.raw" || exit 14
sync "$MNT/vm.raw"
mount -a -T "$FSTAB" || exit 15
echo "MOUNTS $(grep -c " $MNT " /proc/self/mountinfo)"
umount "$MNT" || exit 16
for _ in $(seq 300); do kill -0 "$AIMFS_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$AIMFS_PID" 2>/dev/null && exit 17
AIMFS_PID=
echo DONE
"""


def test_fstab_line_mounts_through_mount_fuse3(workdir):
    backing, mnt = os.path.join(workdir, "images"), os.path.join(workdir, "mnt")
    bindir, conf = os.path.join(workdir, "bin"), os.path.join(workdir, "images.conf")
    for d in (backing, mnt, bindir):
        os.makedirs(d)
    os.symlink(os.path.realpath(AIMFS), os.path.join(bindir, "aimfs"))
    with open(conf, "w") as f:
        f.write(f"[aimfs]\njournal = {workdir}/journal\nstatus = off\n")
    line = localize(read(ex("fstab")), [
        ("/srv/aim/images", backing), ("/var/lib/libvirt/images", mnt),
        ("/etc/aimfs/images.conf", conf)], "fstab")
    fstab = os.path.join(workdir, "fstab")
    with open(fstab, "w") as f:
        f.write(line)
    syslog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    syslog.bind(os.path.join(workdir, "log.sock"))
    env = dict(os.environ, BIN=bindir, FSTAB=fstab, MNT=mnt, BACKING=backing,
               AIMFS=os.path.realpath(AIMFS), LOGSOCK=os.path.join(workdir, "log.sock"))
    p = run(["unshare", "--mount", "--propagation", "private", "sh", "-c", FSTAB_SCRIPT],
            env=env, timeout=120)
    try:
        assert p.returncode == 0 and "DONE" in p.stdout, \
            f"exit {p.returncode}\n{p.stdout}\n{p.stderr}\nfstab: {line}"
        info = re.search(r"^MOUNTINFO (.*)$", p.stdout, re.M).group(1).split()
        sep = info.index("-")
        assert info[sep + 1:sep + 3] == ["fuse.aimfs", backing], info
        assert "allow_other" in info[sep + 3], info
        # What reached aimfs: mount(8) dropped nofail and x-systemd.*,
        # mount.fuse3 dropped _netdev, the rest is aimfs's and libfuse's.
        argv = re.search(r"^ARGV (.*)$", p.stdout, re.M).group(1)
        assert f"config={conf}" in argv and "_netdev" not in argv and "x-systemd" not in argv
        assert re.search(r"^MOUNTS 1$", p.stdout, re.M), "a second mount -a mounted again"
        # Detached, aimfs told syslog what it would have told stderr.
        syslog.setblocking(False)
        logged = []
        while True:
            try:
                logged.append(syslog.recv(4096).decode(errors="replace"))
            except BlockingIOError:
                break
        assert any(re.search(rf"aimfs\[\d+\]: serving {backing} on {mnt}", m)
                   for m in logged), logged
        with open(os.path.join(backing, "vm.raw")) as f:
            assert f.read() == "hello\n"
        # the journal has the write
        replayed = os.path.join(workdir, "replay")
        os.makedirs(replayed)
        p = run([os.path.join(BUILD_DIR, "tools", "aimctl"), "replay", "--target-dir", replayed,
                 os.path.join(workdir, "journal")])
        assert p.returncode == 0, p.stderr
        assert_trees_equal(backing, replayed)
    finally:
        syslog.close()
        # the namespace's processes are gone with the script; nothing of
        # ours may survive it
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    if os.readlink(f"/proc/{pid}/exe") == os.path.realpath(AIMFS) and \
                            backing.encode() in open(f"/proc/{pid}/cmdline", "rb").read():
                        os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass


def test_alert_rules_pass_promtool_and_their_unit_tests():
    for cmd in (["promtool", "check", "rules", "aimfs-alerts.yml"],
                ["promtool", "test", "rules", "aimfs-alerts.test.yml"],
                ["promtool", "check", "config", "prometheus.yml"]):
        p = run(cmd, cwd=ex("prometheus"))
        assert p.returncode == 0, " ".join(cmd) + "\n" + p.stdout + p.stderr
    rules = read(ex("prometheus", "aimfs-alerts.yml"))
    for alert in ("AimfsRecoveryPointHigh", "AimfsDestinationNotInSync", "AimfsJournalNearFull",
                  "AimRemoteSegmentQuarantined", "AimRemoteGroupStopped"):
        assert f"alert: {alert}" in rules
        assert f"alertname: {alert}" in read(ex("prometheus", "aimfs-alerts.test.yml")), alert


def test_grafana_dashboard_is_importable_json():
    dash = json.loads(read(ex("grafana", "aimfs-dashboard.json")))
    assert dash["title"] and dash["uid"] and dash["schemaVersion"] >= 30
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        if p["type"] == "row":
            continue
        assert p["targets"] and p["datasource"]["uid"] == "${datasource}", p["title"]
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
