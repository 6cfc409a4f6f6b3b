"""An independent relying party: verifies tresor's task identity tokens with PyJWT.

usage: verify_tokens.py ISSUER AUDIENCE TOKEN_FILE...
Reads the discovery document, checks it as strict relying parties do, fetches the JWKS it
names, and verifies each token's signature, iss, aud, exp, nbf and required claims. Prints one
JSON object: {"discovery": {...}, "tokens": [{"kid": ..., "claims": {...}}, ...]}.
"""
import json
import sys
import urllib.request

import jwt

issuer, audience, files = sys.argv[1], sys.argv[2], sys.argv[3:]
with urllib.request.urlopen(f"{issuer}/.well-known/openid-configuration") as r:
    discovery = json.load(r)
assert discovery["issuer"] == issuer, discovery
for field in ("authorization_endpoint", "jwks_uri", "response_types_supported",
              "subject_types_supported", "id_token_signing_alg_values_supported"):
    assert field in discovery, f"discovery lacks {field}"
jwks = jwt.PyJWKClient(discovery["jwks_uri"], cache_keys=False)
out = {"discovery": discovery, "keys": [k.key_id for k in jwks.get_signing_keys()], "tokens": []}
for path in files:
    token = open(path).read().strip()
    key = jwks.get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token, key.key, algorithms=["RS256"], audience=audience, issuer=issuer,
        options={"require": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti"]},
    )
    out["tokens"].append({"kid": jwt.get_unverified_header(token)["kid"], "claims": claims})
print(json.dumps(out))
