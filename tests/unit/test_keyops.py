"""gossip.serf.keyops: the pure part of a cluster-wide key change (shared by agent and simulator)."""

from __future__ import annotations

import pytest

from crypto.keyring import Keyring
from gossip.effects import QueryResponse
from gossip.serf import keyops
from gossip.serf import payloads as serfcompat

A, B = b"a" * 32, b"b" * 16


def ring(*keys: bytes) -> Keyring:
    return Keyring(list(keys), nonce_source=lambda n: b"\0" * n)


def test_apply_key_rules() -> None:
    r = ring(A)
    assert keyops.apply_key(r, "install", B) and r.keys == (A, B)
    assert not keyops.apply_key(r, "install", B)
    with pytest.raises(ValueError, match="primary key cannot be removed"):
        keyops.apply_key(r, "remove", A)
    assert keyops.apply_key(r, "use", B) and r.primary == B
    assert not keyops.apply_key(r, "use", B)
    assert keyops.apply_key(r, "remove", A) and list(r.keys) == [B]
    with pytest.raises(ValueError, match="not installed"):
        keyops.apply_key(r, "use", A)
    with pytest.raises(ValueError, match="not a key action"):
        keyops.apply_key(r, "list", A)


def test_key_query_carries_serfs_key_request() -> None:
    name, payload = keyops.key_query("use", B)
    assert name == "_serf_use-key" and serfcompat.decode_key_request(payload) == B
    assert keyops.key_query("list", None) == ("_serf_list-keys", b"")
    with pytest.raises(ValueError):
        keyops.key_query("install", None)
    with pytest.raises(ValueError):
        keyops.key_query("require", A)


def test_tally_and_report() -> None:
    t = keyops.QueryTally()
    ok = serfcompat.encode_key_response(True, "")
    bad = serfcompat.encode_key_response(False, "key is not installed in the keyring")
    for e in (QueryResponse(1, "n1", True, b""), QueryResponse(1, "n1", True, b""),
              QueryResponse(1, "n1", False, ok), QueryResponse(1, "n1", False, bad),
              QueryResponse(1, "n2", False, bad), QueryResponse(1, "n3", True, b"")):
        t.add(e)
    assert t.acks == ["n1", "n3"] and t.responses == {"n1": ok, "n2": bad}
    rep = keyops.cluster_report("n0", ["n1", "n2", "n3", "n4"], t.acks, t.responses)
    assert rep["members"] == 5 and rep["applied"] == ["n0", "n1"]
    assert rep["failed"] == {"n2": "key is not installed in the keyring"}
    assert rep["acked_without_answer"] == ["n3"] and rep["no_answer"] == ["n4"]
