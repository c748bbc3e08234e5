"""Install and release, as an operator and a packager would do them:
`meson install` into a DESTDIR holds the programs, the man pages, the
systemd units (pointing at the installed programs) and the examples, and
nothing else; `meson dist` makes a tarball that builds on its own with
warnings as errors and passes the unit tests."""
import json
import os
import re
import subprocess
import tarfile

from aimtest import BUILD_DIR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, timeout=900, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL, **kw)
    assert p.returncode == 0, f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p


def build_option(name):
    opts = json.loads(run(["meson", "introspect", "--buildoptions", BUILD_DIR]).stdout)
    return next(o["value"] for o in opts if o["name"] == name)


def example_files():
    out = set()
    for d, _, files in os.walk(os.path.join(ROOT, "examples")):
        for f in files:
            rel = os.path.relpath(os.path.join(d, f), os.path.join(ROOT, "examples"))
            if f != "meson.build" and not f.endswith(".in"):
                out.add(rel)
    return out


def test_meson_install_into_a_destdir(workdir):
    dest = os.path.join(workdir, "dest")
    run(["meson", "install", "-C", BUILD_DIR, "--destdir", dest, "--no-rebuild", "--quiet"])
    prefix = build_option("prefix").lstrip("/")
    bindir, mandir = build_option("bindir"), build_option("mandir")
    datadir = build_option("datadir")
    held = set()
    for d, _, files in os.walk(dest):
        for f in files:
            held.add(os.path.relpath(os.path.join(d, f), dest))
    print("meson install put into DESTDIR:\n  " + "\n  ".join(sorted(held)))
    want = {os.path.join(prefix, bindir, p) for p in ("aimfs", "aim-remote", "aimctl")}
    want |= {os.path.join(prefix, mandir, "man1", p) for p in ("aimfs.1", "aim-remote.1",
                                                                "aimctl.1")}
    want.add(os.path.join(prefix, mandir, "man5", "aimfs.conf.5"))
    units = os.path.join(prefix, "lib", "systemd", "system")
    want |= {os.path.join(units, u) for u in ("aimfs@.service", "aim-remote@.service")}
    docs = os.path.join(prefix, datadir, "doc", "aimfs", "examples")
    want |= {os.path.join(docs, f) for f in example_files()}
    assert held == want, f"missing: {sorted(want - held)}; unexpected: {sorted(held - want)}"
    # The programs run, the units start the installed ones, the man pages
    # are the sources.
    for p in ("aimfs", "aim-remote", "aimctl"):
        exe = os.path.join(dest, prefix, bindir, p)
        assert run([exe, "--version"]).stdout.startswith(p + " ")
    for u, p in (("aimfs@.service", "aimfs"), ("aim-remote@.service", "aim-remote")):
        with open(os.path.join(dest, units, u)) as f:
            text = f.read()
        exec_start = next(l for l in text.splitlines() if l.startswith("ExecStart="))
        path = exec_start.split("=", 1)[1].split()[0]
        assert path == "/" + os.path.join(prefix, bindir, p), exec_start
        assert os.access(os.path.join(dest, path.lstrip("/")), os.X_OK)
        assert "@bindir@" not in text
    for page, sect in (("aimfs.1", "man1"), ("aimfs.conf.5", "man5")):
        with open(os.path.join(ROOT, "man", page)) as a, \
                open(os.path.join(dest, prefix, mandir, sect, page)) as b:
            assert a.read() == b.read()


def test_meson_dist_tarball_builds_and_passes_the_unit_tests(workdir):
    # The tarball holds what is committed (HEAD): the scratch build of this
    # tree only makes it.
    run(["meson", "setup", os.path.join(workdir, "b"), ROOT])
    run(["meson", "dist", "-C", os.path.join(workdir, "b"), "--no-tests", "--allow-dirty",
         "--formats", "xztar"])
    dist = os.path.join(workdir, "b", "meson-dist")
    tarballs = [f for f in os.listdir(dist) if f.endswith(".tar.xz")]
    assert len(tarballs) == 1, os.listdir(dist)
    src = os.path.join(workdir, "src")
    with tarfile.open(os.path.join(dist, tarballs[0])) as t:
        names = t.getnames()
        top = tarballs[0][:-len(".tar.xz")]
        for must in ("meson.build", "meson_options.txt", "man/aimfs.conf.5",
                     "examples/meson.build", "examples/systemd/aimfs@.service.in",
                     "tests/unit/test_segment.c", "scripts/install-deps.sh"):
            assert f"{top}/{must}" in names, must
        assert not any("/build/" in n or n.endswith("/build") for n in names)
        t.extractall(src)
    tree = os.path.join(src, top)
    build = os.path.join(tree, "build")
    run(["meson", "setup", build, tree, "--werror"])
    run(["ninja", "-C", build])
    p = run(["meson", "test", "-C", build, "--no-rebuild", "--print-errorlogs"])
    print(p.stdout[-2000:])
    with open(os.path.join(tree, "tests", "meson.build")) as f:
        unit_tests = len(re.findall(r"^\s*'test_\w+' :", f.read(), re.M))
    ok = re.search(r"^Ok:\s+(\d+)", p.stdout, re.M)
    assert ok and int(ok.group(1)) == unit_tests > 0, p.stdout
    assert re.search(r"^Fail:\s+0\s*$", p.stdout, re.M), p.stdout
