"""Names of the MLflow registry tags the platform reads and writes: defined once, here."""

from __future__ import annotations

PREFIX = "ensemble_platform."
FINGERPRINT_TAG = PREFIX + "fingerprint"
SEMVER_TAG = PREFIX + "semver"
CONFIG_HASH_TAG = PREFIX + "config_hash"
TRAIN_HASH_TAG = PREFIX + "train_hash"
FAMILY_TAG = PREFIX + "family"
# A member's measured predict cost (seconds per row, timed at fit): evidence for cost-aware
# strategies, never part of a fingerprint or config hash.
PREDICT_COST_TAG = PREFIX + "predict_seconds_per_row"
# The OpenBLAS kernel a member was fitted on (its bits depend on it: blas_kernel.py).
BLAS_KERNEL_TAG = PREFIX + "blas_kernel"
# The member in safe_format (no code runs on load), logged beside the MLflow model in the member's
# run; its SHA-256 is a version tag, so a bundle's member file is checked against the registry.
MEMBER_ARTEFACT = "member.skops"
MEMBER_SHA256_TAG = PREFIX + "member_sha256"
# HMAC under the signing key of (model name, run id, artefact SHA-256), set when the version is
# registered: the SHA-256 tag alone can be rewritten by anyone who can write the MLflow store.
MEMBER_MAC_TAG = PREFIX + "member_mac"
GATES_TAG = PREFIX + "gates"
APPROVAL_TAG = PREFIX + "approval"  # the decision in force; APPROVAL_TAG.NNNN: each decision, numbered as logged
BUNDLE_TAGS = (PREFIX + "bundle_sha256", PREFIX + "manifest_sha256")
# The registered ensemble's stored runtime (members, combiner, calibrator, settings): its digest
# (`runtime.payload_digest`) and an HMAC of it under the signing key, set at registration. What a
# bundle is built from must match both (`RegistryDownloads.verified_payload`).
PAYLOAD_SHA256_TAG = PREFIX + "payload_sha256"
PAYLOAD_MAC_TAG = PREFIX + "payload_mac"
