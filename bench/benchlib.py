"""What the bench harnesses share: timing a child process with its own peak RSS, and sizes."""
import os, subprocess, sys, tempfile, time


def run(cmd, env=None, check=True):
    """Runs cmd; returns (seconds, stdout, peak RSS bytes of that child)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        out.seek(0); err.seek(0)
        stdout = out.read().decode()
        if check and status != 0:
            sys.exit(f"{' '.join(cmd)} failed: {err.read().decode()}")
        return seconds, stdout, usage.ru_maxrss * 1024


def du(path):
    """Bytes of the files under path."""
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)
