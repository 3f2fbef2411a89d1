"""Application messages of protocol.md §10, typed.

One frozen dataclass per message, each with ``parse(head)`` (validate an untrusted head,
naming the member, what was expected and what arrived) and ``to_head()`` (the head to
send). The client, the server and the benchmarks build and read heads only through this
package; nothing else spells a message's ``"m"`` or reads its members.

* :mod:`.members`: error types and the checks of single head members;
* :mod:`.session`: ``hello``, ``challenge``, ``auth``, ``welcome`` (§10.2);
* :mod:`.upload`: ``manifest``, ``have``, ``blob``, ``load`` and their replies (§10.3-§10.6);
* :mod:`.query`: ``query``, ``result``, ``error`` (§10.7-§10.9);
* :mod:`.timing`: ``timings``, ``timings_ok`` and their body (§10.11);
* :mod:`.handoff`: the handoff between servers (§15);
* :mod:`.dispatch`: which message a head is, by its ``"m"``;
* :mod:`.probe`: the transport benchmark's own messages (not §10).

Unknown members of a head are ignored (§10.1.3): ``parse`` reads only the members its
message defines.
"""

from __future__ import annotations

from ionn_net.messages.dispatch import (
    REPLIES,
    REQUESTS,
    Reply,
    Request,
    UnexpectedReply,
    parse_reply,
    parse_request,
    request_type,
)
from ionn_net.messages.handoff import (
    MAX_PREPARE_SETS,
    Fetch,
    FetchOk,
    Grant,
    GrantOk,
    Pull,
    PullOk,
    Push,
    PushOk,
    Redeem,
    RedeemOk,
    Stage,
    StageBlob,
    StageOk,
)
from ionn_net.messages.members import (
    CONTROL_URGENCY,
    ERROR_CODES,
    QUERY_URGENCY,
    UPLOAD_URGENCY,
    MemberError,
    RequestError,
    bad_member,
    check_body_len,
    hmac_proof,
)
from ionn_net.messages.probe import (
    ProbeQuery,
    ProbeResult,
    ProbeUpload,
    ProbeUploadOk,
    parse_probe,
)
from ionn_net.messages.query import Error, Query, RemoteError, Result
from ionn_net.messages.session import Auth, Challenge, Hello, Welcome
from ionn_net.messages.timing import Timings, TimingsOk, TimingTable
from ionn_net.messages.upload import (
    Blob,
    BlobOk,
    Have,
    HaveOk,
    Holdings,
    Load,
    LoadOk,
    Manifest,
    ManifestOk,
)

__all__ = [
    "CONTROL_URGENCY",
    "ERROR_CODES",
    "MAX_PREPARE_SETS",
    "QUERY_URGENCY",
    "REPLIES",
    "REQUESTS",
    "UPLOAD_URGENCY",
    "Auth",
    "Blob",
    "BlobOk",
    "Challenge",
    "Error",
    "Fetch",
    "FetchOk",
    "Grant",
    "GrantOk",
    "Have",
    "HaveOk",
    "Hello",
    "Holdings",
    "Load",
    "LoadOk",
    "Manifest",
    "ManifestOk",
    "MemberError",
    "ProbeQuery",
    "ProbeResult",
    "ProbeUpload",
    "ProbeUploadOk",
    "Pull",
    "PullOk",
    "Push",
    "PushOk",
    "Query",
    "Redeem",
    "RedeemOk",
    "RemoteError",
    "Reply",
    "Request",
    "RequestError",
    "Result",
    "Stage",
    "StageBlob",
    "StageOk",
    "TimingTable",
    "Timings",
    "TimingsOk",
    "UnexpectedReply",
    "Welcome",
    "bad_member",
    "check_body_len",
    "hmac_proof",
    "parse_probe",
    "parse_reply",
    "parse_request",
    "request_type",
]
