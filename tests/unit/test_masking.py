from __future__ import annotations

from pathlib import Path

from rundock.agent.logpump import Masker


def _run(masker: Masker, chunks: list[bytes]) -> bytes:
    out = b"".join(masker.feed(c) for c in chunks)
    return out + masker.feed(b"", final=True)


def test_secrets_are_masked_even_when_split_across_reads() -> None:
    text = b"token=hunter2-secret and again hunter2-secret!\n"
    for cut in range(1, len(text)):
        assert _run(Masker(["hunter2-secret"]), [text[:cut], text[cut:]]) == b"token=*** and again ***!\n"


def test_output_without_secrets_is_not_held_back() -> None:
    masker = Masker(["hunter2-secret"])
    assert masker.feed(b"epoch 1 done\n") == b"epoch 1 done\n"
    assert masker.feed(b"partial hun") == b"partial "  # could be the start of the secret
    assert masker.feed(b"gry\n") == b"hungry\n"


def test_without_secrets_data_passes_through() -> None:
    assert Masker([]).feed(b"abc") == b"abc"


def test_a_process_output_keeps_its_order_across_stdout_and_stderr(tmp_path: Path) -> None:
    """Lines a script printed before its traceback come before it in the driver log, however the two pipes'
    data arrive (here: both pipes full before anything reads them), and stderr's tail is kept apart."""
    import subprocess
    import sys

    from rundock.agent.logpump import LogPump, merged_pipes

    script = ("import sys\n"
              "for i in range(3000):\n"
              "    print('epoch', i, flush=True)\n"
              "raise ValueError('bad secret-value-123')\n")
    for attempt in range(10):
        log = tmp_path / f"driver_{attempt}.txt"
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        proc.wait()  # the job is done before the pump reads a byte: only the pump decides the order
        pump = LogPump([merged_pipes(proc.stdout, proc.stderr)], str(log), ["secret-value-123"])
        pump.join()
        text = log.read_text()
        assert text.index("epoch 2999") < text.index("Traceback"), text[-2000:]
        assert "secret-value-123" not in text and "ValueError: bad ***" in text
        assert pump.stderr_tail()[-1] == "ValueError: bad ***" and "epoch" not in "".join(pump.stderr_tail())
