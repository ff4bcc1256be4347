"""Mail in: the LMTP listener, command mail, replies to digests, bounces and complaints.

Submodules are imported where they are used: ``addresses`` is pure and shared with the
pipeline (VERP envelope senders, Reply-To), the rest runs only in the daemon.
"""
