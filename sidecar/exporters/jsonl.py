"""JSON-lines exporters: one sanitized record per line, on stdout or in a file.

For local use, the demo and debugging. Writes happen in a worker thread so a
slow terminal or disk never stalls the event loop; a write error is reported
as RETRY (the pipeline backs off and tries again), never swallowed.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from sidecar.exporters.base import ExportResult
from sidecar.record import Batch


@dataclass(frozen=True)
class StdoutExporterSettings:
    type: Literal["stdout"] = field(default="stdout", metadata={"doc": "JSON lines on stdout."})


@dataclass(frozen=True)
class FileExporterSettings:
    type: Literal["file"] = field(default="file",
                                  metadata={"doc": "JSON lines appended to a file."})
    path: str = field(default="logminer-records.jsonl", metadata={"doc": "File to append to."})


def encode(batch: Batch) -> bytes:
    """The batch as UTF-8 JSON lines (compact, keys in a fixed order); strictly valid JSON:
    NaN and infinities, which JSON cannot carry, become null."""
    return "".join(_line(record.to_dict()) for record in batch).encode("utf-8", "replace")


def _line(document: dict[str, Any]) -> str:
    try:
        text = json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(document), ensure_ascii=False, separators=(",", ":"))
    return text + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


class JsonLinesExporter:
    """Writes batches to a binary stream opened by ``start``."""

    def __init__(self, name: str, open_stream: Callable[[], IO[bytes]], close_stream: bool):
        self.name = name
        self._open = open_stream
        self._close = close_stream
        self._stream: IO[bytes] | None = None

    @classmethod
    def stdout(cls) -> JsonLinesExporter:
        return cls("stdout", lambda: sys.stdout.buffer, close_stream=False)

    @classmethod
    def file(cls, settings: FileExporterSettings) -> JsonLinesExporter:
        path = Path(settings.path)
        return cls(f"file:{path}", lambda: path.open("ab"), close_stream=True)

    async def start(self) -> None:
        self._stream = self._open()

    async def export(self, batch: Batch) -> ExportResult:
        assert self._stream is not None, "start() was not awaited"
        data = encode(batch)
        try:
            await asyncio.to_thread(self._write, data)
        except OSError:
            return ExportResult.RETRY
        return ExportResult.SUCCESS

    def _write(self, data: bytes) -> None:
        assert self._stream is not None
        self._stream.write(data)
        self._stream.flush()

    async def shutdown(self) -> None:
        if self._stream is not None and self._close:
            self._stream.close()
        self._stream = None
