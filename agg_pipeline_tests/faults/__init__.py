"""The fault suite: every fault and bad-input case an operator can meet, one module per class.

Each case asserts that nothing written was lost or changed (table checksums before/after, see
``checksums.py``) and, where a run failed, that a re-run converges to the reference.
"""
