"""Reference SigV4 signer for tests: botocore's own SigV4Auth / S3SigV4Auth.

Reads one JSON request from stdin and prints the Authorization header botocore
computes for it; the canonical request goes to stderr, for diffing when the
two signers disagree. Input:

  {"method": "GET", "url": "https://host/path?query",
   "headers": [["Host", "..."], ...],        # as sent, X-Amz-Date included
   "signedHeaders": ["host", ...],           # optional: sign only these
   "accessKeyId": "...", "secretAccessKey": "...", "sessionToken": "...",
   "service": "s3", "region": "us-east-1", "timestamp": "20240102T030405Z"}

It signs the request exactly as given: it does not call add_auth, which would
rewrite X-Amz-Date, the token and (for S3) x-amz-content-sha256 from its own
clock and body, and so test botocore's header plumbing rather than the
signature over the bytes we send.
"""

import json
import sys

from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials


def signer_class(base, only):
    if only is None:
        return base

    class Restricted(base):
        # botocore signs every header but a short blacklist; the code under
        # test signs a chosen subset, which the caller passes here.
        def headers_to_sign(self, request):
            chosen = HTTPHeaders()
            for name, value in super().headers_to_sign(request).items():
                if name.lower() in only:
                    chosen[name.lower()] = value
            return chosen

    return Restricted


def main():
    spec = json.load(sys.stdin)
    request = AWSRequest(method=spec["method"], url=spec["url"])
    for name, value in spec["headers"]:
        # HTTPHeaders appends on assignment, so repeated headers stay repeated.
        request.headers[name] = value
    request.context["timestamp"] = spec["timestamp"]

    only = spec.get("signedHeaders")
    base = S3SigV4Auth if spec["service"] == "s3" else SigV4Auth
    credentials = Credentials(spec["accessKeyId"], spec["secretAccessKey"], spec.get("sessionToken"))
    auth = signer_class(base, None if only is None else {h.lower() for h in only})(
        credentials, spec["service"], spec["region"]
    )

    canonical = auth.canonical_request(request)
    signature = auth.signature(auth.string_to_sign(request, canonical), request)
    signed = auth.signed_headers(auth.headers_to_sign(request))
    print(canonical, file=sys.stderr)
    print(f"AWS4-HMAC-SHA256 Credential={auth.scope(request)}, SignedHeaders={signed}, Signature={signature}")


if __name__ == "__main__":
    main()
