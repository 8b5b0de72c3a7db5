"""Lumberjack receiver: a spec-built Filebeat client over real TCP through the whole app."""

import asyncio
import json
import socket

from support import in_process_app, port_of

from sidecar.codecs import lumberjack


def send_windows(port, windows):
    """Send each window and wait for its final ack, like Filebeat; returns the acks seen."""
    client = lumberjack.ClientConnection()
    acks = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for events in windows:
            sock.sendall(client.send_window(events))
            while True:
                event = client.next_event()
                if event is lumberjack.NEED_DATA:
                    client.receive_data(sock.recv(65536))
                    continue
                acks.append(event.seq)
                if event.seq == len(events):
                    break
    return acks


def test_filebeat_windows_arrive_whole_and_are_acked_after_acceptance(tmp_path):
    async def main():
        app = in_process_app(tmp_path)
        await app.start()
        try:
            windows = [[{"@timestamp": "2026-11-24T03:00:00.123456Z", "message": f"w{w} line {i}",
                         "host": {"name": "node-1"}, "log": {"level": "warn"},
                         "fields": {"team": "payments"}} for i in range(100)]
                       for w in range(3)]
            acks = await asyncio.to_thread(send_windows, port_of(app, "lumberjack"), windows)
            await app.memory.wait_for(300, timeout=10)
        finally:
            await app.stop()
        assert acks == [100, 100, 100]
        records = app.memory.records
        assert [r.body for r in records] == [f"w{w} line {i}" for w in range(3) for i in range(100)]
        first = records[0]
        assert first.time_ns == 1795489200_123456000
        assert first.resource == {"host.name": "node-1"}
        assert first.severity == "warn"
        assert first.attributes["fields"] == {"team": "payments"}
        assert first.tag == "filebeat"
        assert app.telemetry.registry.get_sample_value(
            "logminer_receiver_records_total", {"receiver": "lumberjack", "tag": "filebeat"}) == 300
    asyncio.run(main())


def test_garbage_is_counted_and_other_connections_flow(tmp_path):
    async def main():
        app = in_process_app(tmp_path)
        await app.start()
        try:
            port = port_of(app, "lumberjack")
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"1W\x00\x00\x00\x01")  # protocol version 1 is not spoken
            await writer.drain()
            assert await reader.read() == b""  # the sidecar closed the connection
            writer.close()
            acks = await asyncio.to_thread(send_windows, port, [[{"message": "still fine"}]])
            await app.memory.wait_for(1, timeout=10)
        finally:
            await app.stop()
        assert acks == [1]
        assert app.telemetry.registry.get_sample_value(
            "logminer_receiver_errors_total",
            {"receiver": "lumberjack", "kind": "unsupported_version"}) == 1
        assert json.dumps(app.memory.records[0].body) == '"still fine"'
    asyncio.run(main())
