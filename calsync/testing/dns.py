"""A tiny authoritative DNS server on 127.0.0.1, for tests of DNS SRV discovery (RFC 6764).

`DnsResponder` answers UDP and TCP queries on one free port from a zone held in memory: add
records in zone-file syntax (`add("_caldavs._tcp.example.test", "SRV", "0 1 443 dav.test.")`),
and point calsync at it with the `dns_nameservers` setting (`responder.nameserver`, e.g.
`127.0.0.1:53535`). A name that holds no records and has none below it is NXDOMAIN; a name in
`silent` gets no answer at all (a resolver times out); an answer too large for a plain UDP
reply is sent truncated, and the resolver asks again over TCP, as with a real server.

It uses dnspython's message parsing and rendering, runs in two daemon threads, and is a
context manager:

    with DnsResponder() as dns:
        dns.add("_caldav._tcp.example.test", "SRV", "0 1 5232 localhost.")
        ...
"""

from __future__ import annotations

import socketserver
import struct
import threading
from collections import defaultdict
from types import TracebackType

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = ["DnsResponder"]

UDP_LIMIT = 512  # without EDNS


class DnsResponder:
    """An in-memory zone served on 127.0.0.1 over UDP and TCP (the same port)."""

    def __init__(self, host: str = "127.0.0.1", ttl: int = 60) -> None:
        self.host = host
        self.ttl = ttl
        self.records: dict[tuple[dns.name.Name, int], list[str]] = defaultdict(list)
        self.silent: set[dns.name.Name] = set()
        self.queries: list[tuple[str, str]] = []  # (name, type) in arrival order
        self._lock = threading.Lock()
        self._udp: socketserver.UDPServer | None = None
        self._tcp: socketserver.TCPServer | None = None
        self._threads: list[threading.Thread] = []
        self.port = 0

    # -- the zone -------------------------------------------------------------------------------

    def add(self, name: str, rdtype: str, text: str) -> None:
        """Add one record, in zone-file syntax, e.g. `add(n, "TXT", '"path=/dav/"')`."""
        key = (dns.name.from_text(name), dns.rdatatype.from_text(rdtype))
        with self._lock:
            self.records[key].append(text)

    def silence(self, name: str) -> None:
        """Never answer queries for `name` (the resolver times out)."""
        with self._lock:
            self.silent.add(dns.name.from_text(name))

    def clear(self) -> None:
        with self._lock:
            self.records.clear()
            self.silent.clear()
            self.queries.clear()

    @property
    def nameserver(self) -> str:
        """The value of the `dns_nameservers` setting that points at this responder."""
        return f"{self.host}:{self.port}"

    def answer(self, wire: bytes, *, limit: int | None) -> bytes | None:
        """The reply to one query in wire format; None when it is to go unanswered."""
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None
        if not query.question:
            return None
        question = query.question[0]
        with self._lock:
            self.queries.append((question.name.to_text(), dns.rdatatype.to_text(question.rdtype)))
            if question.name in self.silent:
                return None
            texts = list(self.records.get((question.name, question.rdtype), []))
            exists = any(
                name == question.name or name.is_subdomain(question.name)
                for name, _ in self.records
            )
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if texts:
            response.answer.append(
                dns.rrset.from_text_list(
                    question.name, self.ttl, dns.rdataclass.IN, question.rdtype, texts
                )
            )
        elif not exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
        out = response.to_wire(max_size=65535)
        if limit is not None and len(out) > max(limit, query.payload if query.edns >= 0 else 0):
            response.answer.clear()
            response.flags |= dns.flags.TC
            out = response.to_wire()
        return out

    # -- serving --------------------------------------------------------------------------------

    def __enter__(self) -> DnsResponder:
        responder = self

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                reply = responder.answer(data, limit=UDP_LIMIT)
                if reply is not None:
                    sock.sendto(reply, self.client_address)

        class Tcp(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while True:
                    head = self.rfile.read(2)
                    if len(head) < 2:
                        return
                    (size,) = struct.unpack("!H", head)
                    reply = responder.answer(self.rfile.read(size), limit=None)
                    if reply is None:
                        return
                    self.wfile.write(struct.pack("!H", len(reply)) + reply)

        for _ in range(20):  # a UDP port whose TCP twin is free too
            udp = socketserver.ThreadingUDPServer((self.host, 0), Udp)
            port = int(udp.server_address[1])
            try:
                tcp = socketserver.ThreadingTCPServer((self.host, port), Tcp)
            except OSError:
                udp.server_close()
                continue
            break
        else:
            raise OSError("no free port for both UDP and TCP")
        udp.daemon_threads = tcp.daemon_threads = True
        self._udp, self._tcp, self.port = udp, tcp, port
        for server in (udp, tcp):
            thread = threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for server in (self._udp, self._tcp):
            if server is not None:
                server.shutdown()
                server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()


def _main() -> None:  # pragma: no cover - a manual tool
    import argparse
    import time

    parser = argparse.ArgumentParser(description="serve a few DNS records on 127.0.0.1")
    parser.add_argument(
        "record", nargs="*", help="NAME TYPE TEXT as one argument each, e.g. 'a.test. A 1.2.3.4'"
    )
    args = parser.parse_args()
    with DnsResponder() as responder:
        for record in args.record:
            name, rdtype, text = record.split(None, 2)
            responder.add(name, rdtype, text)
        print(f"serving on {responder.nameserver} (dns_nameservers={responder.nameserver})")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":  # pragma: no cover
    _main()
