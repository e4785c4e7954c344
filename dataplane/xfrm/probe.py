"""The kernel capability probe: can this kernel run ESP with rfc4106(gcm(aes))?

Owns: ``kernel_support_problem()``, which adds probe SAs inside a scratch network
namespace owned by a throwaway thread (the agent's namespace never sees a probe) and
says in plain words what the kernel lacks (ESP, the GCM AEAD, a working RNG).
Does not: program anything that stays, or decide whether a network may be encrypted
(the agent refuses one with this message).
"""

from __future__ import annotations

import errno
import os
import struct
import threading

from dataplane.xfrm.codec import (
    XFRM_MSG_NEWSA,
    XFRMA_ALG_AUTH,
    XFRMA_ALG_CRYPT,
    Request,
    add_state,
    pack_attr,
    pack_usersa_info,
)
from dataplane.xfrm.kernel import XfrmSocket, unshare_netns
from dataplane.xfrm.model import AEAD_NAME, XfrmError, XfrmState

_PROBE_SRC, _PROBE_DST = "192.0.2.1", "192.0.2.2"


def _probe_in_scratch_netns() -> list[tuple[str, int, str]]:
    """Add probe SAs inside a brand-new netns owned by a throwaway thread.

    The netns disappears with the thread, so the agent's namespace never sees a probe.
    Returns (probe name, errno or 0, ext-ack text) for each probe.
    """
    results: list[tuple[str, int, str]] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            unshare_netns()
            with XfrmSocket.open() as xs:
                gcm = XfrmState(_PROBE_SRC, _PROBE_DST, 0x100, bytes(20), reqid=1)
                res = xs.apply([add_state(gcm)])[0]
                results.append(("esp+gcm", *_outcome(res)))
                if res is not None:
                    # ESP with null algorithms tells "no ESP" apart from "no GCM".
                    results.append(("esp+null", *_outcome(xs.apply([_null_esp_request(0x101)])[0])))
        except BaseException as e:  # reported to the caller's thread
            failure.append(e)

    t = threading.Thread(target=run, name="xfrm-probe", daemon=True)
    t.start()
    t.join()
    if failure:
        raise failure[0]
    return results


def _outcome(res: XfrmError | None) -> tuple[int, str]:
    return (0, "") if res is None else (res.errno or errno.EIO, res.detail)


def _null_esp_request(spi: int) -> Request:
    state = XfrmState(_PROBE_SRC, _PROBE_DST, spi, b"", reqid=1, esn=False)
    body = (
        pack_usersa_info(state)
        + pack_attr(XFRMA_ALG_CRYPT, struct.pack("=64sI", b"ecb(cipher_null)", 0))
        + pack_attr(XFRMA_ALG_AUTH, struct.pack("=64sI", b"digest_null", 0))
    )
    return Request(XFRM_MSG_NEWSA, body, "probe ESP with null algorithms")


def kernel_support_problem() -> str | None:
    """None if this kernel can run ESP with rfc4106(gcm(aes)); otherwise what it lacks.

    Probes by adding SAs in a scratch network namespace (needs CAP_SYS_ADMIN and
    CAP_NET_ADMIN, like the agent itself).
    """
    try:
        results = _probe_in_scratch_netns()
    except XfrmError as e:
        return f"IPsec unavailable: {e}"
    except OSError as e:
        return f"IPsec unavailable: cannot probe the kernel ({e})"
    status = {name: (err, detail) for name, err, detail in results}
    err, detail = status["esp+gcm"]
    if err == 0:
        return None
    null_err = status.get("esp+null", (0, ""))[0]
    missing: list[str] = []
    if err == errno.EPROTONOSUPPORT or null_err == errno.EPROTONOSUPPORT:
        missing.append("ESP (CONFIG_INET_ESP / module esp4; esp6 for IPv6 underlays)")
    if err == errno.ENOSYS:
        missing.append(
            f"the AEAD algorithm {AEAD_NAME} (CONFIG_CRYPTO_GCM / modules gcm, aes, ghash)"
        )
    if err == errno.ENOENT or "cryptographic" in detail:
        missing.append(
            "a working crypto setup for ESP: the default RNG stdrng "
            "(modules drbg, jitterentropy_rng, sha512_generic) or the seqiv IV generator"
        )
    why = f"{os.strerror(err)}" + (f": {detail}" if detail else "")
    if not missing:
        return f"IPsec unavailable: adding an ESP {AEAD_NAME} SA failed ({why})"
    return f"IPsec unavailable: this kernel lacks {' and '.join(missing)} (probe: {why})"
