"""`aimctl status` asks either daemon's status listener and prints it for
people (or as it came, with --json); a daemon that does not answer is a
clear error and exit status 1."""
import json
import os
import subprocess

from aimtest import AIMCTL, wait_for
from remote_helpers import PKI, Remote
from servers import free_port, get_status


def aimctl(*args):
    return subprocess.run([AIMCTL, *args], capture_output=True, text=True, timeout=60)


def test_status_of_both_daemons_for_people_and_as_json(aimfs, workdir):
    pki = PKI(os.path.join(workdir, "pki"))
    inbox, target = os.path.join(workdir, "inbox"), os.path.join(workdir, "replica")
    os.makedirs(inbox)
    os.makedirs(target)
    r = Remote(workdir, inbox, target, listen=True, pki=pki,
               args=["--client-ca", pki.ca, "--token-file", pki.token_file]).start()
    try:
        addr = f"127.0.0.1:{free_port()}"
        conf = os.path.join(workdir, "a.conf")
        with open(conf, "w") as f:
            f.write(f"[aimfs]\nstatus = {addr}\nsegment_age = 200ms\n"
                    f"[destination dr1]\nurl = {r.base_url}/aim\nca_file = {pki.ca}\n"
                    f"cert_file = {pki.client}\nkey_file = {pki.client_key}\n"
                    f"token_file = {pki.token_file}\n")
        m = aimfs(options=[f"config={conf}"])
        with open(os.path.join(m.mountpoint, "vm.raw"), "wb") as f:
            f.write(os.urandom(1 << 20))
            os.fsync(f.fileno())
        wait_for(lambda: get_status(addr)["in_sync"] is True, 60, 0.1, "in sync")

        p = aimctl("status", addr)
        assert p.returncode == 0, p.stderr
        assert "IN SYNC" in p.stdout and "dr1" in p.stdout, p.stdout
        p = aimctl("status", "--json", f"http://{addr}")
        assert p.returncode == 0, p.stderr
        st = json.loads(p.stdout)
        assert st["role"] == "source" and st["destinations"][0]["state"] == "in_sync", st

        p = aimctl("status", f"127.0.0.1:{r.status_port}")
        assert p.returncode == 0, p.stderr
        assert p.stdout.startswith("aim-remote") and st["group"] in p.stdout, p.stdout
        assert m.unmount() == 0
    finally:
        r.close()

    dead = f"127.0.0.1:{free_port()}"
    p = aimctl("status", dead)
    assert p.returncode == 1 and dead in p.stderr and "onnect" in p.stderr, p.stderr
    p = aimctl("status", "--bogus")
    assert p.returncode == 2 and "usage" in p.stderr, p.stderr
