"""The three programs' command lines agree with each other and with their
man pages: -h/--help and -V/--version everywhere, exit status 2 for a usage
error, and every option of --help documented in the man page (and nothing
there that --help does not know), each with its default (the same as
--help's, where --help gives one) and an example.  aimfs.conf(5) lists
exactly the keys aimfs accepts, as aimfs itself reports them."""
import os
import re
import shlex
import subprocess

import pytest

from aimtest import AIM_REMOTE, AIMCTL, AIMFS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAN = os.path.join(ROOT, "man")
PROGRAMS = {"aimfs": AIMFS, "aim-remote": AIM_REMOTE, "aimctl": AIMCTL}


def project_version():
    with open(os.path.join(ROOT, "meson.build")) as f:
        return re.search(r"version\s*:\s*'([^']+)'", f.read()).group(1)


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)


# ---- roff, just enough for these pages ----

def roff_text(lines):
    """The text of man(7) source lines, fonts dropped."""
    out = []
    for line in lines:
        if line.startswith((".TP", ".PP", ".br", ".nf", ".fi", ".SH")):
            out.append("\n")
            continue
        m = re.match(r"\.(BR|RB|IR|RI|BI|IB|B|I)(?:\s+(.*)|$)", line)
        if m:
            args = shlex.split((m.group(2) or "").replace("\\", "\\\\"), posix=True)
            out.append((" " if m.group(1) in ("B", "I") else "").join(args) + " ")
            continue
        out.append(line + " ")
    text = "".join(out)
    for a, b in (("\\\\-", "-"), ("\\\\&", ""), ("\\\\c", ""), ("\\\\(dq", '"'),
                 ("\\\\e", "\\"), ("\\-", "-"), ("\\&", ""), ("\\c", ""), ("\\(dq", '"'),
                 ("\\e", "\\")):
        text = text.replace(a, b)
    text = re.sub(r"\\\\?f[BIRP]", "", text)
    return re.sub(r"[ \t]+", " ", text)


def man_entries(page, section):
    """[(tag text, body text)] of the .TP items of one .SH section."""
    with open(os.path.join(MAN, page)) as f:
        src = f.read().splitlines()
    start = next(i for i, l in enumerate(src) if l.startswith(".SH") and section in l)
    end = next((i for i in range(start + 1, len(src)) if src[i].startswith(".SH")), len(src))
    entries, i = [], start
    while i < end:
        if src[i] == ".TP":
            j = next((k for k in range(i + 2, end) if src[k] in (".TP", ".PP")), end)
            entries.append((roff_text([src[i + 1]]).strip(), roff_text(src[i + 2:j])))
            i = j
        else:
            i += 1
    return entries


def tag_names(tag):
    """Option names in a man tag: '-f', '--help', 'journal' (of journal=)."""
    names = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", tag))
    names |= set(re.findall(r"^([a-z_]+) ?=", tag))
    return names


def documented(page, section="OPTIONS"):
    """{frozenset(aliases): body} of a man page's options."""
    return {frozenset(tag_names(tag)): body for tag, body in man_entries(page, section)}


# ---- --help ----

def help_options(prog):
    """{option name: default or None} from a program's --help."""
    out = run([PROGRAMS[prog], "--help"]).stdout
    opts = {}
    if prog == "aimfs":
        out = out.split("FUSE options:")[0]
        for line in out.splitlines():
            m = re.match(r"\s+-o (\w+)=\S*\s+(.*)", line)
            names = [m.group(1)] if m else re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)",
                                                       line.split("  ")[1] if line.startswith("  -") else "")
            if m and m.group(1) == "allow_other":
                continue
            if line.lstrip().startswith("-o allow_other"):
                continue
            default = re.search(r"\(default:? ([^;)]+)", line)
            for n in names:
                opts[n] = default.group(1).strip() if default else None
    elif prog == "aim-remote":
        for line in out.splitlines():
            m = re.match(r"\s+((?:-\w, )?--[\w-]+)(.*)", line)
            if m:
                default = re.search(r"\(default:? ([^;)]+)", m.group(2))
                for n in m.group(1).split(", "):
                    opts[n] = default.group(1).strip() if default else None
    else:
        for n in re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", out):
            opts[n] = None
    return opts


def norm(s):
    return re.sub(r"[<>\s]", "", s).lower()


@pytest.mark.parametrize("prog", PROGRAMS)
def test_help_version_and_usage_errors_agree(prog, workdir):
    exe = PROGRAMS[prog]
    os.makedirs(os.path.join(workdir, "b"))
    os.makedirs(os.path.join(workdir, "m"))
    for flag in ("--help", "-h"):
        p = run([exe, flag])
        assert p.returncode == 0 and p.stdout.startswith(f"usage: {prog} ") and not p.stderr, p
        assert "Exit status: 0" in p.stdout and "2 usage error" in p.stdout.replace("for a ", ""), p.stdout
    for flag in ("--version", "-V"):
        p = run([exe, flag])
        assert p.returncode == 0 and not p.stderr, p
        assert re.match(rf"{prog} {re.escape(project_version())}\b", p.stdout), p.stdout
    usage_errors = {
        "aimfs": [["--bogus", os.path.join(workdir, "b"), os.path.join(workdir, "m")],
                  ["-o", "segment_size=12Q", "/a", "/b"], [], ["/a", "/b", "/c"]],
        "aim-remote": [["--bogus"], [], ["--inbox", "/tmp"], ["--max-segment", "12Q"]],
        "aimctl": [["--bogus"], [], ["dump"], ["replay", "x.aimj"],
                   ["check", "--base", workdir, "--fsck", "", workdir]],
    }[prog]
    for args in usage_errors:
        p = run([exe, *args])
        assert p.returncode == 2, f"{prog} {args}: {p.returncode}\n{p.stderr}"
        assert f"{prog}: error: " in p.stderr and not p.stdout, f"{prog} {args}: {p.stderr!r}"
    # libfuse's refusal came before anything was created (aimfs used to
    # make a journal in the backing directory first)
    assert os.listdir(os.path.join(workdir, "b")) == []


@pytest.mark.parametrize("prog", PROGRAMS)
def test_every_option_of_help_is_in_the_man_page_with_default_and_example(prog):
    helped = help_options(prog)
    man = documented(prog + ".1")
    assert helped and man
    in_man = set().union(*man)
    assert not set(helped) - in_man, f"{prog}: in --help, not in {prog}(1): {set(helped) - in_man}"
    only_man = [sorted(k) for k in man if not k & set(helped)]
    assert not only_man, f"{prog}: in {prog}(1), not in --help: {only_man}"
    for names, body in man.items():
        assert "Default:" in body and "Example:" in body, f"{prog}(1) {sorted(names)}: {body}"
        example = body.split("Example:")[1]
        assert any(n in example for n in names), f"{prog}(1) {sorted(names)} example: {example}"
        for n in names:
            if helped.get(n):
                default = body.split("Default:")[1].split("Example:")[0]
                assert norm(helped[n]) in norm(default), \
                    f"{prog} --help says {n} defaults to {helped[n]!r}, {prog}(1) says {default!r}"


def known_keys(section):
    """The keys aimfs accepts in a config section, as its refusal lists them."""
    d = os.environ.get("AIM_TEST_TMP", "/var/tmp")
    conf = os.path.join(d, f"aimfs-cli-{os.getpid()}.conf")
    with open(conf, "w") as f:
        f.write(f"[{section}]\nno_such_key = 1\n")
    try:
        p = run([AIMFS, "-o", f"config={conf}", "/nonexistent-backing", "/nonexistent-mnt"])
    finally:
        os.unlink(conf)
    assert p.returncode == 2, p
    m = re.search(r"\(known: ([^)]*)\)", p.stderr)
    assert m, p.stderr
    return set(m.group(1).replace(",", " ").split())


def test_aimfs_conf_man_page_lists_exactly_the_keys_aimfs_accepts():
    aimfs_keys = {n for names in documented("aimfs.conf.5", "[aimfs]") for n in names}
    dest_keys = {n for names in documented("aimfs.conf.5", "[destination") for n in names}
    assert aimfs_keys == known_keys("aimfs")
    assert dest_keys == known_keys("destination x")
    # [aimfs] takes every -o option of aimfs(1) but config=, plus the two
    # directories of the command line.
    o_options = {n for names in documented("aimfs.1") for n in names if not n.startswith("-")}
    assert aimfs_keys == (o_options - {"config"}) | {"backing_dir", "mountpoint"}
    for section in ("[aimfs]", "[destination"):
        for names, body in documented("aimfs.conf.5", section).items():
            assert "Default:" in body and "Example:" in body, f"aimfs.conf(5) {names}: {body}"
            assert any(n in body.split("Example:")[1] for n in names), body


@pytest.mark.parametrize("page", sorted(os.listdir(MAN)))
def test_man_pages_format_without_warnings(page):
    p = run(["groff", "-man", "-ww", "-z", os.path.join(MAN, page)])
    assert p.returncode == 0 and not p.stderr, p.stderr


@pytest.mark.parametrize("prog,section,line", [
    ("aimfs", "aimfs", "segment_size = 64M   # the default"),
    ("aimfs", "destination dr1", "url = https://127.0.0.1:9/aim\t# the receiver"),
    ("aim-remote", "pull site1", "url = http://127.0.0.1:9/bucket  # the bucket"),
])
def test_a_comment_after_a_config_value_is_refused_naming_the_line(prog, section, line, workdir):
    """inih keeps "# ..." after a value in the value: refused, not misread."""
    conf = os.path.join(workdir, "c.conf")
    with open(conf, "w") as f:
        f.write(f"[{section}]\n{line}\n")
    if prog == "aimfs":
        p = run([AIMFS, "-o", f"config={conf}", os.path.join(workdir, "b"), os.path.join(workdir, "m")])
    else:
        p = run([AIM_REMOTE, "--inbox", os.path.join(workdir, "in"), "--config", conf])
    assert p.returncode == 2, p
    key, value = line.split(" = ", 1)
    assert f'{key} = "{value}"' in p.stderr and "a line of its own" in p.stderr, p.stderr


def test_documented_config_examples_have_no_comment_after_a_value():
    """Every ```ini block of the docs can be copied as it is."""
    root = ROOT
    docs = [os.path.join(root, "README.md")] + [
        os.path.join(root, "docs", n) for n in os.listdir(os.path.join(root, "docs")) if n.endswith(".md")]
    bad = []
    for path in docs:
        inside = False
        for n, line in enumerate(open(path), 1):
            if line.startswith("```"):
                inside = line.strip() == "```ini" if not inside else False
            elif inside and not line.lstrip().startswith("#") and re.search(r"\s#", line):
                bad.append(f"{os.path.relpath(path, root)}:{n}: {line.rstrip()}")
    assert not bad, "\n".join(bad)
