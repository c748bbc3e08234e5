"""Real QEMU guests for integration tests: a Debian kernel, a busybox
initramfs whose /init the test writes, virtio disks on whatever files the
test names (typically images on an aimfs mount), a QMP socket, and results
read from a serial port.

How it works
  * kernel() resolves Debian's `linux-image-cloud-amd64` to the package it
    depends on (linux-image-6.1.*-cloud-amd64) with apt-cache, fetches it
    with `apt-get download` and unpacks it with `dpkg-deb -x` into
    CACHE_DIR/kernel/<package>_<version>/ (default /var/cache/aimfs-tests,
    AIM_GUEST_CACHE to change), with a modules.dep made by `busybox depmod`.
    Later runs reuse it without touching the network; a flock serialises
    two runs that fetch at once.
  * build_initramfs() stages busybox-static (every applet linked), the
    kernel modules asked for that are not built in (modules.builtin) with
    their modules.dep dependencies, each of extra_binaries with the shared
    libraries and the dynamic loader `ldd` lists for it (at the same paths
    as on the host), and extra files, then packs it with `cpio -H newc` and
    gzip.  Its /init mounts /proc, /sys and devtmpfs, insmods the modules in
    dependency order, opens the result port, runs the test's script (under
    `set -e`, in a subshell), reports `AIMT:EXIT <status>` and powers off.
    The script can call `aimt WORDS...` (one result line), `disk SERIAL`
    (the /dev node of the virtio disk with that serial, waiting for it) and
    `die WORDS...`.
  * Guest boots qemu-system-x86_64 with -nographic -nodefaults, the kernel
    and initramfs directly (-kernel/-initrd), per Disk a drive and its
    virtio disk (`-drive file=...,format=raw|qcow2,if=none,cache=none,
    aio=native` or `cache=writeback`..., and `-device virtio-blk-pci` with
    the serial the guest finds it by), the console on ttyS0 -> console.log,
    results on ttyS1 -> results.log, and a QMP socket (`-qmp unix:...`;
    QMP: query-status, cont, quit, or any command).  KVM is used where it
    can boot a stock kernel; /dev/kvm from kvm_pvm cannot, so there (and
    without /dev/kvm) it is TCG (`-accel tcg -cpu max`);
    AIM_GUEST_ACCEL=kvm|tcg overrides, and pick_accel() says why.
  * Results are lines starting with `AIMT:` on ttyS1 (a port of their own,
    so kernel messages on the console never split them); wait_result()
    and wait_exit() wait with timeouts and fail at once, with the console's
    tail and the command line, if qemu exits.
  * kill() is SIGKILL by PID: for the guest a power cut.  Guest is a
    context manager and close() always kills qemu and removes its socket;
    the `guests` fixture closes every guest a test made.

Debugging a guest
  * Every guest writes, in its directory (the test's workdir/<name>/):
    cmdline.txt (the qemu command line, runnable as is from a shell),
    console.log (kernel and /init output), results.log (the AIMT: lines),
    qemu.log (qemu's own stderr).  A failing test keeps them: the fixture
    copies the directories to AIM_GUEST_LOGS (default
    /var/tmp/aimfs-guest-logs/<test>-<time>/) and prints where, with each
    guest's command line and console tail.
  * AIM_GUEST_DEBUG=1 prints every command line at start and every result
    line as it arrives (pytest -s to see them live).
  * To poke at a guest by hand: run cmdline.txt's command with
    `-serial stdio` in place of the first `-serial file:...`, and add
    `sh` to the init script where you want a shell (the console is ttyS0).
    A passing test's workdir is deleted, so copy the initramfs first, or
    build one with build_initramfs() from a Python prompt.
  * `python3 tests/guest.py smoke` boots a one-disk guest (mke2fs, a file,
    its hash) and prints the accelerator, the command line and the results:
    whether a guest boots on this machine at all.  `... fetch` only gets
    the kernel into the cache.

Needs root (the initramfs holds a /dev/console node; tests use losetup and
mount), and apt lists that know linux-image-cloud-amd64 the first time.
"""
import fcntl
import functools
import gzip
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

CACHE_DIR = os.environ.get("AIM_GUEST_CACHE", "/var/cache/aimfs-tests")
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
QEMU = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"
BUSYBOX = "/bin/busybox"
MARK = "AIMT:"
# What a guest needs for virtio disks with ext4 (the cloud kernel builds ext4
# and its checksums in; virtio_pci and virtio_blk are modules).
DEFAULT_MODULES = ("virtio_pci", "virtio_blk", "ext4")
DEBUG = bool(os.environ.get("AIM_GUEST_DEBUG"))


class GuestError(AssertionError):
    """A guest did not do what the test waited for (it is a test failure)."""


def _run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"command failed ({p.returncode}): {shlex.join(map(str, cmd))}\n"
                           f"{p.stdout}{p.stderr}")
    return p.stdout


# ---- the kernel --------------------------------------------------------------------

def _modname(path_or_name):
    return os.path.basename(path_or_name).split(".ko")[0].replace("-", "_")


class Kernel:
    """An unpacked Debian kernel package: vmlinuz, its module tree, which
    modules are built in, and modules.dep."""

    def __init__(self, root, version):
        self.root = root
        self.version = version
        self.vmlinuz = os.path.join(root, "boot", f"vmlinuz-{version}")
        self.moddir = os.path.join(root, "lib", "modules", version)
        with open(os.path.join(self.moddir, "modules.builtin")) as f:
            self.builtin = {_modname(line.strip()) for line in f if line.strip()}
        self.deps = {}      # module name -> (relative path, [dependency names])
        with open(os.path.join(self.moddir, "modules.dep")) as f:
            for line in f:
                mod, _, deps = line.partition(":")
                self.deps[_modname(mod)] = (mod.strip(), [_modname(d) for d in deps.split()])

    def load_order(self, names):
        """Relative paths of the .ko files to insmod, dependencies first,
        for the modules NAMES that are not built in."""
        order, seen = [], set()

        def visit(name, chain):
            name = _modname(name)
            if name in seen or name in self.builtin:
                return
            if name not in self.deps:
                raise RuntimeError(f"kernel {self.version} has no module {name} "
                                   f"(needed by {' <- '.join(chain) or 'the test'})")
            seen.add(name)
            path, deps = self.deps[name]
            for d in deps:
                visit(d, chain + [name])
            order.append(path)
        for n in names:
            visit(n, [])
        return order


@functools.lru_cache(maxsize=None)
def _kernel_package(meta=KERNEL_META_PACKAGE):
    """(package, version) that META depends on, e.g.
    ('linux-image-6.1.0-57-cloud-amd64', '6.1.192-3'), from apt's lists."""
    out = _run(["apt-cache", "depends", meta])
    pkgs = re.findall(r"Depends:\s*(linux-image-\S+)", out)
    if not pkgs:
        raise RuntimeError(f"apt-cache depends {meta}: no linux-image dependency:\n{out}")
    pkg = pkgs[0]
    out = _run(["apt-cache", "show", "--no-all-versions", pkg])
    m = re.search(r"^Version:\s*(\S+)", out, re.M)
    if not m:
        raise RuntimeError(f"apt-cache show {pkg}: no version:\n{out}")
    return pkg, m.group(1)


def _cached_kernels(cache_dir):
    d = os.path.join(cache_dir, "kernel")
    if not os.path.isdir(d):
        return []
    return sorted(os.path.join(d, e) for e in os.listdir(d)
                  if os.path.exists(os.path.join(d, e, ".complete")))


def _open_cached(root):
    with open(os.path.join(root, ".complete")) as f:
        return Kernel(root, f.read().strip())


def kernel(cache_dir=CACHE_DIR, meta=KERNEL_META_PACKAGE):
    """The cloud kernel, fetched once into CACHE_DIR/kernel/<package>_<version>/.
    If apt cannot say which version is current (no lists), the newest kernel
    already in the cache is used."""
    try:
        pkg, version = _kernel_package(meta)
    except (RuntimeError, OSError) as e:
        have = _cached_kernels(cache_dir)
        if have:
            return _open_cached(have[-1])
        raise RuntimeError(f"no kernel: {e}") from None
    root = os.path.join(cache_dir, "kernel", f"{pkg}_{version}")
    if os.path.exists(os.path.join(root, ".complete")):
        return _open_cached(root)
    os.makedirs(os.path.dirname(root), exist_ok=True)
    with open(os.path.join(cache_dir, "kernel", ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(os.path.join(root, ".complete")):
            return _open_cached(root)
        tmp = tempfile.mkdtemp(prefix=".fetch-", dir=os.path.dirname(root))
        try:
            # _apt cannot write into a root-only directory: download in /tmp
            with tempfile.TemporaryDirectory(prefix="aimfs-kernel-") as dl:
                os.chmod(dl, 0o755)
                _run(["apt-get", "download", "-q", f"{pkg}={version}"], cwd=dl)
                debs = [f for f in os.listdir(dl) if f.endswith(".deb")]
                if len(debs) != 1:
                    raise RuntimeError(f"apt-get download {pkg}: got {debs}")
                _run(["dpkg-deb", "-x", os.path.join(dl, debs[0]), tmp])
            kver = pkg[len("linux-image-"):]
            if not os.path.exists(os.path.join(tmp, "boot", f"vmlinuz-{kver}")):
                raise RuntimeError(f"{pkg} has no boot/vmlinuz-{kver}")
            # Debian's postinst runs depmod; busybox's does the same job here
            # (kmod is not needed on the host).
            _run([BUSYBOX, "depmod", "-b", tmp, kver])
            with open(os.path.join(tmp, ".complete"), "w") as f:
                f.write(kver + "\n")
            if os.path.exists(root):
                shutil.rmtree(root)
            os.rename(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _open_cached(root)


# ---- the initramfs -------------------------------------------------------------------

INIT_HEAD = r"""#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mkdir -p /tmp /mnt /run
for m in $(cat /etc/aimt-modules); do
    insmod "/lib/modules/$(uname -r)/$m" || echo "init: insmod $m failed"
done
# results go to their own port, so that kernel messages never split a line
stty -F /dev/ttyS1 115200 raw -echo 2>/dev/null
exec 3>/dev/ttyS1
aimt() { echo "AIMT:$*" >&3; echo "AIMT:$*"; }
die() { aimt "DIE $*"; exit 1; }
# disk SERIAL: the /dev node of the virtio disk whose serial is SERIAL
disk() {
    _n=0
    while [ $_n -lt 300 ]; do
        for _s in /sys/block/vd*/serial; do
            [ -e "$_s" ] || continue
            if [ "$(cat "$_s")" = "$1" ]; then
                _d=${_s%/serial}; echo "/dev/${_d##*/}"; return 0
            fi
        done
        sleep 0.1; _n=$((_n + 1))
    done
    echo "init: no disk with serial $1" >&2; return 1
}
aimt BOOTED $(uname -r)
"""

INIT_TAIL = r"""
( set -e; . /aimt-test.sh )
rc=$?
aimt EXIT $rc
sync
poweroff -f
"""


def _ldd(path):
    """The files the dynamic loader maps for PATH: its libraries and the
    loader itself, as ldd names them (not resolved)."""
    p = subprocess.run(["ldd", path], capture_output=True, text=True)
    out = p.stdout + p.stderr
    if "not a dynamic executable" in out or "statically linked" in out:
        return []
    if p.returncode != 0:
        raise RuntimeError(f"ldd {path} failed: {out}")
    files = []
    for line in out.splitlines():
        line = line.strip()
        if "not found" in line:
            raise RuntimeError(f"ldd {path}: {line}")
        m = re.match(r"\S+ => (/\S+) \(0x", line) or re.match(r"(/\S+) \(0x", line)
        if m:
            files.append(m.group(1))
    return files


def _dlopened_by_libc():
    """Libraries glibc loads with dlopen, which ldd cannot list: libgcc_s
    (pthread_cancel and pthread_exit unwind with it; without it a program
    that cancels a thread aborts with "libgcc_s.so.1 must be installed")."""
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    found = []
    for name in ("libgcc_s.so.1",):
        m = re.search(rf"^\s*{re.escape(name)} \(libc6,x86-64\) => (\S+)$", out, re.M)
        if m:
            found.append(m.group(1))
    return found


def _put(stage, guest_path, host_path=None, data=None, mode=None):
    dst = os.path.join(stage, guest_path.lstrip("/"))
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.lexists(dst):
        os.unlink(dst)
    if data is not None:
        with open(dst, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(dst, mode if mode is not None else 0o644)
    else:
        shutil.copyfile(host_path, dst)      # follows symlinks: the content
        os.chmod(dst, mode if mode is not None else os.stat(host_path).st_mode & 0o7777)
    return dst


def build_initramfs(path, script, kern, modules=DEFAULT_MODULES, extra_binaries=(),
                    files=None, data=None):
    """Writes a gzip'd newc cpio initramfs to PATH and returns PATH.

    script: the test's shell script (busybox ash), sourced by /init under
      `set -e` after the preamble (see INIT_HEAD for aimt, disk, die).
    kern: a Kernel; modules: module names to load (built-in ones are
      skipped, dependencies added, from modules.dep).
    extra_binaries: host executables (or shared objects, e.g. something a
      program dlopens) to carry, each at its own path, with every library
      and the loader ldd lists for it at the paths ldd gives, and libgcc_s
      (glibc dlopens it to cancel threads; ldd cannot see that).  Debian's
      busybox shell runs its applets before it searches PATH, so /init
      defines a function for each carried program an applet shadows
      (mke2fs, losetup, ...): in the script its plain name is the real one;
      elsewhere (xargs, exec) use its absolute path.
    files: {guest path: host path} for anything else (configuration files);
    data: {guest path: str or bytes} for content made by the test."""
    stage = tempfile.mkdtemp(prefix="initramfs-", dir=os.path.dirname(os.path.abspath(path)))
    try:
        for d in ("bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "etc", "tmp",
                  "mnt", "root", "run"):
            os.makedirs(os.path.join(stage, d), exist_ok=True)
        _put(stage, "/bin/busybox", BUSYBOX)
        applets = _run([BUSYBOX, "--list-full"]).split()
        for a in applets:
            link = os.path.join(stage, a)
            if not os.path.lexists(link):
                os.makedirs(os.path.dirname(link), exist_ok=True)
                os.symlink("/bin/busybox", link)
        # the kernel opens /dev/console for init before devtmpfs is mounted
        os.mknod(os.path.join(stage, "dev", "console"), 0o600 | 0o020000, os.makedev(5, 1))
        order = kern.load_order(modules)
        for rel in order:
            _put(stage, f"/lib/modules/{kern.version}/{rel}", os.path.join(kern.moddir, rel))
        _put(stage, "/etc/aimt-modules", data="".join(r + "\n" for r in order))
        carried = set()
        shadow = []
        for b in extra_binaries:
            if not os.path.isabs(b):
                b = shutil.which(b) or b
            if not os.path.exists(b):
                raise RuntimeError(f"extra binary {b} does not exist")
            for f in [b] + _ldd(b):
                if f not in carried:
                    _put(stage, f, f)
                    carried.add(f)
            # Debian's busybox ash runs its own applets before searching
            # PATH: a function named like the program makes the name mean it.
            name = os.path.basename(b)
            if re.fullmatch(r"[A-Za-z_]\w*", name) and any(a.endswith("/" + name)
                                                            for a in applets):
                shadow.append(f'{name}() {{ {b} "$@"; }}\n')
        if extra_binaries:
            for f in _dlopened_by_libc():
                if f not in carried:
                    _put(stage, f, f)
                    carried.add(f)
        for guest_path, host_path in (files or {}).items():
            _put(stage, guest_path, host_path)
        for guest_path, content in (data or {}).items():
            _put(stage, guest_path, data=content)
        _put(stage, "/init", data=INIT_HEAD + "".join(shadow) + INIT_TAIL, mode=0o755)
        _put(stage, "/aimt-test.sh", data=script, mode=0o755)
        names = subprocess.run(["find", "."], cwd=stage, capture_output=True, check=True).stdout
        cpio = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"], cwd=stage,
                              input=names, capture_output=True)
        if cpio.returncode != 0:
            raise RuntimeError(f"cpio failed: {cpio.stderr.decode(errors='replace')}")
        with open(path, "wb") as f:
            f.write(gzip.compress(cpio.stdout, compresslevel=1))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return path


# ---- the accelerator ------------------------------------------------------------------

def pick_accel():
    """('kvm' | 'tcg', why).  /dev/kvm from kvm_pvm (a paravirtual KVM for
    guests of a hypervisor) cannot boot a stock kernel, so it means TCG."""
    env = os.environ.get("AIM_GUEST_ACCEL")
    if env:
        return env, "AIM_GUEST_ACCEL"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "no usable /dev/kvm"
    if os.path.exists("/sys/module/kvm_pvm"):
        return "tcg", "/dev/kvm is kvm_pvm, which cannot boot a stock kernel"
    for m in ("kvm_intel", "kvm_amd"):
        if os.path.exists(f"/sys/module/{m}"):
            return "kvm", f"{m} is loaded"
    return "tcg", "/dev/kvm exists but neither kvm_intel nor kvm_amd is loaded"


# ---- QMP ---------------------------------------------------------------------------------

class QMPError(RuntimeError):
    pass


class QMP:
    """A minimal QMP client on a unix socket: execute(), and the three
    commands tests use.  Events that arrive meanwhile are kept in .events."""

    def __init__(self, path, timeout=30.0):
        self.path = path
        self.events = []
        deadline = time.monotonic() + timeout
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.sock.settimeout(timeout)
        self.file = self.sock.makefile("rwb")
        greeting = self._read()
        if "QMP" not in greeting:
            raise QMPError(f"not a QMP greeting: {greeting}")
        self.execute("qmp_capabilities")

    def _read(self):
        line = self.file.readline()
        if not line:
            raise EOFError("QMP connection closed")
        return json.loads(line)

    def execute(self, command, **arguments):
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise QMPError(f"{command}: {reply['error']}")
            return reply.get("return")

    def query_status(self):
        """{'status': 'running' | 'prelaunch' | 'paused' | 'io-error' | ..., 'running': bool}"""
        return self.execute("query-status")

    def cont(self):
        return self.execute("cont")

    def quit(self):
        try:
            return self.execute("quit")
        except EOFError:
            return None

    def close(self):
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass


# ---- the guest -----------------------------------------------------------------------

class Disk:
    """One virtio disk: an image file, its format, and how qemu opens it.
    serial names it for the guest (`disk SERIAL` in the init script)."""

    def __init__(self, path, fmt="raw", cache="none", aio=None, serial=None, werror=None,
                 rerror=None):
        self.path = str(path)
        self.fmt = fmt
        self.cache = cache
        self.aio = aio if aio is not None else ("native" if cache in ("none", "directsync")
                                                 else "threads")
        self.serial = serial
        self.werror = werror
        self.rerror = rerror

    def args(self, index):
        """qemu arguments: the drive (if=none) and its virtio-blk-pci device,
        which carries the serial (-drive if=virtio no longer takes one)."""
        opts = [f"file={self.path.replace(',', ',,')}", f"format={self.fmt}", "if=none",
                f"id=disk{index}", f"cache={self.cache}", f"aio={self.aio}"]
        if self.werror:
            opts.append(f"werror={self.werror}")
        if self.rerror:
            opts.append(f"rerror={self.rerror}")
        dev = f"virtio-blk-pci,drive=disk{index}"
        if self.serial:
            dev += f",serial={self.serial}"
        return ["-drive", ",".join(opts), "-device", dev]


class Guest:
    """One qemu-system-x86_64 process.  Logs live in DIRECTORY (made)."""

    def __init__(self, directory, kern, initrd, disks=(), memory=256, cpus=1, qmp=True,
                 paused=False, append="", accel=None, loglevel=6, extra_args=()):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.name = os.path.basename(directory.rstrip("/"))
        self.kernel = kern
        self.initrd = initrd
        self.disks = list(disks)
        self.memory = memory
        self.cpus = cpus
        self.paused = paused
        self.append = append
        self.loglevel = loglevel
        self.accel, self.accel_why = (accel, "asked") if accel else pick_accel()
        self.extra_args = list(extra_args)
        self.console_path = os.path.join(directory, "console.log")
        self.results_path = os.path.join(directory, "results.log")
        self.qemu_log_path = os.path.join(directory, "qemu.log")
        self.qmp_path = os.path.join(directory, "qmp.sock") if qmp else None
        self.qmp = None
        self.proc = None
        self.cmdline = None
        self.results = []           # result lines, without the marker
        self._offset = 0
        self._partial = b""
        self.started = None
        self.exited = None

    def command(self):
        cpu = "host" if self.accel == "kvm" else "max"
        cmd = [QEMU, "-nographic", "-nodefaults", "-no-reboot",
               "-machine", "pc", "-accel", self.accel, "-cpu", cpu,
               "-m", str(self.memory), "-smp", str(self.cpus),
               "-kernel", self.kernel.vmlinuz, "-initrd", self.initrd,
               "-append", (f"console=ttyS0,115200 panic=-1 loglevel={self.loglevel} "
                           + self.append).strip(),
               "-serial", f"file:{self.console_path}",
               "-serial", f"file:{self.results_path}"]
        for i, d in enumerate(self.disks):
            cmd += d.args(i)
        if self.qmp_path:
            cmd += ["-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        if self.paused:
            cmd.append("-S")
        return cmd + self.extra_args

    def start(self):
        self.cmdline = self.command()
        with open(os.path.join(self.dir, "cmdline.txt"), "w") as f:
            f.write(shlex.join(self.cmdline) + "\n")
        for p in (self.console_path, self.results_path):
            open(p, "wb").close()
        if self.qmp_path and os.path.exists(self.qmp_path):
            os.unlink(self.qmp_path)
        if DEBUG:
            print(f"[{self.name}] ({self.accel}: {self.accel_why}) {shlex.join(self.cmdline)}",
                  flush=True)
        self.log = open(self.qemu_log_path, "ab")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.cmdline, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        if self.qmp_path:
            try:
                self.qmp = QMP(self.qmp_path)
            except Exception as e:
                self.kill()     # a `with` whose __enter__ raises never exits
                raise GuestError(f"{self.name}: no QMP: {e}\n{self.diagnostics()}") from None
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    # ---- output ----

    def poll(self):
        """Reads new result lines; returns those that arrived."""
        new = []
        try:
            with open(self.results_path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return new
        self._offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace").strip("\r\n\0 ")
            if line.startswith(MARK):
                new.append(line[len(MARK):])
        self.results += new
        if DEBUG:
            for line in new:
                print(f"[{self.name}] {MARK}{line}", flush=True)
        return new

    def console(self):
        try:
            with open(self.console_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def diagnostics(self, lines=40):
        tail = "\n".join(self.console().splitlines()[-lines:])
        try:
            with open(self.qemu_log_path, errors="replace") as f:
                qlog = f.read().strip()
        except FileNotFoundError:
            qlog = ""
        state = ("running" if self.running() else
                 f"exited with {self.proc.returncode}" if self.proc else "not started")
        return (f"guest {self.name} ({self.accel}: {self.accel_why}), qemu {state}\n"
                f"command: {shlex.join(self.cmdline or self.command())}\n"
                f"logs: {self.dir}\n"
                + (f"qemu says: {qlog}\n" if qlog else "")
                + f"console (last {lines} lines):\n{tail}")

    def wait_result(self, match, timeout, what=None, start=0):
        """The first result line (from index START of .results on) for which
        match(line) is true, or that starts with match if it is a string.
        Raises GuestError on timeout or if qemu exits first."""
        pred = (lambda line: line.startswith(match)) if isinstance(match, str) else match
        what = what or (f"a result {match!r}" if isinstance(match, str) else "a result")
        deadline = time.monotonic() + timeout
        i = start
        while True:
            self.poll()
            while i < len(self.results):
                if pred(self.results[i]):
                    return self.results[i]
                i += 1
            if not self.running():
                self.poll()
                if any(pred(line) for line in self.results[i:]):
                    continue
                raise GuestError(f"{self.name}: qemu exited before {what}; results "
                                 f"{self.results[-10:]}\n{self.diagnostics()}")
            if time.monotonic() > deadline:
                raise GuestError(f"{self.name}: no {what} after {timeout}s; results "
                                 f"{self.results[-10:]}\n{self.diagnostics()}")
            time.sleep(0.05)

    def wait_count(self, prefix, n, timeout, start=0):
        """Waits until N result lines from START on start with PREFIX; returns them."""
        def enough():
            return len([x for x in self.results[start:] if x.startswith(prefix)]) >= n
        self.wait_result(lambda _: enough(), timeout, what=f"{n} results {prefix!r}",
                         start=start)
        return [x for x in self.results[start:] if x.startswith(prefix)]

    def wait_exit(self, timeout):
        """Waits for qemu to exit by itself (the guest powered off); returns
        its exit status and the status /init reported (None if none)."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.poll()
            raise GuestError(f"{self.name}: still running after {timeout}s; results "
                             f"{self.results[-10:]}\n{self.diagnostics()}") from None
        self._finish()
        self.poll()
        ex = [x for x in self.results if x.startswith("EXIT ")]
        return rc, (int(ex[-1].split()[1]) if ex else None)

    # ---- ends ----

    def kill(self):
        """SIGKILL by PID: a power cut for the guest."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._finish()
        self.poll()

    def quit(self, timeout=30.0):
        """QMP quit (qemu flushes its disks and exits); SIGKILL if that fails."""
        if self.running() and self.qmp:
            try:
                self.qmp.quit()
                self.proc.wait(timeout)
            except (OSError, EOFError, QMPError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def _finish(self):
        if self.exited is None and self.started is not None:
            self.exited = time.monotonic()
        if self.qmp:
            self.qmp.close()
            self.qmp = None
        if getattr(self, "log", None) and not self.log.closed:
            self.log.close()
        if self.qmp_path and os.path.exists(self.qmp_path):
            try:
                os.unlink(self.qmp_path)
            except OSError:
                pass

    def close(self):
        """For teardown: qemu is gone afterwards, whatever happened."""
        try:
            self.kill()
        except Exception:  # noqa: BLE001 - teardown goes on
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.close()


# ---- the fixture ------------------------------------------------------------------------

def keep_logs(guests, test_name):
    """Copies the guests' directories to AIM_GUEST_LOGS/<test>-<time>/;
    returns that directory."""
    base = os.environ.get("AIM_GUEST_LOGS", "/var/tmp/aimfs-guest-logs")
    dst = os.path.join(base, re.sub(r"[^\w.-]+", "_", test_name) + time.strftime("-%Y%m%d-%H%M%S"))
    os.makedirs(dst, exist_ok=True)
    for g in guests:
        shutil.copytree(g.dir, os.path.join(dst, g.name), dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.sock", "*.cpio.gz"))
    return dst


@pytest.fixture
def guests(request, workdir):
    """Factory: guests(name, kern, initrd, disks=[...], ...) -> a started
    Guest whose logs are in workdir/<name>/.  Every guest is killed at
    teardown; if the test failed their logs are kept (see keep_logs) and
    each one's command line and console tail are printed."""
    made = []

    def make(name, kern, initrd, disks=(), start=True, **kw):
        g = Guest(os.path.join(workdir, name), kern, initrd, disks, **kw)
        made.append(g)
        return g.start() if start else g

    yield make
    for g in made:
        g.close()
    rep = getattr(request.node, "rep_call", None)
    if made and (rep is None or rep.failed):
        where = keep_logs(made, request.node.name)
        print(f"\nguest logs kept in {where}")
        for g in made:
            print(g.diagnostics(lines=15))


# ---- by hand ------------------------------------------------------------------------------

def _main(argv):
    """python3 tests/guest.py fetch   fetch (or find) the kernel, print it
       python3 tests/guest.py smoke   boot a guest with one disk, mkfs, write, report"""
    what = argv[1] if len(argv) > 1 else "smoke"
    k = kernel()
    print(f"kernel {k.version}: {k.vmlinuz}")
    if what == "fetch":
        return 0
    accel, why = pick_accel()
    print(f"accelerator: {accel} ({why})")
    d = tempfile.mkdtemp(prefix="aimfs-guest-smoke-", dir="/var/tmp")
    img = os.path.join(d, "disk.raw")
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    initrd = build_initramfs(os.path.join(d, "initrd.cpio.gz"), """
D=$(disk smoke)
mke2fs -q -t ext4 -F $D
mount -t ext4 $D /mnt
echo hello > /mnt/x
sync /mnt/x
aimt HASH $(sha256sum < /mnt/x | cut -d' ' -f1)
umount /mnt
""", k, extra_binaries=["/sbin/mke2fs"], files={"/etc/mke2fs.conf": "/etc/mke2fs.conf"})
    t = time.monotonic()
    with Guest(os.path.join(d, "guest"), k, initrd, [Disk(img, serial="smoke")]) as g:
        print(f"command: {shlex.join(g.cmdline)}")
        rc, status = g.wait_exit(300)
        print(f"qemu exit {rc}, init exit {status}, {time.monotonic() - t:.1f}s; results:")
        for line in g.results:
            print(f"  {MARK}{line}")
    print(f"logs in {d}")
    return 0 if (rc, status) == (0, 0) else 1


if __name__ == "__main__":
    import sys
    sys.exit(_main(sys.argv))
