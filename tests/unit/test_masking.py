from __future__ import annotations

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
