"""Read an offline wandb run back from its ``run-*.wandb`` file (a LevelDB-style log of wandb's protobuf records)."""

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK, HEADER = 32768, 7  # the file starts with ":W&B", a 2-byte magic and a version byte


def records(path: Path):
    """Every ``Record`` in the file, reassembled from its FULL or FIRST/MIDDLE/LAST chunks."""
    data, pos, pending = path.read_bytes(), HEADER, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a chunk header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def offline_run(run_dir: Path) -> dict:
    """The run record, config, history rows, final summary and exit code of the offline run under ``run_dir``."""
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    run, history, summary, exit_code = None, [], {}, None

    def key(item):
        return item.key or "/".join(item.nested_key)

    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "history":
            history.append({key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "exit":
            exit_code = record.exit.exit_code
    config = {i.key: json.loads(i.value_json) for i in run.config.update if i.key != "_wandb"}
    return {"run": run, "config": config, "history": history, "summary": summary, "exit_code": exit_code}
