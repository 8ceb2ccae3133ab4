"""Real-speech corpus set-up: speaker groups from unpacked Debian packages, stable utterances."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from indexer.training.corpus import build_real_utterances

SR = 8000


def _prompt(path: Path, seed: int, seconds: float = 1.2, sr: int = SR) -> None:
    """A voiced, amplitude-modulated harmonic tone: enough like a spoken prompt to survive trimming."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(rng.uniform(100, 220) + 15 * np.sin(2 * np.pi * 0.7 * t)) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.3 + 0.7 * np.sin(2 * np.pi * 3 * t) ** 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), (0.2 * x).astype(np.float32), sr)


def _asterisk(root: Path, pkg: str, voice: str, n: int, seed: int) -> Path:
    for i in range(n):
        _prompt(root / pkg / "usr/share/asterisk/sounds" / voice / f"prompt{i:02d}.wav", seed + i)
    return root / pkg


def _gcin(root: Path, syllables: int) -> Path:
    base = root / "gcin-voice" / "usr/share/gcin-voice/ogg"
    for i in range(syllables):
        for speaker in ("3", "5"):
            _prompt(base / f"syl{i:02d}" / f"{speaker}.ogg", 100 * int(speaker) + i, seconds=0.5, sr=44100)
    return root / "gcin-voice"


def test_adding_a_package_leaves_the_other_groups_utterances_unchanged(tmp_path):
    pkgs = tmp_path / "raw"
    en = _asterisk(pkgs, "asterisk-core-sounds-en-wav", "en_US_f_Allison", 12, 0)
    menardi = _asterisk(pkgs, "asterisk-prompt-it-menardi-wav", "it_IT_f_Menardi", 12, 50)

    before = build_real_utterances(tmp_path / "a", {"asterisk-core-sounds-en-wav": en})
    after = build_real_utterances(tmp_path / "b", {"asterisk-prompt-it-menardi-wav": menardi,
                                                   "asterisk-core-sounds-en-wav": en})

    en_before = [u for u in before if u.group == "asterisk:en"]
    en_after = [u for u in after if u.group == "asterisk:en"]
    assert en_before and [u.seconds for u in en_before] == [u.seconds for u in en_after]
    for u, v in zip(en_before, en_after):
        assert np.array_equal(sf.read(str(tmp_path / "a" / u.path))[0], sf.read(str(tmp_path / "b" / v.path))[0])
    # The second Italian voice is its own narrowband speaker group, used for training.
    it = [u for u in after if u.group == "asterisk-menardi:it"]
    assert it and {(u.lang, u.native_rate, u.split) for u in it} == {("it", 8000, "train")}


def test_each_gcin_speaker_is_its_own_wideband_group(tmp_path):
    rows = build_real_utterances(tmp_path / "out", {"gcin-voice": _gcin(tmp_path / "raw", 16)}, min_s=1.5, max_s=3.0)
    groups = {u.group for u in rows}
    assert groups == {"gcin-3:zh", "gcin-5:zh"}
    assert all(u.native_rate > 8000 and u.lang == "zh" and 1.5 <= u.seconds <= 3.0 for u in rows)
