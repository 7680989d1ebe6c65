"""The rack testbed for real (marker `netns`, root): 2 racks, 100 Mbit uplinks, one TCP stream across
them measured with the uplink byte counters, then a teardown that leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hybridrec.testbed.fabric import rate_bits
from hybridrec.testbed.racks import RackTestbed

pytestmark = pytest.mark.netns

PAYLOAD = 12 * 2**20
SERVER = """
import json, socket, sys, time
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2]))); srv.listen(1); print("ready", flush=True)
conn, _ = srv.accept(); got = 0; first = None
while True:
    chunk = conn.recv(1 << 20)
    if not chunk:
        break
    first = first or time.monotonic(); got += len(chunk)
print(json.dumps({"bytes": got, "seconds": time.monotonic() - first}), flush=True)
"""
CLIENT = """
import socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
block = b"x" * (1 << 20)
for _ in range(int(sys.argv[3]) >> 20):
    sock.sendall(block)
sock.close()
"""


def _skip_reason() -> str:
    if os.geteuid() != 0:
        return "the rack testbed needs root (network namespaces)"
    if subprocess.run(["ip", "netns", "list"], capture_output=True, check=False).returncode != 0:
        return "iproute2 with netns support is missing"
    return ""


@pytest.mark.skipif(bool(_skip_reason()), reason=_skip_reason() or "ok")
def test_two_racks_100mbit_uplink_shapes_a_tcp_stream_and_tear_down_cleanly(tmp_path):
    bed = RackTestbed.create(tmp_path / "racks", racks=2, nodes_per_rack=2, rate="100mbit")
    spec = bed.spec
    try:
        bed.up()
        before = {rack: bed.uplink_bytes(rack) for rack in spec.racks}
        port = 5201
        server = bed.popen("n3", [sys.executable, "-c", SERVER, spec.addr("n3"), str(port)],
                           stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
        client = bed.popen("n1", [sys.executable, "-c", CLIENT, spec.addr("n3"), str(port), str(PAYLOAD)])
        assert client.wait(timeout=60) == 0
        result = json.loads(server.stdout.readline())
        server.wait(timeout=10)
        after = {rack: bed.uplink_bytes(rack) for rack in spec.racks}
    finally:
        left = bed.down()
    assert result["bytes"] == PAYLOAD
    out_rack1 = after["rack1"]["out"] - before["rack1"]["out"]
    in_rack2 = after["rack2"]["in"] - before["rack2"]["in"]
    # the payload crossed rack1's uplink and entered rack2; headers add ~3-4% (1448-byte segments)
    for crossed in (out_rack1, in_rack2):
        assert PAYLOAD <= crossed <= PAYLOAD * 1.06, (crossed, PAYLOAD)
    # nothing of this stream touched the other directions beyond ACKs
    assert after["rack2"]["out"] - before["rack2"]["out"] < PAYLOAD * 0.05
    goodput = PAYLOAD * 8 / result["seconds"]
    wire = out_rack1 * 8 / result["seconds"]
    print(f"uplink goodput {goodput / 1e6:.1f} Mbit/s (payload bits / receive time), "
          f"on the wire {wire / 1e6:.1f} Mbit/s, rate {spec.rate}; uplink bytes {out_rack1} for {PAYLOAD}")
    assert 0.7 * rate_bits(spec.rate) < goodput <= 1.02 * rate_bits(spec.rate)
    assert left == []
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(ns in names for ns in spec.namespaces())
