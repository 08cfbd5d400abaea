"""Fault injection for tests/test_crash.py: a Python process started with this folder on PYTHONPATH dies of SIGSEGV,
as when FFmpeg crashes on a damaged file, when it opens a video whose file name contains $VIDSEARCH_TEST_SEGFAULT_ON
(stored files are named by their content hash). The decode processes a worker spawns inherit it, so the crash lands
wherever that file is decoded."""

import os

_marker = os.environ.get("VIDSEARCH_TEST_SEGFAULT_ON")
if _marker:
    import signal

    import ingest.decode

    _probe = ingest.decode.probe

    def _crashing_probe(path, *args, **kwargs):
        if _marker in os.path.basename(str(path)):
            os.kill(os.getpid(), signal.SIGSEGV)
        return _probe(path, *args, **kwargs)

    ingest.decode.probe = _crashing_probe  # before ingest.decode_pool imports it by name
