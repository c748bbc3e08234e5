"""A TCP forwarder on loopback that a test controls, to cut and restore the
link between aimfs and its receiver.

    p = Proxy(upstream_port).start()     # listens on 127.0.0.1:p.port
    p.cut()                # every connection reset (RST), new ones reset too
    p.cut("blackhole")     # ... new ones accepted and never answered
    p.restore()            # forward again
    p.drop_next_reply()    # the next request gets through, its reply is lost
    p.stop()               # always, in a finally/fixture

One thread runs everything (selectors, non-blocking sockets), so a cut
happens at one instant for every connection, and nothing but the thread
ever touches a socket.  TLS passes through untouched (the proxy never looks
at the bytes).
"""
import collections
import queue
import selectors
import socket
import struct
import threading

CHUNK = 256 << 10
HIGH_WATER = 1 << 20       # stop reading a side while its peer has this much queued


def _reset(sock):
    """Close with RST (SO_LINGER 0), never raise."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _End:
    def __init__(self, sock, kind):
        self.sock = sock
        self.kind = kind          # "client", "upstream", "hole"
        self.peer = None
        self.out = bytearray()
        self.read_eof = False     # we got EOF from this socket
        self.shut_wr = False      # we sent FIN to this socket
        self.counted = 0          # bytes read from it since drop_next_reply


class Proxy:
    def __init__(self, upstream_port, upstream_host="127.0.0.1", port=0):
        self.upstream = (upstream_host, upstream_port)
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", port))
        self.lsock.listen(64)
        self.lsock.setblocking(False)
        self.port = self.lsock.getsockname()[1]
        self.mode = "forward"
        self.sel = selectors.DefaultSelector()
        self.ends = set()
        self.cmds = queue.Queue()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.thread = None
        self.drop_after = None    # armed by drop_next_reply
        self.stats = collections.Counter()
        self.error = None

    # ---- control (any thread) ----

    def start(self):
        self.sel.register(self.lsock, selectors.EVENT_READ, "listen")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.thread = threading.Thread(target=self._loop, name=f"proxy-{self.port}", daemon=True)
        self.thread.start()
        return self

    def _command(self, *cmd):
        done = threading.Event()
        self.cmds.put((cmd, done))
        try:
            self.wake_w.send(b"x")
        except OSError:
            pass
        if not done.wait(10):
            raise RuntimeError(f"proxy thread did not answer {cmd} (error: {self.error})")

    def cut(self, mode="reset"):
        """Drop every connection (RST to both sides); new connections are
        reset at once ("reset") or accepted and never answered
        ("blackhole")."""
        assert mode in ("reset", "blackhole")
        self._command("cut", mode)

    def restore(self):
        self._command("restore")

    def drop_next_reply(self, request_bytes=64 << 10):
        """One shot: once a client has sent request_bytes more on a
        connection (a PUT body that the receiver will take), the first bytes
        the receiver answers with on it are not passed on: both sides are
        reset instead.  The request went through, its reply is lost, as
        when a link drops at the wrong moment.  stats["replies_dropped"]
        counts it."""
        self._command("drop", request_bytes)

    def stop(self):
        if self.thread is None:
            return
        try:
            self._command("stop")
        except RuntimeError:
            pass
        self.thread.join(10)
        self.thread = None

    # ---- the loop (the proxy's thread only) ----

    def _loop(self):
        try:
            while True:
                for key, ev in self.sel.select(0.5):
                    if key.data == "wake":
                        try:
                            self.wake_r.recv(4096)
                        except OSError:
                            pass
                    elif key.data == "listen":
                        self._accept()
                    elif key.fileobj.fileno() >= 0 and key.data in self.ends:
                        self._service(key.data, ev)
                while not self.cmds.empty():
                    (cmd, *args), done = self.cmds.get()
                    if cmd == "cut":
                        self.mode = args[0]
                        self._drop_all()
                        self.stats["cuts"] += 1
                    elif cmd == "restore":
                        self.mode = "forward"
                        self._drop_holes()
                    elif cmd == "drop":
                        self.drop_after = args[0]
                        for end in self.ends:
                            end.counted = 0
                    elif cmd == "stop":
                        self._drop_all()
                        self.sel.close()
                        self.lsock.close()
                        self.wake_r.close()
                        self.wake_w.close()
                        done.set()
                        return
                    done.set()
        except Exception as e:  # noqa: BLE001 - reported through stop()/_command
            self.error = e
            raise

    def _accept(self):
        while True:
            try:
                sock, _ = self.lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            self.stats["accepted"] += 1
            if self.mode == "reset":
                self.stats["reset_new"] += 1
                _reset(sock)
                continue
            sock.setblocking(False)
            # forward small writes (TLS records, HTTP replies) at once, as
            # the two ends themselves do (no Nagle delay in the middle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.mode == "blackhole":
                self.stats["blackholed"] += 1
                self._add(_End(sock, "hole"))
                continue
            try:
                up = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                self.stats["upstream_refused"] += 1
                _reset(sock)
                continue
            up.setblocking(False)
            up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            a, b = _End(sock, "client"), _End(up, "upstream")
            a.peer, b.peer = b, a
            self._add(a)
            self._add(b)
            self.stats["forwarded"] += 1

    def _add(self, end):
        self.ends.add(end)
        self.sel.register(end.sock, selectors.EVENT_READ, end)

    def _close(self, end, rst=False):
        if end not in self.ends:
            return
        self.ends.discard(end)
        try:
            self.sel.unregister(end.sock)
        except (KeyError, ValueError):
            pass
        if rst:
            _reset(end.sock)
        else:
            try:
                end.sock.close()
            except OSError:
                pass

    def _drop_all(self):
        for end in list(self.ends):
            self._close(end, rst=True)

    def _drop_holes(self):
        for end in [e for e in self.ends if e.kind == "hole"]:
            self._close(end, rst=True)

    def _service(self, end, ev):
        if end.kind == "hole":
            try:
                data = end.sock.recv(CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._close(end)
            return
        peer = end.peer
        if ev & selectors.EVENT_READ and not end.read_eof:
            try:
                data = end.sock.recv(CHUNK)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                # a reset from one side is passed on as a reset
                self._close(end, rst=True)
                self._close(peer, rst=True)
                return
            if data == b"":
                end.read_eof = True
                if not peer.out:
                    self._shut(peer)
            elif data:
                end.counted += len(data)
                if (end.kind == "upstream" and self.drop_after is not None
                        and peer.counted >= self.drop_after):
                    self.drop_after = None
                    self.stats["replies_dropped"] += 1
                    self._close(end, rst=True)
                    self._close(peer, rst=True)
                    return
                peer.out += data
                self._flush(peer)
                if peer not in self.ends:
                    return
        if ev & selectors.EVENT_WRITE and end.out:
            self._flush(end)
        self._update(end)
        self._update(peer)

    def _shut(self, end):
        if not end.shut_wr:
            end.shut_wr = True
            try:
                end.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _flush(self, end):
        try:
            n = end.sock.send(end.out)
            del end.out[:n]
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(end, rst=True)
            self._close(end.peer, rst=True)
            return
        if not end.out and end.peer.read_eof:
            self._shut(end)

    def _update(self, end):
        if end not in self.ends:
            return
        if end.read_eof and end.shut_wr and end.peer.read_eof and end.peer.shut_wr:
            self._close(end)
            self._close(end.peer)
            return
        ev = 0
        if not end.read_eof and len(end.peer.out) < HIGH_WATER:
            ev |= selectors.EVENT_READ
        if end.out:
            ev |= selectors.EVENT_WRITE
        key = self.sel.get_map().get(end.sock)
        if ev == 0:
            if key is not None:
                self.sel.unregister(end.sock)
        elif key is None:
            self.sel.register(end.sock, ev, end)
        elif key.events != ev:
            self.sel.modify(end.sock, ev, end)
