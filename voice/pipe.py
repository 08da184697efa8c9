"""Run an external program (espeak-ng, ffmpeg) on some bytes, bounded in time.

The child never outlives its caller: it is killed when the time is up and when the caller is
cancelled (a job cancelled during synthesis).
"""

from __future__ import annotations

import asyncio


async def run_piped(argv: list[str], stdin: bytes, timeout: float) -> tuple[int, bytes, bytes]:
    """(exit status, stdout, stderr) of `argv` fed `stdin`.

    Raises `TimeoutError` after `timeout` seconds and `OSError` (another one) when the
    program cannot be started.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except (TimeoutError, asyncio.CancelledError):
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out, err
