"""Metrics to <workdir>/metrics.jsonl and TensorBoard events (<workdir>/tb); process 0 only.

The event file is written directly (TFRecord framing of `Event` protos with
scalar summaries), so the training core needs neither TensorFlow nor
tensorboardX (which imports torch when present, seconds of start-up).
"""
import json
import os
import socket
import struct
import time

import jax


def _crc32c_table():
  table = []
  for i in range(256):
    crc = i
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return table


_CRC_TABLE = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  crc ^= 0xFFFFFFFF
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:  # length-delimited (wire type 2)
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, *, file_version: str = "", scalars: dict | None = None) -> bytes:
  """tensorflow.Event: wall_time=1 (double), step=2 (int64), file_version=3, summary=5."""
  msg = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3) + _varint(step)
  if file_version:
    msg += _field(3, file_version.encode())
  if scalars:
    # Summary.value=1 -> Value{tag=1 (string), simple_value=2 (float, wire type 5)}
    values = b"".join(_field(1, _field(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value))
                      for tag, value in scalars.items())
    msg += _field(5, values)
  return msg


class EventFile:
  """A TensorBoard event file of scalar summaries."""

  def __init__(self, logdir):
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    self.f = open(os.path.join(logdir, name), "wb")
    self._record(_event(time.time(), 0, file_version="brain.Event:2"))

  def _record(self, data: bytes):
    header = struct.pack("<Q", len(data))
    self.f.write(header + struct.pack("<I", _masked_crc32c(header)) + data + struct.pack("<I", _masked_crc32c(data)))

  def scalars(self, step: int, values: dict):
    self._record(_event(time.time(), step, scalars=values))
    self.f.flush()

  def close(self):
    self.f.close()


class MetricWriter:
  def __init__(self, workdir):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "metrics.jsonl")
    _drop_partial_line(path)
    self.jsonl = open(path, "a")
    self.tb = EventFile(os.path.join(workdir, "tb"))

  def write(self, step: int, metrics: dict, prefix: str = ""):
    if not self.enabled:
      return
    scalars = {f"{prefix}{k}": float(v) for k, v in metrics.items()}
    self.jsonl.write(json.dumps({"step": int(step), "time": time.time(), **scalars}) + "\n")
    self.jsonl.flush()
    self.tb.scalars(int(step), scalars)

  def close(self):
    if self.enabled:
      self.jsonl.close()
      self.tb.close()


def _drop_partial_line(path):
  """A run killed mid-write leaves half a line; cut it so that the resumed run's lines stay whole."""
  if not os.path.exists(path) or not os.path.getsize(path):
    return
  with open(path, "rb+") as f:
    data = f.read()
    if not data.endswith(b"\n"):
      f.truncate(data.rfind(b"\n") + 1)


def read_metrics(workdir) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  if lines and not lines[-1].endswith("\n"):
    lines.pop()  # being written, or cut short by a kill
  return [json.loads(line) for line in lines]
