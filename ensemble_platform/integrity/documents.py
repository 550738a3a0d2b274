"""Small JSON documents kept under the home but signed (HMAC under the signing key): release gates,
catalogue entries, the service's token file. The MAC covers the document's canonical JSON after a
purpose prefix, so a MAC made for one kind of document never verifies as another's."""

from __future__ import annotations

from ensemble_platform.integrity.chain import canonical_json
from ensemble_platform.integrity.keys import SigningKey


def sign_document(key: SigningKey, purpose: bytes, document: object) -> str:
    return key.mac(purpose + b"\0" + canonical_json(document))


def verify_document(key: SigningKey, purpose: bytes, document: object, mac: object) -> bool:
    return key.verify(purpose + b"\0" + canonical_json(document), mac)
