"""Forward receiver over real sockets: chunk acks, shared_key, TLS, heartbeat, bad input."""

import asyncio
import socket
import ssl

from support import ALL_PORTS_FREE, in_process_app, port_of

from sidecar.codecs import forward
from sidecar.codecs.errors import RemoteProtocolError


def next_event(sock, client):
    """The client's next event, reading and answering (PING) as needed; None on close."""
    while True:
        event = client.next_event()
        sock.sendall(client.data_to_send())
        if event is not forward.NEED_DATA:
            return event
        data = sock.recv(65536)
        if not data:
            return None
        client.receive_data(data)


def converse(sock, client, payload, want_ack):
    """Send ``payload``; return the acked chunk, or None if the sidecar closed instead."""
    sock.sendall(payload)
    event = next_event(sock, client)
    if event is None:
        return None
    assert event == forward.AckReceived(want_ack)
    return event.chunk


def authenticate(sock, client):
    """True once the sidecar proved the shared key; False if it refused ours."""
    try:
        return isinstance(next_event(sock, client), forward.AuthenticationSucceeded)
    except RemoteProtocolError as exc:
        assert exc.error_kind == "auth"
        return False


ENTRIES = [forward.Entry(1_700_000_000_123_456_789 + i, {"message": f"line {i}", "n": i})
           for i in range(20)]


def test_packed_forward_chunk_is_acked_after_its_records_are_spooled(tmp_path):
    async def main():
        app = in_process_app(tmp_path)
        await app.start()
        try:
            client = forward.ClientConnection()
            chunk = forward.new_chunk_id()
            payload = client.pack_forward("app.pay", ENTRIES, chunk=chunk, compress=True)

            def send():
                with socket.create_connection(("127.0.0.1", port_of(app, "forward"))) as sock:
                    return converse(sock, client, payload, chunk)

            acked = await asyncio.to_thread(send)
            spooled = list((tmp_path / "spool").glob("segment-*"))
            assert acked == chunk
            assert sum(p.stat().st_size for p in spooled) > 0  # durable before the ack
            await app.memory.wait_for(20, timeout=10)
        finally:
            await app.stop()
        got = app.memory.records
        assert [(r.tag, r.time_ns, r.body, r.attributes) for r in got] == [
            ("app.pay", e.time_ns, e.record["message"], {"n": e.record["n"]}) for e in ENTRIES]
    asyncio.run(main())


def test_shared_key_handshake_admits_the_right_key_only(tmp_path):
    config = ALL_PORTS_FREE.replace("forward: {port: 0}",
                                    "forward: {port: 0, require_shared_key: true}")

    async def main():
        app = in_process_app(tmp_path, config, forward_shared_key=b"correct horse")
        await app.start()
        port = port_of(app, "forward")
        try:
            def attempt(key):
                client = forward.ClientConnection(shared_key=key, self_hostname="shipper")
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    if not authenticate(sock, client):
                        return None
                    chunk = forward.new_chunk_id()
                    return converse(sock, client, client.pack_forward(
                        "auth.ok", ENTRIES[:1], chunk=chunk, compress=False), chunk)

            assert await asyncio.to_thread(attempt, b"wrong key") is None
            assert await asyncio.to_thread(attempt, b"correct horse") is not None
            await app.memory.wait_for(1, timeout=10)
        finally:
            await app.stop()
        assert [r.tag for r in app.memory.records] == ["auth.ok"]
        assert app.telemetry.registry.get_sample_value(
            "logminer_receiver_errors_total", {"receiver": "forward", "kind": "auth"}) == 1
    asyncio.run(main())


def test_tls_listener_accepts_tls_clients(tmp_path, certs):
    config = ALL_PORTS_FREE.replace(
        "forward: {port: 0}",
        f"forward: {{port: 0, tls: {{cert_file: {certs / 'server.crt'}, "
        f"key_file: {certs / 'server.key'}}}}}")

    async def main():
        app = in_process_app(tmp_path, config)
        await app.start()
        try:
            context = ssl.create_default_context(cafile=str(certs / "ca.crt"))

            def send():
                client = forward.ClientConnection()
                chunk = forward.new_chunk_id()
                raw = socket.create_connection(("127.0.0.1", port_of(app, "forward")))
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                    return converse(sock, client, client.pack_forward(
                        "tls", ENTRIES[:3], chunk=chunk, compress=False), chunk)

            assert await asyncio.to_thread(send)
            await app.memory.wait_for(3, timeout=10)
        finally:
            await app.stop()
    asyncio.run(main())


def test_udp_heartbeat_is_answered(tmp_path):
    async def main():
        app = in_process_app(tmp_path)
        await app.start()
        try:
            def ping():
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.settimeout(5)
                    udp.sendto(b"\x00", ("127.0.0.1", port_of(app, "forward")))
                    return udp.recv(16)

            assert await asyncio.to_thread(ping) == b"\x00"
        finally:
            await app.stop()
    asyncio.run(main())


def test_malformed_stream_is_closed_and_counted_while_others_flow(tmp_path):
    async def main():
        app = in_process_app(tmp_path)
        await app.start()
        port = port_of(app, "forward")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"\x93\xa3tag\xc1\x80")  # 0xc1 is never valid msgpack
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()

            def send():
                client = forward.ClientConnection()
                chunk = forward.new_chunk_id()
                with socket.create_connection(("127.0.0.1", port)) as sock:
                    return converse(sock, client, client.pack_forward(
                        "fine", ENTRIES[:2], chunk=chunk, compress=False), chunk)

            assert await asyncio.to_thread(send)
            await app.memory.wait_for(2, timeout=10)
        finally:
            await app.stop()
        assert app.telemetry.registry.get_sample_value(
            "logminer_receiver_errors_total", {"receiver": "forward", "kind": "malformed"}) == 1
    asyncio.run(main())
